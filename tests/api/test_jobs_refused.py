"""Jobs that cannot succeed on their data are refused at submit, before any job row exists."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db.models import Dataset, Job, OutboxMessage
from db.services.registry import register_model
from db.services.tenants import get_or_create_tenant
from tests.api.helpers import API, assert_error, evaluate_body, finetune_body, submit, upload

ONE_CLASS_CSV = b"text,label\nI loved it,pos\nWhat a show,pos\nGreat fun,pos\n"
# The labels of LABELLED_CSV (pos, neg) plus one the train data lacks.
WIDER_CSV = b"review,sentiment\nLovely,pos\nAwful,neg\nHm,meh\n"
NARROWER_CSV = b"review,sentiment\nLovely,pos\nGreat,pos\n"
OTHER_COLUMNS_CSV = b"text,label\nLovely,pos\nAwful,neg\n"


def _upload(client, auth, content: bytes, **columns: str) -> dict:
    response = upload(client, auth, content, "data.csv", **columns)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def _no_job_was_created(app) -> None:
    with app.extensions["nightshift"].session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0


def _register(app, name: str, label_names: list[str]) -> None:
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        register_model(session, tenant_id=tenant.id, name=name, task="text-classification",
                       base_model="tiny", label_names=label_names, path="/nowhere")


def test_finetune_on_one_class_is_422_naming_the_column_and_class_count(app, client, auth, tiny_model):
    one_class = _upload(client, auth, ONE_CLASS_CSV, text_column="text", label_column="label")
    response = client.post(f"{API}/jobs", headers=auth, json=finetune_body(one_class["id"], tiny_model))

    error = assert_error(
        response, 422, "too_few_classes",
        f"params.train_dataset_id: dataset {one_class['id']}'s label column 'label' has 1 class ('pos')",
        "at least two",
    )
    assert error["details"] == {"field": "params.train_dataset_id", "column": "label", "class_count": 1,
                                "classes": {"pos": 3}}
    _no_job_was_created(app)


def test_validation_data_with_a_class_train_lacks_is_422(app, client, auth, labelled, tiny_model):
    wider = _upload(client, auth, WIDER_CSV, text_column="review", label_column="sentiment")
    body = finetune_body(labelled["id"], tiny_model, validation_dataset_id=wider["id"])

    error = assert_error(
        client.post(f"{API}/jobs", headers=auth, json=body), 422, "unknown_labels", "params.validation_dataset_id",
        f"dataset {wider['id']}'s label column 'sentiment' has 1 class", "('meh')", f"train dataset {labelled['id']}",
    )
    assert error["details"]["unknown"] == ["meh"]
    _no_job_was_created(app)


def test_validation_data_without_the_train_columns_is_422(app, client, auth, labelled, tiny_model):
    other = _upload(client, auth, OTHER_COLUMNS_CSV, text_column="text", label_column="label")
    body = finetune_body(labelled["id"], tiny_model, validation_dataset_id=other["id"])

    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "missing_column",
                         "params.validation_dataset_id", "'review'", "['text', 'label']")
    assert error["details"]["column"] == "review"
    _no_job_was_created(app)


def test_validation_data_with_a_subset_of_the_classes_is_accepted(client, auth, labelled, tiny_model):
    narrower = _upload(client, auth, NARROWER_CSV, text_column="review", label_column="sentiment")
    job = submit(client, auth, finetune_body(labelled["id"], tiny_model, validation_dataset_id=narrower["id"]))
    assert job["status"] == "queued"


def test_evaluating_a_registered_model_on_classes_it_does_not_know_is_422(app, client, auth, tiny_model):
    _register(app, "sentiment", ["neg", "pos"])
    wider = _upload(client, auth, WIDER_CSV, text_column="review", label_column="sentiment")

    response = client.post(f"{API}/jobs", headers=auth, json=evaluate_body(wider["id"], "sentiment"))

    error = assert_error(response, 422, "unknown_labels", "params.dataset_id",
                         f"dataset {wider['id']}'s label column 'sentiment' has 1 class", "('meh')",
                         "model 'sentiment:1'", "'neg', 'pos'")
    assert error["details"]["model_labels"] == ["neg", "pos"]
    _no_job_was_created(app)


def test_evaluating_a_registered_model_on_classes_it_knows_is_accepted(app, client, auth, labelled):
    _register(app, "sentiment", ["neg", "pos"])
    assert submit(client, auth, evaluate_body(labelled["id"], "sentiment"))["status"] == "queued"


@pytest.mark.parametrize(("make_body", "field"), [(finetune_body, "params.train_dataset_id"),
                                                  (evaluate_body, "params.dataset_id")])
def test_dataset_without_rows_is_422(app, client, auth, tiny_model, make_body, field):
    with app.extensions["nightshift"].session_factory.begin() as session:
        empty = Dataset(tenant_id=get_or_create_tenant(session, "acme").id, name="empty", format="csv",
                        text_column="text", label_column="label", columns=["text", "label"], row_count=0,
                        size_bytes=11, sha256="0" * 64, path="/nowhere", stats={"label_distribution": {}})
        session.add(empty)
        session.flush()
        empty_id = empty.id

    response = client.post(f"{API}/jobs", headers=auth, json=make_body(empty_id, tiny_model))

    assert_error(response, 422, "dataset_empty", field, f"dataset {empty_id} has no rows")
    _no_job_was_created(app)


def test_a_tagger_on_sentences_without_entities_is_422(app, client, auth, tiny_model):
    response = upload(client, auth, b"the\tO\nend\tO\n\nnothing\tO\n", "plain.conll", task="token-classification")
    assert response.status_code == 201, response.get_data(as_text=True)
    dataset = response.get_json()
    body = finetune_body(dataset["id"], tiny_model) | {"task": "token-classification"}
    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "no_entities",
                         f"dataset {dataset['id']}'s tags column 'tags' has no entity", "every tag is O")
    assert error["details"] == {"field": "params.train_dataset_id", "column": "tags", "tags": {"O": 3}}
    _no_job_was_created(app)


def test_a_tagger_on_classification_data_is_422_naming_both_tasks(app, client, auth, labelled, tiny_model):
    body = finetune_body(labelled["id"], tiny_model) | {"task": "token-classification"}
    assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "wrong_task",
                 "holds text-classification data; this job is token-classification", "task=token-classification")
    _no_job_was_created(app)


def test_running_a_saved_model_without_the_tasks_head_is_422(app, client, auth, tiny_model):
    response = upload(client, auth, b"Alice\tB-PER\nleft\tO\n", "ner.conll", task="token-classification")
    dataset = response.get_json()
    body = evaluate_body(dataset["id"], tiny_model) | {"task": "token-classification"}
    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "wrong_task",
                         "is a BertForSequenceClassification, not a token-classification model", "fine-tune it")
    assert error["details"]["architectures"] == ["BertForSequenceClassification"]
    _no_job_was_created(app)


# ---- what trains and when it stops ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"early_stopping_patience": 3}, "early_stopping_patience needs eval_steps: set eval_steps"),
        ({"early_stopping_metric": "accuracy"}, "early_stopping_metric applies only with early stopping"),
        ({"freeze_base": True, "freeze_layers": 1}, "freeze_base already fixes the embeddings and every layer"),
    ],
)
def test_contradictory_training_settings_are_422_saying_what_to_fix(app, client, auth, labelled, tiny_model,
                                                                    params, says):
    response = client.post(f"{API}/jobs", headers=auth, json=finetune_body(labelled["id"], tiny_model, **params))
    error = assert_error(response, 422, "invalid_input", "params", says)
    assert [f["field"] for f in error["details"]["fields"]] == ["params"]
    _no_job_was_created(app)


def test_an_early_stopping_metric_the_task_does_not_report_is_422_listing_those_it_does(app, client, auth, labelled,
                                                                                        tiny_model):
    body = finetune_body(labelled["id"], tiny_model, eval_steps=10, early_stopping_patience=2,
                         early_stopping_metric="bleu")
    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "unknown_metric",
                         "params.early_stopping_metric", "'bleu'", "choose one of f1_macro, accuracy, loss")
    assert error["details"] == {"field": "params.early_stopping_metric", "metrics": ["f1_macro", "accuracy", "loss"]}
    _no_job_was_created(app)


def test_freezing_more_layers_than_the_base_model_has_is_422(app, client, auth, labelled, tiny_model):
    body = finetune_body(labelled["id"], tiny_model, freeze_layers=3)
    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "too_many_frozen_layers",
                         "params.freeze_layers: 3 is more than the 2 transformer layers", "choose at most 2")
    assert error["details"] == {"field": "params.freeze_layers", "layers": 2}
    _no_job_was_created(app)


def test_a_fine_tune_that_freezes_and_stops_early_is_accepted(client, auth, labelled, tiny_model):
    job = submit(client, auth, finetune_body(labelled["id"], tiny_model, freeze_layers=2, freeze_embeddings=True,
                                             layer_lr_decay=0.9, eval_steps=10, early_stopping_patience=2,
                                             early_stopping_metric="eval_accuracy"))
    assert job["status"] == "queued" and job["params"]["early_stopping_metric"] == "accuracy"

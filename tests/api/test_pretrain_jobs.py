"""Pretrain jobs at the API: unlabelled text in (.txt or a text column), checked at submit; the base
model they register is accepted by fine-tunes of every task and refused by evaluate and batch inference."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.models import OutboxMessage
from db.services.registry import register_model
from db.services.tenants import get_or_create_tenant
from tests.api.helpers import (
    API,
    assert_error,
    batch_body,
    evaluate_body,
    finetune_body,
    submit,
    upload,
)
from tests.api.test_jobs_refused import _no_job_was_created

TEXT_FILE = b"A first paragraph\nwrapped over two lines.\n\nA second paragraph.\n\nA third.\n"
TAGGED_CONLL = b"alice B-PER\nvisited O\nparis B-LOC\n\nbob B-PER\nmet O\ncarol B-PER\n"
PAIRS_CSV = b"source,target\ngood day,gut tag\nbad day,schlecht tag\n"


def pretrain_body(dataset_id: int, model, **params) -> dict:
    return {"kind": "pretrain", "params": {"base_model": str(model), "train_dataset_id": dataset_id, **params}}


def _upload(client, auth, content: bytes, filename: str, **form) -> dict:
    response = upload(client, auth, content, filename, **form)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


@pytest.fixture
def language_model(app) -> str:
    """A registered pre-trained language model (what a pretrain job registers)."""
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        model = register_model(session, tenant_id=tenant.id, name="domain-lm", task="language-modeling",
                               base_model="tiny", label_names=[], path="/nowhere")
        return f"{model.name}:{model.version}"


def test_a_txt_upload_is_unlabelled_text_one_row_per_paragraph(client, auth):
    dataset = _upload(client, auth, TEXT_FILE, "corpus.txt")
    assert (dataset["format"], dataset["task"], dataset["row_count"]) == ("text", None, 3)
    assert dataset["columns"] == ["text"] and dataset["columns_by_role"] == {"text": "text"}
    assert dataset["label_column"] is None


def test_pretrain_is_queued_for_language_modeling_with_its_defaults(app, client, auth, unlabelled, tiny_model):
    job = submit(client, auth, pretrain_body(unlabelled["id"], tiny_model, text_column="review", mlm_probability=0.3))

    assert (job["kind"], job["task"], job["queue"], job["status"]) == ("pretrain", "language-modeling", "gpu", "queued")
    assert job["params"]["objective"] == "auto" and job["params"]["mlm_probability"] == 0.3
    assert job["params"]["max_length"] == 128 and job["params"]["validation_fraction"] == 0.1
    with app.extensions["nightshift"].session_factory() as session:
        assert session.scalars(select(OutboxMessage.task_name).where(OutboxMessage.job_id == job["id"])).one() == "jobs.pretrain"
    listed = client.get(f"{API}/jobs?kind=pretrain&task=language-modeling", headers=auth).get_json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_pretrain_reads_the_text_of_labelled_data_too(client, auth, labelled, tiny_model):
    assert submit(client, auth, pretrain_body(labelled["id"], tiny_model))["task"] == "language-modeling"


@pytest.mark.parametrize(("params", "field", "says"), [
    ({"objective": "span"}, "params.objective", "'auto', 'mlm' or 'clm'"),
    ({"mlm_probability": 1.0}, "params.mlm_probability", "less than 1"),
])
def test_bad_pretrain_parameters_are_422(client, auth, unlabelled, tiny_model, params, field, says):
    body = pretrain_body(unlabelled["id"], tiny_model, **params)
    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "invalid_input", field, says)
    assert [f["field"] for f in error["details"]["fields"]] == [field]


def test_pretrain_refuses_freeze_base(client, auth, unlabelled, tiny_model):
    body = pretrain_body(unlabelled["id"], tiny_model, freeze_base=True)
    assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "freeze_base_not_for_pretrain",
                 "params.freeze_base", "drop freeze_base")


@pytest.mark.parametrize(("params", "code", "says"), [
    ({"early_stopping_patience": 2, "eval_steps": 5, "early_stopping_metric": "f1_macro"}, "unknown_metric",
     "params.early_stopping_metric: early_stopping_metric 'f1_macro' is not reported by this task's evaluation "
     "during training; choose one of loss"),
    ({"freeze_layers": 9}, "too_many_frozen_layers", "params.freeze_layers: 9 is more than the 2 transformer layers"),
])
def test_pretrain_training_control_is_checked_at_submit(app, client, auth, unlabelled, tiny_model, params, code, says):
    body = pretrain_body(unlabelled["id"], tiny_model, **params)
    assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, code, says)
    _no_job_was_created(app)


def test_pretrain_stops_early_on_the_held_out_loss(client, auth, unlabelled, tiny_model):
    body = pretrain_body(unlabelled["id"], tiny_model, early_stopping_patience=2, eval_steps=5)
    assert client.post(f"{API}/jobs", headers=auth, json=body).status_code == 202


def test_pretrain_names_only_language_modeling_as_its_task(client, auth, unlabelled, tiny_model):
    body = pretrain_body(unlabelled["id"], tiny_model) | {"task": "text-classification"}
    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "invalid_input", "'language-modeling'")
    assert [f["field"] for f in error["details"]["fields"]] == ["task"]


def test_pretrain_on_data_without_text_is_422_naming_the_columns(client, auth, tiny_model):
    pairs = _upload(client, auth, PAIRS_CSV, "pairs.csv", task="translation")
    assert_error(client.post(f"{API}/jobs", headers=auth, json=pretrain_body(pairs["id"], tiny_model)), 422,
                 "missing_column", f"dataset {pairs['id']} holds translation data without a text column",
                 "params.text_column", "['source', 'target']")
    assert submit(client, auth, pretrain_body(pairs["id"], tiny_model, text_column="source"))["kind"] == "pretrain"
    assert_error(client.post(f"{API}/jobs", headers=auth, json=pretrain_body(pairs["id"], tiny_model, text_column="body")),
                 422, "missing_column", "has no column 'body'")


def test_pretrain_on_one_document_without_validation_data_is_422(client, auth, tiny_model):
    one = _upload(client, auth, b"just one line\n", "one.txt")
    assert_error(client.post(f"{API}/jobs", headers=auth, json=pretrain_body(one["id"], tiny_model)), 422,
                 "too_few_documents", "holds one document", "params.validation_dataset_id")
    more = _upload(client, auth, TEXT_FILE, "more.txt")
    body = pretrain_body(one["id"], tiny_model, validation_dataset_id=more["id"])
    assert submit(client, auth, body)["kind"] == "pretrain"


def test_pretrain_with_an_unknown_base_model_is_422(client, auth, unlabelled):
    assert_error(client.post(f"{API}/jobs", headers=auth, json=pretrain_body(unlabelled["id"], "no-such-model")), 422,
                 "unknown_model", "params.base_model")


def test_a_fine_tune_of_any_task_starts_from_a_pretrained_language_model(client, auth, labelled, language_model):
    job = submit(client, auth, finetune_body(labelled["id"], language_model))
    assert (job["task"], job["params"]["base_model"]) == ("text-classification", language_model)
    tagged = _upload(client, auth, TAGGED_CONLL, "tags.conll", task="token-classification")
    job = submit(client, auth, finetune_body(tagged["id"], language_model) | {"task": "token-classification"})
    assert (job["task"], job["params"]["base_model"]) == ("token-classification", language_model)


@pytest.mark.parametrize("make_body", [evaluate_body, batch_body], ids=lambda f: f.__name__)
def test_evaluate_and_batch_inference_refuse_a_language_model_without_a_task_head(
        client, auth, labelled, language_model, make_body):
    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=make_body(labelled["id"], language_model)), 422,
                         "no_task_head", f"model {language_model} is a pre-trained language model without a "
                         "text-classification head", f"base_model={language_model}")
    assert error["details"]["field"] == "params.model"

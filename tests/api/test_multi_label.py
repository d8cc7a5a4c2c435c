"""Multi-label data through the API: label sets as JSON lists or separated text, what is refused and why."""

from __future__ import annotations

import html
import json
import re

import pytest

from tests.api.helpers import API, assert_error, dataset_ids, evaluate_body, files_under, finetune_body, submit, upload

TASK = "multi-label-classification"
JSON_LISTS_CSV = (b'text,labels\nGreat food and a nice room,"[""food"", ""room""]"\n'
                  b'Nothing to say,[]\nThe food,"[""food""]"\n')
SEPARATED_CSV = b"review,topics\nGreat food and a nice room,food|room\nNothing to say,\nThe food,food|\n"


def _jsonl(*rows: dict) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _stored(client, auth, content: bytes, filename: str = "topics.csv", **form: str) -> dict:
    response = upload(client, auth, content, filename, task=TASK, **form)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def test_json_lists_in_csv_cells_become_label_sets(client, auth):
    dataset = _stored(client, auth, JSON_LISTS_CSV)

    assert dataset["task"] == TASK and dataset["row_count"] == 3
    assert dataset["columns_by_role"] == {"text": "text", "label": "labels"} and dataset["label_column"] == "labels"
    stats = dataset["stats"]
    assert stats["label_distribution"] == {"food": 2, "room": 1}
    assert stats["num_labels"] == 2 and stats["rows_without_labels"] == 1 and stats["labels_per_row"]["max"] == 2


def test_separated_labels_with_mapped_columns_become_the_same_label_sets(client, auth, data_dir):
    dataset = _stored(client, auth, SEPARATED_CSV, text_column="review", label_column="topics", label_separator="|")

    assert dataset["columns_by_role"] == {"text": "review", "label": "topics"}
    assert dataset["stats"]["label_distribution"] == {"food": 2, "room": 1}
    [stored] = [data_dir / path for path in files_under(data_dir) if path.startswith("datasets/")]
    assert [json.loads(line)["topics"] for line in stored.read_text().splitlines()] == [["food", "room"], [], ["food"]]


def test_json_lines_lists_need_no_separator(client, auth):
    dataset = _stored(client, auth, _jsonl({"text": "a", "labels": ["x", "y"]}, {"text": "b", "labels": ["y"]}),
                      "topics.jsonl")

    assert dataset["stats"]["label_distribution"] == {"y": 2, "x": 1}


@pytest.mark.parametrize(("content", "form", "code", "mentions"), [
    (b'text,labels\nok,[]\nbroken,"[""food"", "\n', {}, "bad_labels",
     ["Row 2 (line 3)", "column 'labels'", "not a valid JSON list", "label_separator"]),
    (b"text,labels\nok,[]\nplain,food|room\n", {}, "bad_labels",
     ["Row 2", "'food|room'", "not a JSON list", "label_separator=..."]),
    (_jsonl({"text": "a", "labels": ["x", 3.5, ""]}), {}, "bad_labels", ["Row 1", "position 3"]),
    (b"text,tags\nok,[]\n", {}, "missing_column", ["'labels'", "label_column", "text, tags"]),
    (b"text,labels\nok,a|b\n", {"label_separator": "|" * 11}, "invalid_input", ["label_separator", "10"]),
], ids=["malformed-json-list", "separated-without-separator", "blank-label", "labels-column-misnamed",
        "separator-too-long"])
def test_bad_label_sets_are_422_saying_what_to_fix(client, auth, data_dir, labelled, content, form, code, mentions):
    before = dataset_ids(client, auth), files_under(data_dir)

    response = upload(client, auth, content, "bad.jsonl" if content.startswith(b"{") else "bad.csv", task=TASK, **form)

    assert_error(response, 422, code, *mentions)
    assert (dataset_ids(client, auth), files_under(data_dir)) == before


def test_a_separator_without_the_task_is_refused_naming_it(client, auth):
    response = upload(client, auth, SEPARATED_CSV, "d.csv", text_column="review", label_column="topics",
                      label_separator="|")

    error = assert_error(response, 422, "option_not_for_task", "label_separator applies to task=" + TASK,
                         "this upload is task=text-classification")
    assert error["details"] == {"field": "label_separator", "task": TASK}


def test_a_list_label_for_text_classification_points_to_multi_label(client, auth):
    response = upload(client, auth, _jsonl({"text": "a", "label": ["x", "y"]}), "d.jsonl", label_column="label")

    assert_error(response, 422, "bad_label", "Row 1", "one label per row", "task=" + TASK)


# ---- jobs ------------------------------------------------------------------------------------------


def test_finetune_and_evaluate_submissions_take_a_threshold(client, auth, tiny_model):
    dataset = _stored(client, auth, JSON_LISTS_CSV)

    job = submit(client, auth, finetune_body(dataset["id"], tiny_model) | {"task": TASK})
    assert job["task"] == TASK and job["params"]["threshold"] == "tune"
    job = submit(client, auth, finetune_body(dataset["id"], tiny_model, threshold=0.3) | {"task": TASK})
    assert job["params"]["threshold"] == 0.3
    job = submit(client, auth, evaluate_body(dataset["id"], tiny_model, threshold=0.7) | {"task": TASK})
    assert job["params"]["threshold"] == 0.7


@pytest.mark.parametrize(("kind", "threshold"), [("finetune", 1.5), ("finetune", "best"), ("evaluate", "tune"),
                                                 ("batch_inference", 0)])
def test_a_threshold_outside_zero_to_one_is_refused(client, auth, tiny_model, kind, threshold):
    body = {"kind": kind, "task": TASK, "params": {"threshold": threshold, "model": str(tiny_model), "dataset_id": 1}}
    if kind == "finetune":
        body["params"] = {"threshold": threshold, "base_model": str(tiny_model), "train_dataset_id": 1}

    response = client.post(f"{API}/jobs", headers=auth, json=body)

    assert response.status_code == 422 and "threshold" in response.get_data(as_text=True)


def test_a_finetune_on_data_without_any_label_is_refused(client, auth, tiny_model):
    dataset = _stored(client, auth, b"text,labels\nnothing,[]\nat all,[]\n")

    response = client.post(f"{API}/jobs", headers=auth, json=finetune_body(dataset["id"], tiny_model) | {"task": TASK})

    assert_error(response, 422, "no_labels", f"dataset {dataset['id']}'s label column 'labels' holds no label in any row")


def test_validation_labels_the_train_data_lacks_are_refused(client, auth, tiny_model):
    train = _stored(client, auth, JSON_LISTS_CSV)
    validation = _stored(client, auth, b'text,labels\nA drink,"[""drinks"", ""food""]"\n')
    body = finetune_body(train["id"], tiny_model, validation_dataset_id=validation["id"]) | {"task": TASK}

    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "unknown_labels", "('drinks')")
    assert error["details"]["unknown"] == ["drinks"]


def test_single_label_data_and_multi_label_jobs_do_not_mix(client, auth, labelled, tiny_model):
    multi = _stored(client, auth, JSON_LISTS_CSV)

    assert_error(client.post(f"{API}/jobs", headers=auth, json=finetune_body(labelled["id"], tiny_model) | {"task": TASK}),
                 422, "wrong_task", "holds text-classification data; this job is " + TASK)
    assert_error(client.post(f"{API}/jobs", headers=auth, json=evaluate_body(multi["id"], tiny_model)),
                 422, "wrong_task", f"holds {TASK} data; this job is text-classification")


# ---- dashboard -------------------------------------------------------------------------------------


def test_the_dashboard_uploads_separated_labels_and_charts_labels_per_row(client, auth):
    from tests.api.test_dashboard import log_in
    from tests.api.test_dashboard_pages import post_upload

    csrf = log_in(client, auth)
    assert 'name="label_separator"' in client.get("/datasets").text
    response = post_upload(client, csrf, SEPARATED_CSV, "topics.csv", task=TASK, text_column="review",
                           label_column="topics", label_separator="|")
    assert response.status_code == 302, response.text
    page = html.unescape(client.get(response.headers["Location"]).text)
    charts = json.loads(re.search(r'id="dataset-chart-data">(.*?)</script>', page, re.DOTALL).group(1))
    assert charts["counts"]["Labels"] == {"food": 2, "room": 1} and "labels per row" in charts["lengths"]

    refused = post_upload(client, csrf, b'text,labels\nbad,"[""a"",\n', "bad.csv", task=TASK)
    assert refused.status_code == 422 and "Row 1" in html.unescape(refused.text)


def test_a_multi_label_evaluation_shows_per_label_metrics_without_a_confusion_matrix(app, client, auth):
    from sqlalchemy import update

    from db.base import utcnow
    from db.models import Job
    from db.services.jobs import create_job
    from db.services.registry import record_evaluation, register_model
    from db.services.tenants import get_or_create_tenant
    from tests.api.test_dashboard import log_in
    from worker.ml.metrics import multi_label_metrics

    dataset = _stored(client, auth, JSON_LISTS_CSV)
    metrics = multi_label_metrics([["food", "room"], [], ["food"]], [["food"], [], ["food", "room"]], ["food", "room"])
    metrics |= {"rows": 3, "threshold": 0.35, "threshold_source": "model"}
    with app.extensions["nightshift"].session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        model = register_model(session, tenant_id=tenant.id, name="topics", task=TASK, base_model="tiny",
                               label_names=["food", "room"], path="/nowhere", metrics={"f1_micro": 0.75})
        evaluation = record_evaluation(session, tenant_id=tenant.id, model_artifact_id=model.id, model_ref="topics:1",
                                       dataset_id=dataset["id"], metrics=metrics)
        job, _ = create_job(session, tenant_id=tenant.id, kind="evaluate", task=TASK,
                            params={"model": "topics", "dataset_id": dataset["id"]}, queue="cpu")
        session.execute(update(Job).where(Job.id == job.id).values(
            status="succeeded", result={"evaluation_id": evaluation.id}, finished_at=utcnow()))
        job_id = job.id
    log_in(client, auth)

    page = client.get(f"/jobs/{job_id}").text

    assert "<dt>subset_accuracy</dt><dd>0.3333</dd>" in page and "<dt>threshold</dt><dd>0.3500</dd>" in page
    assert re.search(r"<tr><td>room</td><td>0.000</td><td>0.000</td>\s*<td>0.000</td><td>1</td></tr>", page)
    assert 'data-testid="confusion-matrix"' not in page
    compare = html.unescape(client.get(f"/models/compare?a=topics&b=topics&dataset={dataset['id']}").text)
    assert re.search(r'<tr data-metric="f1_micro">', compare) and 'data-class="food"' in compare


def test_the_new_job_form_takes_tune_or_a_number_as_threshold(client, auth, tiny_model):
    from tests.api.test_dashboard import log_in

    dataset = _stored(client, auth, JSON_LISTS_CSV)
    csrf = log_in(client, auth)
    page = client.get(f"/jobs/new?kind=finetune&task={TASK}").text
    assert re.search(r'<input id="f-threshold" name="threshold" value="tune"', page)
    for threshold, stored in (("tune", "tune"), ("0.35", 0.35)):
        form = {"csrf_token": csrf, "kind": "finetune", "task": TASK, "action": "submit", "base_model": str(tiny_model),
                "train_dataset_id": str(dataset["id"]), "threshold": threshold, "precision": "auto"}
        response = client.post("/jobs/new", data=form)
        assert response.status_code == 302, response.text
        job = client.get(f"{API}/jobs/{response.headers['Location'].rsplit('/', 1)[1]}", headers=auth).get_json()
        assert job["task"] == TASK and job["params"]["threshold"] == stored

"""Job submission, validation, idempotency, listing, cancellation, events and output."""

from __future__ import annotations

import json

import pytest

from tests.api.helpers import API, assert_error, batch_body, evaluate_body, finetune_body, submit


def _job_ids(client, auth, query: str = "") -> list[int]:
    response = client.get(f"{API}/jobs{query}", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return [job["id"] for job in response.get_json()["items"]]


@pytest.mark.parametrize("make_body", [finetune_body, evaluate_body, batch_body], ids=lambda f: f.__name__)
def test_submit_queues_the_job_and_sends_its_message(client, auth, labelled, tiny_model, queue_length, make_body):
    body = make_body(labelled["id"], tiny_model)
    waiting = queue_length("gpu")

    job = submit(client, auth, body)

    assert job["status"] == "queued"
    assert job["kind"] == body["kind"]
    assert job["queue"] == "gpu"
    assert (job["attempts"], job["cancel_requested"], job["error"]) == (0, False, None)
    assert job["progress"]["fraction"] == 0.0
    assert queue_length(job["queue"]) == waiting + 1
    assert client.get(f"{API}/jobs/{job['id']}", headers=auth).get_json() == job


def test_a_queued_job_shows_its_place_in_its_queue_by_priority_then_age(client, auth, labelled, tiny_model):
    jobs = [submit(client, auth, {**evaluate_body(labelled["id"], tiny_model), "priority": p}) for p in (5, 9, 5, 1)]
    other_kind = submit(client, auth, finetune_body(labelled["id"], tiny_model))

    places = [client.get(f"{API}/jobs/{job['id']}", headers=auth).get_json()["queue_position"] for job in jobs]

    assert places == [2, 1, 3, 4] and [job["queue_position"] for job in jobs] == [1, 1, 3, 4]  # as submitted
    assert other_kind["queue_position"] == 1  # each kind is its own line (its own Celery task)
    client.post(f"{API}/jobs/{jobs[1]['id']}/cancel", headers=auth)
    assert client.get(f"{API}/jobs/{jobs[3]['id']}", headers=auth).get_json()["queue_position"] == 3
    assert client.get(f"{API}/jobs/{jobs[1]['id']}", headers=auth).get_json()["queue_position"] is None


def test_submit_fills_in_default_hyperparameters(client, auth, labelled, tiny_model):
    job = submit(client, auth, finetune_body(labelled["id"], tiny_model, epochs=2, learning_rate=1e-4))

    assert job["params"]["epochs"] == 2
    assert job["params"]["learning_rate"] == 1e-4
    assert job["params"]["batch_size"] == 16
    assert job["params"]["base_model"] == str(tiny_model)
    assert (job["priority"], job["max_attempts"], job["task"]) == (5, 3, "text-classification")


def test_batch_inference_on_unlabelled_data_with_a_text_column(client, auth, unlabelled, tiny_model):
    job = submit(client, auth, batch_body(unlabelled["id"], tiny_model, text_column="review"))
    assert job["params"]["text_column"] == "review"


# -- idempotency --------------------------------------------------------------------------------
def test_same_idempotency_key_and_body_returns_the_same_job(client, auth, labelled, tiny_model, queue_length):
    headers = {**auth, "Idempotency-Key": "nightly-eval-42"}
    body = evaluate_body(labelled["id"], tiny_model)
    first = client.post(f"{API}/jobs", headers=headers, json=body)
    waiting = queue_length("gpu")

    again = client.post(f"{API}/jobs", headers=headers, json=body)

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.get_json()["idempotency_key"] == "nightly-eval-42"
    assert queue_length("gpu") == waiting
    assert _job_ids(client, auth) == [first.get_json()["id"]]


@pytest.mark.parametrize("change", [{"params": {"batch_size": 8}}, {"priority": 9}, {"max_attempts": 1}],
                         ids=["params", "priority", "max_attempts"])
def test_same_idempotency_key_with_another_body_is_409(client, auth, labelled, tiny_model, change):
    headers = {**auth, "Idempotency-Key": "k-1"}
    body = evaluate_body(labelled["id"], tiny_model)
    first = submit(client, headers, body)
    changed = {**body, **change, "params": {**body["params"], **change.get("params", {})}}

    response = client.post(f"{API}/jobs", headers=headers, json=changed)

    error = assert_error(response, 409, "idempotency_key_reused", "Idempotency-Key")
    assert error["details"] == {"job_id": first["id"]}
    assert _job_ids(client, auth) == [first["id"]]


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_bad_idempotency_key_is_422(client, auth, labelled, tiny_model, key):
    response = client.post(f"{API}/jobs", headers={**auth, "Idempotency-Key": key},
                           json=evaluate_body(labelled["id"], tiny_model))
    assert_error(response, 422, "bad_idempotency_key", "Idempotency-Key")
    assert _job_ids(client, auth) == []


# -- refused submissions ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"learning_rate": -1}, "params.learning_rate", "greater than 0"),
        ({"batch_size": 0}, "params.batch_size", "greater than or equal to 1"),
        ({"epochs": 1000}, "params.epochs", "less than or equal to 100"),
        ({"momentum": 0.9}, "params.momentum", "Extra inputs are not permitted"),
        ({"precision": "fp8"}, "params.precision", "'fp16'"),
        ({"train_dataset_id": "first"}, "params.train_dataset_id", "valid integer"),
    ],
)
def test_invalid_hyperparameter_is_422_naming_the_field(client, auth, labelled, tiny_model, params, field, says):
    response = client.post(f"{API}/jobs", headers=auth, json=finetune_body(labelled["id"], tiny_model, **params))

    error = assert_error(response, 422, "invalid_input", field, says)
    [reported] = error["details"]["fields"]
    assert reported["field"].endswith(field)
    assert _job_ids(client, auth) == []


@pytest.mark.parametrize(
    ("body", "field", "mentions"),
    [
        ({"kind": "distill", "params": {}}, "kind", ["kind: ", "'pretrain'", "finetune", "batch_inference"]),
        ({"params": {}}, "kind", ["kind: ", "'kind'"]),
        ({"kind": "evaluate"}, "params", ["params", "Field required"]),
        ({"kind": "evaluate", "params": {"model": "m", "dataset_id": 1}, "priority": 10}, "priority",
         ["priority"]),
        ({"kind": "evaluate", "params": {"model": "m", "dataset_id": 1}, "colour": "red"}, "colour",
         ["colour"]),
    ],
    ids=["unknown-kind", "no-kind", "no-params", "priority-out-of-range", "unknown-top-level-field"],
)
def test_invalid_submission_is_422(client, auth, body, field, mentions):
    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "invalid_input", *mentions)
    assert [f["field"] for f in error["details"]["fields"]] == [field]
    assert _job_ids(client, auth) == []


@pytest.mark.parametrize(
    "data", [b"not json", b'{"kind": "evaluate",', b"[1, 2]", b'"a string"', b""], ids=repr
)
def test_non_json_body_is_422(client, auth, data):
    response = client.post(f"{API}/jobs", headers={**auth, "Content-Type": "application/json"}, data=data)
    assert_error(response, 422, "invalid_json", "JSON object")


def test_form_body_is_422(client, auth):
    assert_error(client.post(f"{API}/jobs", headers=auth, data={"kind": "evaluate"}), 422, "invalid_json")


@pytest.mark.parametrize("dataset_id", [999, 2**70])
def test_unknown_dataset_is_422(client, auth, tiny_model, dataset_id):
    response = client.post(f"{API}/jobs", headers=auth, json=finetune_body(dataset_id, tiny_model))
    error = assert_error(response, 422, "dataset_not_found", "params.train_dataset_id", str(dataset_id))
    assert error["details"] == {"field": "params.train_dataset_id"}


def test_deleted_dataset_is_422(client, auth, labelled, tiny_model):
    assert client.delete(f"{API}/datasets/{labelled['id']}", headers=auth).status_code == 204
    response = client.post(f"{API}/jobs", headers=auth, json=evaluate_body(labelled["id"], tiny_model))
    assert_error(response, 422, "dataset_not_found", "params.dataset_id")


def test_unknown_validation_dataset_is_422(client, auth, labelled, tiny_model):
    body = finetune_body(labelled["id"], tiny_model, validation_dataset_id=12345)
    assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "dataset_not_found",
                 "params.validation_dataset_id")


@pytest.mark.parametrize(("make_body", "field"), [(finetune_body, "params.train_dataset_id"),
                                                  (evaluate_body, "params.dataset_id")])
def test_unlabelled_dataset_is_422_for_training_and_evaluation(client, auth, unlabelled, tiny_model, make_body,
                                                                field):
    response = client.post(f"{API}/jobs", headers=auth, json=make_body(unlabelled["id"], tiny_model))
    assert_error(response, 422, "dataset_unlabelled", field, "label_column")
    assert _job_ids(client, auth) == []


def test_batch_with_a_missing_text_column_is_422(client, auth, labelled, tiny_model):
    response = client.post(f"{API}/jobs", headers=auth, json=batch_body(labelled["id"], tiny_model, text_column="body"))
    error = assert_error(response, 422, "missing_column", "'body'", "review")
    assert error["details"] == {"field": "params.text_column", "columns": ["review", "sentiment"]}


@pytest.mark.parametrize("ref", ["no/such-model", "no-such-model:3", "sentiment:²", f"sentiment:{2**70}"])
def test_unknown_model_is_422(client, auth, labelled, ref):
    response = client.post(f"{API}/jobs", headers=auth, json=evaluate_body(labelled["id"], ref))
    error = assert_error(response, 422, "unknown_model", "params.model", f"'{ref}'")
    assert error["details"] == {"field": "params.model"}


def test_model_dir_without_config_is_422(client, auth, labelled, tmp_path):
    response = client.post(f"{API}/jobs", headers=auth, json=finetune_body(labelled["id"], tmp_path))
    assert_error(response, 422, "unknown_model", "params.base_model", "config.json")


def test_model_that_needs_remote_code_is_422(client, auth, labelled, tmp_path):
    model_dir = tmp_path / "custom-model"
    model_dir.mkdir()
    config = {"model_type": "custom", "auto_map": {"AutoModelForSequenceClassification": "modeling.Custom"}}
    (model_dir / "config.json").write_text(json.dumps(config))

    response = client.post(f"{API}/jobs", headers=auth, json=finetune_body(labelled["id"], model_dir))

    assert_error(response, 422, "trust_remote_code_required", "params.base_model", "auto_map")
    assert _job_ids(client, auth) == []


# -- listing, cancelling, events, output ---------------------------------------------------------
@pytest.fixture
def three_jobs(client, auth, labelled, unlabelled, tiny_model) -> list[dict]:
    """A finetune, an evaluate (cancelled) and a batch_inference job, in that order."""
    jobs = [
        submit(client, auth, finetune_body(labelled["id"], tiny_model)),
        submit(client, auth, evaluate_body(labelled["id"], tiny_model)),
        submit(client, auth, batch_body(unlabelled["id"], tiny_model)),
    ]
    assert client.post(f"{API}/jobs/{jobs[1]['id']}/cancel", headers=auth).status_code == 202
    return jobs


def test_list_filters_by_status_and_kind(client, auth, three_jobs):
    finetune, evaluate, batch = (job["id"] for job in three_jobs)
    assert _job_ids(client, auth) == [batch, evaluate, finetune]
    assert _job_ids(client, auth, "?status=cancelled") == [evaluate]
    assert _job_ids(client, auth, "?status=queued") == [batch, finetune]
    assert _job_ids(client, auth, "?kind=finetune") == [finetune]
    assert _job_ids(client, auth, "?kind=evaluate&status=queued") == []
    assert _job_ids(client, auth, "?status=succeeded") == []


def test_list_filters_by_task_model_and_text(client, auth, labelled, unlabelled, tiny_model):
    finetune = submit(client, auth, finetune_body(labelled["id"], tiny_model, model_name="spam-filter"))["id"]
    batch = submit(client, auth, batch_body(unlabelled["id"], tiny_model))["id"]
    assert _job_ids(client, auth, "?task=text-classification") == [batch, finetune]
    assert _job_ids(client, auth, "?task=translation") == []
    assert _job_ids(client, auth, "?model=spam-filter") == [finetune]
    assert _job_ids(client, auth, f"?model={tiny_model}") == [batch, finetune]  # base_model and model
    assert _job_ids(client, auth, "?q=SPAM-F") == [finetune]  # any case
    assert _job_ids(client, auth, "?q=spam_filter") == []  # _ and % are literal characters
    assert _job_ids(client, auth, "?q=100%25") == []
    assert_error(client.get(f"{API}/jobs?task=poetry", headers=auth), 422, "invalid_input", "task")


def test_queue_position_counts_higher_priority_then_older_jobs(app, client, auth, labelled, tiny_model):
    from db.models import Job
    from db.services.jobs import queue_position

    low, high, later_high = (submit(client, auth, evaluate_body(labelled["id"], tiny_model) | {"priority": p})["id"]
                             for p in (2, 8, 8))
    with app.extensions["nightshift"].session_factory() as session:
        positions = [queue_position(session, session.get(Job, job_id)) for job_id in (high, later_high, low)]
    assert positions == [1, 2, 3]
    client.post(f"{API}/jobs/{high}/cancel", headers=auth)
    with app.extensions["nightshift"].session_factory() as session:
        assert [queue_position(session, session.get(Job, j)) for j in (high, later_high, low)] == [None, 1, 2]


def test_list_pages_newest_first(client, auth, three_jobs):
    first = client.get(f"{API}/jobs?limit=2", headers=auth).get_json()
    second = client.get(f"{API}/jobs?limit=2&cursor={first['next_cursor']}", headers=auth).get_json()

    assert [j["id"] for j in first["items"] + second["items"]] == sorted((j["id"] for j in three_jobs), reverse=True)
    assert first["next_cursor"] == first["items"][-1]["id"]
    assert second["next_cursor"] is None


@pytest.mark.parametrize(("query", "field"), [("status=done", "status"), ("kind=train", "kind"), ("limit=0", "limit"),
                                              ("cursor=-5", "cursor"), (f"cursor={2**70}", "cursor"), ("page=2", "page")])
def test_list_refuses_a_bad_query(client, auth, query, field):
    assert_error(client.get(f"{API}/jobs?{query}", headers=auth), 422, "invalid_input", field)


def test_cancel_a_queued_job_then_again(client, auth, queued_job):
    url = f"{API}/jobs/{queued_job['id']}/cancel"

    response = client.post(url, headers=auth)

    assert response.status_code == 202
    job = response.get_json()
    assert (job["status"], job["cancel_requested"]) == ("cancelled", True)
    assert job["finished_at"] is not None
    assert client.get(f"{API}/jobs/{queued_job['id']}", headers=auth).get_json()["status"] == "cancelled"
    assert_error(client.post(url, headers=auth), 409, "job_finished", "cancelled")


def test_retry_queues_an_ended_job_again_as_a_new_job(client, auth, queued_job, queue_length):
    url = f"{API}/jobs/{queued_job['id']}/retry"
    assert_error(client.post(url, headers=auth), 409, "job_not_ended", "queued", "cancel it first")
    client.post(f"{API}/jobs/{queued_job['id']}/cancel", headers=auth)
    before = queue_length(queued_job["queue"])

    response = client.post(url, headers=auth)

    assert response.status_code == 202
    again = response.get_json()
    assert again["id"] != queued_job["id"] and again["status"] == "queued"
    assert {k: again[k] for k in ("kind", "task", "params", "priority")} == {
        k: queued_job[k] for k in ("kind", "task", "params", "priority")}
    events = client.get(f"{API}/jobs/{again['id']}/events", headers=auth).get_json()["items"]
    assert [e["message"] for e in events if e["type"] == "log"] == [f"retry of job {queued_job['id']}"]
    assert queue_length(queued_job["queue"]) == before + 1  # published like a new submission


def test_retry_of_a_job_whose_dataset_is_gone_is_refused_like_a_new_submission(client, auth, queued_job):
    client.post(f"{API}/jobs/{queued_job['id']}/cancel", headers=auth)
    dataset_id = queued_job["params"]["dataset_id"]
    assert client.delete(f"{API}/datasets/{dataset_id}", headers=auth).status_code == 204
    response = client.post(f"{API}/jobs/{queued_job['id']}/retry", headers=auth)
    assert_error(response, 422, "dataset_not_found", "params.dataset_id")


def test_events_show_queued_and_cancelled_and_page_with_after(client, auth, queued_job):
    url = f"{API}/jobs/{queued_job['id']}/events"
    client.post(f"{API}/jobs/{queued_job['id']}/cancel", headers=auth)

    body = client.get(url, headers=auth).get_json()

    assert [(e["type"], e["data"]["status"]) for e in body["items"]] == [("status", "queued"), ("status", "cancelled")]
    first, last = (e["id"] for e in body["items"])
    assert body["next_cursor"] == last
    newer = client.get(f"{url}?after={first}", headers=auth).get_json()
    assert [e["id"] for e in newer["items"]] == [last]
    assert client.get(f"{url}?after={last}", headers=auth).get_json() == {"items": [], "next_cursor": last}
    assert client.get(f"{url}?type=log", headers=auth).get_json()["items"] == []
    assert [e["id"] for e in client.get(f"{url}?limit=1", headers=auth).get_json()["items"]] == [first]
    assert_error(client.get(f"{url}?after=-1", headers=auth), 422, "invalid_input", "after")


def test_unknown_job_is_404(client, auth):
    for url in (f"{API}/jobs/999", f"{API}/jobs/999/events", f"{API}/jobs/999/output", f"{API}/jobs/{2**70}"):
        assert_error(client.get(url, headers=auth), 404, "job_not_found")
    assert_error(client.post(f"{API}/jobs/999/cancel", headers=auth), 404, "job_not_found", "999")
    assert_error(client.post(f"{API}/jobs/999/retry", headers=auth), 404, "job_not_found", "999")


def test_output_of_an_unfinished_job_is_409(client, auth, three_jobs):
    finetune, _evaluate, batch = three_jobs
    assert_error(client.get(f"{API}/jobs/{batch['id']}/output", headers=auth), 409, "not_ready", "queued")
    assert_error(client.get(f"{API}/jobs/{finetune['id']}/output", headers=auth), 409, "no_output", "finetune")

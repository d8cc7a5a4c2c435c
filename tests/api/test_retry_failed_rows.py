"""POST /jobs/{id}/retry with only_failed_rows: what it queues, and each refusal with what to fix.

The worker's side (reading just the failed rows, merging the output) is run for real in
tests/e2e/test_retry_failed_rows.py; here the earlier job's end is written to the database as a
worker would leave it.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from db.models import Job
from tests.api.helpers import API, assert_error, batch_body, submit, upload
from tests.api.test_dashboard import csrf_of, log_in
from tests.conftest import make_token

THREE_ROWS_CSV = b"review\nLovely\nAwful\nFine\n"


@pytest.fixture
def ended(app, client, auth, unlabelled, tiny_model, data_dir):
    """Return a function that ends a new batch job over `unlabelled` (2 rows) as given; the job, re-read."""

    def end(status: str = "succeeded", failed: int = 1, errors_file: bool = True) -> dict:
        job = submit(client, auth, batch_body(unlabelled["id"], tiny_model))
        out = data_dir / "outputs" / f"job-{job['id']}"
        out.mkdir(parents=True)
        (out / "predictions.jsonl").write_text('{"row": 0, "label": "pos"}\n' * (2 - failed))
        if errors_file:
            (out / "errors.jsonl").write_text('{"row": 1, "error": "empty text"}\n' * failed)
        with app.extensions["nightshift"].session_factory.begin() as session:
            session.execute(update(Job).where(Job.id == job["id"]).values(
                status=status, output_path=str(out / "predictions.jsonl"),
                result={"rows": 2, "rows_ok": 2 - failed, "rows_failed": failed}))
        return client.get(f"{API}/jobs/{job['id']}", headers=auth).get_json()

    return end


def _job_count(app) -> int:
    with app.extensions["nightshift"].session_factory() as session:
        return session.scalar(select(func.count()).select_from(Job))


def _retry(client, auth, job_id: int, **body):
    return client.post(f"{API}/jobs/{job_id}/retry", headers=auth, json={"only_failed_rows": True, **body})


def test_retry_of_failed_rows_queues_a_job_that_names_the_earlier_one(client, auth, ended, queue_length):
    earlier = ended()
    before = queue_length(earlier["queue"])

    response = _retry(client, auth, earlier["id"], params={"precision": "fp32"})

    assert response.status_code == 202, response.get_data(as_text=True)
    again = response.get_json()
    assert again["id"] != earlier["id"] and again["status"] == "queued"
    assert (again["kind"], again["task"]) == ("batch_inference", "text-classification")
    assert again["params"] == {**earlier["params"], "only_failed_rows_of": earlier["id"], "precision": "fp32"}
    events = client.get(f"{API}/jobs/{again['id']}/events", headers=auth).get_json()["items"]
    logs = [(e["message"], e["data"]) for e in events if e["type"] == "log"]
    assert logs == [(f"retry of the failed rows of job {earlier['id']}",
                     {"retry_of": earlier["id"], "only_failed_rows": True})]
    assert queue_length(earlier["queue"]) == before + 1
    # A plain retry of the retry asks for the same rows again; POST /jobs may name them too.
    plain = client.post(f"{API}/jobs/{again['id']}/retry", headers=auth)
    assert plain.status_code == 409  # the retry is still queued
    direct = submit(client, auth, {"kind": "batch_inference", "params": again["params"]})
    assert direct["params"]["only_failed_rows_of"] == earlier["id"]


@pytest.mark.parametrize(("state", "code", "mentions"), [
    ({"status": "running"}, "job_not_succeeded", ["is running", "wait for it to succeed"]),
    ({"status": "failed"}, "job_not_succeeded", ["is failed", "retry the whole job (without only_failed_rows)"]),
    ({"failed": 0}, "no_failed_rows", ["has no failed rows to retry"]),
    ({"errors_file": False}, "output_missing", ["errors file", "missing from storage", "retry the whole job"]),
])
def test_a_job_without_failed_rows_to_retry_is_409(app, client, auth, ended, state, code, mentions):
    earlier = ended(**state)
    count = _job_count(app)
    error = assert_error(_retry(client, auth, earlier["id"]), 409, code, f"job {earlier['id']}", *mentions)
    assert _job_count(app) == count
    assert error["details"] == ({"status": state["status"]} if "status" in state else {})


def test_only_batch_jobs_have_failed_rows(client, auth, queued_job):
    client.post(f"{API}/jobs/{queued_job['id']}/cancel", headers=auth)
    assert_error(_retry(client, auth, queued_job["id"]), 409, "not_batch_inference",
                 f"job {queued_job['id']} is a evaluate job", "retry the whole job")


def test_another_tenants_job_is_not_found(client, other_auth, ended):
    earlier = ended()
    assert_error(_retry(client, other_auth, earlier["id"]), 404, "job_not_found")
    response = client.post(f"{API}/jobs", headers=other_auth,
                           json={"kind": "batch_inference",
                                 "params": {**earlier["params"], "only_failed_rows_of": earlier["id"]}})
    assert response.status_code == 422  # its dataset is not theirs either; neither is named as found


def test_post_jobs_naming_a_job_it_cannot_read_is_refused_at_the_field(client, auth, ended, queued_job):
    earlier = ended()
    body = {"kind": "batch_inference", "params": {**earlier["params"], "only_failed_rows_of": 999}}
    error = assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "job_not_found",
                         "params.only_failed_rows_of: job 999 not found")
    assert error["details"] == {"field": "params.only_failed_rows_of"}
    body["params"]["only_failed_rows_of"] = queued_job["id"]
    assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 409, "not_batch_inference")
    body["params"]["only_failed_rows_of"] = 2**70
    assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "job_not_found")
    body["params"]["only_failed_rows_of"] = 0
    assert_error(client.post(f"{API}/jobs", headers=auth, json=body), 422, "invalid_input", "only_failed_rows_of")


def test_a_corrected_dataset_must_keep_every_row_in_its_place(app, client, auth, ended):
    earlier = ended()
    longer = upload(client, auth, THREE_ROWS_CSV, "three.csv", text_column="review").get_json()
    error = assert_error(_retry(client, auth, earlier["id"], params={"dataset_id": longer["id"]}), 422,
                         "row_count_mismatch", f"dataset {longer['id']} has 3 rows; job {earlier['id']} ran over 2",
                         "keep every row in its place")
    assert error["details"] == {"field": "params.dataset_id", "rows": 3, "job_rows": 2}


def test_changed_parameters_are_checked_like_a_new_submission(client, auth, ended):
    earlier = ended()
    assert_error(_retry(client, auth, earlier["id"], params={"epochs": 3}), 422, "invalid_input", "epochs")
    assert_error(_retry(client, auth, earlier["id"], params={"model": "no-such-model"}), 422, "unknown_model")
    assert_error(_retry(client, auth, earlier["id"], params={"text_column": "nope"}), 422, "missing_column", "nope")
    assert_error(client.post(f"{API}/jobs/{earlier['id']}/retry", headers=auth, json={"only_failed_rows": "maybe"}),
                 422, "invalid_input", "only_failed_rows")
    assert_error(client.post(f"{API}/jobs/{earlier['id']}/retry", headers=auth, json=[1]), 422, "invalid_json")


def test_a_plain_retry_may_change_parameters_too(client, auth, ended):
    earlier = ended()
    response = client.post(f"{API}/jobs/{earlier['id']}/retry", headers=auth, json={"params": {"max_length": 64}})
    assert response.status_code == 202
    assert response.get_json()["params"] == {**earlier["params"], "max_length": 64}


def test_the_dashboard_offers_retry_failed_rows_to_a_member_only(app, client, auth, ended):
    earlier, clean = ended(), ended(failed=0)
    csrf = log_in(client, auth)
    assert 'data-testid="retry-failed-rows"' not in client.get(f"/jobs/{clean['id']}").text
    page = client.get(f"/jobs/{earlier['id']}").text
    assert 'data-testid="retry-failed-rows"' in page and "1 failed" in page

    response = client.post(f"/jobs/{earlier['id']}/retry", data={"csrf_token": csrf, "only_failed_rows": "1"})

    new_id = int(response.headers["Location"].rsplit("/", 1)[1])
    assert f"queued as a retry of the failed rows of job {earlier['id']}" in client.get(f"/jobs/{new_id}").text
    assert client.get(f"{API}/jobs/{new_id}", headers=auth).get_json()["params"]["only_failed_rows_of"] == earlier["id"]
    refused = client.post(f"/jobs/{clean['id']}/retry", data={"csrf_token": csrf, "only_failed_rows": "1"})
    assert "has no failed rows to retry" in client.get(refused.headers["Location"]).text
    count = _job_count(app)
    no_csrf = client.post(f"/jobs/{earlier['id']}/retry", data={"only_failed_rows": "1"})
    assert no_csrf.status_code == 400 and "CSRF token is missing" in no_csrf.text and _job_count(app) == count

    viewer = make_token(app, "acme", role="viewer")
    csrf = log_in(client, viewer)
    page = client.get(f"/jobs/{earlier['id']}").text
    assert 'data-testid="retry-failed-rows"' not in page
    assert client.post(f"/jobs/{earlier['id']}/retry",
                       data={"csrf_token": csrf_of(page), "only_failed_rows": "1"}).status_code == 403


def test_a_retrys_page_says_what_it_fixed(app, client, auth, ended):
    earlier = ended()
    again = _retry(client, auth, earlier["id"]).get_json()
    with app.extensions["nightshift"].session_factory.begin() as session:
        session.execute(update(Job).where(Job.id == again["id"]).values(
            status="succeeded", result={"rows": 2, "rows_ok": 2, "rows_failed": 0, "rows_retried": 1,
                                        "rows_fixed": 1, "rows_still_failing": 0}))
    log_in(client, auth)
    page = client.get(f"/jobs/{again['id']}").text
    assert f'the failed rows of <a href="/jobs/{earlier["id"]}">job {earlier["id"]}</a>' in page
    assert "1 retried, 1 fixed, 0 still failing" in page

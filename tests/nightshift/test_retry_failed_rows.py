"""The SDK's `retry(..., only_failed_rows=True)` and `nightshift jobs retry ID --only-failed-rows`."""

from __future__ import annotations

import pytest

from nightshift.client import ApiError
from tests.nightshift.test_cli import one_line_error


@pytest.fixture
def with_failed_rows(sdk, labelled, database, tmp_path) -> dict:
    """A batch job over `labelled` (3 rows) that succeeded with row 1 failed, as a worker leaves it."""
    database.model("sentiment")
    job = sdk.submit("batch_inference", {"model": "sentiment", "dataset_id": labelled["id"]})
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"row": 0, "label": "pos"}\n{"row": 2, "label": "pos"}\n')
    (out / "errors.jsonl").write_text('{"row": 1, "error": "empty text"}\n')
    database.set_job(job["id"], status="succeeded", output_path=str(out / "predictions.jsonl"),
                     result={"rows": 3, "rows_ok": 2, "rows_failed": 1})
    return job


def test_sdk_retries_only_the_failed_rows_with_changed_parameters(sdk, database, with_failed_rows):
    database.model("sentiment-fixed")
    job = with_failed_rows
    again = sdk.retry(job["id"], only_failed_rows=True, params={"model": "sentiment-fixed"})
    assert again["status"] == "queued"
    assert again["params"] == {**job["params"], "model": "sentiment-fixed", "only_failed_rows_of": job["id"]}
    with pytest.raises(ApiError) as refused:
        sdk.retry(again["id"], only_failed_rows=True)
    assert refused.value.status == 409 and refused.value.code == "job_not_succeeded"
    plain = sdk.retry(job["id"])  # no body: the job as it was
    assert plain["params"] == job["params"]


def test_cli_retry_only_failed_rows_with_key_value_changes(run, with_failed_rows):
    job = with_failed_rows
    new = run("jobs", "retry", job["id"], "precision=fp32", "max_length=64", "--only-failed-rows", "--json").json()
    assert new["params"] == {**job["params"], "precision": "fp32", "max_length": 64, "only_failed_rows_of": job["id"]}
    alias = run("retry", job["id"], "--only-failed-rows")
    assert alias.code == 0 and alias.out.startswith(f"job {new['id'] + 1} retries the failed rows of job {job['id']}\n")
    one_line_error(run("jobs", "retry", new["id"], "--only-failed-rows"), "error: job_not_succeeded: job")
    one_line_error(run("jobs", "retry", "--only-failed-rows", job["id"], "epochs=3"), "epochs")
    one_line_error(run("jobs", "retry", job["id"], "oops", "--only-failed-rows"), "'oops' is not key=value")

"""The Python SDK against the real API over HTTP."""

from __future__ import annotations

import json

import pytest

from nightshift import ApiError, Client, ConnectionFailed
from nightshift.client import MultipartStream
from nightshift.stack import free_port


def test_upload_list_show_and_delete_a_dataset(sdk, labelled):
    assert labelled["row_count"] == 3 and labelled["label_column"] == "sentiment"
    assert labelled["stats"]["label_distribution"] == {"pos": 2, "neg": 1}
    assert sdk.dataset(labelled["id"])["name"] == "reviews.csv"
    assert [d["id"] for d in sdk.list_datasets()["items"]] == [labelled["id"]]
    sdk.delete_dataset(labelled["id"])
    assert list(sdk.iter_datasets()) == []


def test_upload_streams_the_file_in_blocks_with_its_length(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("text\n" + "a fine line of text\n" * 20_000)
    body = MultipartStream({"name": "big"}, {"file": path})
    blocks = list(body)
    body.close()
    assert max(len(b) for b in blocks) <= 1 << 16  # never the whole file at once
    assert len(body) == sum(len(b) for b in blocks)
    assert path.read_bytes() in b"".join(blocks)


def test_upload_with_a_task_and_its_role_columns(sdk, tmp_path):
    path = tmp_path / "ner.jsonl"
    path.write_text(json.dumps({"words": ["alice", "went"], "ner": ["B-PER", "O"]}) + "\n")
    dataset = sdk.upload_dataset(path, task="token-classification", tokens_column="words", tags_column="ner")
    assert dataset["task"] == "token-classification"
    assert dataset["columns_by_role"] == {"tokens": "words", "tags": "ner"}


def test_api_error_carries_status_code_message_and_details(sdk):
    with pytest.raises(ApiError) as missing:
        sdk.job(424242)
    assert (missing.value.status, missing.value.code) == (404, "job_not_found")
    assert missing.value.message == "job 424242 not found"
    with pytest.raises(ApiError) as invalid:
        sdk.submit("evaluate", {"model": "m", "dataset_id": 1}, priority=12)
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_input")
    assert invalid.value.details["fields"][0]["field"] == "priority"


def test_connection_refused_is_a_clear_error():
    client = Client(f"http://127.0.0.1:{free_port()}", "token", timeout=5)
    with pytest.raises(ConnectionFailed, match=r"cannot reach the Nightshift API at http://127\.0\.0\.1:\d+: "
                                               r".*Connection refused"):
        client.list_jobs()


def test_jobs_list_filters_and_iterates_every_page(sdk, labelled, database):
    database.model("sentiment")
    evaluate = [sdk.submit("evaluate", {"model": "sentiment", "dataset_id": labelled["id"]}) for _ in range(3)]
    batch = sdk.submit("batch_inference", {"model": "sentiment", "dataset_id": labelled["id"]}, priority=8)
    assert batch["priority"] == 8 and batch["task"] == "text-classification"
    assert [j["id"] for j in sdk.list_jobs(kind="evaluate")["items"]] == [j["id"] for j in reversed(evaluate)]
    page = sdk.list_jobs(limit=2)
    assert len(page["items"]) == 2 and page["next_cursor"] is not None
    assert [j["id"] for j in sdk.iter_jobs(page_size=2)] == [batch["id"], *(j["id"] for j in reversed(evaluate))]
    assert [j["id"] for j in sdk.iter_jobs(kind="batch_inference", page_size=1)] == [batch["id"]]


def test_cancel_retry_events_and_wait(sdk, labelled, database):
    database.model("sentiment")
    job = sdk.submit("evaluate", {"model": "sentiment", "dataset_id": labelled["id"]}, idempotency_key="k1")
    assert sdk.submit("evaluate", {"model": "sentiment", "dataset_id": labelled["id"]},
                      idempotency_key="k1")["id"] == job["id"]
    assert sdk.cancel(job["id"])["status"] == "cancelled"
    assert sdk.wait(job["id"], timeout=5, poll=0.05)["status"] == "cancelled"
    again = sdk.retry(job["id"])
    assert again["id"] != job["id"] and again["status"] == "queued"
    events = list(sdk.iter_events(again["id"], follow=False))
    assert f"retry of job {job['id']}" in [e["message"] for e in events]
    database.event(job["id"], "metric", step=1, data={"loss": 0.5})
    assert [e["type"] for e in sdk.iter_events(job["id"], type="metric")] == ["metric"]
    followed = list(sdk.iter_events(job["id"], follow=True, poll=0.05, timeout=5))  # ended: stops at the last
    assert followed[-1]["data"] == {"loss": 0.5}
    page = sdk.events(job["id"], limit=1)
    assert len(page["items"]) == 1 and sdk.events(job["id"], after=page["next_cursor"])["items"]


def test_download_output_and_errors_file(sdk, labelled, database, tmp_path):
    database.model("sentiment")
    job = sdk.submit("batch_inference", {"model": "sentiment", "dataset_id": labelled["id"]})
    with pytest.raises(ApiError) as early:
        sdk.download_output(job["id"], tmp_path / "early.jsonl")
    assert early.value.code == "not_ready" and not (tmp_path / "early.jsonl").exists()
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "predictions.jsonl").write_text('{"row": 0, "label": "pos"}\n' * 5000)
    (outputs / "errors.jsonl").write_text('{"row": 3, "error": "empty text"}\n')
    database.set_job(job["id"], status="succeeded", output_path=str(outputs / "predictions.jsonl"))
    out = sdk.download_output(job["id"], tmp_path / "out.jsonl")
    assert out.read_text() == (outputs / "predictions.jsonl").read_text()
    errors = sdk.download_output(job["id"], tmp_path / "errors.jsonl", errors=True)
    assert errors.read_text() == '{"row": 3, "error": "empty text"}\n'


def test_models_and_evaluations(sdk, labelled, database):
    first = database.model("sentiment")
    second = database.model("sentiment")
    database.model("other")
    evaluation = database.evaluation(second, labelled["id"], {"accuracy": 0.9}, "sentiment:2")
    database.evaluation(first, labelled["id"], {"accuracy": 0.7}, "sentiment:1")
    assert [m["version"] for m in sdk.model_versions("sentiment")] == [2, 1]
    assert {m["name"] for m in sdk.models()} == {"sentiment", "other"}
    with pytest.raises(ApiError, match="no model named 'nope'"):
        sdk.model_versions("nope")
    assert [e["model_ref"] for e in sdk.iter_evaluations(model="sentiment", page_size=1)] == ["sentiment:1",
                                                                                            "sentiment:2"]
    assert sdk.list_evaluations(model="sentiment:2", dataset_id=labelled["id"])["items"][0]["id"] == evaluation
    assert sdk.evaluation(evaluation)["metrics"] == {"accuracy": 0.9}


def test_health_and_openapi_need_no_token(server):
    public = Client(server)
    assert public.health() == {"status": "ok", "database": "ok", "redis": "ok"}
    assert "/api/v1/jobs/{job_id}/retry" in public.openapi()["paths"]
    with pytest.raises(ApiError) as refused:
        public.list_jobs()
    assert refused.value.status == 401

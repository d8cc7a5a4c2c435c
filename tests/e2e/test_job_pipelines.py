"""Pipelines through the real stack: one request, steps released by SQL as each one succeeds."""

from __future__ import annotations

import pytest

from tests.helpers import wait_until, write_reviews

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(system, tmp_path_factory):
    client, _settings, _stack = system
    folder = tmp_path_factory.mktemp("pipeline-data")
    train = client.upload_dataset(write_reviews(folder / "train.csv", 120, seed=11), text_column="text",
                                  label_column="label")
    docs = client.upload_dataset(write_reviews(folder / "docs.csv", 90, seed=12, labelled=False),
                                 text_column="text")
    held_out = client.upload_dataset(write_reviews(folder / "held-out.csv", 40, seed=13), text_column="text",
                                     label_column="label")
    return client, train, docs, held_out


def tune_step(base_model, train, **params) -> dict:
    return {"name": "tune", "kind": "finetune",
            "params": {"base_model": str(base_model), "train_dataset_id": train["id"], "max_steps": 12,
                       "batch_size": 8, "learning_rate": 5e-3, "max_length": 32, "model_name": "piped", **params}}


def test_pretrain_finetune_evaluate_and_batch_inference_from_one_request(data, tiny_model, tmp_path):
    client, train, docs, held_out = data
    pipeline = client.submit_pipeline([
        {"name": "adapt", "kind": "pretrain", "params": {"base_model": str(tiny_model), "train_dataset_id": docs["id"],
                                                         "max_steps": 6, "batch_size": 8, "max_length": 32}},
        tune_step("@adapt", train),
        {"name": "check", "kind": "evaluate", "params": {"model": "@tune", "dataset_id": held_out["id"]}},
        {"name": "label", "after": "tune", "kind": "batch_inference", "params": {"model": "@tune",
                                                                                "dataset_id": docs["id"]}},
    ], name="tune-check-label")

    done = client.wait_pipeline(pipeline["id"], timeout=300, poll=0.5)

    assert done["status"] == "succeeded" and done["progress"] == 1.0, done
    jobs = {step["name"]: step["job"] for step in done["steps"]}
    assert all(job["status"] == "succeeded" and job["attempts"] == 1 for job in jobs.values())
    assert jobs["tune"]["params"]["base_model"] == jobs["adapt"]["result"]["model"]  # "@adapt", resolved
    model = jobs["tune"]["result"]["model"]
    assert jobs["check"]["params"]["model"] == jobs["label"]["params"]["model"] == model  # "@tune", resolved
    assert jobs["check"]["started_at"] >= jobs["tune"]["finished_at"]
    assert jobs["label"]["started_at"] >= jobs["tune"]["finished_at"]
    evaluation = client.request("GET", f"/evaluations/{jobs['check']['result']['evaluation_id']}")
    assert evaluation["model_ref"] == model and evaluation["dataset_id"] == held_out["id"]
    lines = client.download_output(jobs["label"]["id"], tmp_path / "labels.jsonl").read_text().splitlines()
    assert len(lines) == 90
    events = client.pipeline_events(pipeline["id"])["items"]
    released = [e for e in events if e["message"].startswith(f"step 'tune' (job {jobs['tune']['id']}) succeeded")]
    assert sorted(e["pipeline_step"] for e in released) == ["check", "label"]


def test_cancelling_a_running_pipeline_stops_its_step_and_never_starts_the_rest(data, tiny_model):
    client, train, docs, _held_out = data
    pipeline = client.submit_pipeline([
        tune_step(tiny_model, train, max_steps=1_000_000, model_name="never"),  # still training when cancelled
        {"name": "label", "kind": "batch_inference", "params": {"model": "@tune", "dataset_id": docs["id"]}},
    ])
    first = pipeline["steps"][0]["job"]["id"]
    wait_until(lambda: client.job(first)["progress"]["stage"] == "training", timeout=120,
               message=f"job {first} is training")

    client.cancel_pipeline(pipeline["id"])
    done = client.wait_pipeline(pipeline["id"], timeout=120, poll=0.5)

    assert done["status"] == "cancelled"
    tune, label = (step["job"] for step in done["steps"])
    assert tune["status"] == "cancelled" and tune["started_at"] is not None
    assert label["status"] == "cancelled" and label["started_at"] is None and label["attempts"] == 0
    assert (label["error"]["code"], label["error"]["message"]) == (
        "pipeline_cancelled", f"not run: pipeline {pipeline['id']} was cancelled")

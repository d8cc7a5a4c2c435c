"""Scenario 17: a whole worker killed mid-pipeline; the pipeline carries on from its SQL rows."""

from __future__ import annotations

import pytest

from tests.chaos.conftest import check_invariants, finetune_params, wait_until, write_reviews

pytestmark = pytest.mark.chaos


def test_17_a_worker_killed_mid_pipeline_is_taken_over_and_the_later_steps_run_once(chaos, tiny_model,
                                                                                      train_dataset, tmp_path):
    docs = chaos.client.upload_dataset(write_reviews(tmp_path / "docs.csv", 300, seed=17, labelled=False),
                                       text_column="text")
    pipeline = chaos.client.submit_pipeline([
        {"name": "tune", "kind": "finetune",
         "params": finetune_params(tiny_model, train_dataset, max_steps=150, save_steps=25, name="chaos-piped")},
        {"name": "check", "kind": "evaluate", "params": {"model": "@tune", "dataset_id": train_dataset["id"]}},
        {"name": "label", "after": "tune", "kind": "batch_inference",
         "params": {"model": "@tune", "dataset_id": docs["id"], "chunk_rows": 100}},
    ])
    tune = pipeline["steps"][0]["job"]["id"]
    wait_until(lambda: any(e.message.startswith("checkpoint saved") for e in chaos.events(tune)), timeout=120,
               message=f"job {tune} saves a checkpoint")
    chaos.kill_tree(chaos.worker_of(chaos.job_pid(tune)))  # the whole worker, as if its host died

    done = chaos.client.wait_pipeline(pipeline["id"], timeout=300, poll=0.5)

    assert done["status"] == "succeeded", done
    jobs = {step["name"]: step["job"] for step in done["steps"]}
    assert jobs["tune"]["interruptions"] == 1 and jobs["tune"]["result"]["train"]["resumed_from_step"] >= 25
    for name in ("check", "label"):  # released once, after the rescued step succeeded, and run once
        assert jobs[name]["attempts"] == 1 and jobs[name]["interruptions"] == 0
        assert jobs[name]["params"]["model"] == jobs["tune"]["result"]["model"]
        assert jobs[name]["started_at"] >= jobs["tune"]["finished_at"]
        released = [e for e in chaos.events(jobs[name]["id"]) if e.type == "status" and e.data.get("status") == "queued"]
        assert len(released) == 1
    check_invariants(chaos, [job["id"] for job in jobs.values()])

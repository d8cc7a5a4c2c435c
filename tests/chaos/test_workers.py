"""Scenarios 1-4, 8, 9, 13, 17: workers killed, terminated, stopped and crashing, mid-job and mid-pipeline."""

from __future__ import annotations

import os
import signal

import pytest
from safetensors.torch import load_file
from sqlalchemy import select

from db.models import InferenceChunk

from tests.chaos.conftest import check_invariants, finetune_params, wait_until, write_reviews

pytestmark = pytest.mark.chaos


def wait_for_step(chaos, job_id: int, step: int, timeout: float = 120) -> None:
    wait_until(lambda: (chaos.job(job_id).progress_done or 0) >= step and chaos.job(job_id).status == "running",
               timeout=timeout, message=f"job {job_id} trains past step {step}")


def checkpoints_saved(chaos, job_id: int) -> list[int]:
    return [e.step for e in chaos.events(job_id) if e.message.startswith("checkpoint saved")]


def test_1_sigkill_mid_finetune_resumes_from_the_last_marked_checkpoint(chaos, tiny_model, train_dataset):
    params = finetune_params(tiny_model, train_dataset, max_steps=200, save_steps=25)
    killed = chaos.client.submit("finetune", params)
    wait_until(lambda: len(checkpoints_saved(chaos, killed["id"])) >= 2, timeout=120,
               message="two checkpoints are saved")
    os.kill(chaos.job_pid(killed["id"]), signal.SIGKILL)
    saved_before_kill = max(checkpoints_saved(chaos, killed["id"]))
    job = chaos.client.wait(killed["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    # Its worker reports the death at once, unless this suite's 4 s lease runs out first: either way
    # the job ran twice (test_takeover.py checks the report with the default lease).
    assert job["attempts"] + job["interruptions"] == 2
    resumed = job["result"]["train"]["resumed_from_step"]
    # Events are flushed with heartbeats, so the newest checkpoint may have no event yet.
    assert resumed >= saved_before_kill and resumed % params["save_steps"] == 0
    assert job["result"]["train"]["global_step"] == 200
    check_invariants(chaos, [killed["id"]])

    clean = chaos.client.wait(chaos.client.submit("finetune", params)["id"], timeout=180)
    assert clean["status"] == "succeeded" and clean["attempts"] == 1
    resumed_weights = load_file(f"{chaos.job(killed['id']).output_path}/model.safetensors")
    clean_weights = load_file(f"{chaos.job(clean['id']).output_path}/model.safetensors")
    worst = max((resumed_weights[k] - clean_weights[k]).abs().max().item() for k in clean_weights)
    assert worst < 1e-4, f"the resumed model differs from an uninterrupted run by {worst}"


def test_2_sigterm_checkpoints_hands_back_and_the_job_finishes_once(chaos, tiny_model, train_dataset):
    job = chaos.client.submit("finetune", finetune_params(tiny_model, train_dataset, max_steps=300, save_steps=1000))
    wait_for_step(chaos, job["id"], 40)
    worker = chaos.worker_of(chaos.job_pid(job["id"]))
    chaos.processes[worker].terminate()  # what a deploy sends
    chaos.processes[worker].wait(timeout=180)  # it hands the job back rather than finishing it
    done = chaos.client.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1  # a clean hand-back does not use up an attempt
    assert done["result"]["train"]["resumed_from_step"] >= 40  # the shutdown checkpoint, not step 0
    # A message re-sent while the job waited behind a busy worker ("redispatch") is no hand-back.
    handbacks = [e.data["action"] for e in chaos.events(job["id"]) if e.type == "rescue"]
    assert [action for action in handbacks if action != "redispatch"] == ["shutdown"]
    check_invariants(chaos, [job["id"]])


def test_3_a_checkpoint_torn_by_a_kill_is_ignored_on_resume(chaos, tiny_model, train_dataset):
    job = chaos.client.submit("finetune", finetune_params(tiny_model, train_dataset, max_steps=200, save_steps=25))
    wait_until(lambda: checkpoints_saved(chaos, job["id"]), timeout=120, message="a checkpoint is saved")
    os.kill(chaos.job_pid(job["id"]), signal.SIGKILL)
    # What a kill in the middle of a save leaves: a newer directory without the COMPLETE marker.
    torn = chaos.data_dir / "checkpoints" / f"job-{job['id']}" / "checkpoint-175"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"\x00" * 100)
    done = chaos.client.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["train"]["resumed_from_step"] < 175
    assert any("removed incomplete checkpoint checkpoint-175" in e.message for e in chaos.events(job["id"]))
    check_invariants(chaos, [job["id"]])


def test_4_redelivery_after_the_visibility_timeout_is_dropped_at_claim(chaos, tiny_model, train_dataset):
    # The system runs with a 6 s visibility timeout: Redis hands this running job's message to the
    # other worker while the job runs. The job runs until that redelivery has been dropped.
    job = chaos.client.submit("finetune", finetune_params(tiny_model, train_dataset, max_steps=100_000,
                                                          save_steps=10**6))
    wait_until(lambda: chaos.job(job["id"]).status == "running", timeout=120, message="the job runs")
    dropped = f"job {job['id']}: nothing to claim"
    wait_until(lambda: any(dropped in chaos.log(w) for w in ("w1", "w2")), timeout=180,
               message="the redelivered message is dropped at claim")
    assert chaos.job(job["id"]).status == "running"  # the first attempt was never disturbed
    chaos.client.request("POST", f"/jobs/{job['id']}/cancel")
    done = chaos.client.wait(job["id"], timeout=120)
    assert done["status"] == "cancelled" and (done["attempts"], done["interruptions"]) == (1, 0)
    assert chaos.job(job["id"]).epoch == 1  # one claim: the redelivery took nothing
    check_invariants(chaos, [job["id"]])


def test_8_a_stopped_worker_past_its_lease_is_fenced_when_it_wakes(chaos, tiny_model, train_dataset):
    job = chaos.client.submit("finetune", finetune_params(tiny_model, train_dataset, max_steps=300, save_steps=50))
    wait_for_step(chaos, job["id"], 60)
    pid = chaos.job_pid(job["id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: chaos.job(job["id"]).epoch >= 2, timeout=60, message="another attempt takes the job")
    finally:
        os.kill(pid, signal.SIGCONT)
    done = chaos.client.wait(job["id"], timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert chaos.job(job["id"]).epoch >= 2
    check_invariants(chaos, [job["id"]])


def test_13_kill_mid_batch_resumes_and_writes_one_line_per_row(chaos, trained_model, tmp_path):
    docs = chaos.client.upload_dataset(write_reviews(tmp_path / "docs.csv", 20_000, seed=5, labelled=False),
                                       text_column="text")
    job = chaos.client.submit("batch_inference", {"model": trained_model, "dataset_id": docs["id"],
                                                  "chunk_rows": 200})
    wait_until(lambda: (chaos.job(job["id"]).progress_done or 0) >= 2000, timeout=120,
               message="several chunks are committed")
    first_attempt_rows = chaos.job(job["id"]).progress_done
    os.kill(chaos.job_pid(job["id"]), signal.SIGKILL)
    done = chaos.client.wait(job["id"], timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] + done["interruptions"] == 2 and done["result"]["rows"] == 20_000
    with chaos.session_factory() as session:
        chunks = session.scalars(select(InferenceChunk).where(InferenceChunk.job_id == job["id"])).all()
    first_epoch = min(c.epoch for c in chunks)
    kept = sum(c.rows_ok + c.rows_failed for c in chunks if c.epoch == first_epoch)
    assert kept >= first_attempt_rows  # finished chunks were not redone
    check_invariants(chaos, [job["id"]])


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

"""Fast takeover and poison jobs with the default lease, heartbeat and sweep (what `nightshift up` runs).

A job whose process dies while its worker lives is handed back by that worker at once; a job
whose whole worker dies is taken back by the sweeper when its lease expires, without being
charged for it. Both are measured (the time from the kill to the next attempt's start) into the
failure-suite report for RELIABILITY.md; the tests assert which mechanism took the job back and
what it was charged, then cancel the job (that a rescued fine-tune resumes and finishes once is
scenario 1 and 3's business).
"""

from __future__ import annotations

import os
import signal
from dataclasses import fields

import pytest

from db.base import utcnow
from tests.chaos.conftest import ChaosSystem, check_invariants, finetune_params, record_measurement, wait_until
from worker.config import Settings

pytestmark = pytest.mark.chaos

TIMING = ("lease_seconds", "heartbeat_seconds", "sweep_seconds", "relay_seconds", "redispatch_after_seconds",
          "retry_backoff_seconds", "visibility_timeout_seconds", "unacked_restore_seconds", "max_attempts")
DEFAULT_TIMING = {f.name: f.default for f in fields(Settings) if f.name in TIMING}


@pytest.fixture(scope="module")
def default_system(chaos_database, tmp_path_factory):
    with ChaosSystem(tmp_path_factory.mktemp("defaults"), chaos_database, **DEFAULT_TIMING) as system:
        yield system


@pytest.fixture(scope="module")
def dataset(default_system, tmp_path_factory):
    return default_system.upload_reviews(tmp_path_factory.mktemp("defaults-data"), seed=3)


def start_long_finetune(system, tiny_model, dataset) -> int:
    """Submit a fine-tune no machine finishes during the test, and wait until it is training.

    Progress reaches the database with each heartbeat (5 s by default), and a few hundred steps of the
    tiny model take about as long: a shorter job could finish between two looks and never be killed.
    """
    job = system.client.submit("finetune", finetune_params(tiny_model, dataset, max_steps=1_000_000, save_steps=50))

    def training() -> bool:
        row = system.job(job["id"])
        assert row.status in ("queued", "running"), f"job {row.id} ended {row.status}: {row.error_message}"
        return row.status == "running" and row.progress_stage == "training"

    try:
        wait_until(training, timeout=120, message="the fine-tune is training")
    except AssertionError as exc:  # say where it stood, for whoever reads the failure
        row = system.job(job["id"])
        raise AssertionError(f"{exc} (job {row.id}: {row.status}, stage {row.progress_stage}, "
                             f"done {row.progress_done}, attempts {row.attempts}, owner {row.lease_owner})") from None
    return job["id"]


def cancel_after_takeover(system, job_id: int) -> dict:
    """Stop the taken-over job (it would train for hours) and return it once it has ended."""
    system.client.cancel(job_id)
    return system.client.wait(job_id, timeout=120)


def seconds_until_next_start(system, job_id: int, killed_at) -> float:
    """Wait for the attempt after the kill to start; return the seconds from the kill to that start."""
    def next_start():
        return [e for e in system.events(job_id)
                if e.type == "status" and e.data.get("status") == "running" and e.created_at > killed_at]
    started = wait_until(next_start, timeout=120, message=f"job {job_id} runs again")
    return (started[0].created_at - killed_at).total_seconds()


def test_15_a_dead_job_process_is_handed_back_by_its_worker_at_once(default_system, tiny_model, dataset):
    job_id = start_long_finetune(default_system, tiny_model, dataset)
    killed_at = utcnow()
    os.kill(default_system.job_pid(job_id), signal.SIGKILL)
    record_measurement("takeover_process_died", seconds_until_next_start(default_system, job_id, killed_at))
    done = cancel_after_takeover(default_system, job_id)
    assert done["status"] == "cancelled", done["error"]
    rescue = next(e for e in default_system.events(job_id) if e.type == "rescue")
    # Only the worker that saw its process die writes this: the lease did not have to run out.
    assert rescue.data["action"] == "process_died" and "died" in rescue.message
    assert (done["attempts"], done["interruptions"]) == (2, 0)  # a dead process is charged to the job
    check_invariants(default_system, [job_id])


def test_16_a_dead_worker_is_taken_over_after_its_lease_and_not_charged(default_system, tiny_model, dataset):
    job_id = start_long_finetune(default_system, tiny_model, dataset)
    worker = default_system.worker_of(default_system.job_pid(job_id))
    killed_at = utcnow()
    default_system.kill_tree(worker)  # the worker and its job process at once: a host that died
    try:
        record_measurement("takeover_worker_died", seconds_until_next_start(default_system, job_id, killed_at))
        done = cancel_after_takeover(default_system, job_id)
    finally:
        default_system.ensure_running()
    assert done["status"] == "cancelled", done["error"]
    rescue = next(e for e in default_system.events(job_id) if e.type == "rescue")
    assert rescue.data["action"] == "lease_expired" and "not charged" in rescue.message
    assert (done["attempts"], done["interruptions"]) == (1, 1)
    check_invariants(default_system, [job_id])


def test_9_a_job_that_kills_its_process_every_time_fails_after_max_attempts(default_system, tiny_model, dataset):
    job = default_system.client.submit("finetune", finetune_params(tiny_model, dataset, max_steps=100_000))
    max_attempts = default_system.settings.max_attempts
    for attempt in range(1, max_attempts + 1):
        wait_until(lambda: default_system.job(job["id"]).status == "running"
                   and default_system.job(job["id"]).attempts == attempt,
                   timeout=120, message=f"attempt {attempt} starts")
        os.kill(default_system.job_pid(job["id"]), signal.SIGKILL)
    failed = default_system.client.wait(job["id"], timeout=120)
    assert failed["status"] == "failed" and failed["attempts"] == max_attempts
    assert failed["error"]["code"] == "process_died" and "max_attempts" in failed["error"]["message"]
    check_invariants(default_system, [job["id"]])

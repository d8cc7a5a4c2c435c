"""Scenario 11: the soft time limit checkpoints and fails the job; the hard limit is reconciled."""

from __future__ import annotations

import os
import signal

import pytest

from tests.chaos.conftest import ChaosSystem, check_invariants, finetune_params, wait_until

pytestmark = pytest.mark.chaos

# Long enough for a fine-tune to start training on a loaded 2-core machine before its limit, so
# that the limit always meets a training loop to checkpoint.
SOFT_LIMIT_SECONDS = 30
GRACE_SECONDS = 4


@pytest.fixture(scope="module")
def limited(chaos_database, tmp_path_factory):
    """A system whose fine-tunes may run only half a minute; leases outlast the hard limit, so that
    a job killed by it is seen by the sweeper as killed by its limit, not as a lost worker."""
    with ChaosSystem(tmp_path_factory.mktemp("limited"), chaos_database,
                     lease_seconds=SOFT_LIMIT_SECONDS + GRACE_SECONDS + 6.0,
                     time_limit_finetune=SOFT_LIMIT_SECONDS, time_limit_grace_seconds=GRACE_SECONDS) as system:
        yield system


@pytest.fixture(scope="module")
def dataset(limited, tmp_path_factory):
    return limited.upload_reviews(tmp_path_factory.mktemp("limited-data"), seed=2)


def test_11a_soft_time_limit_saves_a_checkpoint_and_says_why(limited, tiny_model, dataset):
    job = limited.client.submit("finetune", finetune_params(tiny_model, dataset, max_steps=100_000, save_steps=10**6))
    failed = limited.client.wait(job["id"], timeout=240)
    assert failed["status"] == "failed" and failed["error"]["code"] == "time_limit"
    assert "time limit" in failed["error"]["message"]
    checkpoints = list((limited.data_dir / "checkpoints" / f"job-{job['id']}").glob("checkpoint-*/COMPLETE"))
    assert checkpoints, "the soft limit stopped the job without saving a checkpoint"
    check_invariants(limited, [job["id"]])


def test_11b_hard_time_limit_kills_the_process_and_the_sweeper_fails_the_job(limited, tiny_model, dataset):
    job = limited.client.submit("finetune", finetune_params(tiny_model, dataset, max_steps=100_000))
    wait_until(lambda: limited.job(job["id"]).status == "running", timeout=60, message="the job runs")
    pid = limited.job_pid(job["id"])
    os.kill(pid, signal.SIGSTOP)  # stuck: it cannot honour its soft limit, Celery must kill it
    try:
        failed = limited.client.wait(job["id"], timeout=240)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert failed["status"] == "failed" and failed["error"]["code"] == "time_limit"
    assert "hard time limit" in failed["error"]["message"]
    check_invariants(limited, [job["id"]])

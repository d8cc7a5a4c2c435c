"""Scenario 13 for a retry of failed rows: a worker killed mid-retry; the next attempt resumes."""

from __future__ import annotations

import json
import os
import signal

import pytest
from sqlalchemy import select

from db.models import InferenceChunk
from tests.chaos.conftest import check_invariants, wait_until, write_reviews

pytestmark = pytest.mark.chaos

ROWS = 12_000
BLANK = frozenset(i for i in range(ROWS) if i % 3)  # 8,000 rows fail in the first job


def test_13_kill_mid_retry_of_failed_rows_resumes_and_merges_one_line_per_row(chaos, trained_model, tmp_path):
    docs = chaos.client.upload_dataset(write_reviews(tmp_path / "docs.csv", ROWS, seed=5, labelled=False,
                                                     blank_rows=BLANK), text_column="text")
    first = chaos.client.wait(chaos.client.submit("batch_inference", {"model": trained_model,
                                                                      "dataset_id": docs["id"]})["id"], timeout=240)
    assert first["status"] == "succeeded" and first["result"]["rows_failed"] == len(BLANK), first
    fixed = chaos.client.upload_dataset(write_reviews(tmp_path / "fixed.csv", ROWS, seed=5, labelled=False),
                                        text_column="text")
    job = chaos.client.retry(first["id"], only_failed_rows=True, params={"dataset_id": fixed["id"], "chunk_rows": 200})
    wait_until(lambda: (chaos.job(job["id"]).progress_done or 0) >= 2000, timeout=120,
               message="several chunks of the retry are committed")
    first_attempt_rows = chaos.job(job["id"]).progress_done
    os.kill(chaos.job_pid(job["id"]), signal.SIGKILL)
    done = chaos.client.wait(job["id"], timeout=240)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] + done["interruptions"] == 2
    assert (done["result"]["rows_retried"], done["result"]["rows_fixed"], done["result"]["rows_failed"]) == (
        len(BLANK), len(BLANK), 0)
    with chaos.session_factory() as session:
        chunks = session.scalars(select(InferenceChunk).where(InferenceChunk.job_id == job["id"])).all()
    first_epoch = min(c.epoch for c in chunks)
    assert sum(c.rows_ok + c.rows_failed for c in chunks if c.epoch == first_epoch) >= first_attempt_rows
    assert sum(c.rows_ok + c.rows_failed for c in chunks) == len(BLANK)  # no row predicted twice
    with open(chaos.job(job["id"]).output_path) as lines:
        assert [json.loads(line)["row"] for line in lines] == list(range(ROWS))
    check_invariants(chaos, [first["id"], job["id"]])

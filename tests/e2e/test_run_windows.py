"""A fine-tune that keeps to its run window (pause_outside_window), on a real worker: when the window closes
it checkpoints and goes back to `scheduled` until the window's next opening; released when a window is open
again, it resumes from that checkpoint; a paused job can be cancelled."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from db.base import utcnow
from db.models import Job, JobEvent
from db.session import make_engine, make_session_factory
from nightshift.cli import ensure_local_token
from nightshift.client import Client
from nightshift.stack import Stack, free_port
from tests.helpers import wait_until, write_reviews
from worker.config import Settings

pytestmark = pytest.mark.slow


def window_closing_in(seconds: float) -> str:
    """Run windows where `soon` opened a minute ago and closes `seconds` from now (UTC)."""
    now = utcnow()
    return f"soon={now - timedelta(minutes=1):%H:%M:%S}-{now + timedelta(seconds=seconds):%H:%M:%S}"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("windows")
    settings = Settings.from_env(
        data_dir=str(data_dir), database_url=f"sqlite:///{data_dir / 'nightshift.db'}", api_port=free_port(),
        api_workers=1, heartbeat_seconds=0.5, lease_seconds=15.0, relay_seconds=0.5, sweep_seconds=1.0,
        run_windows=window_closing_in(3600),  # the API only needs the name
    )
    stack = Stack(settings)
    try:
        settings = stack.start(redis_url=None)
        engine = make_engine(settings.database_url)
        yield stack, Client(settings.base_url, ensure_local_token(settings), timeout=60), make_session_factory(engine)
        engine.dispose()
    finally:
        stack.stop()


def _job(database, job_id: int) -> Job:
    with database() as session:
        return session.get(Job, job_id)


def _messages(database, job_id: int) -> list[str]:
    with database() as session:
        return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def _restart_worker(stack: Stack, windows: str) -> None:
    stack.overrides["worker"] = {"run_windows": windows}
    stack.processes["worker"].terminate()
    stack.processes["worker"].wait(timeout=60)
    stack.start_process("worker")


def test_a_fine_tune_pauses_when_its_window_closes_and_resumes_from_its_checkpoint(system, tmp_path, tiny_model):
    stack, client, database = system
    data = client.upload_dataset(write_reviews(tmp_path / "train.csv", 160, seed=1), text_column="text",
                                 label_column="label")
    _restart_worker(stack, window_closing_in(20))
    job = client.submit("finetune", {"base_model": str(tiny_model), "train_dataset_id": data["id"],
                                     "max_steps": 100_000, "batch_size": 8, "save_steps": 25, "max_length": 32},
                        not_before="soon", pause_outside_window=True)
    assert job["status"] == "queued" and job["run_window"] == "soon"

    def paused() -> bool:
        current = _job(database, job["id"])
        assert current.status in ("queued", "running", "scheduled"), (current.status, current.error_message)
        return current.status == "scheduled"

    wait_until(paused, timeout=120, message="the fine-tune pauses when its window closes")
    first = _job(database, job["id"])
    assert first.attempts == 0 and first.lease_owner is None  # a pause costs no attempt
    assert timedelta(hours=23) < first.not_before - utcnow() < timedelta(hours=24)  # tomorrow's opening
    messages = _messages(database, job["id"])
    saved = [m for m in messages if m.startswith("checkpoint saved at step ")]
    assert saved and any("paused with its last checkpoint" in m for m in messages), messages
    last_step = int(saved[-1].rsplit(" ", 1)[1])

    # The window opens again (a new one, on a restarted worker); the sweeper releases the job at its time.
    # It stays open long enough for a slow, shared machine to start the worker and load the model.
    _restart_worker(stack, window_closing_in(30))
    with database.begin() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(not_before=utcnow()))

    def resumed_and_paused_again() -> bool:
        return sum("paused with its last checkpoint" in m for m in _messages(database, job["id"])) == 2

    wait_until(resumed_and_paused_again, timeout=120, message="the fine-tune resumes, then pauses again")
    messages = _messages(database, job["id"])
    assert f"resuming from checkpoint-{last_step}" in messages, messages
    again = _job(database, job["id"])
    assert again.status == "scheduled" and again.progress_done > last_step

    cancelled = client.cancel(job["id"])
    assert cancelled["status"] == "cancelled"


def test_a_batch_job_pauses_after_its_committed_chunks_and_resumes_with_every_row_once(system, tmp_path, tiny_model):
    from db.models import InferenceChunk

    stack, client, database = system
    rows = 60_000
    data = client.upload_dataset(write_reviews(tmp_path / "docs.csv", rows, seed=2, labelled=False),
                                 text_column="text")
    _restart_worker(stack, window_closing_in(15))
    job = client.submit("batch_inference", {"model": str(tiny_model), "dataset_id": data["id"], "chunk_rows": 100},
                        not_before="soon", pause_outside_window=True)

    def paused() -> bool:
        current = _job(database, job["id"])
        assert current.status in ("queued", "running", "scheduled"), (current.status, current.error_message)
        return current.status == "scheduled"

    wait_until(paused, timeout=120, message="the batch job pauses when its window closes")
    assert any("paused with its committed chunks" in m for m in _messages(database, job["id"]))
    with database() as session:
        kept = len(session.scalars(select(InferenceChunk.id).where(InferenceChunk.job_id == job["id"])).all())

    _restart_worker(stack, window_closing_in(3600))
    with database.begin() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(not_before=utcnow()))
    done = client.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded", done["error"]
    with database() as session:
        chunks = session.scalars(select(InferenceChunk).where(InferenceChunk.job_id == job["id"])).all()
    assert len(chunks) == rows // 100 and len(chunks) > kept  # the kept chunks, then the rest
    out = client.download_output(job["id"], tmp_path / "predictions.jsonl")
    with open(out) as lines:
        assert [int(line.split(",", 1)[0].removeprefix('{"row": ')) for line in lines] == list(range(rows))

"""The whole system as `nightshift up` runs it: embedded Redis, gunicorn, a Celery worker, beat."""

from __future__ import annotations

import os

import pytest

from nightshift.cli import ensure_local_token
from nightshift.client import Client
from nightshift.stack import Stack, free_port
from tests.conftest import create_postgres_database, drop_postgres_database
from worker.config import Settings


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def system(request, tmp_path_factory, tiny_model):
    """Start the stack on SQLite or PostgreSQL; yield (client, settings, stack)."""
    data_dir = tmp_path_factory.mktemp(f"system-{request.param}")
    database_url = (
        create_postgres_database() if request.param == "postgres" else f"sqlite:///{data_dir / 'nightshift.db'}"
    )
    settings = Settings.from_env(
        data_dir=str(data_dir), database_url=database_url, api_port=free_port(), api_workers=1,
        heartbeat_seconds=0.5, lease_seconds=15.0, relay_seconds=0.5, sweep_seconds=2.0,
    )
    stack = Stack(settings)
    try:
        settings = stack.start(redis_url=None)  # stops whatever it started if it fails
        client = Client(settings.base_url, ensure_local_token(settings), timeout=60)
        yield client, settings, stack
    finally:
        stack.stop()
        if request.param == "postgres":
            drop_postgres_database(database_url)
        if os.environ.get("NIGHTSHIFT_TEST_SHOW_LOGS"):
            for log in sorted(stack.log_dir.glob("*.log")):
                print(f"==== {log.name}\n{log.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def database(system):
    """A session factory on the system's database: the tests' own view of the truth."""
    from db.session import make_engine, make_session_factory

    _client, settings, _stack = system
    engine = make_engine(settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


def kill_after_first_checkpoint(database, job_id: int) -> None:
    """Wait until the job has saved a checkpoint, then SIGKILL the process holding its lease.

    A checkpoint's event is written before the checkpoint counts (`JobContext.checkpoint_saved`), so the
    kill lands a poll (50 ms) after it; the job must still have steps to go then, or the test says so.
    """
    import signal

    owner = owner_after_first_checkpoint(database, job_id)
    try:
        os.kill(owner, signal.SIGKILL)
    except ProcessLookupError:
        raise AssertionError(f"job {job_id} ended before it could be killed: give it more steps") from None


def owner_after_first_checkpoint(database, job_id: int) -> int:
    """Wait (polling every 50 ms) until the running job has saved a checkpoint; return the pid holding its lease."""
    from sqlalchemy import select

    from db.models import Job, JobEvent
    from tests.helpers import wait_until

    def running_owner_after_a_checkpoint() -> str | None:
        with database() as session:
            saved = session.scalar(select(JobEvent.id).where(
                JobEvent.job_id == job_id, JobEvent.type == "log", JobEvent.message.startswith("checkpoint saved")
            ).limit(1))
            job = session.get(Job, job_id)
            assert job.status in ("queued", "running"), f"job {job_id} {job.status} before it could be killed"
            return job.lease_owner if saved and job.status == "running" else None

    owner = wait_until(running_owner_after_a_checkpoint, timeout=180, interval=0.05,
                       message=f"job {job_id} saves its first checkpoint")
    return int(owner.rsplit(":", 1)[1])

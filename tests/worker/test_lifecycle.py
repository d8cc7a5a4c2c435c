"""run_job maps every way a job can end to exactly one outcome, on real SQLite and PostgreSQL."""

from __future__ import annotations

import time

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, update

from db.models import Job, JobEvent, OutboxMessage
from worker.config import Settings
from worker.errors import PermanentJobError, TransientJobError
from worker.lifecycle import run_job

SETTINGS = Settings(heartbeat_seconds=0.05, lease_seconds=30, retry_backoff_seconds=7)


def run(session_factory, job_id, runner):
    return run_job(job_id, runner, session_factory=session_factory, settings=SETTINGS)


def load(session_factory, job_id) -> Job:
    with session_factory() as session:
        return session.get(Job, job_id)


def test_success_stores_result_and_progress(session_factory, job_id):
    def runner(context):
        context.progress(fraction=0.5, stage="halfway", done=1, total=2)
        context.metric(3, {"loss": 0.25})
        return lambda session: {"result": {"answer": 42}}

    assert run(session_factory, job_id, runner) == "succeeded"
    job = load(session_factory, job_id)
    assert (job.status, job.result, job.progress_fraction, job.lease_expires_at) == ("succeeded", {"answer": 42}, 1.0, None)
    with session_factory() as session:
        metric = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metric")).one()
    assert (metric.step, metric.data) == (3, {"loss": 0.25})


def test_a_second_delivery_after_success_is_dropped(session_factory, job_id):
    calls = []
    runner = lambda context: calls.append(1) or (lambda session: {})  # noqa: E731
    assert [run(session_factory, job_id, runner) for _ in range(2)] == ["succeeded", "dropped"]
    assert calls == [1]


def test_permanent_error_fails_with_the_reason(session_factory, job_id):
    def runner(context):
        raise PermanentJobError("row 7 has no label", code="bad_data")

    assert run(session_factory, job_id, runner) == "failed"
    job = load(session_factory, job_id)
    assert (job.status, job.error_code, job.error_message) == ("failed", "bad_data", "row 7 has no label")


def test_transient_error_requeues_with_backoff_then_gives_up(session_factory, job_id):
    def runner(context):
        raise TransientJobError("broker connection lost")

    assert run(session_factory, job_id, runner) == "retrying"
    job = load(session_factory, job_id)
    assert job.status == "queued" and "broker connection lost" in job.error_message
    with session_factory() as session:
        delays = [(m.available_at - job.not_before).total_seconds() for m in
                  session.scalars(select(OutboxMessage).where(OutboxMessage.job_id == job_id)).all()]
    assert len(delays) == 2 and abs(delays[1]) < 1  # the retry's message waits for the backoff
    assert run(session_factory, job_id, runner) == "failed"
    job = load(session_factory, job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "retries_exhausted", 2)


def test_soft_time_limit_fails_with_time_limit(session_factory, job_id):
    def runner(context):
        raise SoftTimeLimitExceeded()

    assert run(session_factory, job_id, runner) == "failed"
    job = load(session_factory, job_id)
    assert job.error_code == "time_limit" and "time limit" in job.error_message


def test_crash_fails_with_a_readable_reason(session_factory, job_id):
    def runner(context):
        raise ZeroDivisionError("division by zero")

    assert run(session_factory, job_id, runner) == "failed"
    assert load(session_factory, job_id).error_message == "the job crashed: ZeroDivisionError: division by zero"


def test_cancel_request_stops_the_job_at_its_next_check(session_factory, job_id):
    def runner(context):
        with session_factory() as session, session.begin():
            session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        for _ in range(200):
            context.check()
            time.sleep(0.02)
        raise AssertionError("cancel was never noticed")

    assert run(session_factory, job_id, runner) == "cancelled"
    assert load(session_factory, job_id).status == "cancelled"


def test_an_attempt_that_lost_its_lease_writes_nothing(session_factory, job_id):
    def runner(context):
        with session_factory() as session, session.begin():  # another attempt took the job over
            session.execute(update(Job).where(Job.id == job_id).values(epoch=Job.epoch + 1))
        for _ in range(200):
            context.check()
            time.sleep(0.02)
        raise AssertionError("the lost lease was never noticed")

    assert run(session_factory, job_id, runner) == "lost"
    job = load(session_factory, job_id)
    assert job.status == "running" and job.epoch == 2 and job.finished_at is None


def _window_around_now(seconds_left: float) -> str:
    """A run window that opened a minute ago and closes `seconds_left` from now (UTC, to the second)."""
    from datetime import timedelta

    from db.base import utcnow

    now = utcnow()
    return f"soon={now - timedelta(minutes=1):%H:%M:%S}-{now + timedelta(seconds=seconds_left):%H:%M:%S}"


def test_a_job_whose_window_closes_pauses_until_it_opens_again(session_factory, job_id):
    from datetime import timedelta

    from db.base import utcnow

    settings = SETTINGS.with_overrides(run_windows=_window_around_now(2))
    with session_factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(run_window="soon"))
    checks = []

    def runner(context):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a training loop: it checks between steps
            context.check()
            checks.append(1)
            time.sleep(0.05)
        raise AssertionError("the window never closed")

    assert run_job(job_id, runner, session_factory=session_factory, settings=settings) == "paused"
    job = load(session_factory, job_id)
    assert (job.status, job.attempts, job.lease_owner, job.run_window) == ("scheduled", 0, None, "soon")
    # It waits for the window's next opening: tomorrow, a minute (and a little) before now.
    assert timedelta(hours=23, minutes=58) < job.not_before - utcnow() < timedelta(hours=24)
    with session_factory() as session:
        event = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "status")
                                .order_by(JobEvent.id.desc())).first()
    assert event.message.startswith("its run window soon (") and "paused with its last checkpoint" in event.message
    assert event.data["status"] == "scheduled" and len(checks) > 10


def test_a_job_started_outside_its_window_pauses_at_once(session_factory, job_id):
    settings = SETTINGS.with_overrides(run_windows=_window_around_now(-1))  # closed a second ago
    with session_factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(run_window="soon"))

    def runner(context):
        context.check()
        raise AssertionError("ran outside its window")

    assert run_job(job_id, runner, session_factory=session_factory, settings=settings) == "paused"
    assert load(session_factory, job_id).status == "scheduled"


def test_a_job_without_a_window_ignores_the_windows(session_factory, job_id):
    settings = SETTINGS.with_overrides(run_windows=_window_around_now(-1))
    assert run_job(job_id, lambda context: context.check() or (lambda session: {}), session_factory=session_factory,
                   settings=settings) == "succeeded"

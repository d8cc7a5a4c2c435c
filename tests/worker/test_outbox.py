"""The outbox relay against a real Redis and both databases: one unsendable message holds back nothing."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import redis
from kombu.exceptions import EncodeError
from sqlalchemy import select, update

from db.base import utcnow
from db.models import Job, JobEvent, OutboxMessage
from db.services.jobs import create_job
from db.services.tenants import get_or_create_tenant
from tests.helpers import wait_until
from worker.broker import pending_job_ids
from worker.celery_app import make_celery
from worker.config import Settings
from worker.outbox import (
    BROKER_DOWN_ERRORS,
    MAX_PUBLISH_FAILURES,
    SUBMIT_PUBLISH_GRACE_SECONDS,
    SentMarks,
    publish_submitted,
    relay_outbox,
)

QUEUE = "outbox-test"
CLOSED_PORT_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused at once


class RefusingForOneJob:
    """The real Celery app, except that sending the message of one job raises (as a bad message would)."""

    def __init__(self, celery, job_id: int) -> None:
        self._celery, self._job_id = celery, job_id

    def send_task(self, name, args, **options):
        if args[0] == self._job_id:
            raise EncodeError(f"cannot encode the message of job {self._job_id}")
        return self._celery.send_task(name, args=args, **options)


@pytest.fixture
def celery(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield make_celery(Settings(redis_url=redis_url, queue_evaluate=QUEUE))
    client.flushall()
    client.close()


def submit(session_factory, count: int, **options) -> list[int]:
    with session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        return [create_job(session, tenant_id=tenant.id, kind="evaluate", task="text-classification",
                           params={"model": "m", "dataset_id": i}, queue=QUEUE, **options)[0].id
                for i in range(count)]


def submit_as_the_api(session_factory) -> Job:
    [job_id] = submit(session_factory, 1, publish_grace_seconds=SUBMIT_PUBLISH_GRACE_SECONDS)
    with session_factory() as session:
        return session.get(Job, job_id)


def message_of(session_factory, job_id: int) -> OutboxMessage | None:
    with session_factory() as session:
        return session.scalars(select(OutboxMessage).where(OutboxMessage.job_id == job_id)).first()


def events_of(session_factory, job_id: int) -> list[JobEvent]:
    with session_factory() as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def make_due(session_factory) -> None:
    with session_factory.begin() as session:
        session.execute(update(OutboxMessage).values(available_at=utcnow() - timedelta(seconds=1)))


def test_an_unsendable_message_does_not_hold_back_the_next_ones(session_factory, celery, redis_url):
    refused, *others = submit(session_factory, 3)

    assert relay_outbox(session_factory, RefusingForOneJob(celery, refused)) == 2

    assert pending_job_ids(redis_url, [QUEUE], delivered_within_seconds=5) == set(others)
    message = message_of(session_factory, refused)
    assert (message.sent_at, message.publish_attempts) == (None, 1)
    assert message.last_error == f"EncodeError: cannot encode the message of job {refused}"
    assert message.available_at > utcnow()  # backed off: the next pass does not hammer it
    event = events_of(session_factory, refused)[-1]
    assert (event.type, event.level, event.data["action"]) == ("log", "error", "publish_failed")
    assert "could not be sent" in event.message and "EncodeError" in event.message
    assert f"attempt 1 of {MAX_PUBLISH_FAILURES}" in event.message
    assert all(message_of(session_factory, job_id).sent_at is not None for job_id in others)


def test_a_message_that_keeps_failing_fails_its_queued_job_with_the_reason(session_factory, celery):
    [job_id] = submit(session_factory, 1)
    relay = RefusingForOneJob(celery, job_id)

    for _ in range(MAX_PUBLISH_FAILURES):
        make_due(session_factory)
        assert relay_outbox(session_factory, relay) == 0

    with session_factory() as session:
        job = session.get(Job, job_id)
    assert (job.status, job.error_code) == ("failed", "publish_failed")
    assert f"could not be sent to the broker in {MAX_PUBLISH_FAILURES} attempts" in job.error_message
    assert "EncodeError" in job.error_message and job.finished_at is not None
    assert message_of(session_factory, job_id) is None
    events = events_of(session_factory, job_id)
    assert [e.data.get("action") for e in events if e.type == "log"] == ["publish_failed"] * (MAX_PUBLISH_FAILURES - 1)
    assert (events[-1].type, events[-1].level, events[-1].data["status"]) == ("status", "error", "failed")


def test_a_broker_outage_stops_the_batch_and_uses_up_no_attempt(session_factory):
    jobs = submit(session_factory, 2)
    unreachable = make_celery(Settings(redis_url=CLOSED_PORT_URL, queue_evaluate=QUEUE))

    started = time.monotonic()
    assert relay_outbox(session_factory, unreachable) == 0
    assert time.monotonic() - started < 30

    first, second = (message_of(session_factory, job_id) for job_id in jobs)
    assert (first.sent_at, first.publish_attempts, second.publish_attempts) == (None, 0, 0)
    assert first.last_error.startswith("OperationalError") and second.last_error is None  # the batch stopped
    assert all([e.type for e in events_of(session_factory, job_id)] == ["status"] for job_id in jobs)


def test_the_api_sends_a_new_jobs_message_itself_and_the_relay_leaves_it_alone(session_factory, celery, redis_url):
    job = submit_as_the_api(session_factory)
    assert relay_outbox(session_factory, celery) == 0  # in its grace: the API is sending it

    publish_submitted(session_factory.kw["bind"], celery, job)

    assert pending_job_ids(redis_url, [QUEUE], delivered_within_seconds=5) == {job.id}
    message = message_of(session_factory, job.id)
    assert message.sent_at is not None and message.publish_attempts == 1
    make_due(session_factory)
    assert relay_outbox(session_factory, celery) == 0  # sent: never sent twice


def test_the_api_marks_the_messages_it_sent_in_batches_off_the_request_path(session_factory, celery, redis_url):
    jobs = [submit_as_the_api(session_factory) for _ in range(5)]
    marks = SentMarks(session_factory.kw["bind"], gather_seconds=0.05)

    for job in jobs:
        publish_submitted(session_factory.kw["bind"], celery, job, marks)

    assert pending_job_ids(redis_url, [QUEUE], delivered_within_seconds=5) == {job.id for job in jobs}
    wait_until(lambda: all(message_of(session_factory, job.id).sent_at is not None for job in jobs), timeout=30,
               message="the batch marked every sent message")
    assert [message_of(session_factory, job.id).publish_attempts for job in jobs] == [1] * 5
    make_due(session_factory)
    assert relay_outbox(session_factory, celery) == 0  # marked: never sent twice
    assert marks.flush() == 0  # nothing left pending; the thread ended with its last batch
    wait_until(lambda: marks._thread is None, timeout=10, message="the marking thread ended")


def test_marks_that_cannot_be_written_leave_the_messages_to_the_relay(session_factory, celery, redis_url):
    job = submit_as_the_api(session_factory)
    marks = SentMarks(session_factory.kw["bind"], gather_seconds=60)  # flushed by hand below
    publish_submitted(session_factory.kw["bind"], celery, job, marks)
    marks.engine = session_factory.kw["bind"].execution_options(schema_translate_map={None: "no_such_schema"})

    assert marks.flush() == 1  # the UPDATE fails: logged, not raised

    assert message_of(session_factory, job.id).sent_at is None
    make_due(session_factory)
    assert relay_outbox(session_factory, celery) == 1  # sent again after its grace; the claim drops the duplicate


def test_a_new_jobs_message_the_api_could_not_send_is_due_for_the_relay_at_once(session_factory, celery, redis_url):
    job = submit_as_the_api(session_factory)
    unreachable = make_celery(Settings(redis_url=CLOSED_PORT_URL, queue_evaluate=QUEUE))

    with pytest.raises(BROKER_DOWN_ERRORS):
        publish_submitted(session_factory.kw["bind"], unreachable, job)

    message = message_of(session_factory, job.id)
    assert (message.sent_at, message.publish_attempts) == (None, 0)
    assert message.available_at <= utcnow() and message.last_error.startswith("OperationalError")
    assert relay_outbox(session_factory, celery) == 1
    assert pending_job_ids(redis_url, [QUEUE], delivered_within_seconds=5) == {job.id}


def test_a_new_job_whose_api_died_before_sending_is_sent_by_the_relay_after_the_grace(session_factory, celery,
                                                                                      redis_url):
    job = submit_as_the_api(session_factory)
    assert relay_outbox(session_factory, celery) == 0

    make_due(session_factory)  # the grace has passed and the API never sent it

    assert relay_outbox(session_factory, celery) == 1
    assert pending_job_ids(redis_url, [QUEUE], delivered_within_seconds=5) == {job.id}

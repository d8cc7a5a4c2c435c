"""The outbox relay: publishes committed task messages to the broker and marks them sent."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Iterable
from datetime import timedelta

import kombu.exceptions
import redis.exceptions
from celery import Celery
from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from db.base import utcnow
from db.models import Job, OutboxMessage
from db.services.jobs import TASK_NAMES, add_event, fail_queued_job

log = logging.getLogger(__name__)

# Jobs say 9 = most urgent; kombu's Redis transport serves 0 first.
CELERY_PRIORITY_MAX = 9
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
# The broker cannot be reached: every later message would fail the same way. Celery re-raises the
# transport's connection and channel errors as kombu's OperationalError; the rest are raised raw
# when they happen outside its retry wrapper.
BROKER_DOWN_ERRORS = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)
MAX_PUBLISH_FAILURES = 5  # failures of one message (not outages) before its job fails
PUBLISH_BACKOFF_SECONDS = 10.0  # times the failures so far: 10 s, 20 s, 30 s, 40 s
MAX_ERROR_CHARS = 2000
# The API sends a new job's message itself, right after the commit, and writes that message due only
# this much later: the relay never sends it at the same time, and sends it if the API died in between.
SUBMIT_PUBLISH_GRACE_SECONDS = 15.0


def relay_outbox(
    session_factory: sessionmaker[Session],
    celery_app: Celery,
    *,
    job_ids: Iterable[int] | None = None,
    limit: int = 200,
) -> int:
    """Publish due, unsent outbox messages; return how many were sent."""
    with session_factory() as session, session.begin():
        sent = 0
        for message in session.scalars(_due(session, job_ids, limit)):
            try:
                _publish(celery_app, message)
            except BROKER_DOWN_ERRORS as exc:  # keep the row, charge no attempt: the next pass retries
                message.last_error = _describe(exc)
                log.warning("outbox: broker unreachable, sending of job %s deferred: %s", message.job_id, exc)
                break
            except Exception as exc:  # this message only; the rest of the batch still goes out
                _record_failure(session, message, exc)
                continue
            message.sent_at = utcnow()
            message.publish_attempts += 1
            sent += 1
        return sent


def publish_submitted(engine: Engine, celery_app: Celery, job: Job, marks: SentMarks | None = None) -> None:
    """Send the message of a job just committed by `create_job(..., publish_grace_seconds=...)`, then
    mark it sent (now, or in `marks`' next batch); if it cannot be sent, make it due now, so that the
    relay's next pass retries it (and counts the failures), and re-raise.

    One UPDATE instead of the relay's select-and-update: the grace keeps the relay off the message meanwhile.
    """
    try:
        _send(celery_app, TASK_NAMES[job.kind], job.id, job.queue, job.priority)
    except Exception as exc:
        with engine.begin() as connection:
            connection.execute(_unsent([job.id]).values(available_at=utcnow(), last_error=_describe(exc)))
        raise
    if marks is not None:
        marks.add(job.id)
    else:
        _mark_sent(engine, [job.id])


class SentMarks:
    """Marks the messages an API process has just sent as sent, many in one UPDATE, off the request path.

    A mark lost with the process (killed before its batch) costs what a lost mark always cost: the relay
    sends the message again once its grace has passed, and the claim drops the duplicate.
    """

    def __init__(self, engine: Engine, gather_seconds: float = 0.1) -> None:
        self.engine = engine
        self.gather_seconds = gather_seconds  # how long a batch gathers the marks of concurrent submissions
        self._lock = threading.Lock()
        self._pending: list[int] = []
        self._thread: threading.Thread | None = None
        self._at_exit = False

    def add(self, job_id: int) -> None:
        with self._lock:
            self._pending.append(job_id)
            if self._thread is None:  # one thread while marks are pending; it ends when none are left
                self._thread = threading.Thread(target=self._run, name="outbox-marks", daemon=True)
                self._thread.start()
                if not self._at_exit:
                    atexit.register(self.flush)
                    self._at_exit = True

    def flush(self) -> int:
        """Mark every pending message sent now; return how many were pending."""
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            try:
                _mark_sent(self.engine, batch)
            except Exception:  # the relay sends these again after their grace; the claim drops the duplicates
                log.warning("outbox: could not mark %d sent messages; the relay will send them again",
                            len(batch), exc_info=True)
        return len(batch)

    def _run(self) -> None:
        while True:
            time.sleep(self.gather_seconds)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
            self.flush()


def _unsent(job_ids: list[int]):
    return update(OutboxMessage).where(OutboxMessage.job_id.in_(job_ids), OutboxMessage.sent_at.is_(None))


def _mark_sent(engine: Engine, job_ids: list[int]) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # A crash that loses this mark costs a second message, which the claim drops: no need to
            # wait for the WAL to reach the disk.
            connection.execute(text("SET LOCAL synchronous_commit TO OFF"))
        connection.execute(_unsent(job_ids).values(sent_at=utcnow(),
                                                   publish_attempts=OutboxMessage.publish_attempts + 1))


def _due(session: Session, job_ids: Iterable[int] | None, limit: int):
    """Select the unsent messages that are due, oldest first, skipping rows another relay holds."""
    query = (
        select(OutboxMessage)
        .where(OutboxMessage.sent_at.is_(None), OutboxMessage.available_at <= utcnow())
        .order_by(OutboxMessage.id)
        .limit(limit)
    )
    if job_ids is not None:
        query = query.where(OutboxMessage.job_id.in_(list(job_ids)))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return query


def _publish(celery_app: Celery, message: OutboxMessage) -> None:
    _send(celery_app, message.task_name, message.job_id, message.queue, message.priority)


def _send(celery_app: Celery, task_name: str, job_id: int, queue: str, priority: int) -> None:
    celery_app.send_task(
        task_name,
        args=[job_id],
        queue=queue,
        priority=CELERY_PRIORITY_MAX - priority,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )


def _record_failure(session: Session, message: OutboxMessage, exc: Exception) -> None:
    """Note why a message could not be sent on its job; retry it later, or give up and fail the job."""
    message.publish_attempts += 1
    message.last_error = _describe(exc)
    attempt = message.publish_attempts
    log.warning("outbox: job %s's message could not be sent (attempt %s of %s)", message.job_id, attempt,
                MAX_PUBLISH_FAILURES, exc_info=exc)
    if attempt >= MAX_PUBLISH_FAILURES:
        _give_up(session, message)
        return
    delay = PUBLISH_BACKOFF_SECONDS * attempt
    message.available_at = utcnow() + timedelta(seconds=delay)
    add_event(
        session, message.job_id, "log",
        f"the task message of this job could not be sent (attempt {attempt} of {MAX_PUBLISH_FAILURES}): "
        f"{message.last_error}; retrying in {delay:.0f} s",
        level="error", data={"action": "publish_failed", "attempt": attempt, "error": message.last_error},
    )


def _give_up(session: Session, message: OutboxMessage) -> None:
    """Fail the still-queued job whose message keeps failing, and drop the message."""
    reason = (
        f"its task message could not be sent to the broker in {message.publish_attempts} attempts "
        f"(last error: {message.last_error}); submit the job again, and report it if this repeats"
    )
    if not fail_queued_job(session, message.job_id, code="publish_failed", reason=reason):
        add_event(
            session, message.job_id, "log",
            f"gave up sending a task message after {message.publish_attempts} attempts "
            f"(last error: {message.last_error}); the job had left the queue, so it goes on",
            level="error", data={"action": "publish_abandoned", "error": message.last_error},
        )
    session.delete(message)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]

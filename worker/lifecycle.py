"""Claim, heartbeat, fence and finish: the life of one job attempt inside a worker process."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.enums import JobStatus
from db.base import utcnow
from db.models import Job
from db.services.estimates import check_deadline
from db.services.schedule import Window, parse_windows, window_closes, window_opens, zone
from db.services.jobs import add_event
from db.services.leases import (
    Lease,
    claim_next,
    fenced_update,
    finish_job,
    pause_job,
    release_job,
    renew_lease,
    wake_next_in_line,
)
from worker import state
from worker.config import Settings
from worker.errors import JobInterrupted, PermanentJobError, TransientJobError
from worker.storage import Storage
from worker.sweeper import backoff_seconds

log = logging.getLogger(__name__)

Finalize = Callable[[Session], dict[str, Any]]


def worker_identity(pid: int | None = None) -> str:
    """Return the lease owner name of this process (or of process `pid` on this host)."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


class JobContext:
    """A running attempt: implements `worker.ml.hooks.JobHooks` with fenced writes."""

    def __init__(self, session_factory: sessionmaker[Session], settings: Settings, lease: Lease, job: Job):
        self.session_factory = session_factory
        self.settings = settings
        self.lease = lease
        self.job = job
        self.storage = Storage.from_settings(settings)
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self.time_up = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time: events reach the table in the order reported
        self._progress: dict[str, Any] = {}
        self._events: list[dict[str, Any]] = []
        self._started = time.monotonic()
        self._last_renewed = self._started
        self._deadline = self._started + settings.time_limit_for(job.kind)
        self.window, self._window_closes = _window_of(settings, job)  # the run window it keeps to, if any
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job.id}", daemon=True)

    # -- JobHooks -------------------------------------------------------------------------
    def progress(self, *, fraction, stage, done=None, total=None) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        elapsed = time.monotonic() - self._started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0.01 else None
        with self._lock:
            self._progress = dict(
                progress_fraction=fraction, progress_stage=stage, progress_done=done,
                progress_total=total, eta_seconds=eta,
            )

    def metric(self, step, values) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
        self._event("metric", "", step=step, data=clean)

    def log(self, message) -> None:
        self._event("log", message)

    def check(self) -> None:
        if self.lost.is_set():
            raise JobInterrupted("this attempt lost its lease; another worker owns the job", code="lease_lost")
        if self.cancelled.is_set():
            raise JobInterrupted("cancelled by request", code="cancelled")
        reason = self.stop_requested()
        if reason == "shutdown":
            raise JobInterrupted("the worker is shutting down; the job goes back to the queue", code="shutdown")
        if reason == "window_closed":
            raise JobInterrupted(f"its run window {self.window} closed", code="window_closed")
        if reason == "time_limit":
            limit = self.settings.time_limit_for(self.job.kind)
            raise JobInterrupted(
                f"the job ran past its time limit of {limit} s (NIGHTSHIFT_TIME_LIMIT_{self.job.kind.upper()}); "
                "its last checkpoint is kept: give it fewer rows or steps, or raise the limit",
                code="time_limit",
            )

    def stop_requested(self) -> str | None:
        if state.shutdown_requested.is_set():
            return "shutdown"
        if self.time_up.is_set() or time.monotonic() >= self._deadline:
            return "time_limit"
        if self._window_closes is not None and utcnow() >= self._window_closes:
            return "window_closed"
        return None

    def checkpoint_saved(self, path: Path, step: int) -> None:
        """Write the checkpoint's event and everything reported before it now, not at the next beat.

        Called before the checkpoint is marked complete: a process killed after the mark leaves no hole
        in the job's metrics between the last beat and the step its next attempt resumes from.
        """
        self._event("log", f"checkpoint saved at step {step}", step=step, data={"path": str(path)})
        self.flush()

    # -- heartbeat ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.heartbeat_seconds + 5)
        if not self.lost.is_set():  # a lost lease must not be extended on the way out
            self.flush()

    def flush(self) -> None:
        """Write progress and buffered events if this attempt still owns the job."""
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            progress, events, self._events = self._progress, self._events, []
        try:
            with self.session_factory() as session, session.begin():
                owned, cancel = renew_lease(
                    session, self.lease, lease_seconds=self.settings.lease_seconds, progress=progress
                )
                if owned:
                    for event in events:
                        add_event(session, self.job.id, epoch=self.lease.epoch, **event)
        except OperationalError as exc:  # database unreachable: retry next beat
            log.warning("heartbeat of job %s failed: %s", self.job.id, exc)
            with self._lock:
                self._events[:0] = events
            if time.monotonic() - self._last_renewed > self.settings.lease_seconds:
                self.lost.set()  # our lease has run out: another attempt may own the job now
            return
        if owned:
            self._last_renewed = time.monotonic()
        if not owned:
            self.lost.set()
        elif cancel:
            self.cancelled.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            self.flush()
            if self.lost.is_set():
                return

    def _event(self, type_: str, message: str, **fields: Any) -> None:
        with self._lock:
            self._events.append(dict(type_=type_, message=message, **fields))


def run_job(
    job_id: int,
    runner: Callable[[JobContext], Finalize] | Mapping[str, Callable[[JobContext], Finalize]],
    *,
    session_factory: sessionmaker[Session],
    settings: Settings,
) -> str:
    """Claim the job the wake-up message for job `job_id` should start (`claim_next`: the first in line on
    its queue, maybe another), run it with `runner` (or `runner[kind]`), and record exactly one outcome;
    return that outcome."""
    with session_factory() as session, session.begin():
        lease = claim_next(session, job_id, owner=worker_identity(), lease_seconds=settings.lease_seconds,
                           max_interruptions=settings.max_interruptions,
                           max_running_per_tenant=settings.max_running_per_tenant)
        job = session.get(Job, lease.job_id) if lease else None
        if job is not None:
            check_deadline(session, job, starting_at=utcnow(), when="its start")  # the estimate, measured anew
    if lease is None:
        log.info("job %s: nothing to claim on its queue (duplicate delivery, finished or cancelled); dropped",
                 job_id)
        return "dropped"
    if lease.job_id != job_id:
        log.info("message of job %s starts job %s, first in line on queue %s", job_id, lease.job_id, job.queue)
    if isinstance(runner, Mapping):
        runner = runner[job.kind]
    context = JobContext(session_factory, settings, lease, job)
    context.start()
    try:
        return _run(context, runner)
    finally:
        if settings.max_running_per_tenant:
            _wake_held_back(session_factory, job, settings.max_running_per_tenant)


def _wake_held_back(session_factory: sessionmaker[Session], job: Job, cap: int) -> None:
    """A job ended: the jobs a per-tenant cap held back on its queue may start (beat relays the message)."""
    try:
        with session_factory() as session, session.begin():
            wake_next_in_line(session, job.queue, job.kind, cap=cap)
    except OperationalError as exc:  # the sweeper finds the missing message later
        log.warning("job %s ended; no wake-up for its queue (%s)", job.id, exc)


def _run(context: JobContext, runner: Callable[[JobContext], Finalize]) -> str:
    """Run the claimed job and record exactly one outcome."""
    settings, job, job_id = context.settings, context.job, context.job.id
    try:
        finalize = runner(context)
        context.stop()
        return _succeed(context, finalize)
    except JobInterrupted as exc:
        context.stop()
        return _interrupted(context, exc)
    except PermanentJobError as exc:
        context.stop()
        return _fail(context, exc.code, exc.message)
    except (TransientJobError, OperationalError) as exc:
        context.stop()
        return _retry(context, str(exc))
    except SoftTimeLimitExceeded:  # Celery's backstop fired: the job did not stop at its own limit
        context.stop()
        limit = settings.time_limit_for(job.kind)
        return _fail(context, "time_limit", f"the job ran past its time limit of {limit} s and did not stop "
                     "cleanly; give it fewer rows or steps, or raise the limit")
    except Exception as exc:
        context.stop()
        log.exception("job %s crashed", job_id)
        return _fail(context, "internal_error", f"the job crashed: {type(exc).__name__}: {exc}")


def _succeed(context: JobContext, finalize: Finalize) -> str:
    with context.session_factory() as session, session.begin():
        if not fenced_update(session, context.lease):  # lock the row before side effects
            session.rollback()
            return "lost"
        values = finalize(session)
        finish_job(session, context.lease, JobStatus.SUCCEEDED, progress_fraction=1.0, eta_seconds=0, **values)
    return "succeeded"


def _interrupted(context: JobContext, exc: JobInterrupted) -> str:
    if exc.code == "cancelled":
        with context.session_factory() as session, session.begin():
            finish_job(session, context.lease, JobStatus.CANCELLED, error_code="cancelled",
                       error_message=exc.message)
        return "cancelled"
    if exc.code == "time_limit":
        return _fail(context, "time_limit", exc.message)
    if exc.code == "window_closed":
        return _pause(context)
    if exc.code == "shutdown":
        with context.session_factory() as session, session.begin():
            release_job(session, context.lease, reason=exc.message, delay_seconds=0, code="shutdown",
                        refund_attempt=True)
        return "released"
    log.warning("job %s: %s", context.job.id, exc.message)
    return "lost"


def _window_of(settings: Settings, job: Job) -> tuple[Window | None, datetime | None]:
    """The run window a job keeps to and when its current opening closes (now, if it is closed now)."""
    if not job.run_window:
        return None, None
    try:
        window = parse_windows(settings.run_windows).get(job.run_window)
        tz = zone(settings.timezone)
    except ValueError as exc:
        log.warning("job %s: run windows misconfigured (%s); it runs to its end", job.id, exc)
        return None, None
    if window is None:
        log.warning("job %s: run window %r is no longer configured; it runs to its end", job.id, job.run_window)
        return None, None
    now = utcnow()
    return window, window_closes(window, tz, now) or now


def _pause(context: JobContext) -> str:
    """The job's run window closed: back to `scheduled` until it opens again, keeping what this attempt saved."""
    window = context.window
    opens = window_opens(window, zone(context.settings.timezone), utcnow())
    kept = "its committed chunks" if context.job.kind == "batch_inference" else "its last checkpoint"
    reason = (f"its run window {window} closed: paused with {kept}; it resumes when the window opens again at "
              f"{opens:%Y-%m-%d %H:%M:%S} UTC")
    with context.session_factory() as session, session.begin():
        paused = pause_job(session, context.lease, until=opens, reason=reason)
    return "paused" if paused else "lost"


def _fail(context: JobContext, code: str, message: str) -> str:
    with context.session_factory() as session, session.begin():
        finish_job(session, context.lease, JobStatus.FAILED, error_code=code, error_message=message)
    return "failed"


def _retry(context: JobContext, reason: str) -> str:
    if context.lease.attempt >= context.job.max_attempts:
        return _fail(context, "retries_exhausted", f"gave up after {context.lease.attempt} attempts: {reason}")
    delay = backoff_seconds(context.settings, context.lease.attempt)
    with context.session_factory() as session, session.begin():
        release_job(session, context.lease, reason=f"transient error, retrying: {reason}", delay_seconds=delay)
    return "retrying"

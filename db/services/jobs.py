"""Job submission, queries, events and cancellation; callers own the session and commit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Text, cast, insert, or_, select, update
from sqlalchemy.orm import Session, make_transient_to_detached

from db.base import utcnow
from db.enums import JobStatus, check_transition
from db.errors import Conflict, NotFound
from db.models import Job, JobDataset, JobEvent, OutboxMessage
from db.services.ids import is_row_id
from db.services.lines import jobs_ahead

TASK_NAMES = {
    "finetune": "jobs.finetune",
    "evaluate": "jobs.evaluate",
    "batch_inference": "jobs.batch_inference",
    "pretrain": "jobs.pretrain",
    "merge": "jobs.merge",
}


def status_guard(current: JobStatus, new: JobStatus):
    """Return the WHERE clause of a guarded UPDATE moving a job from `current` to `new`.

    The move must be in `db.enums.TRANSITIONS`, so code cannot write an illegal one.
    """
    check_transition(current, new)
    return Job.status == current


def create_job(
    session: Session,
    *,
    tenant_id: int,
    kind: str,
    task: str,
    params: dict[str, Any],
    queue: str,
    priority: int = 5,
    max_attempts: int = 3,
    idempotency_key: str | None = None,
    datasets: list[tuple[int, str]] = (),
    publish_grace_seconds: float = 0.0,
    not_before: datetime | None = None,
    deadline: datetime | None = None,
    run_window: str | None = None,
    estimate: Callable[[Session, Job, list[tuple[int, str]]], float | None] | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job and its outbox message, or a scheduled one (`not_before` in the future: no message
    until the sweeper releases it then); return (job, created).

    `publish_grace_seconds`: the caller sends the message itself after the commit; the relay sends it
    only once this has passed unsent. `estimate(session, job, datasets)`: the new job's run time in seconds,
    stored with its INSERT (`db.services.estimates.run_seconds`).
    """
    if idempotency_key is not None:
        existing = session.scalars(
            select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key)
        ).first()
        if existing is not None:
            asked = (kind, task, params, priority, max_attempts)
            if asked != (existing.kind, existing.task, existing.params, existing.priority, existing.max_attempts):
                raise Conflict(
                    "this Idempotency-Key was already used for a different request; "
                    "use a new key for a new job",
                    code="idempotency_key_reused",
                    details={"job_id": existing.id},
                )
            return existing, False
    now = utcnow()
    status = JobStatus.SCHEDULED if not_before is not None and not_before > now else JobStatus.QUEUED
    # Every column, so that the job below is complete without reading it back. One Core INSERT: the unit of
    # work cost about as much as the rest of a submission (a POST /jobs writes one job and reads none back).
    values = _new_job_values({
        "tenant_id": tenant_id, "kind": kind, "task": task, "status": status, "params": params, "priority": priority,
        "queue": queue, "idempotency_key": idempotency_key, "max_attempts": max_attempts, "not_before": not_before,
        "deadline": deadline, "run_window": run_window, "created_at": now, "updated_at": now})
    job = Job(**values)
    if estimate is not None:
        values["estimated_run_seconds"] = job.estimated_run_seconds = estimate(session, job, list(datasets))
    job.id = session.execute(_INSERT_JOB, values).inserted_primary_key[0]
    if datasets:
        session.execute(_INSERT_LINK, [{"job_id": job.id, "dataset_id": d, "role": role} for d, role in datasets])
    # The session takes it as a row it loaded: later changes to it are flushed as UPDATEs, and its
    # `datasets` are read when first used.
    make_transient_to_detached(job)
    session.add(job)
    if status == JobStatus.SCHEDULED:
        add_event(session, job.id, "status", f"{kind} job scheduled to start on '{queue}' at "
                  f"{not_before:%Y-%m-%d %H:%M:%S} UTC", data={"status": "scheduled"})
        return job, True
    # Inserted at once, not through the unit of work: they are written, never read back here.
    session.execute(_INSERT_MESSAGE, _message_values(job, publish_grace_seconds))
    session.execute(_INSERT_EVENT, {"job_id": job.id, "type": "status", "level": "info",
                                    "message": f"{kind} job queued on '{queue}'", "data": {"status": "queued"}})
    return job, True


def _new_job_values(given: dict[str, Any]) -> dict[str, Any]:
    """Every column of a new job: `given`, else the model's default (as the unit of work applies it), else None."""
    values = {}
    for column in _JOB_COLUMNS:
        if column.key in given:
            values[column.key] = given[column.key]
        elif column.default is not None:
            values[column.key] = column.default.arg(None) if column.default.is_callable else column.default.arg
        else:
            values[column.key] = None
    return values


_JOB_COLUMNS = [column for column in Job.__table__.columns if not column.primary_key]
_INSERT_JOB = insert(Job.__table__)
_INSERT_LINK = insert(JobDataset.__table__)
_INSERT_MESSAGE = insert(OutboxMessage.__table__)
_INSERT_EVENT = insert(JobEvent.__table__)


def enqueue(session: Session, job: Job, *, delay_seconds: float = 0.0) -> OutboxMessage:
    """Add an outbox message that will wake a worker for `job`."""
    message = _message_for(job, delay_seconds)
    session.add(message)
    session.flush()
    return message


def _message_for(job: Job, delay_seconds: float) -> OutboxMessage:
    return OutboxMessage(**_message_values(job, delay_seconds))


def _message_values(job: Job, delay_seconds: float) -> dict[str, Any]:
    return {"job_id": job.id, "task_name": TASK_NAMES[job.kind], "queue": job.queue, "priority": job.priority,
            "available_at": utcnow() + timedelta(seconds=delay_seconds)}


def fail_queued_job(session: Session, job_id: int, *, code: str, reason: str) -> bool:
    """Fail a job that has not started, with the reason shown to its owner; False if it is no longer queued."""
    now = utcnow()
    failed = session.execute(
        update(Job)
        .where(Job.id == job_id, status_guard(JobStatus.QUEUED, JobStatus.FAILED))
        .values(status=JobStatus.FAILED, finished_at=now, updated_at=now, error_code=code, error_message=reason)
    ).rowcount == 1
    if failed:
        add_event(session, job_id, "status", f"job failed: {reason}", level="error",
                  data={"status": "failed", "error_code": code})
        _advance_pipelines(session, job_id)
    return failed


def _advance_pipelines(session: Session, job_id: int) -> None:
    """Release or cancel the pipeline steps waiting on a job that just ended, in the same transaction."""
    from db.services.pipelines import advance  # it builds jobs with this module's functions

    advance(session, ended=[job_id])


def get_job(session: Session, tenant_id: int, job_id: int) -> Job:
    """Return the tenant's job or raise NotFound."""
    job = session.get(Job, job_id) if is_row_id(job_id) else None
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"job {job_id} not found", code="job_not_found")
    return job


def list_jobs(
    session: Session,
    tenant_id: int,
    *,
    status: str | None = None,
    kind: str | None = None,
    task: str | None = None,
    model: str | None = None,
    search: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[Job]:
    """Return the tenant's jobs newest first, `limit` of them from below `before_id`.

    `model` matches the model a job uses or registers (`params.model`, `params.model_name` or
    `params.base_model`); `search` is a case-insensitive substring of the parameters or the error.
    Both scan the tenant's jobs newest first and stop at `limit` matches.
    """
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    if task:
        query = query.where(Job.task == task)
    if model:
        query = query.where(or_(*(Job.params[key].as_string() == model
                                  for key in ("model", "model_name", "base_model"))))
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(or_(cast(Job.params, Text).ilike(pattern, escape="\\"),
                                Job.error_message.ilike(pattern, escape="\\")))
    if before_id:
        query = query.where(Job.id < before_id)
    return list(session.scalars(query.order_by(Job.id.desc()).limit(limit)))


def queue_position(session: Session, job: Job) -> int | None:
    """Return 1 for the queued job of its kind that a worker of its queue takes next, 2 for the one after, ...
    (higher priority first, then oldest first, across tenants; `db.services.leases.claim_next` may move a
    tenant with fewer jobs running ahead at equal priority); None unless the job is queued."""
    if job.status != JobStatus.QUEUED:
        return None
    return jobs_ahead(session, job, sums=False).jobs + 1


def add_event(
    session: Session,
    job_id: int,
    type_: str,
    message: str = "",
    *,
    step: int | None = None,
    data: dict[str, Any] | None = None,
    level: str = "info",
    epoch: int | None = None,
) -> JobEvent:
    """Append an event (log line, metric point, status change, rescue) to a job."""
    event = JobEvent(
        job_id=job_id, type=type_, message=message, step=step, data=data or {}, level=level, epoch=epoch
    )
    session.add(event)
    return event


EVENT_FIELDS = (JobEvent.id, JobEvent.created_at, JobEvent.type, JobEvent.level, JobEvent.message, JobEvent.step,
                JobEvent.data)


def list_events(
    session: Session, job_id: int, *, after_id: int = 0, limit: int = 500, type_: str | None = None
) -> list[Row]:
    """Return a job's events with id above `after_id`, oldest first, as read-only rows of EVENT_FIELDS.

    Rows, not ORM objects: a page of 500 events is read in about half the time.
    """
    query = select(*EVENT_FIELDS).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
    if type_:
        query = query.where(JobEvent.type == type_)
    return list(session.execute(query.order_by(JobEvent.id).limit(limit)))


def request_cancel(session: Session, tenant_id: int, job_id: int) -> Job:
    """Cancel a queued or waiting job at once, or flag a running one for its heartbeat to stop."""
    job = get_job(session, tenant_id, job_id)
    if JobStatus(job.status).terminal:
        raise Conflict(f"job {job_id} already {job.status}; nothing to cancel", code="job_finished")
    now = utcnow()
    before = (JobStatus(job.status) if job.status in (JobStatus.QUEUED, JobStatus.WAITING, JobStatus.SCHEDULED)
              else JobStatus.QUEUED)
    cancelled_now = session.execute(
        update(Job)
        .where(Job.id == job_id, status_guard(before, JobStatus.CANCELLED))
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now, updated_at=now)
    ).rowcount
    if cancelled_now:
        add_event(session, job_id, "status", "cancelled before it started", data={"status": "cancelled"})
        _advance_pipelines(session, job_id)
    else:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True, updated_at=now))
        add_event(session, job_id, "log", "cancel requested; the worker stops at its next heartbeat")
    session.flush()
    session.refresh(job)
    return job


"""Leases with fencing: the only way a worker takes, keeps and gives up a job.

Every statement is a single guarded UPDATE, so two workers can never both believe they own a
job: the claim bumps `epoch`, and every later write carries `WHERE epoch = :mine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.enums import JobStatus
from db.models import Job
from db.services.jobs import add_event, enqueue


@dataclass(frozen=True)
class Lease:
    job_id: int
    epoch: int
    owner: str
    attempt: int


def claim_job(session: Session, job_id: int, *, owner: str, lease_seconds: float) -> Lease | None:
    """Atomically take a queued job, or a running one whose lease expired; None if not ours."""
    now = utcnow()
    row = _claim(session, job_id, Job.status == JobStatus.QUEUED, owner, now, lease_seconds)
    if row is None:  # a redelivered message may find its job's previous attempt dead
        expired = and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        row = _claim(session, job_id, expired, owner, now, lease_seconds)
        if row is not None:
            add_event(
                session, job_id, "rescue", f"lease of attempt {row[1] - 1} expired; attempt {row[1]} takes over",
                data={"action": "lease_expired", "attempt": row[1] - 1}, level="warning", epoch=row[0],
            )
    if row is None:
        return None
    epoch, attempt = row
    add_event(
        session, job_id, "status", f"attempt {attempt} started on {owner}",
        data={"status": "running", "attempt": attempt}, epoch=epoch,
    )
    return Lease(job_id=job_id, epoch=epoch, owner=owner, attempt=attempt)


def _claim(session: Session, job_id: int, claimable, owner: str, now, lease_seconds: float):
    return session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False))
        .where(Job.attempts < Job.max_attempts)
        .values(
            status=JobStatus.RUNNING,
            epoch=Job.epoch + 1,
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            updated_at=now,
            error_code=None,
            error_message=None,
        )
        .returning(Job.epoch, Job.attempts)
    ).first()


def renew_lease(
    session: Session, lease: Lease, *, lease_seconds: float, progress: dict[str, Any] | None = None
) -> tuple[bool, bool]:
    """Extend the lease and store progress; return (still_owned, cancel_requested)."""
    now = utcnow()
    values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=lease_seconds), "updated_at": now}
    values.update(progress or {})
    row = session.execute(
        update(Job)
        .where(_fenced(lease))
        .values(**values)
        .returning(Job.cancel_requested)
    ).first()
    if row is None:
        return False, False
    return True, bool(row[0])


def fenced_update(session: Session, lease: Lease, **values: Any) -> bool:
    """Write job columns only if this lease still owns the job."""
    values.setdefault("updated_at", utcnow())
    return session.execute(update(Job).where(_fenced(lease)).values(**values)).rowcount == 1


def finish_job(
    session: Session,
    lease: Lease,
    status: JobStatus,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    **values: Any,
) -> bool:
    """End the job in a terminal state if this lease still owns it."""
    assert status.terminal
    now = utcnow()
    done = fenced_update(
        session,
        lease,
        status=status,
        finished_at=now,
        lease_expires_at=None,
        error_code=error_code,
        error_message=error_message,
        **values,
    )
    if done:
        message = f"job {status}" + (f": {error_message}" if error_message else "")
        add_event(
            session, lease.job_id, "status", message,
            data={"status": str(status), "error_code": error_code}, epoch=lease.epoch,
            level="error" if status == JobStatus.FAILED else "info",
        )
    return done


def release_job(
    session: Session,
    lease: Lease,
    *,
    reason: str,
    delay_seconds: float,
    code: str = "requeued",
    refund_attempt: bool = False,
) -> bool:
    """Hand a running job back to the queue (shutdown, transient error) after `delay_seconds`.

    A clean hand-back on shutdown refunds its attempt: deploys must not use up `max_attempts`.
    """
    now = utcnow()
    job = session.get(Job, lease.job_id)
    done = fenced_update(
        session,
        lease,
        status=JobStatus.QUEUED,
        attempts=Job.attempts - 1 if refund_attempt else Job.attempts,
        lease_owner=None,
        lease_expires_at=None,
        not_before=now + timedelta(seconds=delay_seconds),
        error_code=code,
        error_message=reason,
    )
    if done:
        session.refresh(job)
        enqueue(session, job, delay_seconds=delay_seconds)
        add_event(session, job.id, "rescue", reason, data={"action": code, "delay_seconds": delay_seconds},
                  epoch=lease.epoch)
    return done


def expired_leases(session: Session, *, now: datetime | None = None, limit: int = 100) -> list[Job]:
    """Return running jobs whose lease ran out (their worker died or stalled)."""
    now = now or utcnow()
    query = (
        select(Job)
        .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        .order_by(Job.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def rescue_expired(
    session: Session, job: Job, *, backoff_seconds: float, hard_limit_seconds: float | None = None
) -> str | None:
    """Requeue a job whose lease expired, or fail it (past max_attempts or its hard time limit)."""
    now = utcnow()
    guard = and_(
        Job.id == job.id,
        Job.epoch == job.epoch,
        Job.status == JobStatus.RUNNING,
        Job.lease_expires_at < now,
    )
    killed_by_limit = (
        hard_limit_seconds is not None
        and job.started_at is not None
        and job.started_at + timedelta(seconds=hard_limit_seconds) <= now
    )
    if killed_by_limit:
        reason = (
            f"the job ran past its hard time limit of {hard_limit_seconds:.0f} s and its process was "
            "killed; give it fewer rows or steps, or raise the limit"
        )
        values = dict(status=JobStatus.FAILED, finished_at=now, error_code="time_limit", error_message=reason)
    elif job.attempts >= job.max_attempts:
        reason = (
            f"the worker running this job stopped responding on each of its {job.attempts} "
            "attempts; giving up (max_attempts reached)"
        )
        values = dict(status=JobStatus.FAILED, finished_at=now, error_code="worker_lost", error_message=reason)
    else:
        reason = (
            f"lease of attempt {job.attempts} (owner {job.lease_owner}) expired; "
            f"requeued with a {backoff_seconds:.0f}s backoff"
        )
        values = dict(status=JobStatus.QUEUED, not_before=now + timedelta(seconds=backoff_seconds))
    updated = session.execute(
        update(Job).where(guard).values(epoch=Job.epoch + 1, lease_owner=None, updated_at=now, **values)
    ).rowcount
    if not updated:
        return None
    session.refresh(job)
    if job.status == JobStatus.QUEUED:
        enqueue(session, job, delay_seconds=backoff_seconds)
        add_event(session, job.id, "rescue", reason, data={"action": "lease_expired", "attempt": job.attempts},
                  level="warning")
        return "requeued"
    add_event(session, job.id, "status", f"job failed: {reason}", data={"status": "failed"}, level="error")
    return "failed"


def _fenced(lease: Lease):
    return and_(Job.id == lease.job_id, Job.epoch == lease.epoch, Job.status == JobStatus.RUNNING)

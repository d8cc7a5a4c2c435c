"""Leases with fencing: the only way a worker takes, keeps and gives up a job.

Every statement is a single guarded UPDATE, so two workers can never both believe they own a
job: the claim bumps `epoch`, and every later write carries `WHERE epoch = :mine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, func, or_, select, true, update
from sqlalchemy.orm import Session

from db.base import utcnow
from db.enums import JobStatus, check_transition
from db.models import Job
from db.services.jobs import add_event, enqueue, status_guard
from db.services.pipelines import advance


@dataclass(frozen=True)
class Lease:
    job_id: int
    epoch: int
    owner: str
    attempt: int


def claim_job(
    session: Session, job_id: int, *, owner: str, lease_seconds: float, max_interruptions: int,
    take_queued: bool = True,
) -> Lease | None:
    """Atomically take a queued job (unless not `take_queued`), or a running one whose lease expired; None if
    not ours.

    Taking over an expired lease means the previous attempt's worker was lost: that attempt is
    counted as an interruption, not charged to the job (see `end_lost_attempt`).
    """
    now = utcnow()
    row = None
    if take_queued:
        row = _claim(session, job_id, status_guard(JobStatus.QUEUED, JobStatus.RUNNING), owner, now, lease_seconds)
    if row is None:  # a redelivered message may find its job's previous attempt dead
        expired = and_(status_guard(JobStatus.RUNNING, JobStatus.RUNNING), Job.lease_expires_at < now,
                       Job.interruptions + 1 < max_interruptions)  # else the sweeper fails it
        previous = session.scalar(select(Job.lease_owner).where(Job.id == job_id))
        row = _claim(session, job_id, expired, owner, now, lease_seconds, taking_over=True)
        if row is not None:
            add_event(
                session, job_id, "rescue",
                f"the lease of {previous} expired without a heartbeat (its worker or host was lost); "
                f"{owner} takes over; not charged to the job",
                data={"action": "lease_expired"}, level="warning", epoch=row[0],
            )
    if row is None:
        return None
    epoch, attempt, interruptions, max_attempts = row
    lost = f", after {interruptions} lost worker(s)" if interruptions else ""
    add_event(
        session, job_id, "status", f"started on {owner} (attempt {attempt} of {max_attempts}{lost})",
        data={"status": "running", "attempt": attempt}, epoch=epoch,
    )
    return Lease(job_id=job_id, epoch=epoch, owner=owner, attempt=attempt)


CLAIM_TRIES = 3


def claim_next(
    session: Session, job_id: int, *, owner: str, lease_seconds: float, max_interruptions: int,
    max_running_per_tenant: int = 0,
) -> Lease | None:
    """Take the job a wake-up message for job `job_id` should start: the first queued job of its queue and
    kind in SQL order, else `job_id` itself (queued, or running under a lease that expired); None if none.

    The order lives in the rows, not in Redis (RELIABILITY.md, "Where the order lives"): higher
    `priority` first; at equal priority the tenant with fewer jobs running, so one tenant's hundreds of
    queued jobs do not hold back another's one; then the oldest. A message only says "a job of this kind
    on this queue is due": its own job runs when a later message, or this one, finds it first in line.
    Jobs of one kind share a Celery task and so its time limits; between kinds, Redis' priority lists order
    the messages. With `max_running_per_tenant`, a tenant running that many jobs gets no new one (taking
    over its job after a lost lease is not a new one); its queued jobs wait for one of them to end.
    """
    row = session.execute(select(Job.queue, Job.kind).where(Job.id == job_id)).first()
    if row is None:
        return None
    tried: list[int] = []
    own_in_line = False
    for _ in range(CLAIM_TRIES):  # a job another worker took meanwhile: the next one in line
        candidate = session.scalar(_next_in_line(session, *row, skip=tried, cap=max_running_per_tenant))
        own_in_line = candidate == job_id
        if candidate is None or own_in_line:
            break
        lease = claim_job(session, candidate, owner=owner, lease_seconds=lease_seconds,
                          max_interruptions=max_interruptions)
        if lease is not None:
            return lease
        tried.append(candidate)
    return claim_job(session, job_id, owner=owner, lease_seconds=lease_seconds, max_interruptions=max_interruptions,
                     take_queued=own_in_line or not max_running_per_tenant)


def wake_next_in_line(session: Session, queue: str, kind: str, *, cap: int) -> int | None:
    """Add a wake-up message for the `kind` job of `queue` first in line, if any; return its id.

    With a per-tenant cap, a message can find every queued job's tenant at its cap and be dropped; when a job
    ends, this gives the jobs it held back a message again (a spare one is dropped at the claim).
    """
    candidate = session.scalar(_next_in_line(session, queue, kind, skip=[], cap=cap))
    if candidate is not None:
        enqueue(session, session.get(Job, candidate))
    return candidate


def _next_in_line(session: Session, queue: str, kind: str, *, skip: list[int], cap: int = 0):
    """The query of the queued `kind` job of `queue` to start next (locked, skipping locked ones, on PostgreSQL),
    of a tenant running fewer than `cap` jobs when `cap` is set."""
    now = utcnow()
    running = (select(Job.tenant_id, func.count().label("running")).where(Job.status == JobStatus.RUNNING)
               .group_by(Job.tenant_id).subquery())
    query = (
        select(Job.id)
        .outerjoin(running, running.c.tenant_id == Job.tenant_id)
        .where(Job.status == JobStatus.QUEUED, Job.queue == queue, Job.kind == kind, Job.cancel_requested.is_(False),
               Job.attempts < Job.max_attempts, or_(Job.not_before.is_(None), Job.not_before <= now))
        .where(Job.id.not_in(skip))
        .where(func.coalesce(running.c.running, 0) < cap if cap else true())
        .order_by(Job.priority.desc(), func.coalesce(running.c.running, 0), Job.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=Job, skip_locked=True)
    return query


def _claim(session: Session, job_id: int, claimable, owner: str, now, lease_seconds: float, *,
           taking_over: bool = False):
    # A takeover refunds the lost attempt and charges the new one: `attempts` stays as it is.
    charged = {"interruptions": Job.interruptions + 1} if taking_over else {"attempts": Job.attempts + 1}
    return session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.cancel_requested.is_(False))
        .where(Job.attempts < Job.max_attempts if not taking_over else Job.attempts <= Job.max_attempts)
        .values(
            status=JobStatus.RUNNING,
            epoch=Job.epoch + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            updated_at=now,
            error_code=None,
            error_message=None,
            **charged,
        )
        .returning(Job.epoch, Job.attempts, Job.interruptions, Job.max_attempts)
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
    check_transition(JobStatus.RUNNING, status)
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
        advance(session, ended=[lease.job_id])  # pipeline steps waiting on this job
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
    check_transition(JobStatus.RUNNING, JobStatus.QUEUED)
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


def pause_job(session: Session, lease: Lease, *, until: datetime, reason: str) -> bool:
    """Put a running job whose run window closed back to `scheduled` until `until` (its attempt refunded).

    No message is written: the sweeper releases it when the window opens again (`release_due`), and the
    next attempt resumes from what this one kept (a checkpoint, committed chunks).
    """
    check_transition(JobStatus.RUNNING, JobStatus.SCHEDULED)
    done = fenced_update(
        session,
        lease,
        status=JobStatus.SCHEDULED,
        attempts=Job.attempts - 1,
        lease_owner=None,
        lease_expires_at=None,
        not_before=until,
        eta_seconds=None,
    )
    if done:
        add_event(session, lease.job_id, "status", reason,
                  data={"status": JobStatus.SCHEDULED.value, "not_before": until.isoformat()}, epoch=lease.epoch)
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


class LostAttempt(StrEnum):
    """How a running attempt ended without reporting its own outcome."""

    # Its lease expired without a heartbeat: the worker or host died, stalled or lost the
    # database. Not the job's fault: counted in `interruptions`, capped by max_interruptions.
    LEASE_EXPIRED = "lease_expired"
    # Its worker saw the job's own process die (killed, out of memory, a crash in native code).
    # Maybe the job's fault: charged to `attempts`, capped by max_attempts (poison protection).
    PROCESS_DIED = "process_died"


def end_lost_attempt(
    session: Session,
    job: Job,
    how: LostAttempt,
    *,
    delay_seconds: float,
    max_interruptions: int,
    hard_limit_seconds: float | None = None,
    detail: str = "",
) -> str | None:
    """Requeue a running job whose attempt was lost, or fail it; return "requeued", "failed" or None.

    `job` is the row as read before; the UPDATE is guarded by its epoch (and, for a lease, by the
    lease having expired), so a second sweeper or a late report changes nothing.
    """
    now = utcnow()
    guard = and_(Job.id == job.id, Job.epoch == job.epoch, Job.lease_owner == job.lease_owner)
    if how == LostAttempt.LEASE_EXPIRED:
        guard = and_(guard, Job.lease_expires_at < now)
    outcome, values, reason = _lost_outcome(job, how, now, delay_seconds, max_interruptions, hard_limit_seconds,
                                            detail)
    new_status = JobStatus.QUEUED if outcome == "requeued" else JobStatus.FAILED
    updated = session.execute(
        update(Job)
        .where(guard, status_guard(JobStatus.RUNNING, new_status))
        .values(status=new_status, epoch=Job.epoch + 1, lease_owner=None, lease_expires_at=None, updated_at=now,
                **values)
    ).rowcount
    if not updated:
        return None
    session.refresh(job)
    if outcome == "requeued":
        enqueue(session, job, delay_seconds=delay_seconds)
        add_event(session, job.id, "rescue", reason, level="warning",
                  data={"action": str(how), "delay_seconds": delay_seconds, "detail": detail})
    else:
        action = "hard_time_limit" if values["error_code"] == "time_limit" else str(how)
        add_event(session, job.id, "status", f"job failed: {reason}", level="error",
                  data={"status": "failed", "error_code": values["error_code"], "action": action})
        advance(session, ended=[job.id])
    return outcome


def _lost_outcome(job: Job, how: LostAttempt, now: datetime, delay_seconds: float, max_interruptions: int,
                  hard_limit_seconds: float | None, detail: str) -> tuple[str, dict[str, Any], str]:
    """Decide what becomes of a lost attempt: (outcome, column values, reason in words)."""
    failed = dict(finished_at=now)
    if hard_limit_seconds is not None and job.started_at is not None \
            and job.started_at + timedelta(seconds=hard_limit_seconds) <= now:
        reason = (f"the job ran past its hard time limit of {hard_limit_seconds:.0f} s and its process was "
                  "killed; give it fewer rows or steps, or raise the limit")
        return "failed", failed | dict(error_code="time_limit", error_message=reason), reason
    why = f" ({detail})" if detail else ""
    if how == LostAttempt.PROCESS_DIED:
        if job.attempts >= job.max_attempts:
            reason = (f"the process running this job died on each of its {job.attempts} attempts{why}, for "
                      "example out of memory or a crash in native code; giving up (max_attempts reached)")
            return "failed", failed | dict(error_code="process_died", error_message=reason), reason
        reason = (f"the process running attempt {job.attempts} died{why} while its worker lived; "
                  f"requeued{_after(delay_seconds)} (attempt {job.attempts} of {job.max_attempts} used)")
        return "requeued", dict(not_before=now + timedelta(seconds=delay_seconds)), reason
    if job.interruptions + 1 >= max_interruptions:
        reason = (f"the worker running this job was lost {job.interruptions + 1} times (its host died, "
                  "stalled or lost the database); giving up (NIGHTSHIFT_MAX_INTERRUPTIONS reached)")
        values = dict(error_code="worker_lost", error_message=reason, interruptions=Job.interruptions + 1,
                      attempts=Job.attempts - 1)
        return "failed", failed | values, reason
    reason = (f"the lease of {job.lease_owner} expired without a heartbeat (its worker or host died, stalled "
              f"or lost the database); requeued{_after(delay_seconds)}; not charged to the job")
    values = dict(not_before=now + timedelta(seconds=delay_seconds), interruptions=Job.interruptions + 1,
                  attempts=Job.attempts - 1)
    return "requeued", values, reason


def _after(delay_seconds: float) -> str:
    return f" to start in {delay_seconds:.0f} s" if delay_seconds >= 1 else ""


def _fenced(lease: Lease):
    return and_(Job.id == lease.job_id, Job.epoch == lease.epoch, Job.status == JobStatus.RUNNING)

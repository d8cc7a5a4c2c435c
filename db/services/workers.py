"""Workers' heartbeats, and what the workers page shows: who is alive, what each runs, queue depths.

A worker's main process upserts its row every few seconds (worker.heartbeat), with the pids of its
pool processes. A running job's `lease_owner` is "<host>:<pid>" of the pool process that claimed it
(worker.lifecycle.worker_identity), so the job belongs to the worker on that host whose pool pids
include that pid. A pool process replaced since the last heartbeat (one job per process) is not in
the list yet; such a job goes to the host's only live worker when there is just one, and is
otherwise shown unmatched until the next heartbeat names its pid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.base import utcnow
from db.enums import JobStatus
from db.models import Job, Worker

UPSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


@dataclass
class WorkerState:
    """A worker as the workers page shows it: its row, whether it is stale, the jobs it runs."""

    worker: Worker
    stale: bool
    jobs: list[Job] = field(default_factory=list)


@dataclass(frozen=True)
class QueueDepth:
    """Jobs waiting and running on one queue, across tenants and for the asking tenant."""

    queue: str
    queued: int
    running: int
    own_queued: int
    own_running: int


def record_heartbeat(session: Session, name: str, host: str, pid: int, queues: list[str], device: dict[str, Any],
                     *, pool_pids: list[int] | None = None, now: datetime | None = None) -> None:
    """Insert or update worker `name` in one statement; a new pid (a restart) resets started_at."""
    now = now or utcnow()
    insert = UPSERTS[session.get_bind().dialect.name]
    values = {"name": name, "host": host, "pid": pid, "queues": list(queues), "device": dict(device),
              "pool_pids": list(pool_pids or []), "started_at": now, "last_seen_at": now}
    statement = insert(Worker).values(**values)
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(index_elements=[Worker.name], set_={
        "host": excluded.host, "pid": excluded.pid, "queues": excluded.queues, "device": excluded.device,
        "pool_pids": excluded.pool_pids, "last_seen_at": excluded.last_seen_at,
        "started_at": case((Worker.pid == excluded.pid, Worker.started_at), else_=excluded.started_at),
    })
    session.execute(statement)


def list_workers(session: Session, stale_after_seconds: float, *, tenant_id: int | None = None,
                 now: datetime | None = None) -> list[WorkerState]:
    """Return every worker, live ones first then by name, each with the running jobs it holds (only
    tenant `tenant_id`'s jobs when given); a worker unseen for stale_after_seconds is stale."""
    cutoff = (now or utcnow()) - timedelta(seconds=stale_after_seconds)
    states = [WorkerState(worker, worker.last_seen_at < cutoff)
              for worker in session.scalars(select(Worker).order_by(Worker.name))]
    running = select(Job).where(Job.status == JobStatus.RUNNING, Job.lease_owner.is_not(None))
    if tenant_id is not None:
        running = running.where(Job.tenant_id == tenant_id)
    for job in session.scalars(running.order_by(Job.id)):
        owner = _owner_of(job, states)
        if owner is not None:
            owner.jobs.append(job)
    return sorted(states, key=lambda state: (state.stale, state.worker.name))


def _owner_of(job: Job, states: list[WorkerState]) -> WorkerState | None:
    host, _, pid = job.lease_owner.rpartition(":")
    on_host = [state for state in states if state.worker.host == host]
    for state in on_host:
        if pid.isdecimal() and int(pid) in (state.worker.pool_pids or []):
            return state
    live = [state for state in on_host if not state.stale]
    return live[0] if len(live) == 1 else None


def queue_depths(session: Session, tenant_id: int) -> list[QueueDepth]:
    """Return the queued and running jobs of every queue that has any, in all and of the tenant."""
    own = Job.tenant_id == tenant_id
    queued, running = Job.status == JobStatus.QUEUED, Job.status == JobStatus.RUNNING
    query = (
        select(Job.queue, _count(queued), _count(running), _count(queued & own), _count(running & own))
        .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .group_by(Job.queue)
        .order_by(Job.queue)
    )
    return [QueueDepth(*row) for row in session.execute(query)]


def _count(condition):
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

"""The sweeper: rescues jobs whose worker died and jobs whose wake-up message was lost."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, sessionmaker

from db.base import utcnow
from db.enums import JobStatus
from db.models import Job, OutboxMessage
from db.services.jobs import add_event, enqueue
from db.services.leases import expired_leases, rescue_expired
from worker.config import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 3600.0


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Return the delay before attempt `attempts + 1` (exponential, capped)."""
    return min(settings.retry_backoff_seconds * 2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS)


def sweep(session_factory: sessionmaker[Session], settings: Settings) -> dict[str, int]:
    """Run one sweep; return counts of what it did."""
    counts = {"requeued": 0, "failed": 0, "redispatched": 0}
    with session_factory() as session, session.begin():
        for job in expired_leases(session):
            outcome = rescue_expired(session, job, backoff_seconds=backoff_seconds(settings, job.attempts))
            if outcome:
                counts[outcome] += 1
    with session_factory() as session, session.begin():
        counts["redispatched"] = _redispatch_stale(session, settings)
    if any(counts.values()):
        log.info("sweep: %s", counts)
    return counts


def _redispatch_stale(session: Session, settings: Settings) -> int:
    """Re-send the message of queued jobs that no worker picked up in time."""
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.stale_queued_seconds)
    pending = exists().where(OutboxMessage.job_id == Job.id, OutboxMessage.sent_at.is_(None))
    recent = exists().where(OutboxMessage.job_id == Job.id, OutboxMessage.sent_at > cutoff)
    query = (
        select(Job)
        .where(Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))
        .where((Job.not_before.is_(None)) | (Job.not_before < cutoff))
        .where(~pending, ~recent)
        .limit(100)
    )
    jobs = list(session.scalars(query))
    for job in jobs:
        enqueue(session, job)
        add_event(
            session, job.id, "rescue",
            f"no worker started this job within {settings.stale_queued_seconds:.0f}s; message re-sent",
            level="warning",
        )
    return len(jobs)

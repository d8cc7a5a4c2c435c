"""The sweeper: rescues jobs whose worker died and jobs whose wake-up message was lost."""

from __future__ import annotations

import logging
from datetime import timedelta

import redis
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from db.base import utcnow
from db.enums import JobStatus
from db.models import Job, OutboxMessage
from db.services.jobs import add_event, enqueue
from db.services.leases import LostAttempt, end_lost_attempt, expired_leases
from db.services.pipelines import advance
from db.services.schedule import release_due
from worker.broker import pending_counts, pending_job_ids
from worker.config import JOB_KINDS, Settings

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 3600.0
# Between these, a sweep reads the broker's messages only when a queue holds fewer than it has jobs
# waiting (`messages_short`); each of those reads decodes every waiting message (1.5 s of CPU for
# 100,000 queued jobs).
FULL_CHECK_SECONDS = 60.0


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Return the delay before attempt `attempts + 1` (exponential, capped)."""
    return min(settings.retry_backoff_seconds * 2 ** max(attempts - 1, 0), MAX_BACKOFF_SECONDS)


def rerun_delay_seconds(settings: Settings, losses: int) -> float:
    """Return the delay before running again a job that has lost `losses` attempts the same way.

    The first loss reruns at once (recovery in seconds); repeated ones back off exponentially.
    """
    return 0.0 if losses <= 1 else backoff_seconds(settings, losses - 1)


def sweep(session_factory: sessionmaker[Session], settings: Settings, *, full_check: bool = True) -> dict[str, int]:
    """Run one sweep; return counts of what it did.

    Lost messages are looked for message by message when `full_check`, else only where a queue's
    count says some may be missing (`messages_short`): a wiped or restarted broker, a consumer that
    died holding one. A loss that extra messages of the same queue hide (a cancelled job's, say) waits
    for the next full check.
    """
    counts = {"requeued": 0, "failed": 0, "redispatched": 0, "released": 0, "cancelled": 0, "scheduled": 0}
    with session_factory() as session, session.begin():
        for job in expired_leases(session):
            outcome = end_lost_attempt(
                session, job, LostAttempt.LEASE_EXPIRED,
                delay_seconds=rerun_delay_seconds(settings, job.interruptions + 1),
                max_interruptions=settings.max_interruptions,
                hard_limit_seconds=settings.hard_time_limit_for(job.kind),
            )
            if outcome:
                counts[outcome] += 1
    with session_factory() as session, session.begin():
        counts |= advance(session)  # pipeline steps a lost transaction left waiting (normally none)
    with session_factory() as session, session.begin():
        counts["scheduled"] = release_due(session)  # jobs whose start time (or run window) has come
    try:
        if not full_check and not messages_short(session_factory, settings):
            return _logged(counts)
        pending = pending_job_ids(settings.redis_url, _queues(settings),
                                  delivered_within_seconds=settings.redispatch_after_seconds)
    except redis.RedisError as exc:  # broker down: nothing can be re-sent now anyway
        log.warning("sweep: cannot read the broker (%s); re-dispatch skipped", exc)
        return counts
    with session_factory() as session, session.begin():
        counts["redispatched"] = _redispatch_lost(session, settings, pending)
    return _logged(counts)


def _logged(counts: dict[str, int]) -> dict[str, int]:
    if any(counts.values()):
        log.info("sweep: %s", counts)
    return counts


def messages_short(session_factory: sessionmaker[Session], settings: Settings) -> bool:
    """Say whether some queue holds fewer messages than it has queued jobs whose message was sent.

    Every such job's message waits in its queue (or was delivered moments ago) until a worker takes
    it, and a message taken starts a job of its queue; so fewer messages than jobs means some were
    lost. The jobs are counted before the messages: a job sent in between only adds a message, and one
    started in between (its message taken, itself no longer queued) can only raise a false alarm.
    """
    unsent = _unsent_message()
    with session_factory() as session:
        waiting = dict(session.execute(
            select(Job.queue, func.count())
            .where(Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False), ~unsent)
            .group_by(Job.queue)).all())
    held = pending_counts(settings.redis_url, _queues(settings) | set(waiting),
                          delivered_within_seconds=settings.redispatch_after_seconds)
    return any(count > held.get(queue, 0) for queue, count in waiting.items())


def _unsent_message():
    """A job's outbox message not yet sent (the relay sends it; nothing of it is in the broker yet)."""
    return exists().where(OutboxMessage.job_id == Job.id, OutboxMessage.sent_at.is_(None))


def _queues(settings: Settings) -> set[str]:
    return {settings.queue_for(kind) for kind in JOB_KINDS}


def _redispatch_lost(session: Session, settings: Settings, pending: set[int]) -> int:
    """Re-send messages the broker lost (Redis wiped): as many as its queues and kinds lack.

    A message starts the first job in line of its queue and kind (`claim_next`), not always its own, so a
    queued job without a message of its own is normal; messages are lost only where a queue and kind holds
    fewer messages than queued jobs. Those jobs, oldest first, get a new one.
    """
    cutoff = utcnow() - timedelta(seconds=settings.redispatch_after_seconds)
    unsent = _unsent_message()
    recent = exists().where(OutboxMessage.job_id == Job.id, OutboxMessage.sent_at > cutoff)
    query = (
        select(Job)
        .where(Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))
        .where(~unsent, ~recent)
        .order_by(Job.id)
        .limit(500)
    )
    jobs = [job for job in session.scalars(query) if job.id not in pending]
    if not jobs:
        return 0
    waiting = Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False)
    queued = {(queue, kind): count for queue, kind, count in session.execute(
        select(Job.queue, Job.kind, func.count()).where(*waiting).group_by(Job.queue, Job.kind))}
    held = {(queue, kind): count for queue, kind, count in session.execute(
        select(Job.queue, Job.kind, func.count()).where(Job.id.in_(pending)).group_by(Job.queue, Job.kind))}
    short = {group: queued[group] - held.get(group, 0) for group in queued}
    lost = []
    for job in jobs:
        if short.get((job.queue, job.kind), 0) > 0:
            short[(job.queue, job.kind)] -= 1
            lost.append(job)
    jobs = lost
    for job in jobs:
        enqueue(session, job)
        add_event(session, job.id, "rescue", "the broker lost this job's message; message re-sent",
                  data={"action": "redispatch"}, level="warning")
    return len(jobs)

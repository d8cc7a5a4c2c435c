"""What a worker's main process does when the pool process running a job dies under it.

The worker learns of the death at once (billiard reports a `WorkerLostError`), long before the
job's lease would expire. It hands the job back in SQL right away, charged to the job (a process
that keeps dying is poison and stops at `max_attempts`), so the job runs again within seconds.
When the whole worker or host dies, nobody is left to report; the lease expires and the sweeper
takes the job back instead, without charging it.
"""

from __future__ import annotations

import logging

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

from db.enums import JobStatus
from db.models import Job
from db.services.leases import LostAttempt, end_lost_attempt
from db.session import make_engine
from worker import state
from worker.lifecycle import worker_identity
from worker.sweeper import rerun_delay_seconds

log = logging.getLogger(__name__)


class JobRequest(Request):
    """A Celery request that, when its pool process dies, gives its job back in SQL at once."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, WorkerLostError) and self.worker_pid and self.args:
            hand_back_after_process_death(int(self.args[0]), self.worker_pid, str(exc))
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def hand_back_after_process_death(job_id: int, pid: int, detail: str) -> str | None:
    """Requeue (or, past max_attempts, fail) the job process `pid` still held the lease of, started by the
    message of job `job_id`."""
    from worker.celery_app import app
    from worker.outbox import relay_outbox

    settings = state.settings()
    # A throwaway engine without a pool: the main process forks pool processes, which must not
    # inherit open database connections.
    engine = make_engine(settings.database_url, poolclass=NullPool)
    factory = sessionmaker(engine, expire_on_commit=False)
    try:
        with factory() as session, session.begin():
            # The message of `job_id` may have started another job, first in line (`claim_next`): the job
            # to hand back is the one whose lease the dead process held.
            job = session.scalar(select(Job).where(Job.status == JobStatus.RUNNING,
                                                   Job.lease_owner == worker_identity(pid)).limit(1))
            if job is None:
                return None  # it finished, or another attempt already owns it
            job_id = job.id
            outcome = end_lost_attempt(
                session, job, LostAttempt.PROCESS_DIED,
                delay_seconds=rerun_delay_seconds(settings, job.attempts),
                max_interruptions=settings.max_interruptions,
                hard_limit_seconds=settings.hard_time_limit_for(job.kind),
                detail=detail.rstrip("."),
            )
        log.warning("job %s: its process %s died (%s); %s", job_id, pid, detail, outcome)
        if outcome == "requeued":
            relay_outbox(factory, app, job_ids=[job_id])
        return outcome
    except OperationalError as exc:  # the lease will expire and the sweeper takes the job back then
        log.warning("job %s: its process %s died and the database is unreachable (%s); the sweeper "
                    "requeues it when its lease expires", job_id, pid, exc)
        return None
    finally:
        engine.dispose()

"""The outbox relay: publishes committed task messages to the broker and marks them sent."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.base import utcnow
from db.models import OutboxMessage

log = logging.getLogger(__name__)

# Jobs say 9 = most urgent; kombu's Redis transport serves 0 first.
CELERY_PRIORITY_MAX = 9
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def relay_outbox(
    session_factory: sessionmaker[Session],
    celery_app: Celery,
    *,
    job_ids: Iterable[int] | None = None,
    limit: int = 200,
) -> int:
    """Publish due, unsent outbox messages; return how many were sent."""
    with session_factory() as session, session.begin():
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
        sent = 0
        for message in session.scalars(query):
            try:
                celery_app.send_task(
                    message.task_name,
                    args=[message.job_id],
                    queue=message.queue,
                    priority=CELERY_PRIORITY_MAX - message.priority,
                    retry=True,
                    retry_policy=PUBLISH_RETRY_POLICY,
                )
            except Exception as exc:  # broker down: keep the row, the next relay pass retries
                message.publish_attempts += 1
                message.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                log.warning("outbox publish failed for job %s: %s", message.job_id, exc)
                break
            message.sent_at = utcnow()
            message.publish_attempts += 1
            sent += 1
        return sent

"""The dashboard's workers page: queue depths, and each worker's heartbeat, device and running job."""

from __future__ import annotations

from flask import g, render_template

from api import db_session, services
from api.dashboard import bp
from db.base import utcnow
from db.services.workers import list_workers, queue_depths


@bp.get("/workers")
def workers():
    settings = services().settings
    stale_after = settings.worker_stale_seconds
    return render_template("workers.html", queues=queue_depths(db_session(), g.tenant_id),
                           workers=list_workers(db_session(), stale_after, tenant_id=g.tenant_id),
                           stale_after=stale_after, now=utcnow())

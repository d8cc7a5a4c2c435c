"""The workers: each one's host, queues, device and heartbeat, as the workers announce themselves."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api import db_session, services
from api.auth import tenant_id
from api.openapi import spec
from api.schemas import WorkerList, WorkerOut
from db.services.workers import list_workers

bp = Blueprint("workers", __name__)


@bp.get("/workers")
@spec("List the workers: host, queues, device, last heartbeat, and which of your jobs each runs", response=WorkerList)
def list_all():
    states = list_workers(db_session(), services().settings.worker_stale_seconds, tenant_id=tenant_id())
    items = [WorkerOut(name=s.worker.name, host=s.worker.host, pid=s.worker.pid, queues=s.worker.queues or [],
                       device=s.worker.device or {}, started_at=s.worker.started_at,
                       last_seen_at=s.worker.last_seen_at, alive=not s.stale,
                       running_job_ids=[job.id for job in s.jobs]) for s in states]
    return jsonify(WorkerList(items=items).model_dump(mode="json"))

"""Workers' heartbeats: the upsert on SQLite and PostgreSQL, stale detection, jobs matched by lease owner."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from db.base import utcnow
from db.models import Job, Worker
from db.services.jobs import create_job
from db.services.tenants import get_or_create_tenant
from db.services.workers import list_workers, queue_depths, record_heartbeat

CPU = {"kind": "cpu", "name": "8 CPU cores", "cores": 8}


def test_heartbeat_inserts_then_updates_one_row(session_factory):
    start = utcnow() - timedelta(seconds=30)
    with session_factory.begin() as session:
        record_heartbeat(session, "cpu@h1", "h1", 100, ["cpu"], CPU, pool_pids=[101], now=start)
    with session_factory.begin() as session:
        record_heartbeat(session, "cpu@h1", "h1", 100, ["cpu", "gpu"], CPU, pool_pids=[102])
    with session_factory() as session:
        [worker] = session.scalars(select(Worker)).all()
        assert (worker.queues, worker.pool_pids, worker.started_at) == (["cpu", "gpu"], [102], start)
        assert worker.last_seen_at > start


def test_a_restarted_worker_starts_again(session_factory):
    start = utcnow() - timedelta(hours=1)
    with session_factory.begin() as session:
        record_heartbeat(session, "cpu@h1", "h1", 100, ["cpu"], CPU, now=start)
        record_heartbeat(session, "cpu@h1", "h1", 200, ["cpu"], CPU)
    with session_factory() as session:
        worker = session.scalars(select(Worker)).one()
        assert worker.pid == 200 and worker.started_at > start


def test_stale_workers_and_the_jobs_they_run(session_factory):
    now = utcnow()
    with session_factory.begin() as session:
        acme, globex = get_or_create_tenant(session, "acme"), get_or_create_tenant(session, "globex")
        record_heartbeat(session, "gpu@h1", "h1", 10, ["gpu"], CPU, pool_pids=[11, 12], now=now)
        record_heartbeat(session, "cpu@h1", "h1", 20, ["cpu"], CPU, pool_pids=[21], now=now)
        record_heartbeat(session, "old@h2", "h2", 30, ["cpu"], CPU, now=now - timedelta(seconds=60))
        ids = {}
        for key, tenant, owner in (("mine", acme, "h1:12"), ("theirs", globex, "h1:21"), ("h2", acme, "h2:99"),
                                   ("queued", acme, None)):
            job, _ = create_job(session, tenant_id=tenant.id, kind="evaluate", task="text-classification",
                                params={"model": "m", "dataset_id": 1}, queue="gpu")
            ids[key] = job.id
            if owner:
                session.execute(update(Job).where(Job.id == job.id).values(status="running", lease_owner=owner))
        acme_id = acme.id
    with session_factory() as session:
        states = list_workers(session, 15, tenant_id=acme_id, now=now)
        assert [(s.worker.name, s.stale) for s in states] == [("cpu@h1", False), ("gpu@h1", False), ("old@h2", True)]
        jobs = {s.worker.name: [job.id for job in s.jobs] for s in states}
        # The other tenant's job is not listed; h2's stale worker is the host's only worker but not live.
        assert jobs == {"cpu@h1": [], "gpu@h1": [ids["mine"]], "old@h2": []}
        everyone = {s.worker.name: [job.id for job in s.jobs] for s in list_workers(session, 15, now=now)}
        assert everyone["cpu@h1"] == [ids["theirs"]]
        [gpu] = queue_depths(session, acme_id)
        assert (gpu.queue, gpu.queued, gpu.running, gpu.own_queued, gpu.own_running) == ("gpu", 1, 3, 1, 2)


def test_a_job_of_a_pool_process_newer_than_the_heartbeat_goes_to_the_hosts_only_live_worker(session_factory):
    with session_factory.begin() as session:
        tenant = get_or_create_tenant(session, "acme")
        record_heartbeat(session, "gpu@h1", "h1", 10, ["gpu"], CPU, pool_pids=[11])
        job, _ = create_job(session, tenant_id=tenant.id, kind="evaluate", task="text-classification",
                            params={"model": "m", "dataset_id": 1}, queue="gpu")
        session.execute(update(Job).where(Job.id == job.id).values(status="running", lease_owner="h1:13"))
        job_id = job.id
    with session_factory() as session:
        [state] = list_workers(session, 15)
        assert [job.id for job in state.jobs] == [job_id]

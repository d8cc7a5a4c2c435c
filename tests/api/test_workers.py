"""GET /workers: what each worker announced in its heartbeat, and which of the caller's jobs it runs."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from db.base import utcnow
from db.models import Job
from db.services.workers import record_heartbeat
from tests.api.helpers import API


def test_workers_are_listed_with_host_queues_device_and_liveness(app, client, auth, other_auth, queued_job):
    gpu = {"kind": "cuda", "name": "NVIDIA H200", "memory_bytes": 141 << 30, "cores": 16}
    with app.extensions["nightshift"].session_factory.begin() as session:
        record_heartbeat(session, "gpu@h1", "h1", 10, ["gpu"], gpu, pool_pids=[11])
        record_heartbeat(session, "cpu@h2", "h2", 20, ["cpu", "gpu"], {"kind": "cpu", "cores": 4},
                         now=utcnow() - timedelta(minutes=5))
        session.execute(update(Job).where(Job.id == queued_job["id"]).values(status="running", lease_owner="h1:11"))

    items = client.get(f"{API}/workers", headers=auth).get_json()["items"]

    assert [(w["name"], w["host"], w["queues"], w["alive"]) for w in items] == [
        ("gpu@h1", "h1", ["gpu"], True), ("cpu@h2", "h2", ["cpu", "gpu"], False)]  # live ones first
    assert items[0]["device"] == gpu and items[0]["running_job_ids"] == [queued_job["id"]]
    assert items[1]["device"] == {"kind": "cpu", "cores": 4} and items[1]["running_job_ids"] == []
    others = client.get(f"{API}/workers", headers=other_auth).get_json()["items"]
    assert [w["running_job_ids"] for w in others] == [[], []]  # another tenant sees the workers, not the jobs


def test_workers_need_a_token(client):
    assert client.get(f"{API}/workers").status_code == 401

"""GET /metrics: Prometheus text read from the job rows, the outbox, the workers table and Redis."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from db.base import utcnow
from db.models import Job, OutboxMessage, Worker
from tests.api.helpers import batch_body, evaluate_body, finetune_body, submit


def scrape(client, headers=None) -> dict[tuple, float]:
    """GET /metrics and return {(sample name, sorted labels): value}."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def set_job(app, job_id: int, **values) -> None:
    with app.extensions["nightshift"].session_factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


@pytest.fixture
def finished(app, client, auth, labelled, unlabelled, tiny_model) -> dict:
    """A succeeded batch job (1,000 rows in 5 s), a succeeded fine-tune (48 samples/s in 20 s) and a failed one."""
    now = utcnow()
    batch = submit(client, auth, batch_body(unlabelled["id"], tiny_model))
    set_job(app, batch["id"], status="succeeded", created_at=now - timedelta(seconds=10),
            started_at=now - timedelta(seconds=5), finished_at=now, progress_total=1000, attempts=1)
    tune = submit(client, auth, finetune_body(labelled["id"], tiny_model, max_steps=2))
    set_job(app, tune["id"], status="succeeded", created_at=now - timedelta(seconds=100),
            started_at=now - timedelta(seconds=20), finished_at=now, attempts=2, interruptions=1,
            result={"train": {"train_samples_per_second": 48.0}})
    broken = submit(client, auth, finetune_body(labelled["id"], tiny_model, max_steps=2))
    set_job(app, broken["id"], status="failed", created_at=now - timedelta(seconds=3000),
            started_at=now - timedelta(seconds=2000), finished_at=now, attempts=3)
    return {"batch": batch, "tune": tune, "broken": broken}


def test_jobs_are_counted_by_status_kind_and_queue_with_the_queue_depth(client, auth, labelled, tiny_model,
                                                                        finished):
    for _ in range(2):
        submit(client, auth, evaluate_body(labelled["id"], tiny_model))

    samples = scrape(client)

    assert value(samples, "nightshift_jobs", status="queued", kind="evaluate", queue="gpu") == 2
    assert value(samples, "nightshift_jobs", status="succeeded", kind="finetune", queue="gpu") == 1
    assert value(samples, "nightshift_jobs", status="failed", kind="finetune", queue="gpu") == 1
    assert value(samples, "nightshift_queue_depth", queue="gpu") == 2
    assert value(samples, "nightshift_job_attempts_total", kind="finetune") == 5
    assert value(samples, "nightshift_job_interruptions_total", kind="finetune") == 1


def test_run_time_turnaround_and_throughput_are_histograms_of_finished_jobs(client, finished):
    samples = scrape(client)

    run = dict(kind="finetune", status="succeeded")
    assert value(samples, "nightshift_job_run_seconds_count", **run) == 1
    assert value(samples, "nightshift_job_run_seconds_sum", **run) == pytest.approx(20, abs=0.01)
    assert value(samples, "nightshift_job_run_seconds_bucket", le="15.0", **run) == 0
    assert value(samples, "nightshift_job_run_seconds_bucket", le="30.0", **run) == 1
    assert value(samples, "nightshift_job_run_seconds_bucket", le="+Inf", **run) == 1
    assert value(samples, "nightshift_job_turnaround_seconds_sum", **run) == pytest.approx(100, abs=0.01)
    failed = dict(kind="finetune", status="failed")
    assert value(samples, "nightshift_job_run_seconds_bucket", le="1800.0", **failed) == 0
    assert value(samples, "nightshift_job_run_seconds_bucket", le="3600.0", **failed) == 1

    rows = dict(kind="batch_inference", unit="rows")
    assert value(samples, "nightshift_job_throughput_sum", **rows) == pytest.approx(200, rel=1e-3)  # 1,000 in 5 s
    assert value(samples, "nightshift_job_throughput_bucket", le="100.0", **rows) == 0
    assert value(samples, "nightshift_job_throughput_bucket", le="250.0", **rows) == 1
    trained = dict(kind="finetune", unit="samples")
    assert value(samples, "nightshift_job_throughput_count", **trained) == 1  # the failed one has no throughput
    assert value(samples, "nightshift_job_throughput_sum", **trained) == pytest.approx(48)


def test_outbox_backlog_counts_only_due_unsent_messages(app, client, auth, labelled, tiny_model, queue_length):
    before = scrape(client)
    sent = submit(client, auth, evaluate_body(labelled["id"], tiny_model))  # published at once: not a backlog
    waiting = value(before, "nightshift_broker_messages", queue="gpu")
    stuck = submit(client, auth, evaluate_body(labelled["id"], tiny_model))
    with app.extensions["nightshift"].session_factory.begin() as session:
        session.execute(update(OutboxMessage).where(OutboxMessage.job_id == stuck["id"])
                        .values(sent_at=None, available_at=utcnow() - timedelta(seconds=30)))

    samples = scrape(client)

    assert sent["status"] == "queued" and value(samples, "nightshift_outbox_backlog") == 1
    assert 29 < value(samples, "nightshift_outbox_oldest_seconds") < 300
    assert value(samples, "nightshift_broker_messages", queue="gpu") == waiting + 2 == queue_length("gpu")
    assert value(samples, "nightshift_broker_up") == 1


def test_workers_report_their_heartbeat_age_liveness_and_device(app, client):
    now = utcnow()
    with app.extensions["nightshift"].session_factory.begin() as session:
        session.add_all([
            Worker(name="gpu@a", host="a", pid=1, queues=["gpu"], last_seen_at=now - timedelta(seconds=2),
                   device={"kind": "cuda", "name": "H200", "memory_bytes": 1 << 37}),
            Worker(name="cpu@b", host="b", pid=2, queues=["cpu", "gpu"], last_seen_at=now - timedelta(hours=1),
                   device={"kind": "cpu", "cores": 2}),
        ])

    samples = scrape(client)

    assert value(samples, "nightshift_worker_up", worker="gpu@a", host="a") == 1
    assert value(samples, "nightshift_worker_up", worker="cpu@b", host="b") == 0
    assert 3500 < value(samples, "nightshift_worker_last_seen_seconds", worker="cpu@b", host="b") < 3700
    assert value(samples, "nightshift_worker_info", worker="gpu@a", host="a", queues="gpu", device="cuda",
                 device_name="H200") == 1


def test_a_metrics_token_is_required_when_one_is_set(database_url, redis_url, tmp_path):
    from api import create_app

    app = create_app({"database_url": database_url, "redis_url": redis_url, "data_dir": str(tmp_path / "data"),
                      "metrics_token": "s3cret", "TESTING": True})
    try:
        client = app.test_client()
        refused = client.get("/metrics")
        assert refused.status_code == 401 and "Authorization: Bearer" in refused.get_data(as_text=True)
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert ("nightshift_broker_up", ()) in scrape(client, {"Authorization": "Bearer s3cret"})
    finally:
        app.extensions["nightshift"].engine.dispose()

"""GET /metrics: Prometheus text format, read from the SQL rows and the broker when it is scraped.

The job rows are the truth (RELIABILITY.md), so the figures are aggregates of them rather than
counters kept in memory: every API process and replica answers a scrape with the same numbers, with
no multiprocess state to share between gunicorn workers, and nothing is lost when a process restarts.
Counters and histograms over finished jobs only grow, as Prometheus expects, unless job rows are
deleted (it then sees a counter reset). Each scrape runs a handful of grouped queries over the jobs
table (about a second at a million jobs), so scrape every 15 s or slower.

Labels carry kinds, statuses, queues and worker names, never tenant names or job parameters.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import timedelta

import redis
from flask import Blueprint, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.orm import Session

from api import services
from db.base import utcnow
from db.enums import JobStatus
from db.models import Job, OutboxMessage, Worker
from worker.broker import queue_lengths
from worker.config import JOB_KINDS

bp = Blueprint("metrics", __name__)

# Seconds: a tiny evaluation to a long overnight fine-tune.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
                    43200.0, 86400.0)
# Rows (batch inference, evaluation) or training samples per second.
THROUGHPUT_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
                      25000.0)
TRAINING_KINDS = ("finetune", "pretrain")
ROW_KINDS = ("evaluate", "batch_inference")
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@bp.get("/metrics")
def metrics() -> Response:
    token = services().settings.metrics_token
    if token and not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {token}"):
        return Response("send the metrics token: Authorization: Bearer <NIGHTSHIFT_METRICS_TOKEN>\n", status=401,
                        mimetype="text/plain", headers={"WWW-Authenticate": "Bearer"})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(services().session_factory, services().settings))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class StateCollector:
    """A prometheus_client collector that reads the service's state at each scrape."""

    def __init__(self, session_factory, settings) -> None:
        self.session_factory = session_factory
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with self.session_factory() as session:
            yield from jobs(session)
            yield from durations(session)
            yield from throughput(session)
            yield from outbox(session)
            yield from workers(session, self.settings.worker_stale_seconds)
        yield from broker(self.settings)


def jobs(session: Session) -> Iterator[Metric]:
    """Jobs by status, kind and queue; queued jobs per queue; attempts and interruptions so far."""
    rows = session.execute(
        select(Job.status, Job.kind, Job.queue, func.count(), func.coalesce(func.sum(Job.attempts), 0),
               func.coalesce(func.sum(Job.interruptions), 0))
        .group_by(Job.status, Job.kind, Job.queue)
    ).all()
    by_status = GaugeMetricFamily("nightshift_jobs", "Jobs by status, kind and queue.",
                                  labels=["status", "kind", "queue"])
    depth = GaugeMetricFamily("nightshift_queue_depth", "Jobs queued (not yet started) on each queue.",
                              labels=["queue"])
    attempts = CounterMetricFamily("nightshift_job_attempts", "Attempts charged to jobs (a retry adds one).",
                                   labels=["kind"])
    interruptions = CounterMetricFamily(
        "nightshift_job_interruptions", "Attempts ended by a worker or host that died or lost its lease: each one "
        "rescued by the sweeper or the worker's recovery.", labels=["kind"])
    queued: dict[str, int] = {}
    charged = dict.fromkeys(JOB_KINDS, 0)
    lost = dict.fromkeys(JOB_KINDS, 0)
    for status, kind, queue, count, attempt_sum, interruption_sum in rows:
        by_status.add_metric([status, kind, queue], count)
        if status == JobStatus.QUEUED:
            queued[queue] = queued.get(queue, 0) + count
        charged[kind] = charged.get(kind, 0) + int(attempt_sum)
        lost[kind] = lost.get(kind, 0) + int(interruption_sum)
    for queue, count in sorted(queued.items()):
        depth.add_metric([queue], count)
    for kind in charged:
        attempts.add_metric([kind], charged[kind])
        interruptions.add_metric([kind], lost[kind])
    yield from (by_status, depth, attempts, interruptions)


def seconds_between(start, end, dialect: str):
    """The SQL expression of `end - start` in seconds, on SQLite and PostgreSQL."""
    if dialect == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def durations(session: Session) -> Iterator[Metric]:
    """Run time (the last attempt's start to the end) and turnaround (submission to the end) of finished jobs."""
    dialect = session.get_bind().dialect.name
    for name, help_text, start in (
        ("nightshift_job_run_seconds", "Finished jobs' run time: from the start of their last attempt to their end.",
         Job.started_at),
        ("nightshift_job_turnaround_seconds", "Finished jobs' time from submission to their end (waiting included).",
         Job.created_at),
    ):
        elapsed = seconds_between(start, Job.finished_at, dialect)
        query = (select(Job.kind, Job.status, *_bucket_columns(elapsed, DURATION_BUCKETS))
                 .where(Job.status.in_(FINISHED), start.is_not(None), Job.finished_at.is_not(None))
                 .group_by(Job.kind, Job.status))
        family = HistogramMetricFamily(name, help_text, labels=["kind", "status"])
        for kind, status, *counts in session.execute(query):
            family.add_metric([kind, status], *_buckets(counts, DURATION_BUCKETS))
        yield family


def throughput(session: Session) -> Iterator[Metric]:
    """Succeeded jobs' throughput: rows per second of batch inference and evaluation, training samples per second."""
    dialect = session.get_bind().dialect.name
    elapsed = seconds_between(Job.started_at, Job.finished_at, dialect)
    rows_per_second = cast(Job.progress_total, Float) / func.nullif(elapsed, 0)
    samples_per_second = Job.result[("train", "train_samples_per_second")].as_float()
    family = HistogramMetricFamily("nightshift_job_throughput", "Succeeded jobs' throughput: rows per second (unit "
                                   "rows) or training samples per second (unit samples).", labels=["kind", "unit"])
    for kinds, unit, rate in ((ROW_KINDS, "rows", rows_per_second), (TRAINING_KINDS, "samples", samples_per_second)):
        query = (select(Job.kind, *_bucket_columns(rate, THROUGHPUT_BUCKETS))
                 .where(Job.status == JobStatus.SUCCEEDED, Job.kind.in_(kinds), rate.is_not(None), rate > 0)
                 .group_by(Job.kind))
        for kind, *counts in session.execute(query):
            family.add_metric([kind, unit], *_buckets(counts, THROUGHPUT_BUCKETS))
    yield family


def _bucket_columns(value, bounds: tuple[float, ...]) -> list:
    """Per bound, how many rows have `value` at or below it; then the count and the sum."""
    return [func.sum(case((value <= bound, 1), else_=0)) for bound in bounds] + [
        func.count(), func.coalesce(func.sum(value), 0.0)]


def _buckets(counts: list, bounds: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    """prometheus_client's (cumulative buckets, sum) from `_bucket_columns`' row."""
    *within, total, value_sum = counts
    buckets = [(repr(float(bound)), int(count or 0)) for bound, count in zip(bounds, within)]
    return buckets + [("+Inf", int(total))], float(value_sum or 0.0)


def outbox(session: Session) -> Iterator[Metric]:
    """Messages written but not yet on the broker, and how long the oldest due one has waited."""
    now = utcnow()
    backlog, oldest = session.execute(
        select(func.count(), func.min(OutboxMessage.available_at))
        .where(OutboxMessage.sent_at.is_(None), OutboxMessage.available_at <= now)
    ).one()
    yield GaugeMetricFamily("nightshift_outbox_backlog", "Task messages due but not yet sent to the broker.",
                            value=backlog)
    yield GaugeMetricFamily("nightshift_outbox_oldest_seconds", "Age of the oldest due message not yet sent (0: none).",
                            value=(now - oldest).total_seconds() if oldest else 0.0)


def workers(session: Session, stale_seconds: float) -> Iterator[Metric]:
    """Each worker's last heartbeat, whether it is alive, and its device."""
    now = utcnow()
    seen = GaugeMetricFamily("nightshift_worker_last_seen_seconds", "Seconds since each worker's last heartbeat.",
                             labels=["worker", "host"])
    up = GaugeMetricFamily("nightshift_worker_up", "1 if the worker's heartbeat is fresh (within three periods).",
                           labels=["worker", "host"])
    info = GaugeMetricFamily("nightshift_worker_info", "A worker's queues and device (value 1).",
                             labels=["worker", "host", "queues", "device", "device_name"])
    fresh = timedelta(seconds=stale_seconds)
    for worker in session.scalars(select(Worker).order_by(Worker.name)):
        labels = [worker.name, worker.host]
        seen.add_metric(labels, (now - worker.last_seen_at).total_seconds())
        up.add_metric(labels, 1.0 if now - worker.last_seen_at <= fresh else 0.0)
        device = worker.device or {}
        info.add_metric(labels + [",".join(worker.queues or []), str(device.get("kind", "")),
                                  str(device.get("name", ""))], 1.0)
    yield from (seen, up, info)


def broker(settings) -> Iterator[Metric]:
    """Task messages waiting on each Celery queue in Redis, at every priority; absent when Redis is down."""
    queues = sorted({settings.queue_for(kind) for kind in JOB_KINDS})
    family = GaugeMetricFamily("nightshift_broker_messages", "Task messages waiting in Redis per queue (all "
                               "priorities).", labels=["queue"])
    up = GaugeMetricFamily("nightshift_broker_up", "1 if Redis answered this scrape.")
    try:
        for queue, length in queue_lengths(settings.redis_url, queues).items():
            family.add_metric([queue], length)
        up.add_metric([], 1.0)
    except redis.RedisError:
        family = None
        up.add_metric([], 0.0)
    if family is not None:
        yield family
    yield up

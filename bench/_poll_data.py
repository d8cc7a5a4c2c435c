"""Bulk-load a realistic history of jobs and events for bench/poll_scale.py.

Jobs: tenants of falling size (the first holds the most), kinds and tasks mixed; most have ended
(succeeded 80 %, failed 14 %, cancelled 6 %), the queued and running ones are mostly among the
newest 2 %, with a few old ones (long runs, delayed retries). Events: a status line per move and a
few log lines each; fine-tunes log metrics, and about 2 % of them log thousands (a Pareto tail, up
to HEAVY_CAP) to make up --events. Events of neighbouring jobs interleave in time, as a busy
system writes them, so one job's events are spread over the table.

SQLite is loaded with executemany in large transactions (journal and sync off while loading);
PostgreSQL with COPY, then VACUUM ANALYZE, as autovacuum would have done on a live database.
"""

from __future__ import annotations

import collections
import json
import random
import sqlite3
import time
from datetime import datetime, timedelta

from sqlalchemy import text

from db.session import make_engine, make_session_factory
from db.services.tenants import get_or_create_tenant, issue_token

KINDS = ("finetune", "evaluate", "batch_inference")
KIND_WEIGHTS = (35, 25, 40)
TASKS = ("text-classification", "token-classification", "question-answering", "translation", "summarization")
ENDED = ("succeeded", "failed", "cancelled")
ENDED_WEIGHTS = (80, 14, 6)
LIVE_SHARE = 0.02  # the newest jobs, where queued and running ones gather
HEAVY_SHARE = 0.02  # of fine-tunes: the long tail of event counts
HEAVY_CAP = 50_000
CHUNK_JOBS = 5_000  # jobs whose events are generated, interleaved and written together
HISTORY_DAYS = 365

JOB_COLUMNS = ("id", "tenant_id", "kind", "task", "status", "params", "priority", "queue", "attempts",
               "max_attempts", "interruptions", "epoch", "lease_owner", "lease_expires_at", "cancel_requested",
               "progress_fraction", "progress_stage", "error_code", "error_message", "result", "output_path",
               "created_at", "updated_at", "started_at", "finished_at")
EVENT_COLUMNS = ("id", "job_id", "created_at", "type", "level", "message", "step", "data", "epoch")


def plan_jobs(count: int, tenants: int, rng: random.Random) -> list[tuple[int, str, str, str]]:
    """Return (tenant_id, kind, task, status) for jobs 1..count, oldest first."""
    tenant_ids = list(range(1, tenants + 1))
    tenant_weights = [1 / t for t in tenant_ids]
    live_from = int(count * (1 - LIVE_SHARE))
    jobs = []
    for i in range(count):
        draw = rng.random()
        if i >= live_from:
            status = "queued" if draw < 0.20 else "running" if draw < 0.28 else None
        else:
            status = "queued" if draw < 0.0001 else "running" if draw < 0.0002 else None
        status = status or rng.choices(ENDED, ENDED_WEIGHTS)[0]
        jobs.append((rng.choices(tenant_ids, tenant_weights)[0], rng.choices(KINDS, KIND_WEIGHTS)[0],
                     rng.choice(TASKS), status))
    return jobs


def plan_event_counts(jobs, events: int, rng: random.Random) -> list[int]:
    """Return each job's event count, adding up to `events`: a few each, a Pareto tail of fine-tunes."""
    light = {"queued": (1, 2), "running": (3, 30), "succeeded": (4, 12), "failed": (3, 8), "cancelled": (2, 4)}
    counts = [rng.randint(*light[status]) for _, _, _, status in jobs]
    heavy = [i for i, (_, kind, _, status) in enumerate(jobs)
             if kind == "finetune" and status != "queued"
             and rng.random() < (0.3 if status == "running" else HEAVY_SHARE)]
    weights = {i: rng.paretovariate(1.1) for i in heavy}
    budget = events - sum(counts) + sum(counts[i] for i in heavy)
    for _ in range(5):  # capped jobs leave their share to the others
        free = [i for i in heavy if counts[i] < HEAVY_CAP]
        left = budget - sum(counts[i] for i in heavy if counts[i] >= HEAVY_CAP)
        total_weight = sum(weights[i] for i in free) or 1.0
        for i in free:
            counts[i] = max(20, min(HEAVY_CAP, int(left * weights[i] / total_weight)))
    shortfall = events - sum(counts)
    for i in sorted(heavy, key=lambda i: counts[i])[: abs(shortfall)] if heavy else ():
        counts[i] += 1 if shortfall > 0 else -1
    return counts


def job_row(job_id: int, planned: tuple[int, str, str, str], created: datetime, rng: random.Random) -> tuple:
    tenant_id, kind, task, status = planned
    model = f"model-{job_id % 97}"
    params = ({"base_model": "distilbert-base-uncased", "train_dataset_id": job_id % 500 + 1, "model_name": model,
               "epochs": 3, "learning_rate": 2e-5} if kind == "finetune" else {"model": model, "dataset_id": job_id % 500 + 1})
    running, ended = status == "running", status in ENDED
    started = None if status == "queued" else created + timedelta(seconds=rng.randint(1, 600))
    finished = started + timedelta(minutes=rng.randint(1, 240)) if ended and started else None
    failed = status == "failed"
    result = {"metrics": {"accuracy": round(rng.random(), 4)}} if status == "succeeded" else {}
    return (job_id, tenant_id, kind, task, status, json.dumps(params), rng.randint(0, 9), "gpu",
            0 if status == "queued" else 1, 3, 0, 0 if status == "queued" else 1,
            f"host-{job_id % 7}:{1000 + job_id % 50}" if running else None,
            created + timedelta(days=400) if running else None, status == "cancelled",
            1.0 if status == "succeeded" else round(rng.random(), 3), "train" if running else None,
            "dataset_invalid" if failed else None, "the label column has one class" if failed else None,
            json.dumps(result), f"/data/outputs/{job_id}" if kind == "batch_inference" and status == "succeeded" else None,
            created, finished or started or created, started, finished)


def job_events(job_id: int, kind: str, status: str, count: int, created: datetime, rng: random.Random):
    """Yield (time, job_id, type, level, message, step, data) for one job, `count` of them."""
    seconds = created.timestamp()
    yield seconds, job_id, "status", "info", f"{kind} job queued on 'gpu'", None, '{"status": "queued"}'
    if count > 1:
        yield seconds + 5, job_id, "status", "info", "running on host-1", None, '{"status": "running"}'
    middle = count - 2 - (status in ENDED)
    for step in range(1, middle + 1):
        at = seconds + 5 + step * 2
        if kind == "finetune" and step % 4:
            loss = 2.0 / (1 + step / 50) + rng.random() * 0.05
            yield at, job_id, "metric", "info", "", step, f'{{"loss": {loss:.4f}, "learning_rate": 2e-05}}'
        else:
            yield at, job_id, "log", "info", f"step {step}: {rng.randint(10, 999)} examples/s", None, "{}"
    if status in ENDED and count > 2:
        level = "error" if status == "failed" else "info"
        yield seconds + 10 + count * 2, job_id, "status", level, f"job {status}", None, f'{{"status": "{status}"}}'


class Loader:
    """Writes rows to SQLite (executemany) or PostgreSQL (COPY); `sqlite` says which."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            self.conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-1000000", "temp_store=MEMORY"):
                self.conn.execute(f"PRAGMA {pragma}")
        else:
            import psycopg

            self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
            self.conn.execute("SET synchronous_commit = off")

    def write(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        if self.sqlite:
            rows = [tuple(f"{v:%Y-%m-%d %H:%M:%S.%f}" if isinstance(v, datetime) else v for v in row) for row in rows]
            self.conn.execute("BEGIN")
            self.conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                  f"({', '.join('?' * len(columns))})", rows)
            self.conn.execute("COMMIT")
            return
        with self.conn.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def finish(self) -> None:
        """Restore the app's journal (SQLite) or advance the id sequences and analyse (PostgreSQL)."""
        if self.sqlite:
            self.conn.execute("PRAGMA journal_mode=WAL")
        else:
            for table in ("jobs", "job_events"):
                self.conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            self.conn.execute("VACUUM ANALYZE")
        self.conn.close()


def _tenants(url: str, tenants: int) -> str:
    """Create the tenants (ids 1..n, the first the largest); return a member token of the first."""
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        first = get_or_create_tenant(session, "tenant-1")
        token = issue_token(session, first)
        for number in range(2, tenants + 1):
            get_or_create_tenant(session, f"tenant-{number}")
        assert session.execute(text("SELECT max(id) FROM tenants")).scalar() == tenants
    engine.dispose()
    return token


def load(url: str, *, jobs: int, events: int, tenants: int, heavy_polled: int, newest: int) -> dict:
    """Fill the database; return the token, tenant 1's job ids, its most-evented jobs and the timings."""
    rng = random.Random(5)
    token = _tenants(url, tenants)
    planned = plan_jobs(jobs, tenants, rng)
    counts = plan_event_counts(planned, events, rng)
    top = sorted((i for i, p in enumerate(planned) if p[0] == 1), key=lambda i: counts[i])[-heavy_polled:]
    tails = {i + 1: collections.deque(maxlen=newest + 1) for i in top}
    start = datetime(2026, 1, 1) - timedelta(days=HISTORY_DAYS)
    step = timedelta(days=HISTORY_DAYS) / max(jobs, 1)
    loader, started, event_id = Loader(url), time.perf_counter(), 0
    timings = {"jobs": 0.0, "events": 0.0}
    for first in range(0, jobs, CHUNK_JOBS):
        rows, stream = [], []
        for i in range(first, min(first + CHUNK_JOBS, jobs)):
            created = start + step * i
            rows.append(job_row(i + 1, planned[i], created, rng))
            stream.extend(job_events(i + 1, planned[i][1], planned[i][3], counts[i], created, rng))
        began = time.perf_counter()
        loader.write("jobs", JOB_COLUMNS, rows)
        timings["jobs"] += time.perf_counter() - began
        stream.sort(key=lambda e: e[0])
        out = []
        for at, job_id, type_, level, message, step_, data in stream:
            event_id += 1
            if job_id in tails:
                tails[job_id].append(event_id)
            out.append((event_id, job_id, start + timedelta(seconds=at - start.timestamp()), type_, level, message,
                        step_, data, 1))
        began = time.perf_counter()
        loader.write("job_events", EVENT_COLUMNS, out)
        timings["events"] += time.perf_counter() - began
    began = time.perf_counter()
    loader.finish()
    finishing = time.perf_counter() - began
    generating = time.perf_counter() - started - sum(timings.values()) - finishing
    summary = (f"generating {generating:.0f} s, writing jobs {timings['jobs']:.0f} s, events "
               f"{timings['events']:.0f} s, {'journal back to WAL' if loader.sqlite else 'VACUUM ANALYZE'} "
               f"{finishing:.0f} s; {event_id:,} events")
    return {"token": token, "job_ids": [i + 1 for i, p in enumerate(planned) if p[0] == 1],
            "heavy": [(job_id, tail[0], counts[job_id - 1]) for job_id, tail in tails.items()],
            "timings": summary}

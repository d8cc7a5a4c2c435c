"""How fast the dashboard's job pages answer with many jobs in the database.

Fills a fresh database with --jobs job rows of one tenant (most finished, --queued of them queued,
a few running, spread over kinds, tasks and models), then times each page through the Flask app
(no network): the jobs list, its live table with filters, a page deep in the history, a text
search, and a job's page. Prints the median and worst of --repeat requests per page.

    python bench/dashboard.py [--jobs 100000] [--queued 1000] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from _common import command_line
from sqlalchemy import insert

from api import create_app
from db.base import utcnow
from db.migrate import upgrade
from db.models import Job
from db.services.tenants import get_or_create_tenant, issue_token

KINDS = ("finetune", "evaluate", "batch_inference")
TASKS = ("text-classification", "token-classification", "translation", "question-answering")


def fill(app, jobs: int, queued: int) -> tuple[str, int]:
    """Insert the jobs in batches; return a member token and the id of a job in the middle."""
    rng = random.Random(7)
    factory = app.extensions["nightshift"].session_factory
    with factory.begin() as session:
        tenant = get_or_create_tenant(session, "bench")
        token = issue_token(session, tenant)
        tenant_id = tenant.id
    start = utcnow() - timedelta(days=60)
    queued_from = jobs - queued
    for first in range(0, jobs, 5000):
        rows = []
        for i in range(first, min(first + 5000, jobs)):
            kind = KINDS[i % 3]
            status = ("queued" if i >= queued_from else "running" if i % 997 == 0
                      else rng.choice(("succeeded", "succeeded", "succeeded", "failed", "cancelled")))
            created = start + timedelta(seconds=i * 50)
            model = f"model-{i % 40}"
            params = ({"base_model": "all-MiniLM-L6-v2", "train_dataset_id": 1, "model_name": model} if kind == "finetune"
                      else {"model": model, "dataset_id": 1})
            rows.append({"tenant_id": tenant_id, "kind": kind, "task": TASKS[i % 4], "status": status, "params": params,
                         "priority": rng.randint(0, 9), "queue": "gpu", "attempts": 1, "max_attempts": 3,
                         "interruptions": 0, "epoch": 1, "cancel_requested": False,
                         "progress_fraction": 1.0 if status == "succeeded" else 0.3, "result": {},
                         "created_at": created, "updated_at": created,
                         "started_at": None if status == "queued" else created,
                         "finished_at": created + timedelta(minutes=9) if status in ("succeeded", "failed", "cancelled") else None,
                         "error_code": "dataset_invalid" if status == "failed" else None,
                         "error_message": "the label column has one class" if status == "failed" else None})
        with factory.begin() as session:
            session.execute(insert(Job), rows)
    return token, queued_from // 2


def time_pages(app, token: str, middle: int, repeat: int) -> list[tuple[str, float, float]]:
    client = app.test_client()
    csrf = client.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    assert client.post("/login", data={"token": token, "csrf_token": csrf}).status_code == 302
    pages = {
        "jobs list (newest 50)": "/jobs",
        "live table, status=queued": "/jobs/table?status=queued",
        "live table, kind+task+model": "/jobs/table?kind=evaluate&task=translation&model=model-7",
        "a page deep in history (cursor)": f"/jobs?cursor={middle}",
        "text search q=one class": "/jobs?q=one%20class",
        "a job's page": f"/jobs/{middle}",
    }
    results = []
    for name, path in pages.items():
        seconds = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(path)
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 200, (path, response.status_code)
        results.append((name, statistics.median(seconds) * 1000, max(seconds) * 1000))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--queued", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default="", help="an empty database (default: a SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = args.database_url or f"sqlite:///{Path(scratch) / 'bench.db'}"
        upgrade(url)
        app = create_app({"database_url": url, "data_dir": scratch, "redis_url": "redis://127.0.0.1:1/0"})
        started = time.perf_counter()
        token, middle = fill(app, args.jobs, args.queued)
        print(f"command: {command_line()}")
        print(f"database: {url.split('://')[0]}, {args.jobs} jobs ({args.queued} queued) inserted in "
              f"{time.perf_counter() - started:.0f} s")
        print("| page | median ms | worst ms |\n|---|---|---|")
        for name, median, worst in time_pages(app, token, middle, args.repeat):
            print(f"| {name} | {median:.0f} | {worst:.0f} |")
        app.extensions["nightshift"].engine.dispose()


if __name__ == "__main__":
    main()

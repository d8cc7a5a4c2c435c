"""How fast polling answers with millions of jobs and events in the database.

Builds a fresh database through the Alembic migrations (SQLite: a file in a temporary folder;
PostgreSQL: a database created beside --database-url and dropped at the end), bulk-loads --jobs
jobs over several tenants (most succeeded or failed, some cancelled, queued and running, the live
ones mostly the newest) and --events events (a few each, a long tail of fine-tunes with thousands
of metric and log lines, interleaved in time as a busy system writes them), then serves the API
with gunicorn as users run it and times, over HTTP, one request after another:

  GET /api/v1/jobs/{id}                  random jobs of the largest tenant
  GET /api/v1/jobs?status=running        the first page
  GET /api/v1/jobs/{id}/events?after=C   the newest events of jobs with the most events (a
                                         follower's poll: C is the cursor it holds), and the first page
  GET /jobs                              the dashboard's jobs page (logged in), and its live table

It prints p50/p99/worst per endpoint, then the query plan of every statement each endpoint runs
(captured with a before_cursor_execute listener on one request, explained with its parameters:
EXPLAIN ANALYZE on PostgreSQL, EXPLAIN QUERY PLAN on SQLite). The load is timed, not measured.

    python bench/poll_scale.py [--jobs 1000000] [--events 10000000] [--sqlite]
                               [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from _common import command_line, scratch_postgres
from _poll_data import load
from sqlalchemy import event

from api import create_app
from db.migrate import upgrade
from db.session import make_engine
from nightshift.stack import api_command, free_port, wait_for_api
from worker.config import Settings

HEAVY_JOBS_POLLED = 20
STATEMENT_RUNS = 20
NEWEST_EVENTS = 50  # a follower that polls every few seconds holds a cursor this close to the end


@contextlib.contextmanager
def scratch_database(kind: str, server_url: str, scratch: Path, revision: str):
    """Yield the URL of a fresh database migrated to `revision`; drop it afterwards."""
    if kind == "sqlite":
        url = f"sqlite:///{scratch / 'poll.db'}"
        upgrade(url, revision)
        yield url
        return
    with scratch_postgres(server_url, revision) as url:
        yield url


@contextlib.contextmanager
def serving(url: str, scratch: Path):
    """Run the API under gunicorn, as `nightshift up` does; yield its base URL."""
    settings = Settings.from_env(data_dir=scratch / "data", database_url=url, api_port=free_port(),
                                 redis_url="redis://127.0.0.1:6379/0")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(scratch / "api.log", "ab") as log:
        process = subprocess.Popen(api_command(settings), env={**os.environ, **settings.export_env()},
                                   stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_for_api(settings.base_url, alive=lambda: _raise_if_exited(process, scratch))
        yield settings.base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _raise_if_exited(process: subprocess.Popen, scratch: Path) -> None:
    if process.poll() is not None:
        raise RuntimeError("gunicorn exited:\n" + (scratch / "api.log").read_text()[-3000:])


def dashboard_login(http, base: str, token: str) -> None:
    """Log `http` (a requests or Flask test client) into the dashboard with `token`."""
    page = http.get(f"{base}/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    no_redirects = {"allow_redirects": False} if isinstance(http, requests.Session) else {}  # Flask's never follows
    answer = http.post(f"{base}/login", data={"token": token, "csrf_token": csrf}, **no_redirects)
    assert answer.status_code == 302, answer.status_code


def endpoints(fixture: dict, requests_per: int, repeat: int) -> dict[str, list[tuple[str, bool]]]:
    """Name -> the (path, on the dashboard) requests to time, in order."""
    rng = random.Random(11)
    polls = [f"/api/v1/jobs/{job_id}/events?after={cursor}" for job_id, cursor, _ in fixture["heavy"]]
    firsts = [f"/api/v1/jobs/{job_id}/events" for job_id, _, _ in fixture["heavy"]]
    return {
        "GET /jobs/{id}": [(f"/api/v1/jobs/{rng.choice(fixture['job_ids'])}", False) for _ in range(requests_per)],
        "GET /jobs?status=running": [("/api/v1/jobs?status=running", False)] * repeat,
        "GET /jobs (newest 50)": [("/api/v1/jobs", False)] * repeat,
        f"GET /jobs/{{id}}/events?after= (newest {NEWEST_EVENTS})": [(polls[i % len(polls)], False)
                                                                      for i in range(repeat)],
        "GET /jobs/{id}/events (first 500)": [(firsts[i % len(firsts)], False) for i in range(repeat)],
        "dashboard /jobs": [("/jobs", True)] * repeat,
        "dashboard /jobs/table?status=running": [("/jobs/table?status=running", True)] * repeat,
    }


def time_endpoints(base: str, token: str, plan: dict) -> list[tuple[str, int, float, float, float]]:
    """Time each request over HTTP; return (name, count, p50, p99, worst) in ms per endpoint."""
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    dashboard = requests.Session()
    dashboard_login(dashboard, base, token)
    rows = []
    for name, calls in plan.items():
        for path, on_dashboard in calls[:20]:  # warm the worker processes and their connection pools
            (dashboard if on_dashboard else api).get(base + path).raise_for_status()
        seconds = []
        for path, on_dashboard in calls:
            started = time.perf_counter()
            answer = (dashboard if on_dashboard else api).get(base + path)
            seconds.append(time.perf_counter() - started)
            answer.raise_for_status()
        seconds.sort()
        rows.append((name, len(seconds), statistics.median(seconds) * 1000,
                     seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))] * 1000, seconds[-1] * 1000))
    return rows


def capture_statements(url: str, scratch: Path, token: str, plan: dict) -> dict[str, list[tuple[str, object]]]:
    """Run one request per endpoint through the Flask app; return the SQL each one ran, with parameters."""
    app = create_app({"database_url": url, "data_dir": str(scratch / "data"), "redis_url": "redis://127.0.0.1:6379/0"})
    engine = app.extensions["nightshift"].engine
    seen: list[tuple[str, object]] = []
    api, dashboard = app.test_client(), app.test_client()
    dashboard_login(dashboard, "", token)
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, params, _ctx, _many: seen.append((sql, params)))
    captured = {}
    for name, calls in plan.items():
        path, on_dashboard = calls[-1]
        seen.clear()
        answer = (dashboard.get(path) if on_dashboard
                  else api.get(path, headers={"Authorization": f"Bearer {token}"}))
        assert answer.status_code == 200, (path, answer.status_code)
        captured[name] = _distinct(seen)
    engine.dispose()
    return captured


def _distinct(statements: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """Keep the first of each SQL text (the dashboard runs its queue-position count once per row)."""
    first: dict[str, tuple[str, object, int]] = {}
    for sql, params in statements:
        if sql.lstrip().upper().startswith("SELECT") and sql.strip() != "SELECT 1":
            sql_, params_, count = first.get(sql, (sql, params, 0))
            first[sql] = (sql_, params_, count + 1)
    return [(f"{sql}  -- run {count}x" if count > 1 else sql, params) for sql, params, count in first.values()]


def explain(url: str, captured: dict) -> None:
    """Print each captured statement, the time it takes to run and fetch, and its plan, all with the
    parameters it was sent with."""
    engine = make_engine(url)
    analyze = "EXPLAIN (ANALYZE, BUFFERS) " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.connect() as conn:
        for name, statements in captured.items():
            print(f"\n### {name}")
            for sql, params in statements:
                text = sql.split("  -- run")[0]
                cursor = conn.connection.cursor()
                seconds = []
                for _ in range(STATEMENT_RUNS):
                    started = time.perf_counter()
                    cursor.execute(text, params)
                    cursor.fetchall()
                    seconds.append(time.perf_counter() - started)
                cursor.execute(analyze + text, params)
                plan = cursor.fetchall()
                cursor.close()
                print(f"\n{' '.join(sql.split())}\n  params: {params}\n  run and fetched {STATEMENT_RUNS}x: "
                      f"median {statistics.median(seconds) * 1000:.2f} ms, worst {max(seconds) * 1000:.2f} ms")
                for row in plan:
                    print("    " + (row[0] if len(row) == 1 else f"{row[-1]}"))
            conn.rollback()
    engine.dispose()


def run_one(kind: str, args) -> None:
    with tempfile.TemporaryDirectory(prefix="nightshift-poll-") as tmp:
        scratch = Path(tmp)
        with scratch_database(kind, args.database_url, scratch, args.revision) as url:
            started = time.perf_counter()
            fixture = load(url, jobs=args.jobs, events=args.events, tenants=args.tenants,
                           heavy_polled=HEAVY_JOBS_POLLED, newest=NEWEST_EVENTS)
            print(f"\n## {kind} (schema at {args.revision}): {args.jobs:,} jobs, {args.events:,} events over "
                  f"{args.tenants} tenants, "
                  f"loaded in {time.perf_counter() - started:.0f} s ({fixture['timings']})")
            print(f"largest tenant: {len(fixture['job_ids']):,} jobs; its polled jobs have "
                  f"{min(n for _, _, n in fixture['heavy']):,} to {max(n for _, _, n in fixture['heavy']):,} events")
            plan = endpoints(fixture, args.requests, args.repeat)
            with serving(url, scratch) as base:
                rows = time_endpoints(base, fixture["token"], plan)
            print(f"\nload average (1, 5, 15 min) after timing, on {os.cpu_count()} cores: "
                  f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
            print("\n| endpoint | requests | p50 ms | p99 ms | worst ms |\n|---|---|---|---|---|")
            for name, count, p50, p99, worst in rows:
                print(f"| {name} | {count} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")
            if not args.no_plans:
                explain(url, capture_statements(url, scratch, fixture["token"], plan))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="GET /jobs/{id} requests")
    parser.add_argument("--repeat", type=int, default=200, help="requests of each other endpoint")
    parser.add_argument("--database-url", default="",
                        help="a PostgreSQL server URL: a scratch database is created beside its database")
    parser.add_argument("--sqlite", action="store_true", help="with --database-url, also measure SQLite")
    parser.add_argument("--revision", default="head", help="migrate to this revision (e.g. 0006: before the indexes)")
    parser.add_argument("--no-plans", action="store_true", help="skip the query plans")
    args = parser.parse_args()
    print(f"command: {command_line()}")
    kinds = (["sqlite"] if args.sqlite or not args.database_url else []) + (["postgresql"] if args.database_url else [])
    for kind in kinds:
        run_one(kind, args)


if __name__ == "__main__":
    main()

"""Submission rate: `POST /api/v1/jobs` from concurrent clients against bare Celery `send_task`.

Starts the API (gunicorn, --api-workers processes), beat and an embedded Redis with no worker, so
submitted jobs stay queued; then, in the same run and against the same Redis:

- --clients threads, each with its own keep-alive connection (`http.client`, which costs the client far
  less CPU than `requests`: both run on the same cores as the server), submit --jobs fine-tune jobs in all;
- --clients threads publish --jobs bare Celery messages with `send_task` (one app, its producer pool).

Prints jobs/s of each, their ratio, the latency percentiles per request, and the CPU each process spent
per request (the API's gunicorn processes, beat, Redis, PostgreSQL where it runs on this machine, this
process's clients): on a machine whose cores
the server shares with its clients, the rate is bound by the sum.

--stages serves the same API with cut-down copies of the POST (`bench/_submit_stages.py`) and measures each the
same way: the framework and token check alone, then the body parsed, then the whole submission but its Redis
message; what each adds is what that part of a submission costs.

--live-worker records a worker of the submissions' queue as seen now (its heartbeat row; no process
consumes the messages): each answer then also estimates when its job should start, as it does while a
worker is up.

--backlog N first writes N queued jobs of the same kind to the same queue straight into the database, and
their messages to the broker (a night's backlog): each submission's answer then counts a line N jobs longer
ahead of it, and beat's sweeper has N more messages to account for.

    python bench/submit_rate.py [--jobs 4000] [--clients 16] [--api-workers 2] [--backlog 0]
                                [--database-url postgresql+psycopg://...] [--stages] [--live-worker]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from _common import command_line, scratch_postgres


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU seconds (user + system) spent so far by each named process and its children (but this
    process's own children are the stack's processes, counted under their own names)."""
    spent = {}
    for name, proc in processes.items():
        total = 0.0
        for member in [proc, *(proc.children(recursive=True) if proc.pid != os.getpid() else [])]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = member.cpu_times()
                total += times.user + times.system
        spent[name] = total
    return spent


def write_backlog(settings, count: int) -> None:
    """Write `count` queued fine-tune jobs of the local tenant to the queue the submissions go to, and
    their messages to the broker, as submissions would have (the sweeper finds none lost)."""
    from sqlalchemy import insert, select

    from db.models import Job, Tenant
    from db.services import lines
    from db.session import make_engine, make_session_factory
    from worker.celery_app import make_celery
    from worker.outbox import _send

    engine = make_engine(settings.database_url)
    queue = settings.queue_for("finetune")
    try:
        with engine.begin() as connection:
            tenant = connection.scalar(select(Tenant.id).where(Tenant.name == "default"))
            row = {"tenant_id": tenant, "kind": "finetune", "task": "text-classification", "status": "queued",
                   "params": {}, "queue": queue}
            for start in range(0, count, 10_000):
                connection.execute(insert(Job.__table__), [row] * min(10_000, count - start))
            jobs = connection.execute(select(Job.id, Job.priority).where(Job.status == "queued")).all()
        with make_session_factory(engine)() as session, session.begin():
            lines.compact(session)  # as beat's maintenance loop does within its next tick
    finally:
        engine.dispose()
    celery = make_celery(settings)
    for job_id, priority in jobs:
        _send(celery, "jobs.finetune", job_id, queue, priority)


@contextlib.contextmanager
def idle_worker(settings):
    """A worker of the submissions' queue, live while the block runs: its heartbeat row, written now and then
    every heartbeat period, as a worker's would be (no process consumes the messages)."""
    from db.services.workers import record_heartbeat
    from db.session import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    factory, stop = make_session_factory(engine), threading.Event()

    def heartbeat() -> None:
        with factory.begin() as session:
            record_heartbeat(session, "bench@idle", "bench", os.getpid(), [settings.queue_for("finetune")],
                             {"kind": "cpu"})

    def beat() -> None:
        while not stop.wait(settings.heartbeat_seconds):
            heartbeat()

    heartbeat()
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        engine.dispose()


def run_threads(clients: int, total: int, send) -> tuple[float, list[float]]:
    """Call `send(client_index)` `total` times from `clients` threads; return (wall s, latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def work(index: int) -> None:
        mine = []
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            started = time.perf_counter()
            send(index)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--backlog", type=int, default=0, help="queued jobs written ahead of the submissions")
    parser.add_argument("--stages", action="store_true", help="also measure cut-down copies of the POST")
    parser.add_argument("--live-worker", action="store_true", help="a worker of the queue seen now (no process)")
    args = parser.parse_args()

    from celery import Celery

    import nightshift.stack
    from nightshift.cli import ensure_local_token
    from nightshift.client import Client
    from nightshift.stack import Stack, free_port
    from worker.config import Settings

    if args.stages:  # the same gunicorn command, serving the API with the cut-down POSTs beside the real one
        command = nightshift.stack.api_command
        nightshift.stack.api_command = lambda settings: [
            *command(settings)[:-1], "--pythonpath", str(Path(__file__).parent), "_submit_stages:create_app()"]

    with contextlib.ExitStack() as scratch:
        data_dir = scratch.enter_context(tempfile.TemporaryDirectory(prefix="nightshift-bench-"))
        # An empty database on either backend: the queue each submission counts its place in starts empty.
        database_url = scratch.enter_context(scratch_postgres(args.database_url)) if args.database_url else ""
        settings = Settings.from_env(data_dir=data_dir, database_url=database_url, api_port=free_port(),
                                     api_workers=args.api_workers)
        stack = Stack(settings, workers=0)
        settings = stack.start(redis_url=None)
        try:
            token = ensure_local_token(settings)
            rows = Path(data_dir) / "train.csv"
            rows.write_text("text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40)))
            dataset = Client(settings.base_url, token).upload_dataset(rows, text_column="text", label_column="label")
            if args.live_worker:
                scratch.enter_context(idle_worker(settings))
            if args.backlog:
                started = time.perf_counter()
                write_backlog(settings, args.backlog)
                print(f"backlog: {args.backlog} queued jobs written in {time.perf_counter() - started:.1f} s")
            address = urlsplit(settings.base_url)
            # http.client reconnects by itself when the server closes the connection after a response.
            connections = [http.client.HTTPConnection(address.hostname, address.port, timeout=60)
                           for _ in range(args.clients)]
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            body = json.dumps({"kind": "finetune",
                               "params": {"base_model": "all-MiniLM-L6-v2", "train_dataset_id": dataset["id"]}})

            processes = {name: psutil.Process(stack.processes[name].pid) for name in ("api", "beat")}
            processes["redis"] = psutil.Process(stack.redis.process.pid)
            processes["clients"] = psutil.Process()
            if database_url:  # the PostgreSQL server on this machine, if it runs here: its postmaster and backends
                processes.update({"postgres": proc for proc in psutil.process_iter(["name", "ppid"])
                                  if proc.info["name"] == "postgres" and psutil.Process(proc.info["ppid"]).name() != "postgres"})

            def measure_posts(path: str) -> tuple[float, list[float], dict[str, float]]:
                def post(index: int) -> None:
                    connection = connections[index]
                    connection.request("POST", path, body=body, headers=headers)
                    response = connection.getresponse()
                    text = response.read()
                    assert response.status == 202, text

                post(0)  # warm-up: connections, the first request of each process
                before = cpu_seconds(processes)
                wall, latencies = run_threads(args.clients, args.jobs, post)
                return wall, latencies, {name: spent - before[name] for name, spent in cpu_seconds(processes).items()}

            results = [("POST /api/v1/jobs", *measure_posts("/api/v1/jobs"))]
            if args.stages:
                from _submit_stages import STAGES

                results += [(f"  {label}", *measure_posts(f"/api/v1/bench/{stage}")) for stage, label in STAGES.items()]

            app = Celery("bench", broker=settings.redis_url)
            app.conf.broker_connection_retry_on_startup = True

            def send(_index: int) -> None:
                app.send_task("bench.sink", args=[1], queue="bench-sink")

            send(0)
            before = cpu_seconds(processes)
            celery_wall, celery_latencies = run_threads(args.clients, args.jobs, send)
            celery_cpu = {name: spent - before[name] for name, spent in cpu_seconds(processes).items()}
            results.insert(0, ("bare Celery send_task", celery_wall, celery_latencies, celery_cpu))
        finally:
            stack.stop()
    database = "PostgreSQL" if args.database_url.startswith("postgres") else "SQLite"
    print(f"command: {command_line()}")
    print(f"{args.jobs} submissions from {args.clients} threads; API: gunicorn with {args.api_workers} workers, {database}"
          + (f"; {args.backlog} queued jobs ahead" if args.backlog else "")
          + ("; a live worker of the queue" if args.live_worker else ""))
    print(f"{'':32}{'per s':>9}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}{'worst ms':>10}   CPU ms per request")
    celery_rate = args.jobs / celery_wall
    for name, wall, latencies, cpu in results:
        rate = args.jobs / wall
        spent = ", ".join(f"{process} {seconds / args.jobs * 1000:.2f}" for process, seconds in cpu.items())
        print(f"{name:32}{rate:9.1f}{rate / celery_rate:7.2f}x{statistics.median(latencies) * 1000:9.1f}"
              f"{percentile(latencies, 0.99) * 1000:9.1f}{max(latencies) * 1000:10.1f}   {spent}")


if __name__ == "__main__":
    main()

"""The soak on plain Celery: the same jobs as bare tasks (bench/plain_celery_app.py), same chaos.

Jobs are published with `send_task`; two `celery worker` processes run them with Celery's defaults.
Runs are counted from the tasks' JSONL records, not from Redis (the soak restarts Redis).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import psutil
import redis
from _common import REPO
from _soak import BASE_MODEL_PARAMS, Chaos, Outcome, job_plan, stop_processes
from celery import Celery
from kombu.exceptions import OperationalError

from nightshift.stack import EmbeddedRedis

BENCH = REPO / "bench"
DEFAULT_QUEUE = "celery"
SETTLE_SECONDS = 10.0  # nothing queued and nothing running for this long: nothing more will run
BASE_JOB = 0  # the job that trains the model the evaluations and inferences use; soak jobs are 1..N


class PlainCluster:
    """An embedded Redis (AOF on, as Nightshift's) and plain Celery workers w1..wN."""

    def __init__(self, folder: Path, *, workers: int, concurrency: int) -> None:
        self.folder, self.concurrency = folder, concurrency
        self.records = folder / "records.jsonl"
        self.redis = EmbeddedRedis(folder / "redis")
        self.names = [f"w{i}" for i in range(1, workers + 1)]
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        """Start Redis, then the workers; stop whatever started if any of it fails."""
        try:
            (self.folder / "logs").mkdir(parents=True, exist_ok=True)
            self.redis.start()
            for name in self.names:
                self.start_process(name)
        except BaseException:
            self.stop()
            raise

    def start_process(self, name: str) -> subprocess.Popen:
        """Start (or restart) worker `name`: Celery's defaults, only the concurrency set."""
        command = [sys.executable, "-m", "celery", "-A", "plain_celery_app", "worker", "-c", str(self.concurrency),
                   "-n", f"{name}@%h", "--loglevel", "INFO"]
        python_path = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": python_path,
               "PLAIN_SOAK_BROKER_URL": self.redis.url, "PLAIN_SOAK_RECORDS": str(self.records),
               "PLAIN_SOAK_DIR": str(self.folder / "work")}
        with open(self.folder / "logs" / f"{name}.log", "ab") as out:
            self.processes[name] = subprocess.Popen(command, env=env, cwd=self.folder, stdout=out, stderr=out,
                                                    stdin=subprocess.DEVNULL, process_group=0)
        return self.processes[name]

    def stop(self) -> None:
        """Stop the workers (children included), then Redis."""
        stop_processes(list(self.processes.values()))
        self.redis.stop()

    def records_read(self) -> list[dict]:
        """Return every record the tasks appended so far."""
        if not self.records.exists():
            return []
        return [json.loads(line) for line in self.records.read_text().splitlines()]

    def runs(self) -> dict[int, Counter]:
        """Return, per job, how many "started", "finished" and "failed" records it has."""
        counts: dict[int, Counter] = defaultdict(Counter)
        for entry in self.records_read():
            counts[entry["job"]][entry["event"]] += 1
        return counts

    def open_runs(self) -> list[tuple[int, int]]:
        """Return (job, pid) of each run started and not ended (its process may be dead)."""
        started: Counter[tuple[int, int]] = Counter()
        for entry in self.records_read():
            started[(entry["job"], entry["pid"])] += 1 if entry["event"] == "started" else -1
        return [key for key, still in started.items() if still > 0]

    def running_on(self, pids: set[int]) -> list[int]:
        """Return the jobs running in one of `pids`."""
        return sorted(job for job, pid in self.open_runs() if pid in pids)

    def running(self) -> set[int]:
        """Return the jobs running in a live process."""
        return {job for job, pid in self.open_runs() if psutil.pid_exists(pid)}

    def idle(self) -> bool:
        """True when nothing is queued and no live process is running a job."""
        try:
            queued = redis.Redis.from_url(self.redis.url, socket_timeout=2).llen(DEFAULT_QUEUE)
        except redis.RedisError:
            return False
        return queued == 0 and not self.running()


def publish(app: Celery, job: int, kind: str, knobs: dict, paths: dict[str, str]) -> bool:
    """Send job `job` as a bare task; False if the broker refused it."""
    if kind == "finetune":
        args = [job, {"base_model": paths["tiny"], **knobs}, paths["train"]]
    elif kind == "evaluate":
        args = [job, paths["model"], paths["train"]]
    else:
        args = [job, paths["model"], paths["docs"], 200]
    try:
        app.send_task(f"plain.{kind}", args=args)
    except OperationalError:
        return False
    return True


def train_base_model(cluster: PlainCluster, app: Celery, paths: dict[str, str], timeout: float = 300) -> None:
    """Train the model the soak's evaluations and inferences use, before any chaos starts."""
    publish(app, BASE_JOB, "finetune", BASE_MODEL_PARAMS, paths)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = cluster.runs()[BASE_JOB]
        if runs["finished"]:
            return
        if runs["failed"]:
            raise RuntimeError(f"the plain Celery base model failed; see {cluster.folder / 'logs'}")
        time.sleep(1)
    raise RuntimeError(f"the plain Celery base model did not finish within {timeout:.0f} s")


def wait_until_settled(cluster: PlainCluster, jobs: list[int], timeout: float) -> None:
    """Wait until every job ended, or nothing is queued or running for SETTLE_SECONDS, or `timeout`."""
    deadline = time.monotonic() + timeout
    idle_since = None
    while time.monotonic() < deadline:
        runs = cluster.runs()
        if all(runs[j]["finished"] or runs[j]["failed"] for j in jobs):
            return
        if not cluster.idle():
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= SETTLE_SECONDS:
            return
        time.sleep(2)


def waiting_messages(cluster: PlainCluster) -> tuple[set[int], set[int]]:
    """Return the jobs whose message is still in the queue, and those parked in Redis's unacked hash
    (reserved by a worker that was killed; redelivered only after the visibility timeout)."""
    client = redis.Redis.from_url(cluster.redis.url, socket_timeout=5)
    queued = {_job_of(message) for message in client.lrange(DEFAULT_QUEUE, 0, -1)}
    parked = {_job_of(json.dumps(json.loads(value)[0])) for value in client.hvals("unacked")}
    return queued, parked


def _job_of(raw: bytes | str) -> int:
    message = json.loads(raw)
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)[0][0]


def run_celery(folder: Path, paths: dict[str, str], *, count: int, workers: int, concurrency: int,
               redis_restarts_at: list[float], timeout: float) -> Outcome:
    """Run the soak on plain Celery; print its details and return its outcome."""
    cluster = PlainCluster(folder, workers=workers, concurrency=concurrency)
    cluster.start()
    try:
        with Celery("plain_soak_driver", broker=cluster.redis.url) as app:
            paths = {**paths, "model": str(folder / "work" / f"job-{BASE_JOB}" / "model")}
            train_base_model(cluster, app, paths)
            started = time.monotonic()
            chaos = Chaos(cluster, cluster.running_on, redis_restarts_at)
            chaos.start()
            try:
                accepted = [job for job, (kind, knobs) in enumerate(job_plan(count), start=1)
                            if publish(app, job, kind, knobs, paths)]
                wait_until_settled(cluster, accepted, timeout)
            finally:
                chaos.finish()
            return report(cluster, accepted, count, chaos, time.monotonic() - started)
    finally:
        cluster.stop()


def report(cluster: PlainCluster, accepted: list[int], count: int, chaos: Chaos, elapsed: float) -> Outcome:
    """Count runs per job from the records; print the details behind the table row."""
    runs = cluster.runs()
    ended = {j: runs[j]["finished"] + runs[j]["failed"] for j in accepted}
    lost = {j for j in accepted if not ended[j]}
    queued, parked = waiting_messages(cluster)
    running = cluster.running()
    pending = lost & (queued | parked | running)
    interrupted = sum(len(victims) for _, victims in chaos.kills)
    print(f"plain Celery: {count - len(accepted)} of {count} jobs refused by the broker at submit; "
          f"{interrupted} runs interrupted by kills; "
          f"started more than once: {sum(1 for j in accepted if runs[j]['started'] > 1)}")
    print(f"plain Celery: of {len(lost)} lost jobs, {len(lost & parked)} sit in Redis's unacked hash (reserved by a "
          f"killed worker; redelivered once the 3600 s visibility timeout passes), {len(lost & (queued | running))} "
          f"were still queued or running, and {len(lost - pending)} were acked before they ran to the end and are gone")
    return Outcome("plain Celery", len(accepted), sum(1 for j in accepted if runs[j]["finished"]),
                   sum(1 for j in accepted if not runs[j]["finished"] and runs[j]["failed"]), len(lost),
                   len(pending), sum(1 for n in ended.values() if n > 1), len(chaos.kills), chaos.redis_restarts,
                   elapsed)

"""Soak: hundreds of mixed jobs while workers are killed every few seconds and Redis restarts twice.

Prints jobs accepted, succeeded, failed (with reasons), lost, run twice, and the median and worst
time from a worker kill until each job it was running is running again (or done).

    python bench/soak.py [--jobs 300] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
from _common import REPO, command_line
from sqlalchemy import func, select

from api.cli import ensure_local_token
from api.client import Client
from api.stack import Stack, free_port
from db.models import Job, JobEvent, ModelArtifact
from db.session import make_engine, make_session_factory
from worker.config import Settings

SOAK_SETTINGS = dict(lease_seconds=5.0, heartbeat_seconds=1.0, sweep_seconds=2.0, relay_seconds=1.0,
                     redispatch_after_seconds=5.0, retry_backoff_seconds=1.0, max_attempts=5, api_workers=2)


def make_data(folder: Path) -> tuple[Path, Path]:
    rng = random.Random(7)
    words = {"pos": "good great lovely excellent superb fine".split(), "neg": "bad awful terrible poor nasty".split()}
    train, docs = folder / "train.jsonl", folder / "docs.jsonl"
    with open(train, "w") as out:
        for _ in range(200):
            label = rng.choice(["pos", "neg"])
            out.write(json.dumps({"text": " ".join(rng.choices(words[label], k=rng.randint(2, 10))), "label": label}) + "\n")
    with open(docs, "w") as out:
        for i in range(2000):
            label = rng.choice(["pos", "neg"])
            out.write(json.dumps({"id": i, "text": " ".join(rng.choices(words[label], k=rng.randint(1, 12)))}) + "\n")
    return train, docs


class Chaos(threading.Thread):
    """Kill a random worker every 5-10 s (and restart it); restart Redis at the given moments."""

    def __init__(self, stack: Stack, session_factory, redis_restarts_at: list[float]) -> None:
        super().__init__(daemon=True)
        self.stack, self.session_factory = stack, session_factory
        self.redis_restarts_at = sorted(redis_restarts_at)
        self.stop_event = threading.Event()
        self.kills: list[tuple[float, list[int]]] = []  # (time, ids of the jobs it was running)
        self.redis_restarts = 0

    def run(self) -> None:
        started = time.monotonic()
        rng = random.Random(11)
        while not self.stop_event.wait(rng.uniform(5, 10)):
            if self.redis_restarts_at and time.monotonic() - started >= self.redis_restarts_at[0]:
                self.redis_restarts_at.pop(0)
                self.stack.redis.stop()
                time.sleep(1)
                self.stack.redis.start()
                self.redis_restarts += 1
            self.kill(rng.choice([n for n in self.stack.names if n.startswith("w")]))

    def kill(self, name: str) -> None:
        main = psutil.Process(self.stack.processes[name].pid)
        pids = {p.pid for p in main.children()}
        with self.session_factory() as session:
            running = session.scalars(select(Job).where(Job.status == "running")).all()
            victims = [j.id for j in running if j.lease_owner and int(j.lease_owner.rsplit(":", 1)[1]) in pids]
        for pid in [*pids, main.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.kills.append((time.time(), victims))
        self.stack.processes[name].wait()
        self.stack.start_process(name)


def submit_all(client: Client, count: int, model: str, train_id: int, docs_id: int, tiny: str) -> list[int]:
    rng = random.Random(3)
    ids = []
    for i in range(count):
        kind = ("finetune", "evaluate", "batch_inference")[i % 3]
        if kind == "finetune":
            params = {"base_model": tiny, "train_dataset_id": train_id, "max_steps": rng.randint(60, 200),
                      "batch_size": 8, "save_steps": 25, "max_length": 32, "learning_rate": 5e-3}
        elif kind == "evaluate":
            params = {"model": model, "dataset_id": train_id}
        else:
            params = {"model": model, "dataset_id": docs_id, "chunk_rows": 200}
        ids.append(client.submit(kind, params, idempotency_key=f"soak-{i}")["id"])
    return ids


def recovery_seconds(session_factory, kills) -> tuple[list[float], list[float]]:
    """Per job a kill interrupted: seconds until it was requeued, and until it ran again (or ended).

    The second includes waiting in the queue behind the backlog of jobs submitted before it.
    """
    requeued, resumed = [], []
    with session_factory() as session:
        for killed_at, job_ids in kills:
            for job_id in job_ids:
                events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
                later = [e for e in events if _utc(e.created_at) > killed_at]
                rescue = [_utc(e.created_at) for e in later if e.type == "rescue" or e.data.get("status") == "failed"]
                back = [_utc(e.created_at) for e in later if e.type == "status"
                        and e.data.get("status") in ("running", "succeeded", "failed", "cancelled")]
                if rescue:
                    requeued.append(min(rescue) - killed_at)
                if back:
                    resumed.append(min(back) - killed_at)
    return requeued, resumed


def _utc(moment) -> float:
    from datetime import UTC

    return moment.replace(tzinfo=UTC).timestamp()


def report(session_factory, job_ids: list[int], kills, chaos: Chaos, elapsed: float) -> None:
    with session_factory() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(job_ids))).all()
        ends = Counter(session.scalars(select(JobEvent.job_id).where(
            JobEvent.job_id.in_(job_ids), JobEvent.type == "status",
            JobEvent.data["status"].as_string().in_(["succeeded", "failed", "cancelled"]))).all())
        models = dict(session.execute(select(ModelArtifact.source_job_id, func.count()).group_by(
            ModelArtifact.source_job_id)).all())
    status = Counter(j.status for j in jobs)
    reasons = Counter(f"{j.error_code}" for j in jobs if j.status == "failed")
    lost = len(job_ids) - sum(status[s] for s in ("succeeded", "failed", "cancelled"))
    twice = sum(1 for j in jobs if ends[j.id] > 1 or models.get(j.id, 0) > 1)
    requeued, resumed = recovery_seconds(session_factory, kills)
    print(f"command: {command_line()}")
    print(f"duration: {elapsed:.0f} s; worker kills: {len(kills)}; Redis restarts: {chaos.redis_restarts}")
    print(f"jobs accepted: {len(job_ids)}  succeeded: {status['succeeded']}  failed: {status['failed']} "
          f"{dict(reasons)}  lost: {lost}  run twice: {twice}")
    attempts = Counter(j.attempts for j in jobs)
    print(f"attempts per job: {dict(sorted(attempts.items()))}")
    for name, values in (("requeued after a kill", requeued), ("running again after a kill", resumed)):
        if values:
            print(f"{name} ({len(values)} interrupted jobs): median {statistics.median(values):.1f} s, "
                  f"worst {max(values):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    import sys

    sys.path.insert(0, str(REPO))
    from tests.tiny_models import build_tiny_classifier

    with tempfile.TemporaryDirectory(prefix="nightshift-soak-") as tmp:
        folder = Path(tmp)
        tiny = str(build_tiny_classifier(folder / "tiny"))
        settings = Settings.from_env(data_dir=str(folder / "data"), database_url=args.database_url,
                                     api_port=free_port(), **SOAK_SETTINGS)
        stack = Stack(settings, workers=2)
        settings = stack.start(redis_url=None)
        session_factory = make_session_factory(make_engine(settings.database_url))
        try:
            client = Client(settings.base_url, ensure_local_token(settings), timeout=120)
            train_path, docs_path = make_data(folder)
            train = client.upload_dataset(train_path, text_column="text", label_column="label")
            docs = client.upload_dataset(docs_path, text_column="text")
            base = client.wait(client.submit("finetune", {
                "base_model": tiny, "train_dataset_id": train["id"], "max_steps": 40, "batch_size": 8,
                "max_length": 32, "learning_rate": 5e-3, "model_name": "soak"})["id"], timeout=300)
            assert base["status"] == "succeeded", base["error"]
            started = time.monotonic()
            chaos = Chaos(stack, session_factory, redis_restarts_at=[60, 180])
            chaos.start()
            job_ids = submit_all(client, args.jobs, "soak", train["id"], docs["id"], tiny)
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                with session_factory() as session:
                    open_jobs = session.scalar(select(func.count()).where(
                        Job.id.in_(job_ids), Job.status.in_(["queued", "running"])))
                if not open_jobs:
                    break
                time.sleep(2)
            chaos.stop_event.set()
            chaos.join()
            report(session_factory, job_ids, chaos.kills, chaos, time.monotonic() - started)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()

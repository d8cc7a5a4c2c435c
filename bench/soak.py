"""Soak: mixed jobs while workers are killed every few seconds and Redis restarts twice, on
Nightshift and, side by side, on plain Celery with its defaults.

Both systems get the same jobs (fine-tunes of a tiny model, evaluations, batch inferences; the plain
tasks call the same `worker/ml` functions, see bench/plain_celery_app.py), two workers, the same
kill cadence (SIGKILL of a worker and its children every 5-10 s) and the same Redis restarts, on an
embedded Redis with AOF on for both. Prints one table: jobs, succeeded, failed, lost, run twice,
worker kills, Redis restarts, wall time; before it, each system's details (Nightshift: failure
reasons, attempts, and the time from a kill until each job it interrupted runs again).

    python bench/soak.py [--jobs 300] [--system nightshift|celery|both] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import REPO, command_line
from _soak import BASE_MODEL_PARAMS, Chaos, Outcome, job_plan, make_data, print_table
from soak_celery import run_celery
from sqlalchemy import func, select

from nightshift.cli import ensure_local_token
from nightshift.client import Client
from nightshift.stack import Stack, free_port
from db.models import Job, JobEvent, ModelArtifact
from db.session import make_engine, make_session_factory
from worker.config import Settings

SOAK_SETTINGS = dict(lease_seconds=5.0, heartbeat_seconds=1.0, sweep_seconds=2.0, relay_seconds=1.0,
                     redispatch_after_seconds=5.0, retry_backoff_seconds=1.0, max_attempts=5, api_workers=2)
WORKERS = 2


def submit_all(client: Client, count: int, model: str, train_id: int, docs_id: int, tiny: str) -> list[int]:
    """Submit the soak's jobs through the API; return their ids."""
    ids = []
    for i, (kind, knobs) in enumerate(job_plan(count)):
        if kind == "finetune":
            params = {"base_model": tiny, "train_dataset_id": train_id, **knobs}
        elif kind == "evaluate":
            params = {"model": model, "dataset_id": train_id}
        else:
            params = {"model": model, "dataset_id": docs_id, "chunk_rows": 200}
        ids.append(client.submit(kind, params, idempotency_key=f"soak-{i}")["id"])
    return ids


def running_jobs(session_factory):
    """Return `running_on(pids)`: the running jobs whose lease is held by one of `pids`."""

    def running_on(pids: set[int]) -> list[int]:
        with session_factory() as session:
            running = session.scalars(select(Job).where(Job.status == "running")).all()
            return [j.id for j in running if j.lease_owner and int(j.lease_owner.rsplit(":", 1)[1]) in pids]

    return running_on


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


def report(session_factory, job_ids: list[int], chaos: Chaos, elapsed: float) -> Outcome:
    """Count end states from the job rows and events; print the details behind the table row."""
    with session_factory() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(job_ids))).all()
        ends = Counter(session.scalars(select(JobEvent.job_id).where(
            JobEvent.job_id.in_(job_ids), JobEvent.type == "status",
            JobEvent.data["status"].as_string().in_(["succeeded", "failed", "cancelled"]))).all())
        models = dict(session.execute(select(ModelArtifact.source_job_id, func.count()).group_by(
            ModelArtifact.source_job_id)).all())
        causes = Counter(session.scalars(select(JobEvent.data["action"].as_string()).where(
            JobEvent.job_id.in_(job_ids), JobEvent.type == "rescue")).all())
    status = Counter(j.status for j in jobs)
    lost = len(job_ids) - sum(status[s] for s in ("succeeded", "failed", "cancelled"))
    twice = sum(1 for j in jobs if ends[j.id] > 1 or models.get(j.id, 0) > 1)
    reasons = Counter(f"{j.error_code}" for j in jobs if j.status == "failed")
    attempts = dict(sorted(Counter(j.attempts for j in jobs).items()))
    interruptions = dict(sorted(Counter(j.interruptions for j in jobs).items()))
    print(f"Nightshift: failed {dict(reasons)}; attempts charged per job: {attempts}; interruptions (lost "
          f"workers, not charged) per job: {interruptions}; rescues by cause: {dict(causes)}")
    requeued, resumed = recovery_seconds(session_factory, chaos.kills)
    for name, values in (("requeued after a kill", requeued), ("running again after a kill", resumed)):
        if values:
            print(f"Nightshift: {name} ({len(values)} interrupted jobs): median {statistics.median(values):.1f} s, "
                  f"worst {max(values):.1f} s")
    return Outcome("Nightshift", len(job_ids), status["succeeded"], status["failed"], lost,
                   status["queued"] + status["running"], twice, len(chaos.kills), chaos.redis_restarts, elapsed)


def wait_for_jobs(session_factory, job_ids: list[int], timeout: float) -> None:
    """Wait until no job is queued or running, or `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_factory() as session:
            open_jobs = session.scalar(select(func.count()).where(
                Job.id.in_(job_ids), Job.status.in_(["queued", "running"])))
        if not open_jobs:
            return
        time.sleep(2)


def run_nightshift(folder: Path, paths: dict[str, str], args) -> Outcome:
    """Run the soak on the Nightshift stack; print its details and return its outcome."""
    settings = Settings.from_env(data_dir=str(folder / "data"), database_url=args.database_url,
                                 api_port=free_port(), **SOAK_SETTINGS)
    stack = Stack(settings, workers=WORKERS)
    settings = stack.start(redis_url=None)
    try:
        session_factory = make_session_factory(make_engine(settings.database_url))
        client = Client(settings.base_url, ensure_local_token(settings), timeout=120)
        train = client.upload_dataset(Path(paths["train"]), text_column="text", label_column="label")
        docs = client.upload_dataset(Path(paths["docs"]), text_column="text")
        base = client.wait(client.submit("finetune", {
            "base_model": paths["tiny"], "train_dataset_id": train["id"], **BASE_MODEL_PARAMS,
            "model_name": "soak"})["id"], timeout=300)
        assert base["status"] == "succeeded", base["error"]
        started = time.monotonic()
        chaos = Chaos(stack, running_jobs(session_factory), args.redis_restarts_at)
        chaos.start()
        try:
            job_ids = submit_all(client, args.jobs, "soak", train["id"], docs["id"], paths["tiny"])
            wait_for_jobs(session_factory, job_ids, args.timeout)
        finally:
            chaos.finish()
        return report(session_factory, job_ids, chaos, time.monotonic() - started)
    finally:
        stack.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--system", choices=("nightshift", "celery", "both"), default="both")
    parser.add_argument("--database-url", default="", help="Nightshift's database (default: SQLite)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the jobs, per system")
    parser.add_argument("--redis-restarts-at", type=lambda s: [float(x) for x in s.split(",") if x],
                        default=[60.0, 180.0], help="seconds after submitting starts (default 60,180)")
    return parser.parse_args()


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C, so every stack and worker is stopped


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args()
    sys.path.insert(0, str(REPO))
    from tests.tiny_models import build_tiny_classifier

    outcomes = []
    with tempfile.TemporaryDirectory(prefix="nightshift-soak-") as tmp:
        folder = Path(tmp)
        train, docs = make_data(folder)
        paths = {"tiny": str(build_tiny_classifier(folder / "tiny")), "train": str(train), "docs": str(docs)}
        if args.system in ("nightshift", "both"):
            outcomes.append(run_nightshift(folder / "nightshift", paths, args))
        if args.system in ("celery", "both"):
            concurrency = Settings.from_env().worker_concurrency
            outcomes.append(run_celery(folder / "celery", paths, count=args.jobs, workers=WORKERS,
                                       concurrency=concurrency, redis_restarts_at=args.redis_restarts_at,
                                       timeout=args.timeout))
    print_summary(outcomes, args)


def print_summary(outcomes: list[Outcome], args) -> None:
    """Print the command, the conditions, the table and what its columns mean."""
    print(f"command: {command_line()}")
    print(f"{WORKERS} workers per system, a random one SIGKILLed with its children every 5-10 s; Redis restarted "
          f"at {args.redis_restarts_at} s; both on an embedded Redis with AOF on (appendfsync everysec), which "
          "plain Celery users often leave off; plain Celery on its defaults (acks early, prefetch multiplier 4, "
          "visibility timeout 3600 s; no outbox, leases or sweeper)")
    print_table(outcomes)
    print("lost: ran to completion zero times by the end; of which pending: still queued or running at the end "
          f"(the {args.timeout:.0f} s --timeout), or, on plain Celery, parked in Redis's unacked hash by a killed "
          "worker until the visibility timeout; wall time: from the first submit until every job ended, or "
          "(plain Celery) until nothing was queued or running")
    for o in outcomes:
        if o.redis_restarts < len(args.redis_restarts_at):
            print(f"note: {o.system} ended before its last Redis restart ({o.redis_restarts} of "
                  f"{len(args.redis_restarts_at)}); use more --jobs or earlier --redis-restarts-at")


if __name__ == "__main__":
    main()

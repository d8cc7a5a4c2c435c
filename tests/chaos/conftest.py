"""Real processes to break: embedded Redis, gunicorn, two Celery workers, beat, PostgreSQL behind a proxy.

Leases, heartbeats, sweeps and the Redis visibility timeout are shortened to seconds so that every
recovery path runs within a test; the invariants of RELIABILITY.md are checked after each scenario.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from nightshift.cli import ensure_local_token
from nightshift.client import Client
from nightshift.stack import EmbeddedRedis, Stack, free_port
from db.enums import TERMINAL_STATUSES
from db.models import InferenceChunk, Job, JobEvent
from db.session import make_engine, make_session_factory
from tests.chaos.proxy import TcpProxy
from tests.conftest import create_postgres_database, drop_postgres_database
from tests.helpers import wait_until, write_reviews  # noqa: F401  (re-exported to the scenarios)
from worker.config import Settings

pytestmark = pytest.mark.chaos

CHAOS_SETTINGS = dict(
    lease_seconds=4.0, heartbeat_seconds=0.5, sweep_seconds=1.0, relay_seconds=0.5,
    redispatch_after_seconds=3.0, retry_backoff_seconds=1.0, max_attempts=3,
    visibility_timeout_seconds=6, unacked_restore_seconds=1, api_workers=2, max_upload_bytes=2_000_000,
)
class ChaosSystem(Stack):
    """A deployment with two workers, its database behind a proxy the tests can cut."""

    def __init__(self, data_dir: Path, database_url: str, **overrides) -> None:
        self.data_dir = data_dir
        self.database_url = database_url  # direct: the tests' own view of the truth
        host_port = database_url.split("@", 1)[1].split("/", 1)[0]
        host, _, port = host_port.partition(":")
        self.proxy = TcpProxy(host, int(port or 5432)).start()
        proxied = database_url.replace(host_port, f"127.0.0.1:{self.proxy.port}")
        settings = Settings.from_env(data_dir=str(data_dir), database_url=proxied, api_port=free_port(),
                                     **{**CHAOS_SETTINGS, **overrides})
        super().__init__(settings, log_dir=data_dir, workers=2)
        self.session_factory = make_session_factory(make_engine(database_url))

    def start(self) -> "ChaosSystem":
        """Start every process; if any part fails, stop all of them (the proxy too) and raise."""
        try:
            self.redis = EmbeddedRedis(self.data_dir / "redis").start()
            super().start(redis_url=self.redis.url)
            self.client = Client(self.settings.base_url, ensure_local_token(self.settings), timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> "ChaosSystem":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
        if os.environ.get("NIGHTSHIFT_TEST_SHOW_LOGS"):
            for name in self.processes:
                print(f"==== {name}\n{self.log(name)[-4000:]}")

    def upload_reviews(self, folder: Path, *, seed: int, rows: int = 160) -> dict:
        """Upload a synthetic labelled sentiment dataset; return the API's dataset."""
        path = write_reviews(folder / "train.csv", rows, seed=seed)
        return self.client.upload_dataset(path, text_column="text", label_column="label")

    def ensure_running(self) -> None:
        """Restart whatever a scenario stopped, so the next one starts whole."""
        if self.redis.process.poll() is not None:
            self.redis.start()
        if self.proxy._listener is None:
            self.proxy.start()
        for name in self.dead():
            self.start_process(name)

    def stop(self) -> None:
        super().stop()
        self.proxy.cut()
        self.session_factory.kw["bind"].dispose()

    # -- looking and breaking ----------------------------------------------------------------
    def job(self, job_id: int) -> Job:
        with self.session_factory() as session:
            return session.get(Job, job_id)

    def job_pid(self, job_id: int) -> int:
        """Return the pid of the process holding the job's lease."""
        owner = self.job(job_id).lease_owner
        assert owner, f"job {job_id} has no lease owner"
        return int(owner.rsplit(":", 1)[1])

    def worker_of(self, pid: int) -> str:
        """Return the name of the worker whose pool process `pid` is."""
        parent = psutil.Process(pid).parent().pid
        return next(name for name, proc in self.processes.items() if proc.pid == parent)

    def events(self, job_id: int) -> list[JobEvent]:
        with self.session_factory() as session:
            return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))

    def log(self, name: str) -> str:
        return (self.data_dir / f"{name}.log").read_text(errors="replace")


def check_invariants(system: ChaosSystem, job_ids: list[int]) -> None:
    """Assert RELIABILITY.md's invariants for the given jobs."""
    for job_id in job_ids:
        job = system.job(job_id)
        events = system.events(job_id)
        terminal = [e for e in events if e.type == "status" and e.data.get("status") in TERMINAL_STATUSES]
        starts = [e for e in events if e.type == "status" and e.data.get("status") == "running"]
        _record_recovery(job, starts, events, ends=len(terminal))  # before asserting: failures count too
        assert job.status in TERMINAL_STATUSES, f"job {job_id} stuck in {job.status}"
        assert len(terminal) == 1, f"job {job_id} ended {len(terminal)} times"
        ended = _attempt_ends(events, terminal)
        not_charged = ended["lease_expired"] + ended["shutdown"]
        assert job.attempts == len(starts) - not_charged, f"job {job_id}: attempts != starts - uncharged ends {ended}"
        assert job.interruptions == ended["lease_expired"], f"job {job_id}: interruptions != lost leases {ended}"
        assert len(starts) == sum(ended.values()), f"job {job_id}: {len(starts)} starts but attempt ends {ended}"
        _check_fencing(job_id, starts, events)
        if job.kind == "batch_inference" and job.status == "succeeded":
            _check_one_result_per_row(system, job)


ATTEMPT_ENDS = {"lease_expired", "shutdown", "requeued", "process_died"}


def _attempt_ends(events: list[JobEvent], terminal: list[JobEvent]) -> Counter:
    """Count how the job's attempts ended: hand-backs and rescues, then the attempt that ended the job.

    A terminal event ends an attempt when that attempt wrote it (it carries an epoch) or when a lost
    attempt used up its cap (it names how it was lost); a cancel before any start ends none.
    """
    ended = Counter(e.data["action"] for e in events if e.type == "rescue" and e.data.get("action") in ATTEMPT_ENDS)
    for event in terminal:
        if event.data.get("action"):
            ended[event.data["action"]] += 1
        elif event.epoch is not None:
            ended["finished"] += 1
    return ended


def _record_recovery(job: Job, starts: list[JobEvent], events: list[JobEvent], *, ends: int) -> None:
    """With NIGHTSHIFT_CHAOS_REPORT set, append how long each rescued job waited between attempts.

    A measurement for RELIABILITY.md's table, not an assertion: the gap from the last event of an
    attempt to the start of the next.
    """
    report = os.environ.get("NIGHTSHIFT_CHAOS_REPORT")
    if not report:
        return
    gaps = []
    for previous, start in zip(starts, starts[1:]):
        last = max((e.created_at for e in events if e.epoch == previous.epoch and e.id < start.id),
                   default=previous.created_at)
        gaps.append((start.created_at - last).total_seconds())
    scenario = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    with open(report, "a") as out:
        out.write(json.dumps({"scenario": scenario, "job": job.id, "status": job.status,
                              "attempts": job.attempts, "ends": ends, "recovery_seconds": gaps}) + "\n")


def record_measurement(name: str, seconds: float) -> None:
    """With NIGHTSHIFT_CHAOS_REPORT set, append a measured duration (a figure, never an assertion)."""
    print(f"{name}: {seconds:.1f} s")
    if report := os.environ.get("NIGHTSHIFT_CHAOS_REPORT"):
        with open(report, "a") as out:
            out.write(json.dumps({"measurement": name, "seconds": seconds}) + "\n")


def _check_fencing(job_id: int, starts: list[JobEvent], events: list[JobEvent]) -> None:
    """No attempt wrote anything after a newer attempt took the job (never two live leases)."""
    epochs = [e.epoch for e in starts]
    assert epochs == sorted(set(epochs)), f"job {job_id}: epochs not strictly increasing {epochs}"
    taken_over_at = {e.epoch: e.id for e in starts}
    for event in events:
        newer = [eid for epoch, eid in taken_over_at.items() if event.epoch is not None and epoch > event.epoch]
        assert not newer or event.id < min(newer), f"job {job_id}: epoch {event.epoch} wrote after a takeover"


def _check_one_result_per_row(system: ChaosSystem, job: Job) -> None:
    rows = [json.loads(line)["row"] for line in open(job.output_path)]
    errors_path = Path(job.output_path).with_name("errors.jsonl")
    rows += [json.loads(line)["row"] for line in open(errors_path)]
    # result["rows"]: the dataset's rows (progress counts only the rows a retry of failed rows predicts)
    assert sorted(rows) == list(range(job.result["rows"])), f"job {job.id}: rows missing or repeated"
    with system.session_factory() as session:
        chunks = session.scalars(select(InferenceChunk).where(InferenceChunk.job_id == job.id)).all()
    assert len({c.chunk_index for c in chunks}) == len(chunks)


@pytest.fixture(scope="session")
def chaos_database():
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@pytest.fixture(scope="module")
def chaos(chaos_database, tmp_path_factory):
    """A running system shared by a module's scenarios."""
    with ChaosSystem(tmp_path_factory.mktemp("chaos"), chaos_database) as system:
        yield system


@pytest.fixture(autouse=True)
def _whole_system(request):
    """Start each scenario with every process up (a previous one may have stopped some)."""
    if "chaos" in request.fixturenames:
        system = request.getfixturevalue("chaos")
        system.ensure_running()
        system.wait_for_api()
    yield


@pytest.fixture(scope="module")
def train_dataset(chaos, tmp_path_factory):
    return chaos.upload_reviews(tmp_path_factory.mktemp("train"), seed=1)


@pytest.fixture(scope="module")
def trained_model(chaos, train_dataset, tiny_model):
    """A registered tiny classifier the evaluate and batch scenarios use."""
    job = chaos.client.submit("finetune", finetune_params(tiny_model, train_dataset, max_steps=20, name="chaos-base"))
    job = chaos.client.wait(job["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    return job["result"]["model"]


def finetune_params(tiny_model, dataset, *, max_steps: int, name: str | None = None, save_steps: int = 25) -> dict:
    """Fine-tune parameters for the tiny model: seconds of training, several checkpoints."""
    params = {"base_model": str(tiny_model), "train_dataset_id": dataset["id"], "max_steps": max_steps,
              "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 10, "save_steps": save_steps,
              "max_length": 32}
    if name:
        params["model_name"] = name
    return params

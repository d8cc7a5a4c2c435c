"""The worker's heartbeat: how it describes its device, and a real worker recording itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Worker
from db.session import make_engine, make_session_factory
from tests.worker.test_gpus import ROOT, _stop
from worker.heartbeat import describe_device

DEADLINE_SECONDS = 60
NVIDIA_SMI_QUERY = """\
0, GPU-6b1f2c3d-0000-1111-2222-333344445555, NVIDIA H100 80GB HBM3, 81559
1, GPU-9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff, NVIDIA A100-SXM4-40GB, 40960
"""


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!{sys.executable}\nprint({NVIDIA_SMI_QUERY!r}, end='')\n")  # PATH holds nothing else
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


def test_the_device_is_the_visible_gpus_by_index_or_uuid(fake_nvidia_smi):
    assert describe_device({"CUDA_VISIBLE_DEVICES": "GPU-9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff"}) == {
        "kind": "cuda", "name": "NVIDIA A100-SXM4-40GB", "count": 1, "cores": os.cpu_count(),
        "memory_bytes": 40960 << 20}
    both = describe_device({})
    assert both["count"] == 2 and both["memory_bytes"] == (81559 + 40960) << 20
    assert describe_device({"CUDA_VISIBLE_DEVICES": "0"})["name"] == "NVIDIA H100 80GB HBM3"


def test_without_a_gpu_the_device_is_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    device = describe_device({})
    assert device["kind"] == "cpu" and device["cores"] == os.cpu_count() and device["memory_bytes"] > 0


@pytest.mark.slow
def test_a_real_worker_records_its_heartbeat_with_its_pool_processes(redis_url, tmp_path):
    url = f"sqlite:///{tmp_path / 'nightshift.db'}"
    upgrade(url)
    env = {**os.environ, "NIGHTSHIFT_REDIS_URL": redis_url, "NIGHTSHIFT_DATA_DIR": str(tmp_path),
           "NIGHTSHIFT_DATABASE_URL": url, "NIGHTSHIFT_HEARTBEAT_SECONDS": "0.5", "PYTHONPATH": str(ROOT)}
    name = f"heartbeat-{os.getpid()}@probe"
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "-Q", "hb-probe,hb-other",
               "-c", "2", "-n", name, "--without-gossip", "--without-mingle", "--without-heartbeat",
               "--loglevel", "WARNING"]
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    engine = make_engine(url)
    try:
        found = _wait_for_row(make_session_factory(engine), name, worker, log)
    finally:
        _stop(worker)
        engine.dispose()
    assert (found.pid, found.queues) == (worker.pid, ["hb-other", "hb-probe"])
    assert len(found.pool_pids) == 2 and worker.pid not in found.pool_pids
    assert found.device["kind"] in ("cpu", "cuda") and found.last_seen_at > found.started_at


def _wait_for_row(factory, name: str, worker: subprocess.Popen, log) -> Worker:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        assert worker.poll() is None, f"the worker exited with {worker.returncode}:\n{log.read_text()[-3000:]}"
        with factory() as session:
            row = session.scalars(select(Worker).where(Worker.name == name)).first()
            if row is not None and len(row.pool_pids) == 2 and row.last_seen_at > row.started_at:
                return row  # a second beat has come too
        assert time.monotonic() < deadline, f"no heartbeat within {DEADLINE_SECONDS} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


def test_a_fork_waits_while_the_heartbeat_is_in_the_database():
    # The beat holds FORK_GUARD while it talks to the database: a pool process forked then would
    # inherit the driver's mutexes locked (a SQLite open hung forever that way).
    import threading

    from worker.heartbeat import FORK_GUARD

    order: list[str] = []
    entered, leave = threading.Event(), threading.Event()

    def beat() -> None:
        with FORK_GUARD:
            entered.set()
            leave.wait(30)
            order.append("beat done")

    def fork() -> None:
        pid = os.fork()
        if pid == 0:  # the child: the guard is free here too
            os._exit(0 if FORK_GUARD.acquire(blocking=False) else 1)
        order.append("forked")
        order.append(os.waitpid(pid, 0)[1])

    beat_thread = threading.Thread(target=beat)
    beat_thread.start()
    assert entered.wait(30)
    fork_thread = threading.Thread(target=fork)
    fork_thread.start()
    fork_thread.join(timeout=1.0)
    assert fork_thread.is_alive()  # still waiting for the beat
    leave.set()
    fork_thread.join(timeout=30)
    beat_thread.join(timeout=30)
    assert order == ["beat done", "forked", 0]
    assert FORK_GUARD.acquire(blocking=False)  # released in the parent as well
    FORK_GUARD.release()

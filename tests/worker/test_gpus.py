"""One GPU per pool process, without a GPU: the assignment itself, and real pool processes of a worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from worker.celery_app import make_celery
from worker.config import Settings
from worker.gpus import pin_gpu, visible_gpus

ROOT = Path(__file__).resolve().parents[2]
PROBE_QUEUE = "gpu-probe"
PROBES = 8
DEADLINE_SECONDS = 90
STOP_SECONDS = 20
NVIDIA_SMI_LISTING = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-6b1f2c3d-0000-1111-2222-333344445555)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff)
  MIG 1g.5gb      Device  0: (UUID: MIG-0d4e5f6a-1234-5678-9abc-def012345678)
"""


@pytest.mark.parametrize(("index", "gpu"), [(0, "3"), (1, "5"), (2, "3")])
def test_each_pool_process_gets_one_of_the_visible_gpus(index, gpu):
    environ = {"CUDA_VISIBLE_DEVICES": "3, 5"}
    assert pin_gpu(index, environ) == gpu
    assert environ == {"CUDA_VISIBLE_DEVICES": gpu}


@pytest.fixture
def no_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))


def test_without_gpus_nothing_is_set(no_nvidia_smi):
    for environ in ({}, {"CUDA_VISIBLE_DEVICES": ""}):
        before = dict(environ)
        assert pin_gpu(0, environ) is None
        assert environ == before


def test_outside_a_pool_process_nothing_is_set():
    environ = {"CUDA_VISIBLE_DEVICES": "3,5"}
    assert pin_gpu(None, environ) is None
    assert environ == {"CUDA_VISIBLE_DEVICES": "3,5"}


def test_without_a_mask_the_gpus_nvidia_smi_lists_are_used_by_uuid(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"  # a stand-in printing what `nvidia-smi -L` prints on a two-GPU host
    smi.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 2\nprintf '%s' '{NVIDIA_SMI_LISTING}'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert visible_gpus({}) == ["GPU-6b1f2c3d-0000-1111-2222-333344445555",
                                "GPU-9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff"]
    environ: dict[str, str] = {}
    assert pin_gpu(1, environ) == "GPU-9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff"
    assert environ["CUDA_VISIBLE_DEVICES"] == "GPU-9a8b7c6d-aaaa-bbbb-cccc-ddddeeeeffff"


@pytest.mark.slow
def test_a_worker_with_two_processes_pins_each_to_its_own_gpu(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    key = f"gpu-probe-{os.getpid()}"
    client.delete(key)
    worker = _start_worker(redis_url, tmp_path)
    try:
        sender = make_celery(Settings(redis_url=redis_url))
        for _ in range(PROBES):
            sender.send_task("tests.gpu_probe", args=[redis_url, key], queue=PROBE_QUEUE)
        seen = _wait_for_probes(client, key, worker, tmp_path / "worker.log")
    finally:
        _stop(worker)
        client.delete(key)
        client.close()

    assert {(s["index"], s["gpus"]) for s in seen} == {(0, "3"), (1, "5")}
    assert len({s["pid"] for s in seen}) > 2  # replaced processes (one job each) are pinned again
    assert not any(s["cuda_initialized"] for s in seen)


def _start_worker(redis_url: str, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "NIGHTSHIFT_REDIS_URL": redis_url, "NIGHTSHIFT_DATA_DIR": str(data_dir),
           "CUDA_VISIBLE_DEVICES": "3,5", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "-Q", PROBE_QUEUE,
               "-c", "2", "-n", f"gpu-probe-{os.getpid()}@%h", "--include", "tests.worker.gpu_probe",
               "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]
    with open(data_dir / "worker.log", "wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_for_probes(client: redis.Redis, key: str, worker: subprocess.Popen, log: Path) -> list[dict]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while client.llen(key) < PROBES:
        assert worker.poll() is None, f"the worker exited with {worker.returncode}:\n{log.read_text()[-3000:]}"
        ran = client.llen(key)
        assert time.monotonic() < deadline, f"only {ran} of {PROBES} probes ran:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def _stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.terminate()  # a warm shutdown: the main process lets its pool finish, then stops it
    try:
        worker.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(STOP_SECONDS)

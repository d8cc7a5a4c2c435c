"""The worker's own heartbeat: a daemon thread in the main process records, every heartbeat_seconds,
that the worker is alive, with its host, queues, device and the pids of its pool processes (which
match the `lease_owner` of the jobs they run; see db.services.workers).

Started on `worker_ready`, in the main process only. It opens a connection per beat (no pool), since
the main process forks pool processes that must not inherit open connections. Describing the device
never imports torch: the GPUs come from `nvidia-smi` once, at start.

The main process forks a new pool process after every job. A fork copies the memory of every thread
but runs only the forking one: had the heartbeat thread been inside the database driver then (SQLite
holds process-wide mutexes while it opens a file), the new process would wait forever for a mutex no
thread of it will release. Beats and forks therefore exclude each other (`FORK_GUARD`).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time

import psutil
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool

from db.services.workers import record_heartbeat
from db.session import make_engine
from worker.config import Settings
from worker.gpus import CUDA_VISIBLE_DEVICES, NVIDIA_SMI_TIMEOUT_SECONDS

log = logging.getLogger(__name__)

MIB = 1 << 20
# A fork waits this long for a beat to leave the database, then forks anyway: a stalled database
# must not stall the worker's main loop.
FORK_WAIT_SECONDS = 10.0

FORK_GUARD = threading.Lock()
_guard_taken_for_fork = threading.local()


def _before_fork() -> None:
    _guard_taken_for_fork.held = FORK_GUARD.acquire(timeout=FORK_WAIT_SECONDS)
    if not _guard_taken_for_fork.held:
        log.warning("forking while the worker heartbeat is still in the database after %s s", FORK_WAIT_SECONDS)


def _after_fork() -> None:
    if getattr(_guard_taken_for_fork, "held", False):
        _guard_taken_for_fork.held = False
        FORK_GUARD.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


def start_heartbeat(name: str, queues: list[str], settings: Settings) -> threading.Thread:
    """Start the daemon thread that records this worker's heartbeat now and every heartbeat_seconds
    (it ends with the process)."""
    device = describe_device(os.environ)
    factory = sessionmaker(make_engine(settings.database_url, poolclass=NullPool))
    host, pid = socket.gethostname(), os.getpid()

    def beat() -> None:
        while True:
            try:
                with FORK_GUARD:
                    pool_pids = [child.pid for child in psutil.Process(pid).children()]
                    with factory.begin() as session:
                        record_heartbeat(session, name, host, pid, queues, device, pool_pids=pool_pids)
            except DBAPIError as exc:  # the page shows the worker stale until a beat gets through
                log.warning("worker heartbeat not recorded (%s); trying again in %s s", exc, settings.heartbeat_seconds)
            time.sleep(settings.heartbeat_seconds)

    thread = threading.Thread(target=beat, name="worker-heartbeat", daemon=True)
    thread.start()
    return thread


def describe_device(environ) -> dict:
    """Return {"kind": "cuda", "name", "memory_bytes", "count", "cores"} for the GPUs this worker may
    use (nvidia-smi, filtered by CUDA_VISIBLE_DEVICES), else {"kind": "cpu", "name", "cores"}."""
    cores = os.cpu_count() or 1
    gpus = _visible(_nvidia_smi_gpus(), environ.get(CUDA_VISIBLE_DEVICES))
    if not gpus:
        return {"kind": "cpu", "name": f"{cores} CPU cores", "cores": cores,
                "memory_bytes": psutil.virtual_memory().total}
    names = sorted({gpu["name"] for gpu in gpus})
    return {"kind": "cuda", "name": " + ".join(names), "count": len(gpus), "cores": cores,
            "memory_bytes": sum(gpu["memory_bytes"] for gpu in gpus)}


def _nvidia_smi_gpus() -> list[dict]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True, timeout=NVIDIA_SMI_TIMEOUT_SECONDS).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot describe the GPUs with nvidia-smi (%s)", exc)
        return []
    gpus = []
    for line in listing.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 4 and parts[3].isdecimal():
            gpus.append({"index": parts[0], "uuid": parts[1], "name": parts[2], "memory_bytes": int(parts[3]) * MIB})
    return gpus


def _visible(gpus: list[dict], mask: str | None) -> list[dict]:
    """Keep the GPUs CUDA_VISIBLE_DEVICES names (by index or UUID); every GPU when it is unset."""
    if mask is None:
        return gpus
    wanted = {device.strip() for device in mask.split(",") if device.strip()}
    return [gpu for gpu in gpus if gpu["index"] in wanted or gpu["uuid"] in wanted]

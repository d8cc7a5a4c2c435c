"""The worker's pool replaces a finished job's process as soon as the process can be reaped."""

from __future__ import annotations

import time

from worker.celery_app import app
from worker.pool import AsynPool, TaskPool


class Hub:
    def __init__(self) -> None:
        self.later: list = []

    def call_later(self, delay, callback, *args) -> None:
        self.later.append((delay, callback, args))

    def run_later(self) -> None:
        pending, self.later = self.later, []
        for _delay, callback, args in pending:
            callback(*args)


class Process:
    """A process whose exit code reads None `unreaped` times (exiting, not yet reapable), then 0."""

    def __init__(self, unreaped: int) -> None:
        self.unreaped = unreaped

    @property
    def exitcode(self):
        if self.unreaped:
            self.unreaped -= 1
            return None
        return 0


def pool_of(process: Process) -> tuple[AsynPool, list]:
    pool = AsynPool.__new__(AsynPool)  # the logic alone: no processes, no event loop
    pool._pool = [process]
    replaced: list = []

    def maintain_pool() -> None:  # Celery's: joins the processes it can reap and starts their replacements
        if process.exitcode is not None and process in pool._pool:
            pool._pool.remove(process)
            replaced.append(process)

    pool.maintain_pool = maintain_pool
    return pool, replaced


def test_a_process_not_yet_reapable_is_replaced_once_it_is():
    process, hub = Process(unreaped=3), Hub()
    pool, replaced = pool_of(process)
    pool._replace_once_reaped(hub, process, time.monotonic() + 5)
    for _ in range(5):
        hub.run_later()
    assert replaced == [process] and hub.later == []


def test_a_process_replaced_already_is_left_alone():
    process, hub = Process(unreaped=0), Hub()
    pool, replaced = pool_of(process)
    pool._pool.remove(process)
    pool._replace_once_reaped(hub, process, time.monotonic() + 5)
    assert replaced == [] and hub.later == []


def test_polling_stops_at_the_deadline():
    process, hub = Process(unreaped=10**6), Hub()
    pool, replaced = pool_of(process)
    pool._replace_once_reaped(hub, process, time.monotonic() - 1)
    assert replaced == [] and hub.later == []


def test_workers_run_jobs_on_this_pool():
    assert app.conf.worker_pool == "worker.pool:TaskPool" and TaskPool.Pool is AsynPool


def test_the_worker_freezes_what_it_imported_before_forking_job_processes(monkeypatch):
    # Celery collects garbage before every fork; frozen objects are not scanned (0.26 s a dispatch here).
    import gc

    from worker import celery_app

    monkeypatch.setenv("NIGHTSHIFT_PRELOAD_ML", "false")
    gc.unfreeze()
    try:
        celery_app._preload_ml()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

"""The worker's process pool: Celery's prefork pool, with a finished job's process replaced at once.

Every job runs in a process of its own (`worker_max_tasks_per_child=1`). When one exits, the pool
hears of it through the process's sentinel pipe and starts its replacement, but only a process it can
already reap counts as exited: the pipe closes while the kernel is still tearing the process down, and
the pool, finding it not yet exited, left the replacement to its maintenance timer, 5 s later (Celery
issue 9588). A job submitted in that window waited for it: every other back-to-back job waited about
4 s on a 2-core machine and on a 16-core GPU machine alike (BENCHMARKS.md, "Dispatch"). This pool
polls such a process until it can be reaped, then replaces it.
"""

from __future__ import annotations

import time

from celery.concurrency import asynpool, prefork

REAP_POLL_SECONDS = 0.01
REAP_WAIT_SECONDS = 5.0  # by then the pool's own maintenance timer has run


class AsynPool(asynpool.AsynPool):
    def _event_process_exit(self, hub, proc) -> None:
        super()._event_process_exit(hub, proc)
        if proc in self._pool:  # its pipe closed, but it cannot be reaped yet
            self._replace_once_reaped(hub, proc, time.monotonic() + REAP_WAIT_SECONDS)

    def _replace_once_reaped(self, hub, proc, deadline: float) -> None:
        if proc not in self._pool or time.monotonic() > deadline:
            return
        if proc.exitcode is None:  # polls the process (waitpid with WNOHANG)
            hub.call_later(REAP_POLL_SECONDS, self._replace_once_reaped, hub, proc, deadline)
        else:
            self.maintain_pool()


class TaskPool(prefork.TaskPool):
    """Celery's prefork pool (`-P prefork`) on `AsynPool`."""

    Pool = AsynPool

"""gunicorn settings of the API process; `nightshift.stack.api_command` passes this module with --config."""

from __future__ import annotations

import gc


def post_worker_init(worker) -> None:
    """Keep the loaded app's objects out of the garbage collector's full passes.

    A worker holds about 100,000 objects once the app is loaded; a full collection, which requests
    that allocate many objects (a page of 500 events) set off now and then, walked them all: a pause
    of 50 to 200 ms on a busy host, in the p99 of every endpoint. They live as long as the process,
    so freezing them frees nothing less.
    """
    gc.freeze()

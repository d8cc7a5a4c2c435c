"""A pytest plugin that proves no process started by the test run outlives it.

At start it marks the run's environment with a fresh id, which every process the tests start
inherits (servers, workers and their children, orphans included). At the very end, after every
fixture is torn down, it looks for processes still carrying the id: it waits a little for ones on
their way out, then names each survivor, kills it, and fails the run.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid

import psutil
import pytest

MARKER = "NIGHTSHIFT_TEST_RUN_ID"
GRACE_SECONDS = 15.0


def pytest_configure(config) -> None:
    os.environ.setdefault(MARKER, uuid.uuid4().hex)


def survivors(run_id: str) -> list[psutil.Process]:
    """Return live processes other than this one whose environment carries `run_id`."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARKER) == run_id:
                found.append(proc)
    return found


@pytest.hookimpl(trylast=True)  # after the session's fixtures are torn down
def pytest_sessionfinish(session) -> None:
    run_id = os.environ.get(MARKER)
    if not run_id:
        return
    deadline = time.monotonic() + GRACE_SECONDS
    left = survivors(run_id)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = survivors(run_id)
    if not left:
        return
    lines = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            lines.append(f"  pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"{len(left)} process(es) started by the tests outlived them (now killed):\n" + "\n".join(lines)
    if reporter:
        reporter.write_line(message, red=True)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED

"""Stopping the local stack leaves nothing running, even a process it never got to record."""

from __future__ import annotations

import sys

import psutil

from nightshift import stack as stack_module
from nightshift.stack import Stack
from worker.config import Settings

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_stop_kills_a_process_that_was_started_but_never_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_module, "api_command", lambda settings: SLEEPER)
    stack = Stack(Settings.from_env(data_dir=str(tmp_path)), log_dir=tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    recorded = stack.start_process("api")
    orphan = stack.processes.pop("api")  # as if Ctrl-C came between its fork and `processes[name] = ...`
    other = Stack(Settings.from_env(data_dir=str(tmp_path)), log_dir=tmp_path / "logs")
    bystander = other.start_process("api")  # another stack's process: not this stack's to stop
    try:
        stack.stop()

        assert orphan is recorded and psutil.wait_procs([psutil.Process(orphan.pid)], timeout=10)[1] == []
        assert bystander.poll() is None
    finally:
        other.stop()
    assert bystander.wait(timeout=10) is not None

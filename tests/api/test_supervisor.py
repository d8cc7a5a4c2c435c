"""The supervisor behind `nightshift up`, on real short-lived processes: backoff, reports, reset."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import psutil

from nightshift.supervisor import Child, Supervisor
from tests.helpers import wait_until

FAST = dict(first_delay=0.2, max_delay=0.8, poll=0.02)
EXIT_AT_ONCE = "echo 'No space left on device' >&2; exit 3"


class Flaky:
    """A child whose n-th start runs `commands[n]` (the last one from then on), logging to one file."""

    def __init__(self, tmp_path: Path, *commands: str) -> None:
        self.commands, self.log, self.starts = commands, tmp_path / "flaky.log", []

    def start(self) -> subprocess.Popen:
        command = self.commands[min(len(self.starts), len(self.commands) - 1)]
        self.starts.append(time.monotonic())
        with open(self.log, "ab") as out:
            return subprocess.Popen(["sh", "-c", command], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                    process_group=0)

    def child(self) -> Child:
        return Child("flaky", self.start, self.log, self.start())


def supervise(supervisor: Supervisor, flaky: Flaky, *, until, timeout: float, message: str) -> None:
    """Run `supervisor` in a thread until `until()` holds; stop it and its child whatever happens."""
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(until, timeout=timeout, message=message, interval=0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
        for child in supervisor.children:
            if child.process.poll() is None:
                child.process.kill()
                child.process.wait()
    assert not thread.is_alive(), "the supervisor did not stop when asked"


def delays(said: list[str]) -> list[float]:
    return [float(line.split("restarting it in ")[1].split("s ")[0]) for line in said if "restarting it in" in line]


def test_a_process_that_exits_at_once_is_restarted_with_growing_delays_and_reported_once(tmp_path):
    flaky, said = Flaky(tmp_path, EXIT_AT_ONCE), []
    supervisor = Supervisor([flaky.child()], say=said.append, stable_after=30.0, crash_loop_deaths=3, **FAST)
    supervise(supervisor, flaky, until=lambda: len(flaky.starts) >= 7, timeout=60, message="7 starts")

    assert delays(said)[:6] == [0.2, 0.4, 0.8, 0.8, 0.8, 0.8]
    gaps = [later - earlier for earlier, later in zip(flaky.starts, flaky.starts[1:])]
    assert all(gap >= delay for gap, delay in zip(gaps, delays(said))), (gaps, said)
    first = said[0]
    assert first.startswith("flaky (pid ") and "exited with code 3" in first, said
    assert "restart 1;" in first and f"log: {flaky.log}" in first, said
    assert "flaky restarted as pid" in said[1] and "(restart 1)" in said[1], said

    reports = [line for line in said if "keeps dying at start" in line]
    assert len(reports) == 1, said  # once per streak, not on every death
    assert "3 deaths in a row" in reports[0] and "retrying every 0.8s" in reports[0]
    assert f"--- last lines of {flaky.log}" in reports[0] and "No space left on device" in reports[0]
    assert said.index(reports[0]) == 5  # right after the third death (each death and restart is a line)


def test_staying_up_resets_the_delay_and_a_killed_process_takes_its_children_with_it(tmp_path):
    flaky, said = Flaky(tmp_path, EXIT_AT_ONCE, EXIT_AT_ONCE, "sleep 300 & wait", EXIT_AT_ONCE), []
    supervisor = Supervisor([flaky.child()], say=said.append, stable_after=1.0, crash_loop_deaths=2, **FAST)

    def kill_the_long_runner_once_it_is_back_to_normal():
        if not any("back to normal" in line for line in said):
            return False
        if len(flaky.starts) == 3 and not killed:
            shell = psutil.Process(supervisor.children[0].process.pid)
            orphans.extend(shell.children())
            shell.kill()
            killed.append(shell)
        return len(flaky.starts) >= 5

    orphans: list[psutil.Process] = []
    killed: list[psutil.Process] = []
    supervise(supervisor, flaky, until=kill_the_long_runner_once_it_is_back_to_normal, timeout=60,
              message="the long runner is killed and two more starts follow")

    assert delays(said)[:4] == [0.2, 0.4, 0.2, 0.4], said  # staying up 1 s reset the backoff
    assert sum("keeps dying at start" in line for line in said) == 2, said  # one report per streak
    assert any(line == "flaky has stayed up 1s since restart 2; back to normal" for line in said), said
    killed = next(line for line in said if "was killed by SIGKILL" in line)
    assert "restarting it in 0.2s (restart 3;" in killed, said
    assert orphans, "the shell had started its sleep"
    _, alive = psutil.wait_procs(orphans, timeout=10)
    assert not alive, "the dead shell's child outlived it"

"""Keep the processes of a one-machine stack running: restart the ones that die, with backoff."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LOG_TAIL_LINES = 20
RESTART_FIRST_DELAY_SECONDS = 1.0
RESTART_MAX_DELAY_SECONDS = 60.0
STABLE_AFTER_SECONDS = 60.0
CRASH_LOOP_DEATHS = 5
SUPERVISE_POLL_SECONDS = 0.5


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last `lines` lines of the log at `path`, headed by its path."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(handle.seek(0, os.SEEK_END) - 64 * 1024, 0))  # a night's log can be large
            tail = handle.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        tail = ["(no log)"]
    return f"--- last lines of {path}:\n" + "\n".join(tail)


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in process group `pgid` (nothing left is fine)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def describe_exit(returncode: int) -> str:
    """Say how a process ended: "exited with code 1" or "was killed by SIGKILL"."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
        return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def describe_duration(seconds: float) -> str:
    """Say a duration the way a person reads a log: "42s", "12m05s", "7h03m"."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", file=sys.stderr, flush=True)


@dataclass
class Child:
    """A process a `Supervisor` keeps running: its name, how to (re)start it, where it logs.

    `start` puts the process in its own process group, so what it leaves behind when it dies
    (gunicorn workers, a job's process) can be killed with it.
    """

    name: str
    start: Callable[[], subprocess.Popen]
    log_path: Path
    process: subprocess.Popen
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    streak: int = 0  # deaths in a row, each before the process had stayed up `stable_after`
    restart_at: float | None = None
    reported: bool = False


class Supervisor:
    """Restart the processes of a stack that die, with backoff, until told to stop.

    A dead process is restarted after `first_delay`, doubling each time it dies again before it
    has stayed up `stable_after`, to at most `max_delay`; staying up that long resets the delay.
    Each death and restart is said in words. A process that dies `crash_loop_deaths` times in a
    row that way is reported as dying at start, with the tail of its log, once per streak.

    It then keeps retrying at the capped delay rather than stopping the stack. On an unattended
    machine the causes of such a streak (a full disk, a database or port not back yet, memory
    held by something else) often clear by themselves: a stack that gives up does no work until
    someone comes back, one that retries resumes the night's jobs once the cause is gone, and the
    report tells whoever reads the log in the morning what went wrong.
    """

    def __init__(self, children: list[Child], *, say: Callable[[str], None] = _say,
                 first_delay: float = RESTART_FIRST_DELAY_SECONDS, max_delay: float = RESTART_MAX_DELAY_SECONDS,
                 stable_after: float = STABLE_AFTER_SECONDS, crash_loop_deaths: int = CRASH_LOOP_DEATHS,
                 poll: float = SUPERVISE_POLL_SECONDS) -> None:
        self.children = children
        self.say = say
        self.first_delay, self.max_delay = first_delay, max_delay
        self.stable_after, self.crash_loop_deaths, self.poll = stable_after, crash_loop_deaths, poll

    def run(self, stop: threading.Event | None = None) -> None:
        """Watch and restart the children until `stop` is set (without one, until interrupted)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            self.check()
            stop.wait(self.poll)

    def check(self) -> None:
        """Note deaths, restart the children whose delay is over, and note recoveries."""
        for child in self.children:
            now = time.monotonic()
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._restart(child)
            elif child.process.poll() is not None:
                kill_group(child.process.pid)
                uptime = now - child.started_at
                self._died(child, f"(pid {child.process.pid}) {describe_exit(child.process.returncode)} "
                                  f"after {describe_duration(uptime)} up", uptime)
            elif child.streak and now - child.started_at >= self.stable_after:
                if child.reported:
                    self.say(f"{child.name} has stayed up {self.stable_after:g}s since restart {child.restarts}; "
                             "back to normal")
                child.streak, child.reported = 0, False

    def _died(self, child: Child, how: str, uptime: float) -> None:
        if uptime >= self.stable_after:
            child.streak, child.reported = 0, False
        child.streak += 1
        delay = min(self.first_delay * 2 ** (child.streak - 1), self.max_delay)
        child.restart_at = time.monotonic() + delay
        self.say(f"{child.name} {how}; restarting it in {delay:g}s (restart {child.restarts + 1}; "
                 f"log: {child.log_path})")
        if child.streak >= self.crash_loop_deaths and not child.reported:
            child.reported = True
            self.say(f"{child.name} keeps dying at start: {child.streak} deaths in a row, each within "
                     f"{self.stable_after:g}s of starting; retrying every {self.max_delay:g}s until it stays up\n"
                     f"{log_tail(child.log_path)}")

    def _restart(self, child: Child) -> None:
        child.restart_at = None
        child.restarts += 1
        child.started_at = time.monotonic()
        try:
            child.process = child.start()
        except (OSError, RuntimeError) as exc:
            # A start that fails (redis-server not answering, no room for the log) is a death at start.
            self._died(child, f"did not start ({exc})", 0.0)
            return
        self.say(f"{child.name} restarted as pid {child.process.pid} (restart {child.restarts})")

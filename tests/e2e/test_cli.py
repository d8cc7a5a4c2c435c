"""The README's first command: `nightshift demo` and `nightshift up`, as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
import requests

from api.stack import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


def nightshift(tmp_path, *args: str, port: int = 0) -> subprocess.Popen:
    env = {**os.environ, "NIGHTSHIFT_DATA_DIR": str(tmp_path / "data"),
           "NIGHTSHIFT_API_PORT": str(port or free_port()), "NIGHTSHIFT_API_WORKERS": "1"}
    for name in ("NIGHTSHIFT_DATABASE_URL", "NIGHTSHIFT_REDIS_URL"):
        env.pop(name, None)  # the embedded default: SQLite file and embedded Redis
    return subprocess.Popen([sys.executable, "-m", "api.cli", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running after Ctrl-C: {[p.pid for p in alive]}"
    assert "stopping" in output

"""The process guard fails a test run that leaves a process behind, and passes a clean one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import psutil

from tests.process_guard import MARKER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LEAKY = textwrap.dedent("""
    import subprocess, sys

    def test_leaks_a_process():
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
""")

TIDY = textwrap.dedent("""
    import subprocess, sys

    def test_stops_what_it_starts():
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        proc.kill()
        proc.wait()
""")


def run_pytest(tmp_path, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_subject.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != MARKER}  # a run of its own, with its own id
    env["PYTHONPATH"] = REPO
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.process_guard", "-q", "-p", "no:cacheprovider",
         str(tmp_path / "test_subject.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_a_run_that_leaves_a_process_behind_fails_and_the_process_is_killed(tmp_path):
    result = run_pytest(tmp_path, LEAKY)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "outlived them (now killed)" in result.stdout
    assert "time.sleep(300)" in result.stdout
    leftover = [p for p in psutil.process_iter(["cmdline"]) if "import time; time.sleep(300)" in
                " ".join(p.info["cmdline"] or [])]
    assert not leftover


def test_a_run_that_stops_its_processes_passes(tmp_path):
    result = run_pytest(tmp_path, TIDY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "outlived" not in result.stdout

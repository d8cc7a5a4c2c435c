"""The worker's main process imports the ML libraries once, before forking job processes."""

from __future__ import annotations

import logging
import subprocess
import sys

from worker.ml import preload


def test_preload_imports_what_it_names_and_skips_what_is_missing(caplog):
    caplog.set_level(logging.WARNING, logger="worker.ml.preload")
    preload.preload(("worker.ml.tuning", "no_such_library_here"))
    assert "worker.ml.tuning" in sys.modules
    assert "cannot import no_such_library_here" in caplog.text


def test_every_default_module_imports_without_touching_cuda():
    # In a fresh interpreter, as in a worker's main process: every module imports, and CUDA stays
    # uninitialised so each forked job process can still choose its own GPU.
    code = ("import logging, torch; logging.basicConfig(level=logging.WARNING);"
            "from worker.ml import preload; preload.preload();"
            "assert not torch.cuda.is_initialized(); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "cannot import" not in done.stderr, done.stderr
    assert done.stdout.strip() == "ok"

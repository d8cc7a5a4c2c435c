"""What both soaks share: the data, the job mix, the chaos driver and the table of outcomes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

STOP_TIMEOUT_SECONDS = 20.0
BASE_MODEL_PARAMS = {"max_steps": 40, "batch_size": 8, "max_length": 32, "learning_rate": 5e-3}


def make_data(folder: Path) -> tuple[Path, Path]:
    """Write a labelled train file (200 rows) and an unlabelled document file (2,000 rows)."""
    rng = random.Random(7)
    words = {"pos": "good great lovely excellent superb fine".split(), "neg": "bad awful terrible poor nasty".split()}
    train, docs = folder / "train.jsonl", folder / "docs.jsonl"
    with open(train, "w") as out:
        for _ in range(200):
            label = rng.choice(["pos", "neg"])
            out.write(json.dumps({"text": " ".join(rng.choices(words[label], k=rng.randint(2, 10))), "label": label}) + "\n")
    with open(docs, "w") as out:
        for i in range(2000):
            label = rng.choice(["pos", "neg"])
            out.write(json.dumps({"id": i, "text": " ".join(rng.choices(words[label], k=rng.randint(1, 12)))}) + "\n")
    return train, docs


def job_plan(count: int) -> list[tuple[str, dict]]:
    """Return the soak's jobs, the same for both systems: (kind, finetune hyperparameters or {})."""
    rng = random.Random(3)
    plan = []
    for i in range(count):
        kind = ("finetune", "evaluate", "batch_inference")[i % 3]
        knobs = {"max_steps": rng.randint(60, 200), "batch_size": 8, "save_steps": 25, "max_length": 32,
                 "learning_rate": 5e-3} if kind == "finetune" else {}
        plan.append((kind, knobs))
    return plan


class Chaos(threading.Thread):
    """Kill a random worker every 5-10 s (and restart it); restart Redis at the given moments.

    `cluster` has `names`, `processes`, `redis` and `start_process(name)` (a `Stack` does);
    `running_on(pids)` returns the jobs running in those processes, recorded with each kill.
    """

    def __init__(self, cluster, running_on: Callable[[set[int]], list[int]], redis_restarts_at: list[float]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.running_on = cluster, running_on
        self.redis_restarts_at = sorted(redis_restarts_at)
        self.stop_event = threading.Event()
        self.kills: list[tuple[float, list[int]]] = []  # (time, ids of the jobs it was running)
        self.redis_restarts = 0

    def run(self) -> None:
        started = time.monotonic()
        rng = random.Random(11)
        while not self.stop_event.wait(rng.uniform(5, 10)):
            if self.redis_restarts_at and time.monotonic() - started >= self.redis_restarts_at[0]:
                self.redis_restarts_at.pop(0)
                self.cluster.redis.stop()
                time.sleep(1)
                self.cluster.redis.start()
                self.redis_restarts += 1
            self.kill(rng.choice([n for n in self.cluster.names if n.startswith("w")]))

    def kill(self, name: str) -> None:
        """SIGKILL worker `name` and its children, then start it again."""
        main = self.cluster.processes[name]
        try:
            pids = {p.pid for p in psutil.Process(main.pid).children()}
        except psutil.NoSuchProcess:  # it died by itself: restart it all the same
            pids = set()
        victims = self.running_on(pids)
        for pid in [*pids, main.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.kills.append((time.time(), victims))
        main.wait()
        self.cluster.start_process(name)

    def finish(self) -> None:
        """Stop the chaos and wait for the thread."""
        self.stop_event.set()
        self.join()


def stop_processes(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each process, wait, then SIGKILL whatever of them or their children is still alive."""
    family = []
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            family += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=STOP_TIMEOUT_SECONDS)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=STOP_TIMEOUT_SECONDS)
    for proc in processes:
        proc.wait()


@dataclass
class Outcome:
    """What one soak ended with: `lost` jobs ran to completion zero times, `pending` of them could still
    run (queued, running, or parked by a killed worker), `run_twice` ones ran to completion more than once."""

    system: str
    jobs: int
    succeeded: int
    failed: int
    lost: int
    pending: int
    run_twice: int
    kills: int
    redis_restarts: int
    wall_seconds: float


COLUMNS = ("system", "jobs", "succeeded", "failed", "lost", "of which pending", "run twice", "worker kills",
           "Redis restarts", "wall time")


def print_table(outcomes: list[Outcome]) -> None:
    """Print one row per system."""
    rows = [COLUMNS] + [
        (o.system, o.jobs, o.succeeded, o.failed, o.lost, o.pending, o.run_twice, o.kills, o.redis_restarts,
         f"{o.wall_seconds:.0f} s")
        for o in outcomes
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS))]
    for n, row in enumerate(rows):
        print("  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))

"""The narrow interface between ML code and the job lifecycle.

`worker/ml/` reports through a `JobHooks` object and never touches the database; the lifecycle
in `worker/lifecycle.py` implements it with fenced writes. Tests pass `NullHooks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from worker.storage import Storage


class JobHooks(Protocol):
    storage: Storage | None  # where checkpoints go beyond this host (None: the local disk only)

    def progress(
        self, *, fraction: float, stage: str, done: int | None = None, total: int | None = None
    ) -> None:
        """Record progress: fraction in [0, 1], a stage name, units done of total."""

    def metric(self, step: int, values: dict[str, float]) -> None:
        """Record a metric point (training loss, learning rate, eval metrics)."""

    def log(self, message: str) -> None:
        """Record a human-readable event line."""

    def check(self) -> None:
        """Raise `worker.errors.JobInterrupted` if the job must stop (cancel, lost lease)."""

    def checkpoint_saved(self, path: Path, step: int) -> None:
        """Record that a checkpoint was written, with everything reported before it, before it is marked complete."""

    def stop_requested(self) -> str | None:
        """Return why the job should checkpoint and stop ("shutdown", "time_limit"), or None."""


def progress_reporter(hooks: JobHooks, stage: str = "evaluating"):
    """Return an `on_batch(done, total)` callback that honours stops and records progress of `stage`."""

    def report(done: int, total: int) -> None:
        hooks.check()
        hooks.progress(fraction=done / total, stage=stage, done=done, total=total)

    return report


class NullHooks:
    """Hooks that record everything in memory; for tests and scripts."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.storage = None

    def progress(self, *, fraction, stage, done=None, total=None) -> None:
        self.events.append(("progress", (fraction, stage, done, total)))

    def metric(self, step, values) -> None:
        self.events.append(("metric", (step, dict(values))))

    def log(self, message) -> None:
        self.events.append(("log", message))

    def check(self) -> None:
        return None

    def stop_requested(self) -> str | None:
        return None

    def checkpoint_saved(self, path, step) -> None:
        self.events.append(("checkpoint", (str(path), step)))

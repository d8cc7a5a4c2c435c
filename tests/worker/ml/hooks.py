"""Job hooks for the ML tests."""

from __future__ import annotations

from worker.errors import JobInterrupted
from worker.ml.hooks import NullHooks


class InterruptAfter(NullHooks):
    """Hooks that cancel the job at the first check once training reported `step` done."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.done = 0

    def progress(self, *, fraction, stage, done=None, total=None) -> None:
        super().progress(fraction=fraction, stage=stage, done=done, total=total)
        if stage == "training":
            self.done = done

    def check(self) -> None:
        if self.done >= self.step:
            raise JobInterrupted("cancelled")


class StopAfter(InterruptAfter):
    """Hooks whose run window closes once training reported `step` done: checkpoint, then stop."""

    def stop_requested(self) -> str | None:
        return "window_closed" if self.done >= self.step else None

    def check(self) -> None:
        if self.stop_requested():
            raise JobInterrupted("its run window closed", code="window_closed")

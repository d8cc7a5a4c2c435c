"""Checkpoints a fine-tune can resume from: marked complete, geometry-checked, reported to hooks."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from worker.errors import PermanentJobError
from worker.ml.hooks import JobHooks
from worker.ml.stopping import stopped_early
from worker.params import FinetuneParams

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
GEOMETRY_FILE = "geometry.json"
SAVE_TOTAL_LIMIT = 2


def geometry(params: FinetuneParams, train_rows: int) -> dict:
    """Return what must not change between a checkpoint and the run resuming from it."""
    return {
        "batch_size": params.batch_size,
        "gradient_accumulation_steps": params.gradient_accumulation_steps,
        "max_length": params.max_length,
        "epochs": params.epochs,
        "max_steps": params.max_steps,
        "train_rows": train_rows,
        "seed": params.seed,
    }


def prepare_checkpoints(checkpoint_dir: Path, geometry: dict, hooks: JobHooks) -> Path | None:
    """Return the checkpoint to resume from, after dropping incomplete ones and checking geometry.

    With a bucket for storage, the complete checkpoints an attempt on another host stored there are
    fetched first: a job resumes wherever it runs next.
    """
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if hooks.storage is not None and hooks.storage.remote:
        pull_checkpoints(hooks.storage, checkpoint_dir, hooks)
    complete = []
    for path in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        if checkpoint_step(path) is None or not path.is_dir():
            continue
        if (path / COMPLETE_MARKER).is_file():
            complete.append(path)
        else:
            # A save cut short; left in place the Trainer's rotation could delete a good one instead.
            shutil.rmtree(path)
            hooks.log(f"removed incomplete checkpoint {path.name}")
    resume = max(complete, key=checkpoint_step, default=None)
    geometry_path = checkpoint_dir / GEOMETRY_FILE
    if resume is not None and geometry_path.is_file():
        changes = [
            f"{key} {old} -> {geometry.get(key)}"
            for key, old in json.loads(geometry_path.read_text()).items()
            if geometry.get(key) != old
        ]
        if changes:
            raise PermanentJobError(
                f"cannot resume: batch geometry changed ({', '.join(changes)}) since {resume.name} was "
                "saved; run the job with its original settings, or start a new job"
            )
    geometry_path.write_text(json.dumps(geometry, indent=2))
    if resume is not None:
        hooks.log(f"resuming from {resume.name}")
    return resume


def pull_checkpoints(storage, checkpoint_dir: Path, hooks: JobHooks) -> None:
    """Fetch the complete checkpoints (and geometry) stored for this job that this host lacks."""
    where = storage.location(checkpoint_dir)
    for name in storage.list_dirs(where):
        local = checkpoint_dir / name
        if checkpoint_step(local) is None or (local / COMPLETE_MARKER).is_file():
            continue
        if not storage.exists(storage.join(where, name, COMPLETE_MARKER)):
            continue  # an upload cut short: it never counted
        storage.fetch(storage.join(where, name), last=(COMPLETE_MARKER,))
        _point_state_here(local)
        hooks.log(f"fetched {name} from storage")
    if storage.exists(storage.join(where, GEOMETRY_FILE)):
        storage.fetch(storage.join(where, GEOMETRY_FILE))


def push_checkpoint(storage, checkpoint_dir: Path, path: Path) -> None:
    """Store a complete checkpoint (its marker last) and drop stored ones the Trainer rotated away here."""
    storage.publish(checkpoint_dir / GEOMETRY_FILE)
    storage.publish(path, last=(COMPLETE_MARKER,))
    where = storage.location(checkpoint_dir)
    for name in storage.list_dirs(where):
        if checkpoint_step(checkpoint_dir / name) is not None and not (checkpoint_dir / name).is_dir():
            storage.delete(storage.join(where, name))


def _point_state_here(checkpoint: Path) -> None:
    """Make a fetched checkpoint's trainer state name its best checkpoint by this host's path."""
    path = checkpoint / "trainer_state.json"
    if not path.is_file():
        return
    state = json.loads(path.read_text())
    best = state.get("best_model_checkpoint")
    if best and Path(best).parent != checkpoint.parent:
        state["best_model_checkpoint"] = str(checkpoint.parent / Path(best).name)
        path.write_text(json.dumps(state, indent=2))


def checkpoint_step(path: Path) -> int | None:
    suffix = path.name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if suffix.isdigit() else None


def finished_state(checkpoint: Path | None) -> dict | None:
    """Return the checkpoint's trainer state if it already reached the last step or stopped early."""
    path = checkpoint / "trainer_state.json" if checkpoint else None
    if path is None or not path.is_file():
        return None
    state = json.loads(path.read_text())
    last_step = state.get("global_step", 0) >= state.get("max_steps", float("inf")) > 0
    return state if last_step or stopped_early(state) else None


def summary_from_state(state: dict) -> dict:
    # Only the logged windows survive in the checkpoint; their mean stands in for the run's loss.
    losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
    return {
        "global_step": int(state["global_step"]),
        "train_loss": float(sum(losses) / len(losses)) if losses else 0.0,
        "train_runtime_s": 0.0,
        "train_samples_per_second": 0.0,
    }


def job_callback(hooks: JobHooks, save_seconds: float):
    from transformers import TrainerCallback

    class JobCallback(TrainerCallback):
        """Report progress and metrics, honour cancellation, mark checkpoints complete."""

        def __init__(self) -> None:
            self.last_save = time.monotonic()

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            total = max(state.max_steps, 1)
            step = state.global_step
            if hooks.stop_requested():  # shutdown, time limit or window closed: save a checkpoint, then stop
                # Reported first: a paused job shows the step its checkpoint holds, not the one before.
                hooks.progress(fraction=min(step / total, 1.0), stage="training", done=step, total=total)
                control.should_save = True
                control.should_training_stop = True
                return control
            hooks.check()
            hooks.progress(fraction=min(step / total, 1.0), stage="training", done=step, total=total)
            if time.monotonic() - self.last_save >= save_seconds:
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            values = {
                key: float(value)
                for key, value in (logs or {}).items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            }
            if values:
                hooks.metric(state.global_step, values)

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            if path.is_dir():
                hooks.checkpoint_saved(path, state.global_step)  # durable before the checkpoint counts
                (path / COMPLETE_MARKER).touch()
                if hooks.storage is not None and hooks.storage.remote:
                    push_checkpoint(hooks.storage, Path(args.output_dir), path)
            self.last_save = time.monotonic()

    return JobCallback()

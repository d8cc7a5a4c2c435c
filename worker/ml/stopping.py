"""Early stopping on a validation metric, keeping the best checkpoint (not the last) as the result.

Built on transformers' own pieces: `EarlyStoppingCallback` counts evaluations without improvement,
`load_best_model_at_end` with `metric_for_best_model` tracks the best checkpoint in the trainer state
and loads it at the end, the checkpoint rotation never deletes it, and a run resumed after a kill reads
both the best checkpoint and the stopper's count back from its checkpoint
(`restore_callback_states_from_checkpoint`). What is added here: the metric is checked against what the
task's evaluation reports, an evaluation that sets a new best is always saved (the Trainer only
records a best it finds a checkpoint for), the evaluation that stops training is saved too (a
rerun then sees training finished), and the stop is explained in the job's events and summary.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

from worker.errors import PermanentJobError
from worker.params import FinetuneParams

STOPPER = "KeepBestEarlyStopping"  # the stopper's class: its state's key in trainer_state.json


@dataclass(frozen=True)
class Watch:
    """The validation metric early stopping watches, and which way is better."""

    metric: str  # as the task names it, e.g. "f1_macro" (the Trainer reports "eval_f1_macro")
    greater_is_better: bool


def watched_metric(params: FinetuneParams, eval_metrics: dict[str, bool]) -> Watch | None:
    """Return the metric early stopping watches (the task's first when not named), or None when it is off.

    `eval_metrics` maps each metric the task's periodic evaluation reports to whether greater is better.
    """
    if params.early_stopping_patience is None:
        return None
    name = params.early_stopping_metric or next(iter(eval_metrics))
    if name not in eval_metrics:
        raise PermanentJobError(
            f"early_stopping_metric '{name}' is not reported by this task's evaluation during training; "
            f"choose one of {', '.join(eval_metrics)}"
        )
    return Watch(name, eval_metrics[name])


def save_steps(params: FinetuneParams, watch: Watch | None) -> int:
    """Return the checkpoint cadence: with early stopping, save_steps rounded up to a multiple of eval_steps.

    `load_best_model_at_end` requires the multiple; rounding up keeps saves no more frequent than asked.
    """
    if watch is None:
        return params.save_steps
    return math.ceil(params.save_steps / params.eval_steps) * params.eval_steps


def trainer_arguments(params: FinetuneParams, watch: Watch | None) -> dict:
    """Return the TrainingArguments that early stopping needs (none when it is off)."""
    if watch is None:
        return {}
    # A resumed run must go on counting evaluations without improvement where the killed one stopped.
    return {"load_best_model_at_end": True, "metric_for_best_model": watch.metric,
            "greater_is_better": watch.greater_is_better, "restore_callback_states_from_checkpoint": True}


def callbacks(params: FinetuneParams, watch: Watch | None) -> list:
    """Return the callbacks of early stopping (none when it is off)."""
    if watch is None:
        return []
    return [_stopper_class()(early_stopping_patience=params.early_stopping_patience,
                             early_stopping_threshold=params.early_stopping_threshold)]


@functools.cache
def _stopper_class():
    from transformers import EarlyStoppingCallback

    class KeepBestEarlyStopping(EarlyStoppingCallback):
        """transformers' early stopping, which also saves an evaluation that sets a new best or stops training.

        Without the first save the Trainer cannot keep that best (it records only a best it finds a
        checkpoint for); the second lets a rerun see that training is over. A resumed run rebuilds this
        callback from the checkpoint's state (restore_callback_states_from_checkpoint), so it reads
        the metric and direction from the arguments and holds nothing else.
        """

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get(f"eval_{args.metric_for_best_model}")
            best = state.best_metric  # the Trainer updates it after the callbacks: the best before this one
            super().on_evaluate(args, state, control, metrics=metrics, **kwargs)
            if value is None:
                return control
            better = best is None or (value > best if args.greater_is_better else value < best)
            if better or control.should_training_stop:
                control.should_save = True
            return control

    return KeepBestEarlyStopping


def stopped_early(state: dict) -> bool:
    """Say whether a saved trainer state (trainer_state.json) records that early stopping ended training."""
    saved = (state.get("stateful_callbacks") or {}).get(STOPPER)
    if isinstance(saved, list):
        saved = saved[-1] if saved else None
    if not saved:
        return False
    return saved["attributes"]["early_stopping_patience_counter"] >= saved["args"]["early_stopping_patience"]


def best_checkpoint(state: dict, checkpoint_dir: Path) -> Path | None:
    """Return the best checkpoint a saved trainer state names, if it is still on disk."""
    best = state.get("best_model_checkpoint")
    path = checkpoint_dir / Path(best).name if best else None
    return path if path is not None and path.is_dir() else None


def outcome(params: FinetuneParams, watch: Watch, state: dict) -> tuple[dict, str]:
    """Return (summary fields, event line) saying why training stopped and which checkpoint is the result."""
    early = stopped_early(state)
    best_step, best = state.get("best_global_step"), state.get("best_metric")
    summary = {"stopped_early": early, "early_stopping_metric": watch.metric, "best_step": best_step,
               "best_metric": float(best) if best is not None else None}
    if best is None:
        return summary, f"early stopping: no evaluation reported {watch.metric}; keeping the last checkpoint"
    keeping = f"keeping the checkpoint of step {best_step}"
    if early:
        by = f" by more than {params.early_stopping_threshold:g}" if params.early_stopping_threshold else ""
        line = (f"early stopping: {watch.metric} did not improve{by} on {best:.4g} (step {best_step}) for "
                f"{params.early_stopping_patience} evaluation{'s' if params.early_stopping_patience > 1 else ''}; "
                f"stopped at step {state.get('global_step')} of {state.get('max_steps')}; {keeping}")
    else:
        line = (f"training ran all {state.get('max_steps')} steps without early stopping; best {watch.metric} "
                f"{best:.4g} at step {best_step}; {keeping}")
    return summary, line


def state_dict(trainer) -> dict:
    """Return the live trainer state in the shape of trainer_state.json, with the stopper's state."""
    import dataclasses

    state = dataclasses.asdict(trainer.state)
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == STOPPER:
            state.setdefault("stateful_callbacks", {})[STOPPER] = callback.state()
    return state

"""The fine-tuning loop every task shares: checkpoints and resume, the Trainer, progress and stops.

A task module supplies what is its own (how to build the model and the encoded train set, its
collator and loss); `fit` does the rest the same way for every task: picks device and precision,
drops torn checkpoints and checks batch geometry, wraps the model with LoRA adapters
(`worker/ml/adapters.py`) or freezes bottom layers and sets per-layer learning
rates (`worker/ml/layers.py`), stops early on a validation metric keeping the best checkpoint
(`worker/ml/stopping.py`), returns the result checkpoint when a previous attempt already finished
training, and turns a GPU out-of-memory into a retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from worker.errors import PermanentJobError, TransientJobError
from worker.ml.checkpoints import (
    SAVE_TOTAL_LIMIT,
    checkpoint_step,
    finished_state,
    geometry,
    job_callback,
    prepare_checkpoints,
    summary_from_state,
)
from worker.ml import adapters, stopping, tuning
from worker.ml.device import choose_training_precision, pick_device, resolve_precision
from worker.ml.hooks import JobHooks
from worker.ml.layers import apply_freezing, layer_decay_optimizer
from worker.params import FinetuneParams

LOSS_ONLY = {"loss": False}  # the periodic evaluation of a task without compute_metrics


@dataclass
class TrainingSetup:
    """What a task hands to `fit`: a model to train, its tokenizer and data, and Trainer options."""

    model: Any
    tokenizer: Any
    train_set: Any
    collator: Any
    compute_loss: Callable | None = None
    eval_set: Any = None  # evaluated every params.eval_steps, when both are given
    compute_metrics: Callable | None = None  # reports the names of the task's EVAL_METRICS
    preprocess_logits: Callable | None = None  # (logits, labels) -> what compute_metrics needs, per batch
    trainer_class: str = "Trainer"  # a name in transformers (Seq2SeqTrainer for generation tasks)
    extra_args: dict = field(default_factory=dict)  # more TrainingArguments for this task


@dataclass
class Fitted:
    model: Any
    tokenizer: Any
    summary: dict
    device: str
    precision: str


def fit(
    params: FinetuneParams,
    *,
    train_rows: int,
    checkpoint_dir: Path,
    hooks: JobHooks,
    setup: Callable[[], TrainingSetup],
    load_trained: Callable[[str], tuple[Any, Any]],
    eval_metrics: dict[str, bool] = LOSS_ONLY,
) -> Fitted:
    """Train (or resume training) and return the trained model with a summary of the run.

    `setup()` builds the model to train from the base and encodes the train set; `load_trained(path)`
    loads (model, tokenizer) from a checkpoint when a previous attempt had already finished.
    `eval_metrics` names what the task's periodic evaluation reports (metric -> greater is better),
    its main metric first: early stopping watches one of them.
    """
    watch = stopping.watched_metric(params, eval_metrics)
    measured_before = tuning.measuring_seconds()
    device = pick_device()
    precision = resolve_precision(params.precision, device)
    resume = prepare_checkpoints(checkpoint_dir, geometry(params, train_rows), hooks)
    hooks.check()
    finished = finished_state(resume)
    if finished is not None:
        # The Trainer would take one step too many here; the last (or the best) checkpoint is the result.
        best = stopping.best_checkpoint(finished, checkpoint_dir) if watch else None
        model, tokenizer = load_trained(str(best or resume))
        model.to(device)
        lora_stats = adapters.stats(model, params.lora) if params.lora is not None else None
        summary, state = summary_from_state(finished), finished
    else:
        from transformers import set_seed

        set_seed(params.seed)  # a new head is initialised the same way on every attempt
        built = setup()
        if params.lora is not None:
            built.model, lora_stats, line = adapters.wrap(built.model, params.lora)
            hooks.log(line)
        frozen = apply_freezing(built.model, params)
        if frozen:
            hooks.log(frozen)
        choice = choose_training_precision(built.model, params.precision, device)
        precision = choice.precision
        hooks.log(f"training precision: {choice.reason}")
        trainer = _build_trainer(params, built, checkpoint_dir, device, precision, hooks, watch)
        result = _train_or_retry(trainer, resume, params.batch_size)
        hooks.check()  # training may have stopped early to checkpoint for a shutdown or time limit
        model, tokenizer = built.model, built.tokenizer  # the best checkpoint's weights, with early stopping
        summary = {
            "global_step": int(result.global_step),
            "train_loss": float(result.training_loss),
            "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
            "train_samples_per_second": float(result.metrics.get("train_samples_per_second", 0.0)),
        }
        state = stopping.state_dict(trainer) if watch else None
    if watch is not None:
        fields, line = stopping.outcome(params, watch, state)
        hooks.log(line)
        summary |= fields
    if params.lora is not None:
        summary["lora"] = lora_stats
        if params.merge_adapter:
            model = adapters.merged(model)
            hooks.log("LoRA adapter merged into the base model: a full model is registered")
    summary |= {
        "tuning_s": round(tuning.measuring_seconds() - measured_before, 3),  # speed probes: once per machine
        "resumed_from_step": checkpoint_step(resume) if resume else None,
        "train_rows": train_rows,
        "device": device,
        "precision": precision,
    }
    return Fitted(model, tokenizer, summary, device, precision)


def warmup_steps(params: FinetuneParams, train_rows: int) -> int:
    """Warmup as steps (transformers 5 folds warmup_ratio into warmup_steps and 4.x does not)."""
    import math

    if params.warmup_ratio == 0:
        return 0
    batches = math.ceil(train_rows / params.batch_size)
    updates_per_epoch = max(1, math.ceil(batches / params.gradient_accumulation_steps))
    total = params.max_steps or math.ceil(params.epochs * updates_per_epoch)
    return math.ceil(params.warmup_ratio * total)


def _build_trainer(params: FinetuneParams, built: TrainingSetup, checkpoint_dir: Path, device: str,
                   precision: str, hooks: JobHooks, watch: stopping.Watch | None = None):
    import transformers
    from transformers import PrinterCallback

    if watch is not None and built.eval_set is None:
        raise PermanentJobError("early stopping needs a periodic evaluation, which this task does not run: "
                                "drop early_stopping_patience")
    arguments_class = (transformers.Seq2SeqTrainingArguments if built.trainer_class == "Seq2SeqTrainer"
                       else transformers.TrainingArguments)
    save_steps = stopping.save_steps(params, watch)
    if save_steps != params.save_steps:
        hooks.log(f"checkpoints every {save_steps} steps: save_steps {params.save_steps} rounded up to "
                  f"a multiple of eval_steps {params.eval_steps}, as keeping the best checkpoint needs (an evaluation "
                  "that sets a new best is also saved)")
    args = arguments_class(
        output_dir=str(checkpoint_dir),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps or -1,
        learning_rate=params.learning_rate,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.eval_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        warmup_steps=warmup_steps(params, len(built.train_set)),
        weight_decay=params.weight_decay,
        seed=params.seed,
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=SAVE_TOTAL_LIMIT,
        eval_strategy="steps" if params.eval_steps and built.eval_set is not None else "no",
        eval_steps=params.eval_steps,
        report_to=[],
        disable_tqdm=True,
        use_cpu=device == "cpu",
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        dataloader_pin_memory=device == "cuda",
        **(built.extra_args | stopping.trainer_arguments(params, watch)),
    )
    trainer = getattr(transformers, built.trainer_class)(
        model=built.model,
        args=args,
        data_collator=built.collator,
        train_dataset=built.train_set,
        eval_dataset=built.eval_set,
        compute_metrics=built.compute_metrics if built.eval_set is not None else None,
        preprocess_logits_for_metrics=built.preprocess_logits if built.eval_set is not None else None,
        processing_class=built.tokenizer,
        compute_loss_func=built.compute_loss,
        callbacks=[job_callback(hooks, params.save_minutes * 60), *stopping.callbacks(params, watch)],
    )
    # Progress and metrics go through the hooks; the printer would only add noise to worker logs.
    trainer.remove_callback(PrinterCallback)
    if params.layer_lr_decay < 1.0:
        trainer.optimizer = layer_decay_optimizer(trainer, params)
    return trainer


def _train_or_retry(trainer, resume, batch_size: int):
    """Train; GPU out-of-memory becomes a transient error so the job retries from its checkpoint."""
    import torch

    try:
        return trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except torch.cuda.OutOfMemoryError as exc:
        hint = "retrying from the last checkpoint" if batch_size > 1 else "batch_size is already 1"
        error = TransientJobError if batch_size > 1 else PermanentJobError
        raise error(f"the GPU ran out of memory at batch_size {batch_size} ({hint}); if it repeats, "
                    "resubmit with a smaller batch_size and a larger gradient_accumulation_steps") from exc

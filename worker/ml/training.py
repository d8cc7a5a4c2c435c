"""The fine-tuning loop every task shares: checkpoints and resume, the Trainer, progress and stops.

A task module supplies what is its own (how to build the model and the encoded train set, its
collator and loss); `fit` does the rest the same way for every task: picks device and precision,
drops torn checkpoints and checks batch geometry, returns the last checkpoint as the result when a
previous attempt already finished training, and turns a GPU out-of-memory into a retry.
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
from worker.ml.device import choose_training_precision, pick_device, resolve_precision
from worker.ml.hooks import JobHooks
from worker.params import FinetuneParams


@dataclass
class TrainingSetup:
    """What a task hands to `fit`: a model to train, its tokenizer and data, and Trainer options."""

    model: Any
    tokenizer: Any
    train_set: Any
    collator: Any
    compute_loss: Callable | None = None
    eval_set: Any = None  # evaluated every params.eval_steps, when both are given
    compute_metrics: Callable | None = None
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
) -> Fitted:
    """Train (or resume training) and return the trained model with a summary of the run.

    `setup()` builds the model to train from the base and encodes the train set; `load_trained(path)`
    loads (model, tokenizer) from a checkpoint when a previous attempt had already finished.
    """
    device = pick_device()
    precision = resolve_precision(params.precision, device)
    resume = prepare_checkpoints(checkpoint_dir, geometry(params, train_rows), hooks)
    hooks.check()
    finished = finished_state(resume)
    if finished is not None:
        # The Trainer would take one step too many here; the last checkpoint is the result.
        model, tokenizer = load_trained(str(resume))
        model.to(device)
        summary = summary_from_state(finished)
    else:
        from transformers import set_seed

        set_seed(params.seed)  # a new head is initialised the same way on every attempt
        built = setup()
        choice = choose_training_precision(built.model, params.precision, device)
        precision = choice.precision
        hooks.log(f"training precision: {choice.reason}")
        trainer = _build_trainer(params, built, checkpoint_dir, device, precision, hooks)
        result = _train_or_retry(trainer, resume, params.batch_size)
        hooks.check()  # training may have stopped early to checkpoint for a shutdown or time limit
        model, tokenizer = built.model, built.tokenizer
        summary = {
            "global_step": int(result.global_step),
            "train_loss": float(result.training_loss),
            "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
            "train_samples_per_second": float(result.metrics.get("train_samples_per_second", 0.0)),
        }
    summary |= {
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
                   precision: str, hooks: JobHooks):
    import transformers
    from transformers import PrinterCallback

    arguments_class = (transformers.Seq2SeqTrainingArguments if built.trainer_class == "Seq2SeqTrainer"
                       else transformers.TrainingArguments)
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
        save_steps=params.save_steps,
        save_total_limit=SAVE_TOTAL_LIMIT,
        eval_strategy="steps" if params.eval_steps and built.eval_set is not None else "no",
        eval_steps=params.eval_steps,
        report_to=[],
        disable_tqdm=True,
        use_cpu=device == "cpu",
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        dataloader_pin_memory=device == "cuda",
        **built.extra_args,
    )
    trainer = getattr(transformers, built.trainer_class)(
        model=built.model,
        args=args,
        data_collator=built.collator,
        train_dataset=built.train_set,
        eval_dataset=built.eval_set,
        compute_metrics=built.compute_metrics if built.eval_set is not None else None,
        processing_class=built.tokenizer,
        compute_loss_func=built.compute_loss,
        callbacks=[job_callback(hooks, params.save_minutes * 60)],
    )
    # Progress and metrics go through the hooks; the printer would only add noise to worker logs.
    trainer.remove_callback(PrinterCallback)
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

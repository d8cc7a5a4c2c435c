"""Text classification: fine-tune, evaluate and batch-predict sequence classifiers.

torch, transformers and datasets are imported inside functions so that importing this module
stays cheap for processes that never run a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

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
from worker.ml.data import Examples, check_labels, read_labelled, split_examples
from worker.ml.device import pick_device, resolve_precision
from worker.ml.hooks import JobHooks
from worker.ml.loading import load_classifier
from worker.ml.metrics import classification_metrics
from worker.ml.predict import (
    Predictor,
    effective_max_length,
    length_batches,
    predict_probabilities,
)
from worker.params import FinetuneParams

__all__ = ["Predictor", "evaluate", "finetune", "length_batches"]


# ---- fine-tuning ------------------------------------------------------------------------------


def finetune(
    params: FinetuneParams,
    *,
    base_model: str,
    train_path: Path,
    validation_path: Path | None,
    text_column: str,
    label_column: str,
    output_dir: Path,
    checkpoint_dir: Path,
    hooks: JobHooks,
) -> dict:
    """Fine-tune `base_model` on labelled text, resuming from the newest complete checkpoint."""
    train, validation, label_names = _finetune_examples(
        params, train_path, validation_path, text_column, label_column
    )
    device = pick_device()
    run = _Run(params, checkpoint_dir, device, resolve_precision(params.precision, device), hooks)
    resume = prepare_checkpoints(checkpoint_dir, geometry(params, len(train.texts)), hooks)
    hooks.check()
    finished = finished_state(resume)
    if finished is not None:
        # The Trainer would take one step too many here; the last checkpoint is the result.
        model, tokenizer = load_classifier(str(resume))
        model.to(device)
        summary = summary_from_state(finished)
    else:
        model, tokenizer, summary = _train(run, base_model, label_names, train, validation, resume)
        hooks.check()  # training may have stopped early to checkpoint for a shutdown or time limit
    max_length = effective_max_length(tokenizer, params.max_length)
    metrics = _evaluate_texts(model, tokenizer, validation, label_names, params, max_length, hooks)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    summary |= {
        "resumed_from_step": checkpoint_step(resume) if resume else None,
        "train_rows": len(train.texts),
        "validation_rows": len(validation.texts),
        "device": device,
        "precision": run.precision,
    }
    return {"label_names": label_names, "metrics": metrics, "train": summary}


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


def _finetune_examples(params, train_path, validation_path, text_column, label_column):
    train = read_labelled(train_path, text_column, label_column, "train")
    label_names = sorted(set(train.labels))
    if len(label_names) < 2:
        raise PermanentJobError(
            f"the label column '{label_column}' has {len(label_names)} distinct value(s) in the train "
            "dataset; a classifier needs at least 2 classes"
        )
    if validation_path is None:
        train, validation = split_examples(train, params.validation_fraction, params.seed)
    else:
        validation = read_labelled(validation_path, text_column, label_column, "validation")
        check_labels(
            label_names, validation.labels, "the validation dataset has labels the train dataset lacks"
        )
    return train, validation, label_names


@dataclass
class _Run:
    """The settings one fine-tuning run passes around."""

    params: FinetuneParams
    checkpoint_dir: Path
    device: str
    precision: str
    hooks: JobHooks


def _train(run: _Run, base_model: str, label_names, train: Examples, validation: Examples, resume):
    from transformers import set_seed

    set_seed(run.params.seed)  # the new classification head is initialised the same way every run
    model, tokenizer = load_classifier(base_model, label_names=label_names)
    if run.params.freeze_base:
        for parameter in model.base_model.parameters():
            parameter.requires_grad = False
    max_length = effective_max_length(tokenizer, run.params.max_length)
    label_ids = {name: i for i, name in enumerate(label_names)}
    train_set = _encode(tokenizer, train, label_ids, max_length)
    eval_set = _encode(tokenizer, validation, label_ids, max_length) if run.params.eval_steps else None
    trainer = _build_trainer(run, model, tokenizer, train_set, eval_set)
    result = _train_or_retry(trainer, resume, run.params.batch_size)
    summary = {
        "global_step": int(result.global_step),
        "train_loss": float(result.training_loss),
        "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
        "train_samples_per_second": float(result.metrics.get("train_samples_per_second", 0.0)),
    }
    return model, tokenizer, summary


def _encode(tokenizer, examples: Examples, label_ids: dict[str, int], max_length: int):
    from datasets import Dataset

    encoded = dict(tokenizer(examples.texts, truncation=True, max_length=max_length))
    encoded["labels"] = [label_ids[label] for label in examples.labels]
    return Dataset.from_dict(encoded)


def _warmup_steps(params: FinetuneParams, train_rows: int) -> int:
    # Computed here because transformers 5 folds warmup_ratio into warmup_steps and 4.x does not.
    if params.warmup_ratio == 0:
        return 0
    batches = math.ceil(train_rows / params.batch_size)
    updates_per_epoch = max(1, math.ceil(batches / params.gradient_accumulation_steps))
    total = params.max_steps or math.ceil(params.epochs * updates_per_epoch)
    return math.ceil(params.warmup_ratio * total)


def _build_trainer(run: _Run, model, tokenizer, train_set, eval_set):
    from transformers import (
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    params = run.params
    args = TrainingArguments(
        output_dir=str(run.checkpoint_dir),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps or -1,
        learning_rate=params.learning_rate,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.eval_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        warmup_steps=_warmup_steps(params, len(train_set)),
        weight_decay=params.weight_decay,
        seed=params.seed,
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=SAVE_TOTAL_LIMIT,
        eval_strategy="steps" if params.eval_steps else "no",
        eval_steps=params.eval_steps,
        report_to=[],
        disable_tqdm=True,
        use_cpu=run.device == "cpu",
        fp16=run.precision == "fp16",
        bf16=run.precision == "bf16",
        dataloader_pin_memory=run.device == "cuda",
    )
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=DataCollatorWithPadding(tokenizer),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        compute_metrics=_eval_step_metrics if eval_set is not None else None,
        compute_loss_func=_classification_loss,
        callbacks=[job_callback(run.hooks, params.save_minutes * 60)],
    )
    # Progress and metrics go through the hooks; the printer would only add noise to worker logs.
    trainer.remove_callback(PrinterCallback)
    return trainer


def _classification_loss(outputs, labels, num_items_in_batch=None):
    # Mean over the whole accumulated batch. Left to the model, transformers 5 adds up each
    # micro-batch's mean without dividing (Bert's forward takes **kwargs), so loss and gradients
    # grew with gradient_accumulation_steps.
    import torch.nn.functional as F

    logits = outputs.logits.float()
    if num_items_in_batch is None:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch


def _eval_step_metrics(prediction) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    predicted = prediction.predictions.argmax(axis=-1)
    expected = prediction.label_ids
    return {
        "accuracy": float(accuracy_score(expected, predicted)),
        "f1_macro": float(f1_score(expected, predicted, average="macro", zero_division=0)),
    }


def _evaluate_texts(model, tokenizer, examples: Examples, label_names, params, max_length, hooks) -> dict:
    model.eval()
    batch_size = params.eval_batch_size
    probabilities = predict_probabilities(
        model, tokenizer, examples.texts, max_length=max_length, batch_tokens=batch_size * max_length,
        max_batch_size=batch_size, on_batch=_evaluation_progress(hooks),
    )
    predicted = [label_names[i] for i in probabilities.argmax(dim=-1).tolist()]
    return classification_metrics(examples.labels, predicted, label_names)


def _evaluation_progress(hooks: JobHooks):
    def report(done: int, total: int) -> None:
        hooks.check()
        hooks.progress(fraction=done / total, stage="evaluating", done=done, total=total)

    return report


# ---- evaluation -------------------------------------------------------------------------------


def evaluate(
    model_dir: str,
    *,
    data_path: Path,
    text_column: str,
    label_column: str,
    batch_size: int,
    max_length: int,
    hooks: JobHooks,
    precision: str = "auto",
) -> dict:
    """Score a classifier on a labelled dataset; returns classification metrics plus "rows"."""
    examples = read_labelled(data_path, text_column, label_column, "evaluation")
    predictor = Predictor(
        model_dir, max_length=max_length, batch_tokens=batch_size * max_length, max_batch_size=batch_size,
        precision=precision,
    )
    unknown_message = f"the dataset has labels that model '{model_dir}' does not know"
    check_labels(predictor.label_names, examples.labels, unknown_message)
    probabilities = predictor.predict_probabilities(examples.texts, on_batch=_evaluation_progress(hooks))
    predicted = [predictor.label_names[i] for i in probabilities.argmax(dim=-1).tolist()]
    metrics = classification_metrics(examples.labels, predicted, predictor.label_names)
    metrics["rows"] = len(examples.texts)
    metrics["dtype"] = predictor.precision
    return metrics



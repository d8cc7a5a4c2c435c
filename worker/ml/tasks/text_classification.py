"""Text classification: fine-tune, evaluate and batch-predict sequence classifiers.

torch, transformers and datasets are imported inside functions so that importing this module
stays cheap for processes that never run a model.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from worker.errors import PermanentJobError
from worker.ml.device import pick_device, resolve_precision, torch_dtype
from worker.ml.hooks import JobHooks
from worker.ml.loading import label_names_of, load_classifier
from worker.ml.metrics import classification_metrics
from worker.params import FinetuneParams

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
GEOMETRY_FILE = "geometry.json"
SAVE_TOTAL_LIMIT = 2
MAX_ROWS_NAMED = 5
# Measured with MiniLM on 2 CPU cores: past about 2k padded tokens a batch gets slower per token
# (attention and activations fall out of cache), so CPU runs cap the caller's budget here.
CPU_MAX_BATCH_TOKENS = 2048
# Tokenizers without a usable limit report a huge sentinel as model_max_length.
UNSET_MODEL_MAX_LENGTH = 1_000_000


# ---- data -------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    """Read a canonical JSON Lines dataset into a list of row objects."""
    rows = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise PermanentJobError(f"line {number} of {path.name} is not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise PermanentJobError(f"line {number} of {path.name} is not a JSON object")
            rows.append(row)
    return rows


@dataclass
class Examples:
    """Texts and their labels, row for row."""

    texts: list[str]
    labels: list[str]


def _read_labelled(path: Path, text_column: str, label_column: str, what: str) -> Examples:
    rows = read_rows(path)
    if not rows:
        raise PermanentJobError(f"the {what} dataset has no rows: upload a file with labelled examples")
    return Examples(_column(rows, text_column, what, "text"), _column(rows, label_column, what, "label"))


def _column(rows: list[dict], column: str, what: str, role: str) -> list[str]:
    if not any(column in row for row in rows):
        columns = ", ".join(sorted({key for row in rows[:100] for key in row}))
        raise PermanentJobError(
            f"the {what} dataset has no {role} column '{column}' (columns: {columns}): pick one of these"
        )
    values = [row.get(column) for row in rows]
    missing = [i for i, value in enumerate(values, start=1) if value is None or str(value).strip() == ""]
    if missing:
        named = ", ".join(map(str, missing[:MAX_ROWS_NAMED]))
        raise PermanentJobError(
            f"the {role} column '{column}' is empty in {len(missing)} row(s) of the {what} dataset "
            f"(rows {named}{', ...' if len(missing) > MAX_ROWS_NAMED else ''}): fill them in or remove them"
        )
    return [str(value) for value in values]


def _split(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    order = list(range(len(examples.texts)))
    random.Random(seed).shuffle(order)
    held_out = min(len(order) - 1, max(1, round(len(order) * fraction)))

    def pick(indices: list[int]) -> Examples:
        return Examples([examples.texts[i] for i in indices], [examples.labels[i] for i in indices])

    return pick(order[held_out:]), pick(order[:held_out])


def _check_labels(label_names: list[str], labels: list[str], message: str) -> None:
    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise PermanentJobError(f"{message}: {', '.join(map(repr, unknown[:20]))}")


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
    resume = _prepare_checkpoints(checkpoint_dir, _geometry(params, len(train.texts)), hooks)
    hooks.check()
    finished = _finished_state(resume)
    if finished is not None:
        # The Trainer would take one step too many here; the last checkpoint is the result.
        model, tokenizer = load_classifier(str(resume))
        model.to(device)
        summary = _summary_from_state(finished)
    else:
        model, tokenizer, summary = _train(run, base_model, label_names, train, validation, resume)
    max_length = _effective_max_length(tokenizer, params.max_length)
    metrics = _evaluate_texts(model, tokenizer, validation, label_names, params, max_length, hooks)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    summary |= {
        "resumed_from_step": _checkpoint_step(resume) if resume else None,
        "train_rows": len(train.texts),
        "validation_rows": len(validation.texts),
        "device": device,
        "precision": run.precision,
    }
    return {"label_names": label_names, "metrics": metrics, "train": summary}


def _finetune_examples(params, train_path, validation_path, text_column, label_column):
    train = _read_labelled(train_path, text_column, label_column, "train")
    label_names = sorted(set(train.labels))
    if len(label_names) < 2:
        raise PermanentJobError(
            f"the label column '{label_column}' has {len(label_names)} distinct value(s) in the train "
            "dataset; a classifier needs at least 2 classes"
        )
    if validation_path is None:
        train, validation = _split(train, params.validation_fraction, params.seed)
    else:
        validation = _read_labelled(validation_path, text_column, label_column, "validation")
        _check_labels(
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
    model, tokenizer = load_classifier(base_model, label_names=label_names)
    if run.params.freeze_base:
        for parameter in model.base_model.parameters():
            parameter.requires_grad = False
    max_length = _effective_max_length(tokenizer, run.params.max_length)
    label_ids = {name: i for i, name in enumerate(label_names)}
    train_set = _encode(tokenizer, train, label_ids, max_length)
    eval_set = _encode(tokenizer, validation, label_ids, max_length) if run.params.eval_steps else None
    trainer = _build_trainer(run, model, tokenizer, train_set, eval_set)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    summary = {
        "global_step": int(result.global_step),
        "train_loss": float(result.training_loss),
        "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
        "train_samples_per_second": float(result.metrics.get("train_samples_per_second", 0.0)),
    }
    return model, tokenizer, summary


def _finished_state(checkpoint: Path | None) -> dict | None:
    """Return the checkpoint's trainer state if it already reached the last step."""
    path = checkpoint / "trainer_state.json" if checkpoint else None
    if path is None or not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if state.get("global_step", 0) >= state.get("max_steps", float("inf")) > 0 else None


def _summary_from_state(state: dict) -> dict:
    # Only the logged windows survive in the checkpoint; their mean stands in for the run's loss.
    losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
    return {
        "global_step": int(state["global_step"]),
        "train_loss": float(sum(losses) / len(losses)) if losses else 0.0,
        "train_runtime_s": 0.0,
        "train_samples_per_second": 0.0,
    }


def _geometry(params: FinetuneParams, train_rows: int) -> dict:
    return {
        "batch_size": params.batch_size,
        "gradient_accumulation_steps": params.gradient_accumulation_steps,
        "max_length": params.max_length,
        "epochs": params.epochs,
        "max_steps": params.max_steps,
        "train_rows": train_rows,
        "seed": params.seed,
    }


def _prepare_checkpoints(checkpoint_dir: Path, geometry: dict, hooks: JobHooks) -> Path | None:
    """Return the checkpoint to resume from, after dropping incomplete ones and checking geometry."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    complete = []
    for path in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        if _checkpoint_step(path) is None or not path.is_dir():
            continue
        if (path / COMPLETE_MARKER).is_file():
            complete.append(path)
        else:
            # A save cut short; left in place the Trainer's rotation could delete a good one instead.
            shutil.rmtree(path)
            hooks.log(f"removed incomplete checkpoint {path.name}")
    resume = max(complete, key=_checkpoint_step, default=None)
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


def _checkpoint_step(path: Path) -> int | None:
    suffix = path.name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if suffix.isdigit() else None


def _effective_max_length(tokenizer, max_length: int) -> int:
    limit = tokenizer.model_max_length
    return min(max_length, limit) if 0 < limit < UNSET_MODEL_MAX_LENGTH else max_length


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
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

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
        callbacks=[_job_callback(run.hooks, params.save_minutes * 60)],
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


def _job_callback(hooks: JobHooks, save_seconds: float):
    from transformers import TrainerCallback

    class JobCallback(TrainerCallback):
        """Report progress and metrics, honour cancellation, mark checkpoints complete."""

        def __init__(self) -> None:
            self.last_save = time.monotonic()

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            hooks.check()
            total = max(state.max_steps, 1)
            step = state.global_step
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
                (path / COMPLETE_MARKER).touch()
                hooks.checkpoint_saved(path, state.global_step)
            self.last_save = time.monotonic()

    return JobCallback()


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


# ---- evaluation and prediction ----------------------------------------------------------------


def evaluate(
    model_dir: str,
    *,
    data_path: Path,
    text_column: str,
    label_column: str,
    batch_size: int,
    max_length: int,
    hooks: JobHooks,
) -> dict:
    """Score a classifier on a labelled dataset; returns classification metrics plus "rows"."""
    examples = _read_labelled(data_path, text_column, label_column, "evaluation")
    predictor = Predictor(
        model_dir, max_length=max_length, batch_tokens=batch_size * max_length, max_batch_size=batch_size
    )
    unknown_message = f"the dataset has labels that model '{model_dir}' does not know"
    _check_labels(predictor.label_names, examples.labels, unknown_message)
    probabilities = predictor.predict_probabilities(examples.texts, on_batch=_evaluation_progress(hooks))
    predicted = [predictor.label_names[i] for i in probabilities.argmax(dim=-1).tolist()]
    metrics = classification_metrics(examples.labels, predicted, predictor.label_names)
    metrics["rows"] = len(examples.texts)
    return metrics


class Predictor:
    """Classify text with one loaded model, in length-sorted batches under a token budget."""

    def __init__(
        self,
        model_dir: str,
        *,
        max_length: int,
        batch_tokens: int,
        max_batch_size: int,
        num_threads: int | None = None,
    ) -> None:
        import torch

        if num_threads is not None:
            # Only when asked: the caller (a worker pinned to some cores) owns the global setting.
            torch.set_num_threads(num_threads)
        self.device = pick_device()
        self.model, self.tokenizer = load_classifier(model_dir)
        dtype = torch_dtype(resolve_precision("auto", self.device))
        self.model.to(device=self.device, dtype=dtype).eval()
        self.label_names = label_names_of(self.model)
        self.max_length = _effective_max_length(self.tokenizer, max_length)
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size

    def predict_probabilities(self, texts: list[str], *, on_batch=None):
        """Return a (len(texts), num_labels) float tensor of class probabilities, in input order."""
        return predict_probabilities(
            self.model, self.tokenizer, texts, max_length=self.max_length, batch_tokens=self.batch_tokens,
            max_batch_size=self.max_batch_size, on_batch=on_batch,
        )

    def predict_chunk(self, rows: list[tuple[int, str]]) -> list[dict]:
        """Classify (row_id, text) pairs; results come back in input order, bad rows as errors."""
        results: list[dict] = [{"row": row_id, "error": "empty text"} for row_id, _ in rows]
        valid = [i for i, (_, text) in enumerate(rows) if isinstance(text, str) and text.strip()]
        if not valid:
            return results
        probabilities = self.predict_probabilities([rows[i][1] for i in valid]).tolist()
        for position, scores in zip(valid, probabilities):
            best = max(range(len(scores)), key=scores.__getitem__)
            results[position] = {
                "row": rows[position][0],
                "label": self.label_names[best],
                "score": scores[best],
                "probabilities": dict(zip(self.label_names, scores)),
            }
        return results


def predict_probabilities(
    model, tokenizer, texts: list[str], *, max_length: int, batch_tokens: int, max_batch_size: int,
    on_batch=None,
):
    """Run `model` over `texts` in length-sorted, padding-light batches; return probabilities in order."""
    import torch

    if model.device.type == "cpu":
        batch_tokens = min(batch_tokens, CPU_MAX_BATCH_TOKENS)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    lengths = [len(ids) for ids in encoded["input_ids"]]
    probabilities = torch.empty(len(texts), model.config.num_labels, dtype=torch.float32)
    done = 0
    with torch.inference_mode():
        for batch in length_batches(lengths, batch_tokens=batch_tokens, max_batch_size=max_batch_size):
            features = {key: [encoded[key][i] for i in batch] for key in keys}
            inputs = tokenizer.pad(features, return_tensors="pt").to(model.device)
            logits = model(**inputs).logits
            probabilities[batch] = torch.softmax(logits.float(), dim=-1).cpu()
            done += len(batch)
            if on_batch is not None:
                on_batch(done, len(texts))
    return probabilities


def length_batches(lengths: list[int], *, batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Group indices longest first so each batch's padded size (longest * count) fits the budget."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first, so the batch's first item sets its padded width.
        width = lengths[current[0]] if current else lengths[index]
        if current and (len(current) >= max_batch_size or width * (len(current) + 1) > batch_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches

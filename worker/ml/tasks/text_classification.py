"""Text classification (sentiment, spam, topic): fine-tune, evaluate and batch-predict sequence classifiers.

torch, transformers and datasets are imported inside functions so that importing this module
stays cheap for processes that never run a model.
"""

from __future__ import annotations

from pathlib import Path

from worker.datafiles import TextRows
from worker.errors import PermanentJobError
from worker.ml.data import Examples, check_labels, read_labelled, split_examples
from worker.ml.hooks import JobHooks, progress_reporter
from worker.ml.loading import load_classifier
from worker.ml.metrics import classification_metrics
from worker.ml.predict import (
    Predictor,
    effective_max_length,
    length_batches,
    predict_probabilities,
)
from worker.ml.tasks import Untrainable
from worker.ml.training import TrainingSetup, fit
from worker.params import SHARED_PARAMS, EvaluateParams, FinetuneParams

__all__ = ["Predictor", "evaluate", "finetune", "length_batches"]

TASK = "text-classification"
ROLES = {"text": "text", "label": "label"}  # role -> default column of labelled data
INPUT_ROLES = ("text",)  # batch inference reads one text per row
PARAMS = SHARED_PARAMS  # job kind -> its parameters' model
MODEL_CLASS = "AutoModelForSequenceClassification"
TRAINED_HEADS = ("ForSequenceClassification",)  # architecture names of models that already do this task
MIN_CLASSES = 2
# What the periodic evaluation (eval_steps) reports, main metric first: name -> greater is better.
EVAL_METRICS = {"f1_macro": True, "accuracy": True, "loss": False}


# ---- data: schema and validation ---------------------------------------------------------------


def row_schema(columns: dict[str, str]) -> TextRows:
    return TextRows(columns["text"], columns["label"])


def check_trainable(stats: dict) -> Untrainable | None:
    """Say why data with these upload stats cannot train a classifier, or None if it can."""
    counts = (stats or {}).get("label_distribution")
    if not isinstance(counts, dict) or len(counts) >= MIN_CLASSES:
        return None
    named = f" ({', '.join(map(repr, counts))})" if counts else ""
    return Untrainable(
        "too_few_classes",
        f"has {len(counts)} class{'' if len(counts) == 1 else 'es'}{named}; a classifier needs at least two: "
        "upload data with examples of each class",
        {"class_count": len(counts), "classes": counts},
    )


# ---- fine-tuning ------------------------------------------------------------------------------


def finetune(
    params: FinetuneParams,
    *,
    base_model: str,
    train_path: Path,
    validation_path: Path | None,
    columns: dict[str, str],
    output_dir: Path,
    checkpoint_dir: Path,
    hooks: JobHooks,
) -> dict:
    """Fine-tune `base_model` on labelled text, resuming from the newest complete checkpoint."""
    train, validation, label_names = _finetune_examples(
        params, train_path, validation_path, columns["text"], columns["label"]
    )

    def setup() -> TrainingSetup:
        from transformers import DataCollatorWithPadding

        model, tokenizer = load_classifier(base_model, label_names=label_names)
        if params.freeze_base:
            for parameter in model.base_model.parameters():
                parameter.requires_grad = False
        max_length = effective_max_length(tokenizer, params.max_length)
        label_ids = {name: i for i, name in enumerate(label_names)}
        return TrainingSetup(
            model, tokenizer, _encode(tokenizer, train, label_ids, max_length),
            DataCollatorWithPadding(tokenizer), compute_loss=_classification_loss,
            eval_set=_encode(tokenizer, validation, label_ids, max_length) if params.eval_steps else None,
            compute_metrics=_eval_step_metrics,
        )

    fitted = fit(params, train_rows=len(train.texts), checkpoint_dir=checkpoint_dir, hooks=hooks,
                 setup=setup, load_trained=load_classifier, eval_metrics=EVAL_METRICS)
    model, tokenizer = fitted.model, fitted.tokenizer
    max_length = effective_max_length(tokenizer, params.max_length)
    metrics = _evaluate_texts(model, tokenizer, validation, label_names, params, max_length, hooks)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    summary = fitted.summary | {"validation_rows": len(validation.texts)}
    return {"label_names": label_names, "metrics": metrics, "train": summary}


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


def _encode(tokenizer, examples: Examples, label_ids: dict[str, int], max_length: int):
    from datasets import Dataset

    encoded = dict(tokenizer(examples.texts, truncation=True, max_length=max_length))
    encoded["labels"] = [label_ids[label] for label in examples.labels]
    return Dataset.from_dict(encoded)


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
        max_batch_size=batch_size, on_batch=progress_reporter(hooks),
    )
    predicted = [label_names[i] for i in probabilities.argmax(dim=-1).tolist()]
    return classification_metrics(examples.labels, predicted, label_names)


# ---- evaluation -------------------------------------------------------------------------------


def evaluate(
    model_dir: str,
    *,
    data_path: Path,
    columns: dict[str, str],
    params: EvaluateParams,
    hooks: JobHooks,
) -> dict:
    """Score a classifier on a labelled dataset; returns classification metrics plus "rows"."""
    examples = read_labelled(data_path, columns["text"], columns["label"], "evaluation")
    predictor = Predictor(
        model_dir, max_length=params.max_length, batch_tokens=params.batch_size * params.max_length,
        max_batch_size=params.batch_size, precision=params.precision,
    )
    unknown_message = f"the dataset has labels that model '{model_dir}' does not know"
    check_labels(predictor.label_names, examples.labels, unknown_message)
    probabilities = predictor.predict_probabilities(examples.texts, on_batch=progress_reporter(hooks))
    predicted = [predictor.label_names[i] for i in probabilities.argmax(dim=-1).tolist()]
    metrics = classification_metrics(examples.labels, predicted, predictor.label_names)
    metrics["rows"] = len(examples.texts)
    metrics["dtype"] = predictor.precision
    return metrics



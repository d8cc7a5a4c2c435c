"""Text classification (sentiment, spam, topic): fine-tune, evaluate and batch-predict sequence classifiers.

One class per row here; multi-label classification (`multi_label_classification.py`) trains,
evaluates and predicts with the same functions, handing them its own `SingleLabel` subclass: what
differs between the two (how labels are read and encoded, the loss, how scores become predictions,
the metrics) is a method of that object, the rest is shared.

torch, transformers and datasets are imported inside functions so that importing this module
stays cheap for processes that never run a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    likeliest,
    predict_probabilities,
)
from worker.ml.tasks import Untrainable
from worker.ml.training import TrainingSetup, fit
from worker.params import SHARED_PARAMS, EvaluateParams, FinetuneParams

__all__ = ["Predictor", "SingleLabel", "evaluate", "finetune", "length_batches"]

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


# ---- labelling: what one class per row means ---------------------------------------------------


class SingleLabel:
    """One class per row: cross-entropy over the classes, the likeliest class predicted."""

    problem_type: str | None = None  # transformers' config.problem_type of the trained model
    eval_metrics = EVAL_METRICS  # what step_metrics reports (and the loss), main metric first
    min_labels = MIN_CLASSES

    def read(self, path: Path, text_column: str, label_column: str, what: str) -> Examples:
        """Read a labelled dataset's texts and labels."""
        return read_labelled(path, text_column, label_column, what)

    def names_in(self, labels: list) -> list[str]:
        """Return the class names that rows' labels hold, one per occurrence."""
        return list(labels)

    def too_few(self, label_column: str, count: int) -> str:
        """Say why a train dataset with `count` distinct labels cannot train the classifier."""
        return (f"the label column '{label_column}' has {count} distinct value(s) in the train dataset; a "
                "classifier needs at least 2 classes")

    def target(self, label: Any, label_ids: dict[str, int]) -> Any:
        """Encode one row's label as the model's training target."""
        return label_ids[label]

    def loss(self, outputs, labels, num_items_in_batch=None):
        # Mean over the whole accumulated batch. Left to the model, transformers 5 adds up each
        # micro-batch's mean without dividing (Bert's forward takes **kwargs), so loss and gradients
        # grew with gradient_accumulation_steps.
        import torch.nn.functional as F

        logits = outputs.logits.float()
        if num_items_in_batch is None:
            return F.cross_entropy(logits, labels)
        return F.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch

    def step_metrics(self, prediction) -> dict:
        """Score the Trainer's periodic evaluation (params.eval_steps)."""
        from sklearn.metrics import accuracy_score, f1_score

        predicted = prediction.predictions.argmax(axis=-1)
        expected = prediction.label_ids
        return {
            "accuracy": float(accuracy_score(expected, predicted)),
            "f1_macro": float(f1_score(expected, predicted, average="macro", zero_division=0)),
        }

    def fitted_metrics(self, model, probabilities, examples: Examples, label_names: list[str], params) -> dict:
        """Score the trained model's validation probabilities (a subclass may first fix its decision rule)."""
        return self.metrics(examples.labels, likeliest(probabilities, label_names), label_names)

    def metrics(self, expected: list, predicted: list, label_names: list[str]) -> dict:
        return classification_metrics(expected, predicted, label_names)

    def predictor(self, model_dir: str, params: EvaluateParams) -> Predictor:
        """Load the predictor an evaluation's parameters ask for."""
        return Predictor(
            model_dir, max_length=params.max_length, batch_tokens=params.batch_size * params.max_length,
            max_batch_size=params.batch_size, precision=params.precision,
        )


SINGLE_LABEL = SingleLabel()


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
    labelling: SingleLabel = SINGLE_LABEL,
) -> dict:
    """Fine-tune `base_model` on labelled text, resuming from the newest complete checkpoint."""
    train, validation, label_names = _finetune_examples(
        params, train_path, validation_path, columns["text"], columns["label"], labelling
    )

    def setup() -> TrainingSetup:
        from transformers import DataCollatorWithPadding

        model, tokenizer = load_classifier(base_model, label_names=label_names)
        model.config.problem_type = labelling.problem_type  # not the base model's, should it have one
        max_length = effective_max_length(tokenizer, params.max_length)
        label_ids = {name: i for i, name in enumerate(label_names)}
        return TrainingSetup(
            model, tokenizer, _encode(tokenizer, train, label_ids, max_length, labelling),
            DataCollatorWithPadding(tokenizer), compute_loss=labelling.loss,
            eval_set=_encode(tokenizer, validation, label_ids, max_length, labelling) if params.eval_steps else None,
            compute_metrics=labelling.step_metrics,
        )

    fitted = fit(params, train_rows=len(train.texts), checkpoint_dir=checkpoint_dir, hooks=hooks,
                 setup=setup, load_trained=load_classifier, eval_metrics=labelling.eval_metrics)
    model, tokenizer = fitted.model, fitted.tokenizer
    max_length = effective_max_length(tokenizer, params.max_length)
    probabilities = _validation_probabilities(model, tokenizer, validation, params, max_length, hooks)
    metrics = labelling.fitted_metrics(model, probabilities, validation, label_names, params)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    summary = fitted.summary | {"validation_rows": len(validation.texts)}
    return {"label_names": label_names, "metrics": metrics, "train": summary}


def _finetune_examples(params, train_path, validation_path, text_column, label_column, labelling: SingleLabel):
    train = labelling.read(train_path, text_column, label_column, "train")
    label_names = sorted(set(labelling.names_in(train.labels)))
    if len(label_names) < labelling.min_labels:
        raise PermanentJobError(labelling.too_few(label_column, len(label_names)))
    if validation_path is None:
        train, validation = split_examples(train, params.validation_fraction, params.seed)
    else:
        validation = labelling.read(validation_path, text_column, label_column, "validation")
        check_labels(label_names, labelling.names_in(validation.labels),
                     "the validation dataset has labels the train dataset lacks")
    return train, validation, label_names


def _encode(tokenizer, examples: Examples, label_ids: dict[str, int], max_length: int,
            labelling: SingleLabel = SINGLE_LABEL):
    from datasets import Dataset

    encoded = dict(tokenizer(examples.texts, truncation=True, max_length=max_length))
    encoded["labels"] = [labelling.target(label, label_ids) for label in examples.labels]
    return Dataset.from_dict(encoded)


def _validation_probabilities(model, tokenizer, examples: Examples, params, max_length, hooks):
    model.eval()
    batch_size = params.eval_batch_size
    return predict_probabilities(
        model, tokenizer, examples.texts, max_length=max_length, batch_tokens=batch_size * max_length,
        max_batch_size=batch_size, on_batch=progress_reporter(hooks),
    )


# ---- evaluation -------------------------------------------------------------------------------


def evaluate(
    model_dir: str,
    *,
    data_path: Path,
    columns: dict[str, str],
    params: EvaluateParams,
    hooks: JobHooks,
    labelling: SingleLabel = SINGLE_LABEL,
) -> dict:
    """Score a classifier on a labelled dataset; returns classification metrics plus "rows"."""
    examples = labelling.read(data_path, columns["text"], columns["label"], "evaluation")
    predictor = labelling.predictor(model_dir, params)
    unknown_message = f"the dataset has labels that model '{model_dir}' does not know"
    check_labels(predictor.label_names, labelling.names_in(examples.labels), unknown_message)
    probabilities = predictor.predict_probabilities(examples.texts, on_batch=progress_reporter(hooks))
    metrics = labelling.metrics(examples.labels, predictor.decide(probabilities), predictor.label_names)
    metrics["rows"] = len(examples.texts)
    metrics["dtype"] = predictor.precision
    return metrics | predictor.decision()



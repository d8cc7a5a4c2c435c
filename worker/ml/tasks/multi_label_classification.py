"""Multi-label classification (topics, tags, emotions): any number of labels per text, each scored on its own.

A task of its own rather than a mode of text-classification that the data would switch on:
- its output has another shape (every label at or above a threshold and every label's score, not the
  likeliest class), and every layer keys on the task: datasets, jobs, registered models, the
  dashboard's filters. A client reading text-classification output never meets the other shape, and
  the API refuses to evaluate a multi-label model on single-label data or the reverse;
- the data cannot say it reliably: "a,b" and "[draft]" are valid single labels.
Otherwise it is text classification, run by `text_classification`'s own functions with the
`MultiLabel` labelling below: a sigmoid and binary cross-entropy per label, a decision threshold,
multi-label metrics.

Data: a label column holding each row's labels as a list (JSON Lines, Parquet), as a JSON list in a
text cell (CSV: `["sports", "politics"]`), or joined by a separator given at upload
(`label_separator=|`). `[]`, or an empty cell with a separator, is a row without any label.

Threshold: one for every label; a label is predicted when its probability is at or above it. A
fine-tune tunes it on the validation split for micro-F1 (`threshold="tune"`, the default) or takes
the one given, and stores it in the model's config.json (`multi_label_threshold`), which evaluation
and batch inference use unless the job gives its own. Metrics at a threshold tuned on the split they
are measured on are optimistic: evaluate on other labelled data for a fair figure.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from worker.datafiles import cell_error, check_columns, length_summary, ranked_counts, row_text
from worker.errors import PermanentJobError
from worker.ml.data import Examples, read_labelled
from worker.ml.metrics import multi_label_metrics, multi_label_scores
from worker.ml.predict import MULTI_LABEL_PROBLEM, is_multi_label
from worker.ml.tasks import Untrainable, text_classification
from worker.ml.tasks.text_classification import SingleLabel
from worker.params import SHARED_PARAMS, BatchInferenceParams, EvaluateParams, FinetuneParams

TASK = "multi-label-classification"
ROLES = {"text": "text", "label": "labels"}  # role -> default column of labelled data
INPUT_ROLES = ("text",)  # batch inference reads one text per row
MODEL_CLASS = text_classification.MODEL_CLASS
TRAINED_HEADS = text_classification.TRAINED_HEADS
# What the periodic evaluation (eval_steps) reports, main metric first: name -> greater is better.
EVAL_METRICS = {"f1_micro": True, "subset_accuracy": True, "f1_macro": True, "loss": False}
UPLOAD_OPTIONS = {  # upload form field -> help; passed to row_schema
    "label_separator": "multi-label-classification: the string joining a row's labels in its label column, e.g. "
                       "`|` (default: each label cell is a list, or a JSON list such as [\"a\", \"b\"]).",
}
THRESHOLD_KEY = "multi_label_threshold"  # in the model's config.json
DEFAULT_THRESHOLD = 0.5  # a model that stores none (trained elsewhere)
THRESHOLD_GRID = tuple(i / 100 for i in range(1, 100))  # thresholds a fine-tune tries
MAX_LABEL_CHARS = 200

Threshold = Annotated[float, Field(gt=0.0, lt=1.0)]


class MultiLabelFinetuneParams(FinetuneParams):
    """A fine-tune of a multi-label classifier."""

    threshold: Threshold | Literal["tune"] = Field(
        default="tune", description="Predict a label at or above this probability; `tune`: the threshold of best "
                                    "micro-F1 on the validation split. Stored with the model.",
    )


class MultiLabelEvaluateParams(EvaluateParams):
    """Evaluate a multi-label classifier on rows labelled with sets of labels."""

    threshold: Threshold | None = Field(
        default=None, description="Predict a label at or above this probability (default: the model's own).",
    )


class MultiLabelBatchParams(BatchInferenceParams):
    """Label every row of a dataset with each label at or above the threshold, and every label's score."""

    threshold: Threshold | None = Field(
        default=None, description="Predict a label at or above this probability (default: the model's own).",
    )


PARAMS = SHARED_PARAMS | {  # job kind -> its parameters' model
    "finetune": MultiLabelFinetuneParams,
    "evaluate": MultiLabelEvaluateParams,
    "batch_inference": MultiLabelBatchParams,
}


# ---- data: schema and validation ---------------------------------------------------------------


class LabelSetRows:
    """Rows of text with a set of labels each; counts rows per label, labels per row and text lengths."""

    def __init__(self, text_column: str = "text", label_column: str = "labels", separator: str | None = None) -> None:
        self.columns = {"text": text_column, "label": label_column}
        self._separator = separator
        self._labels: Counter[str] = Counter()
        self._sizes: Counter[int] = Counter()
        self._lengths: Counter[int] = Counter()

    def check_first(self, first: dict) -> None:
        check_columns(first, {"text_column": self.columns["text"], "label_column": self.columns["label"]})

    def check(self, raw: dict, row: int, line: int | None) -> dict[str, Any]:
        text_column, label_column = self.columns["text"], self.columns["label"]
        text = row_text(raw, row, line, text_column, required=True)
        labels = self._label_set(raw.get(label_column), row, line)
        self._labels.update(labels)
        self._sizes[len(labels)] += 1
        self._lengths[len(text)] += 1
        return {text_column: text, label_column: labels}

    def summary(self) -> dict[str, Any]:
        return {
            "label_distribution": ranked_counts(self._labels),  # rows that hold each label
            "num_labels": len(self._labels),
            "labels_per_row": length_summary(self._sizes),
            "rows_without_labels": self._sizes[0],
            "text_length_chars": length_summary(self._lengths),
        }

    def _label_set(self, value, row: int, line: int | None) -> list[str]:
        """Return a cell's labels, each once, in their order: from a list, a JSON list or separated text."""
        column = self.columns["label"]
        if isinstance(value, str) and self._separator is not None:
            items = [item for item in value.split(self._separator) if item.strip()]
        elif isinstance(value, str):
            items = _json_list(value, row, line, column)
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            what = "nothing" if value is None else f"a {type(value).__name__} ({value!r:.40})"
            raise cell_error("bad_labels", f"holds {what}, not a list of labels; give the row's labels as a list such "
                             "as [\"a\", \"b\"] ([] for none).", row, line, column)
        labels: list[str] = []
        for position, item in enumerate(items, 1):
            label = _label(item, position, row, line, column)
            if label not in labels:
                labels.append(label)
        return labels


def _json_list(value: str, row: int, line: int | None, column: str) -> list:
    """Parse a text cell that must hold a JSON list of labels."""
    text = value.strip()
    hint = ("give the row's labels as a JSON list such as [\"a\", \"b\"] ([] for none), or upload with "
            "label_separator=... when each cell joins its labels with a character such as , or |.")
    if not text.startswith("["):
        raise cell_error("bad_labels", f"holds {text[:40]!r}, which is not a JSON list of labels; {hint}",
                         row, line, column)
    try:
        items = json.loads(text)
    except ValueError as exc:
        problem = f"holds {text[:40]!r}, which is not a valid JSON list ({getattr(exc, 'msg', exc)}); {hint}"
        raise cell_error("bad_labels", problem, row, line, column) from None
    if not isinstance(items, list):
        raise cell_error("bad_labels", f"holds {text[:40]!r}, which is not a JSON list; {hint}", row, line, column)
    return items


def _label(item, position: int, row: int, line: int | None, column: str) -> str:
    """Return one label of a row's list, refusing a blank, structured or overlong one."""
    if isinstance(item, bool) or not isinstance(item, (str, int, float)) or not str(item).strip():
        raise cell_error("bad_labels", f"has an empty or non-text label at position {position}; every label must be "
                         "a non-blank string or number.", row, line, column, position=position)
    label = str(item).strip()
    if len(label) > MAX_LABEL_CHARS:
        raise cell_error("bad_labels", f"has a {len(label)}-character label at position {position}; labels may have "
                         f"at most {MAX_LABEL_CHARS} characters. Is label_column pointing at the text?",
                         row, line, column, position=position, max_chars=MAX_LABEL_CHARS)
    return label


def row_schema(columns: dict[str, str], label_separator: str | None = None) -> LabelSetRows:
    return LabelSetRows(columns["text"], columns["label"], label_separator)


def check_trainable(stats: dict) -> Untrainable | None:
    """Say why data with these upload stats cannot train a multi-label classifier, or None if it can."""
    counts = (stats or {}).get("label_distribution")
    if not isinstance(counts, dict) or counts:
        return None
    return Untrainable("no_labels", "holds no label in any row; give at least some rows their labels",
                       {"rows_without_labels": (stats or {}).get("rows_without_labels")})


def _stored_labels(value) -> list[str]:
    """Return a canonical row's label list (written by `LabelSetRows`)."""
    if not isinstance(value, list):
        raise PermanentJobError(f"a label cell holds {value!r:.60}, not a list of labels: upload the data again with "
                                f"task={TASK}")
    return [str(label) for label in value]


# ---- labelling: what a set of labels per row means ----------------------------------------------


class MultiLabel(SingleLabel):
    """A set of labels per row: a sigmoid and binary cross-entropy per label, predicted at a threshold."""

    problem_type = MULTI_LABEL_PROBLEM
    eval_metrics = EVAL_METRICS
    min_labels = 1

    def read(self, path: Path, text_column: str, label_column: str, what: str) -> Examples:
        return read_labelled(path, text_column, label_column, what, label_value=_stored_labels)

    def names_in(self, labels: list) -> list[str]:
        return [name for label_set in labels for name in label_set]

    def too_few(self, label_column: str, count: int) -> str:
        return (f"the label column '{label_column}' holds no label in any row of the train dataset; give at least "
                "some rows their labels")

    def target(self, label: Any, label_ids: dict[str, int]) -> list[float]:
        vector = [0.0] * len(label_ids)
        for name in label:
            vector[label_ids[name]] = 1.0
        return vector

    def loss(self, outputs, labels, num_items_in_batch=None):
        # The Trainer counts every (row, label) target of the accumulated batch in num_items_in_batch,
        # so the sum over it is the mean over all of them, whatever gradient_accumulation_steps is.
        import torch.nn.functional as F

        logits = outputs.logits.float()
        labels = labels.to(logits.dtype)
        if num_items_in_batch is None:
            return F.binary_cross_entropy_with_logits(logits, labels)
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / num_items_in_batch

    def step_metrics(self, prediction) -> dict:
        """Score a periodic evaluation at the default threshold (the tuned one is known only at the end)."""
        import numpy as np

        predicted = (1.0 / (1.0 + np.exp(-prediction.predictions)) >= DEFAULT_THRESHOLD).astype(int)
        scores = multi_label_scores(prediction.label_ids.astype(int), predicted)
        return {key: scores[key] for key in EVAL_METRICS if key != "loss"}

    def fitted_metrics(self, model, probabilities, examples: Examples, label_names: list[str], params) -> dict:
        """Fix the model's threshold (tuned on these validation rows, or the job's) and score at it."""
        if params.threshold == "tune":
            threshold, source = tune_threshold(probabilities, examples.labels, label_names), "tuned on validation"
        else:
            threshold, source = float(params.threshold), "job"
        setattr(model.config, THRESHOLD_KEY, threshold)  # saved in config.json with the model
        predicted = above(probabilities, label_names, threshold)
        return self.metrics(examples.labels, predicted, label_names) | {"threshold": threshold,
                                                                         "threshold_source": source}

    def metrics(self, expected: list, predicted: list, label_names: list[str]) -> dict:
        return multi_label_metrics(expected, predicted, label_names)

    def predictor(self, model_dir: str, params: MultiLabelEvaluateParams) -> MultiLabelPredictor:
        return MultiLabelPredictor(
            model_dir, max_length=params.max_length, batch_tokens=params.batch_size * params.max_length,
            max_batch_size=params.batch_size, precision=params.precision,
        ).use_threshold(params.threshold)


MULTI_LABEL = MultiLabel()


def tune_threshold(probabilities, label_sets: list[list[str]], label_names: list[str]) -> float:
    """Return the threshold of THRESHOLD_GRID with the best micro-F1 (ties: the one nearest 0.5).

    Micro-F1 is 2 TP / (predicted + actual positives); sorting every (row, label) score once gives
    TP and the predicted count at each threshold, so the grid costs no pass over the data per value.
    """
    import numpy as np

    from worker.ml.metrics import indicator_matrix

    truth = indicator_matrix(label_sets, label_names).ravel()
    positives = int(truth.sum())
    if positives == 0:
        return DEFAULT_THRESHOLD
    scores = probabilities.float().numpy().ravel().astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    true_positives = np.concatenate([[0], np.cumsum(truth[order])])
    grid = np.array(THRESHOLD_GRID)
    predicted = np.searchsorted(-scores[order], -grid, side="right")  # scores at or above each threshold
    f1 = 2 * true_positives[predicted] / (predicted + positives)
    best = grid[f1 >= f1.max() - 1e-12]
    return float(best[np.argmin(np.abs(best - 0.5))])


def above(probabilities, label_names: list[str], threshold: float) -> list[list[str]]:
    """Return each row's labels at or above `threshold`, likeliest first."""
    return [_chosen(scores, label_names, threshold) for scores in probabilities.tolist()]


def _chosen(scores: list[float], label_names: list[str], threshold: float) -> list[str]:
    picked = sorted((i for i, score in enumerate(scores) if score >= threshold), key=lambda i: -scores[i])
    return [label_names[i] for i in picked]


# ---- fine-tuning, evaluation, batch inference ----------------------------------------------------


def finetune(params: MultiLabelFinetuneParams, **job) -> dict:
    """Fine-tune a multi-label classifier (text classification's loop, with `MULTI_LABEL`); its train
    summary names the threshold stored with the model."""
    outcome = text_classification.finetune(params, labelling=MULTI_LABEL, **job)
    outcome["train"] |= {key: outcome["metrics"][key] for key in ("threshold", "threshold_source")}
    return outcome


def evaluate(model_dir: str, **job) -> dict:
    """Score a multi-label classifier on rows with label sets; multi-label metrics plus "rows" and the threshold."""
    return text_classification.evaluate(model_dir, labelling=MULTI_LABEL, **job)


class MultiLabelPredictor(text_classification.Predictor):
    """Label texts with every label whose probability reaches the threshold."""

    def __init__(self, model_dir: str, **options) -> None:
        super().__init__(model_dir, **options)
        if not is_multi_label(self.model):
            problem = getattr(self.model.config, "problem_type", None)
            raise PermanentJobError(
                f"model '{model_dir}' is not a multi-label classifier (its config's problem_type is {problem!r}, "
                f"not {MULTI_LABEL_PROBLEM!r}): fine-tune it with task={TASK} first, or use it with "
                f"task={text_classification.TASK}", code="wrong_task",
            )
        stored = getattr(self.model.config, THRESHOLD_KEY, None)
        self.threshold, self.threshold_source = (
            (float(stored), "model") if stored is not None else (DEFAULT_THRESHOLD, "default")
        )

    @classmethod
    def for_job(cls, model_dir: str, params: MultiLabelBatchParams) -> MultiLabelPredictor:
        return super().for_job(model_dir, params).use_threshold(params.threshold)

    def use_threshold(self, threshold: float | None) -> MultiLabelPredictor:
        """Decide at the job's threshold instead of the model's, if it gives one."""
        if threshold is not None:
            self.threshold, self.threshold_source = float(threshold), "job"
        return self

    def decide(self, probabilities) -> list[list[str]]:
        return above(probabilities, self.label_names, self.threshold)

    def decision(self) -> dict:
        return {"threshold": self.threshold, "threshold_source": self.threshold_source}

    def row_result(self, scores: list[float]) -> dict:
        return {"labels": _chosen(scores, self.label_names, self.threshold),
                "scores": dict(zip(self.label_names, scores))}


Predictor = MultiLabelPredictor  # the task interface's name for its predictor

"""Classification metrics as plain, JSON-serialisable numbers."""

from __future__ import annotations


def classification_metrics(y_true: list[str], y_pred: list[str], label_names: list[str]) -> dict:
    """Compute accuracy, macro/weighted P/R/F1, per-class scores and the confusion matrix."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    if not y_true or len(y_true) != len(y_pred):
        raise ValueError(f"need equal, non-empty label lists (got {len(y_true)} and {len(y_pred)})")
    labels = list(label_names)
    metrics: dict = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        metrics[f"precision_{average}"] = float(precision)
        metrics[f"recall_{average}"] = float(recall)
        metrics[f"f1_{average}"] = float(f1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    metrics["per_class"] = _per_class(labels, precision, recall, f1, support)
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    metrics["confusion_matrix"] = {"labels": labels, "matrix": [[int(v) for v in row] for row in matrix]}
    metrics["support"] = len(y_true)
    return metrics


def _per_class(labels: list[str], precision, recall, f1, support) -> dict:
    """Each label's precision, recall, F1 and support from scikit-learn's per-label arrays."""
    return {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i])} for i, label in enumerate(labels)}


def indicator_matrix(label_sets: list[list[str]], label_names: list[str]):
    """Return a (rows, labels) 0/1 int array: 1 where a row's set holds that label (others ignored)."""
    import numpy as np

    index = {name: i for i, name in enumerate(label_names)}
    matrix = np.zeros((len(label_sets), len(label_names)), dtype=np.int64)
    for row, labels in enumerate(label_sets):
        for label in labels:
            if label in index:
                matrix[row, index[label]] = 1
    return matrix


def multi_label_metrics(y_true: list[list[str]], y_pred: list[list[str]], label_names: list[str]) -> dict:
    """Compute subset accuracy, Hamming loss, micro/macro/weighted P/R/F1 and per-label scores of label sets."""
    from sklearn.metrics import precision_recall_fscore_support

    if not y_true or len(y_true) != len(y_pred):
        raise ValueError(f"need equal, non-empty label-set lists (got {len(y_true)} and {len(y_pred)})")
    labels = list(label_names)
    expected, predicted = indicator_matrix(y_true, labels), indicator_matrix(y_pred, labels)
    metrics = multi_label_scores(expected, predicted)
    truth, guess, selected = _sklearn_columns(expected, predicted)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, guess, labels=selected, average=None, zero_division=0
    )
    metrics["per_class"] = _per_class(labels, precision, recall, f1, support)
    for i, label in enumerate(labels):
        metrics["per_class"][label]["predicted"] = int(predicted[:, i].sum())
    metrics["support"] = len(y_true)
    return metrics


def multi_label_scores(expected, predicted) -> dict:
    """Score (rows, labels) 0/1 arrays of true and predicted labels.

    Subset accuracy counts a row right only when its whole predicted set is its true set; micro
    averages count every (row, label) decision alike, macro averages weigh every label alike.
    """
    from sklearn.metrics import accuracy_score, hamming_loss, precision_recall_fscore_support

    metrics: dict = {
        "subset_accuracy": float(accuracy_score(expected, predicted)),
        "hamming_loss": float(hamming_loss(expected, predicted)),
    }
    y_true, y_pred, selected = _sklearn_columns(expected, predicted)
    for average in ("micro", "macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=selected, average=average, zero_division=0
        )
        metrics[f"precision_{average}"] = float(precision)
        metrics[f"recall_{average}"] = float(recall)
        metrics[f"f1_{average}"] = float(f1)
    return metrics


def _sklearn_columns(expected, predicted) -> tuple:
    """Return (y_true, y_pred, labels) for sklearn: it reads a single column as a binary target of
    classes 0 and 1, so that one is scored as class 1 alone."""
    if expected.shape[1] == 1:
        return expected[:, 0], predicted[:, 0], [1]
    return expected, predicted, None

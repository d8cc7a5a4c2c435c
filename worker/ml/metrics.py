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
    metrics["per_class"] = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    metrics["confusion_matrix"] = {"labels": labels, "matrix": [[int(v) for v in row] for row in matrix]}
    metrics["support"] = len(y_true)
    return metrics

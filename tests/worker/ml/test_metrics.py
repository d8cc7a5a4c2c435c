import json

import pytest

from worker.ml.metrics import classification_metrics


def test_known_confusion_matrix():
    y_true = ["cat", "cat", "cat", "dog", "dog", "bird"]
    y_pred = ["cat", "cat", "dog", "dog", "cat", "dog"]

    metrics = classification_metrics(y_true, y_pred, ["bird", "cat", "dog"])

    assert metrics["confusion_matrix"] == {
        "labels": ["bird", "cat", "dog"],
        "matrix": [[0, 0, 1], [0, 2, 1], [0, 1, 1]],
    }
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["support"] == 6
    assert metrics["per_class"]["cat"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    # bird is never predicted: zero_division=0 gives 0 instead of a warning and NaN.
    assert metrics["per_class"]["bird"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["precision_macro"] == pytest.approx((0 + 2 / 3 + 1 / 3) / 3)
    assert metrics["recall_weighted"] == pytest.approx(metrics["accuracy"])
    f1 = {"bird": 0.0, "cat": 2 / 3, "dog": 0.4}
    assert metrics["f1_macro"] == pytest.approx(sum(f1.values()) / 3)
    assert metrics["f1_weighted"] == pytest.approx((0 * 1 + 2 / 3 * 3 + 0.4 * 2) / 6)


def test_metrics_are_plain_json():
    metrics = classification_metrics(["a", "b"], ["a", "a"], ["a", "b", "c"])

    assert json.loads(json.dumps(metrics)) == metrics
    assert all(type(v) is float for k, v in metrics.items() if k.endswith(("_macro", "_weighted")))
    assert type(metrics["confusion_matrix"]["matrix"][0][0]) is int
    assert metrics["per_class"]["c"]["support"] == 0


def test_empty_input_is_refused():
    with pytest.raises(ValueError):
        classification_metrics([], [], ["a"])

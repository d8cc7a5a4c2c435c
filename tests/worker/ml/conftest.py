"""Fixtures for the ML tests: a tiny classifier built once, small JSONL datasets."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

# Never reach for the model hub: a missing model must fail at once, not after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tests.tiny_models import build_tiny_classifier  # noqa: E402

POSITIVE_WORDS = ["good", "great", "nice", "lovely", "excellent", "wonderful", "happy", "fine"]
NEGATIVE_WORDS = ["bad", "awful", "terrible", "horrible", "poor", "sad", "ugly", "nasty"]
FILLER_WORDS = ["the", "movie", "was", "and", "food", "room", "day", "service"]


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """A tiny untrained BERT classifier with its tokenizer, saved once per session."""
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier"))


def make_sentiment_rows(count: int, *, seed: int = 0) -> list[dict]:
    """Make `count` rows of easy synthetic sentiment text, alternating positive and negative."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.sample(POSITIVE_WORDS if label == "positive" else NEGATIVE_WORDS, 3)
        words += rng.sample(FILLER_WORDS, rng.randint(0, 6))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows as a canonical JSON Lines dataset."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sentiment_rows():
    """The synthetic sentiment row maker, as a fixture (test modules do not import conftest)."""
    return make_sentiment_rows


@pytest.fixture(scope="session")
def write_jsonl():
    """The JSON Lines writer, as a fixture."""
    return write_rows


@pytest.fixture
def sentiment_data(tmp_path) -> Path:
    """A 60-row train file of synthetic sentiment text."""
    return write_rows(tmp_path / "train.jsonl", make_sentiment_rows(60))

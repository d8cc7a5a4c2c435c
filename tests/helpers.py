"""Small helpers shared by the end-to-end and failure tests."""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path

WORDS = {
    "pos": "good great lovely excellent superb wonderful happy fine".split(),
    "neg": "bad awful terrible poor horrible sad broken nasty".split(),
}


def write_reviews(path: Path, rows: int, *, seed: int, labelled: bool = True, blank_rows=frozenset()) -> Path:
    """Write a synthetic sentiment CSV (`id,text[,label]`); rows in `blank_rows` get a blank text."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"] if labelled else ["id", "text"])
        for i in range(rows):
            label = rng.choice(["pos", "neg"])
            text = " " if i in blank_rows else " ".join(rng.choices(WORDS[label], k=rng.randint(2, 12)))
            writer.writerow([f"r{i}", text, label] if labelled else [f"r{i}", text])
    return path


def wait_until(predicate, *, timeout: float, message: str, interval: float = 0.2):
    """Poll `predicate` until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting until {message}")

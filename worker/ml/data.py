"""Reading labelled examples from canonical JSON Lines datasets, with errors users can act on."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from worker.errors import PermanentJobError

MAX_ROWS_NAMED = 5


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
    """Texts and their labels, row for row (a label, or a list of labels for multi-label data)."""

    texts: list[str]
    labels: list[Any]


def read_labelled(
    path: Path, text_column: str, label_column: str, what: str, *, label_value: Callable[[Any], Any] = str
) -> Examples:
    """Read texts and labels; `label_value` turns a stored label into the task's (default: its string)."""
    rows = read_rows(path)
    if not rows:
        raise PermanentJobError(f"the {what} dataset has no rows: upload a file with labelled examples")
    return Examples(_column(rows, text_column, what, "text"), _column(rows, label_column, what, "label", label_value))


def _column(rows: list[dict], column: str, what: str, role: str, convert: Callable[[Any], Any] = str) -> list:
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
    return [convert(value) for value in values]


def split_examples(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    order = list(range(len(examples.texts)))
    random.Random(seed).shuffle(order)
    held_out = min(len(order) - 1, max(1, round(len(order) * fraction)))

    def pick(indices: list[int]) -> Examples:
        return Examples([examples.texts[i] for i in indices], [examples.labels[i] for i in indices])

    return pick(order[held_out:]), pick(order[:held_out])


def check_labels(label_names: list[str], labels: list[str], message: str) -> None:
    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise PermanentJobError(f"{message}: {', '.join(map(repr, unknown[:20]))}")

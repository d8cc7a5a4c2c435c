"""How a batch-inference job sizes the chunks it commits, and assembles them (with an earlier job's output)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from worker.jobs.inference import (
    CHUNK_SECONDS,
    FIRST_CHUNK_ROWS,
    MAX_CHUNK_ROWS,
    _assemble,
    _ChunkSizes,
    _row_of,
)


def test_a_fixed_chunk_size_is_kept():
    sizes = _ChunkSizes(500)
    sizes.measured(500, 0.01)
    assert sizes.next() == 500


def test_chunks_are_sized_to_take_about_chunk_seconds():
    sizes = _ChunkSizes(None)
    assert sizes.next() == FIRST_CHUNK_ROWS
    sizes.measured(FIRST_CHUNK_ROWS, FIRST_CHUNK_ROWS / 100)  # 100 rows/s
    assert sizes.next() == int(100 * CHUNK_SECONDS)
    sizes.measured(3000, 3000 / 2)  # a slow stretch: 2 rows/s
    assert sizes.next() == FIRST_CHUNK_ROWS  # never below the first size
    sizes.measured(256, 0.0001)  # very fast
    assert sizes.next() == MAX_CHUNK_ROWS


def _files(done: dict) -> list[Path]:
    return [Path(done[index][0]) for index in sorted(done)]


def _write(path, rows, **fields) -> str:
    path.write_text("".join(json.dumps({"row": row, **fields}) + "\n" for row in rows))
    return str(path)


def test_a_retry_merges_its_fixed_rows_into_the_earlier_predictions_in_row_order(tmp_path):
    """The earlier job predicted rows 0-9 but 2, 5 and 9; the retry fixes 2 and 9, and 5 fails again."""
    base = tmp_path / "earlier.jsonl"
    _write(base, [0, 1, 3, 4, 6, 7, 8], label="old")
    base.write_text(base.read_text().replace('{"row": 8, ', '{"id": "r8", "row": 8, '))  # "row" not first
    (tmp_path / "chunks").mkdir()
    first = _write(tmp_path / "chunks" / "000000.jsonl", [2], label="new")
    _write(tmp_path / "chunks" / "000000.errors.jsonl", [5], error="empty text")
    second = _write(tmp_path / "chunks" / "000001.jsonl", [9], label="new")
    _write(tmp_path / "chunks" / "000001.errors.jsonl", [])
    done = {0: (first, 1, 1, 5), 1: (second, 1, 0, 9)}

    predictions, errors = _assemble(tmp_path, _files(done), base=base)

    lines = [json.loads(line) for line in predictions.open()]
    assert [(line["row"], line["label"]) for line in lines] == [
        (0, "old"), (1, "old"), (2, "new"), (3, "old"), (4, "old"), (6, "old"), (7, "old"), (8, "old"), (9, "new")]
    assert lines[7]["id"] == "r8"
    assert [json.loads(line)["row"] for line in errors.open()] == [5]
    plain, _ = _assemble(tmp_path, _files(done))  # no earlier job: the chunks alone, as before
    assert [json.loads(line)["row"] for line in plain.open()] == [2, 9]


def test_the_merge_streams_a_large_output(tmp_path):
    rows = 200_000
    base = tmp_path / "earlier.jsonl"
    _write(base, range(0, rows, 2), label="pos", score=0.75)
    (tmp_path / "chunks").mkdir()
    done = {}
    for index, start in enumerate(range(1, rows, 20_000)):
        path = _write(tmp_path / "chunks" / f"{index:06d}.jsonl", range(start, start + 20_000, 2), label="neg")
        _write(tmp_path / "chunks" / f"{index:06d}.errors.jsonl", [])
        done[index] = (path, 10_000, 0, start + 19_998)
    tracemalloc.start()
    try:
        predictions, _ = _assemble(tmp_path, _files(done), base=base)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak  # the output is several MB; the merge holds a line per file
    with predictions.open("rb") as lines:
        assert [_row_of(line) for line in lines] == list(range(rows))

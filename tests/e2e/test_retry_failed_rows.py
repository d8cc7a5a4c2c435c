"""Retry only the failed rows of a batch job after a data fix: HTTP -> a real worker -> merged output files.

The first job's rows with a blank text fail ("empty text"); a corrected copy of the dataset fills most of
them in, and the retry reads just the failed rows from it and merges their predictions into the first
job's. A second retry of the retry, on a copy with every row filled, leaves no row failing.
"""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import write_reviews

pytestmark = pytest.mark.slow

ROWS = 300
BLANK = frozenset(range(3, ROWS, 7))  # 43 rows: three chunks of 16 in the retry
STILL_BLANK = frozenset(sorted(BLANK)[5:8])


def _filled(src, dest, keep_blank=frozenset()):
    """Copy the CSV at `src` with each blank text filled in, but for the rows in `keep_blank`: a data fix."""
    with open(src, newline="") as inp, open(dest, "w", newline="") as out:
        rows = list(csv.reader(inp))
        writer = csv.writer(out)
        writer.writerow(rows[0])
        for index, (row_id, text) in enumerate(rows[1:]):
            writer.writerow([row_id, text if text.strip() or index in keep_blank else f"a fine film number {index}"])
    return dest


def _lines(client, job_id, dest, errors=False):
    return [json.loads(line) for line in client.download_output(job_id, dest, errors=errors).open()]


def test_retry_of_failed_rows_after_a_data_fix_merges_one_line_per_row_in_order(system, tiny_model, tmp_path):
    client, _settings, _stack = system
    original = write_reviews(tmp_path / "docs.csv", ROWS, seed=3, labelled=False, blank_rows=BLANK)
    docs = client.upload_dataset(original, text_column="text")
    first = client.wait(client.submit("batch_inference", {"model": str(tiny_model), "dataset_id": docs["id"],
                                                          "chunk_rows": 64})["id"], timeout=180)
    assert first["status"] == "succeeded", first["error"]
    assert (first["result"]["rows_ok"], first["result"]["rows_failed"]) == (ROWS - len(BLANK), len(BLANK))
    earlier = _lines(client, first["id"], tmp_path / "first.jsonl")

    fixed = client.upload_dataset(_filled(original, tmp_path / "fixed.csv", STILL_BLANK), text_column="text")
    retry = client.retry(first["id"], only_failed_rows=True, params={"dataset_id": fixed["id"], "chunk_rows": 16})
    assert retry["params"]["only_failed_rows_of"] == first["id"]
    retry = client.wait(retry["id"], timeout=180)

    assert retry["status"] == "succeeded", retry["error"]
    fixed_rows = BLANK - STILL_BLANK
    assert retry["progress"]["done"] == retry["progress"]["total"] == len(BLANK)  # only the failed rows were read
    assert {k: retry["result"][k] for k in ("rows", "rows_ok", "rows_failed", "rows_retried", "rows_fixed",
                                            "rows_still_failing")} == {
        "rows": ROWS, "rows_ok": ROWS - len(STILL_BLANK), "rows_failed": len(STILL_BLANK),
        "rows_retried": len(BLANK), "rows_fixed": len(fixed_rows), "rows_still_failing": len(STILL_BLANK)}
    merged = _lines(client, retry["id"], tmp_path / "merged.jsonl")
    errors = _lines(client, retry["id"], tmp_path / "errors.jsonl", errors=True)
    assert [line["row"] for line in merged] == [i for i in range(ROWS) if i not in STILL_BLANK]  # input order
    assert [(e["row"], e["id"], e["error"]) for e in errors] == [(i, f"r{i}", "empty text") for i in sorted(STILL_BLANK)]
    by_row = {line["row"]: line for line in merged}
    assert [by_row[line["row"]] for line in earlier] == earlier  # the first job's lines, as they were
    for row in fixed_rows:
        assert by_row[row]["id"] == f"r{row}" and by_row[row]["label"] in first["result"]["label_names"]
        assert abs(sum(by_row[row]["probabilities"].values()) - 1) < 1e-4
    logs = [e["message"] for e in client.events(retry["id"], type="log")["items"]]
    assert f"retry of the failed rows of job {first['id']}" in logs
    assert f"retrying the {len(BLANK)} failed rows of job {first['id']}" in logs

    # The retry's output is a whole output: its own failed rows can be retried in turn.
    complete = client.upload_dataset(_filled(original, tmp_path / "complete.csv"), text_column="text")
    last = client.wait(client.retry(retry["id"], only_failed_rows=True, params={"dataset_id": complete["id"]})["id"],
                       timeout=180)
    assert last["status"] == "succeeded", last["error"]
    assert (last["result"]["rows_retried"], last["result"]["rows_fixed"], last["result"]["rows_failed"]) == (
        len(STILL_BLANK), len(STILL_BLANK), 0)
    assert [line["row"] for line in _lines(client, last["id"], tmp_path / "last.jsonl")] == list(range(ROWS))
    assert _lines(client, last["id"], tmp_path / "last-errors.jsonl", errors=True) == []

"""Plain-text (.txt) uploads: documents between blank lines, or one per line, in a `text` column."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from worker.datafiles import DataFileError, detect_format, ingest, iter_rows


def documents(tmp_path: Path, data: bytes, **schema) -> list[str]:
    dest = tmp_path / "canonical.jsonl"
    result = ingest(io.BytesIO(data), fmt="text", dest=dest, **schema)
    rows = [row for _, row in iter_rows(dest)]
    assert result.row_count == len(rows) and result.columns == ["text"]
    return [row["text"] for row in rows]


def test_txt_files_are_plain_text():
    assert detect_format("corpus.txt", None) == "text"
    assert detect_format("notes", "text") == "text"


def test_a_file_without_blank_lines_holds_one_document_per_line(tmp_path):
    # Blank lines before the first and after the last text separate nothing.
    assert documents(tmp_path, b"\n  \nfirst doc\nsecond doc\r\nthird doc\n\n\n") == ["first doc", "second doc", "third doc"]


def test_blank_lines_separate_documents_whose_lines_are_joined(tmp_path):
    data = b"A wrapped paragraph\nthat goes on.\n\nSecond one.\n \t\n\n\nThird\nparagraph\n"
    assert documents(tmp_path, data) == ["A wrapped paragraph\nthat goes on.", "Second one.", "Third\nparagraph"]


def test_a_long_file_of_lines_spills_to_disk_and_keeps_every_line(tmp_path, monkeypatch):
    monkeypatch.setattr("worker.datafiles.TEXT_SPOOL_BYTES", 64)
    lines = [f"document number {i} with some words" for i in range(500)]
    assert documents(tmp_path, "\n".join(lines).encode()) == lines


def test_a_first_line_of_json_is_still_text(tmp_path):
    assert documents(tmp_path, b'{"text": "x"}\nplain\n') == ['{"text": "x"}', "plain"]


def test_empty_and_non_utf8_text_files_are_refused(tmp_path):
    with pytest.raises(DataFileError) as empty:
        documents(tmp_path, b"\n \n\n")
    assert empty.value.code == "empty_file"
    with pytest.raises(DataFileError) as junk:
        documents(tmp_path, b"fine\n\xff\xfe broken\n")
    assert junk.value.code == "not_utf8" and junk.value.details["line"] == 2


def test_a_label_column_a_text_file_lacks_is_named(tmp_path):
    with pytest.raises(DataFileError) as missing:
        documents(tmp_path, b"good\nbad\n", text_column="text", label_column="label")
    assert missing.value.code == "missing_column" and "Column 'label'" in missing.value.message
    assert json.loads(json.dumps(missing.value.details))["available_columns"] == ["text"]

"""Streaming ingest of dataset uploads: every format, every refusal, and bounded memory."""

from __future__ import annotations

import hashlib
import io
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.datafiles import (
    DataFileError,
    TextRows,
    count_rows,
    detect_format,
    ingest,
    iter_rows,
)

SMALL_CSV = b"text,label\nI love it,pos\nNot great at all,neg\nFine,pos\n"


def run_ingest(tmp_path: Path, data: bytes, fmt: str = "csv", **mapping):
    """Ingest bytes into tmp_path and return the result with the canonical rows."""
    mapping.setdefault("text_column", "text")
    mapping.setdefault("label_column", "label")
    dest = tmp_path / "canonical.jsonl"
    result = ingest(io.BytesIO(data), fmt=fmt, dest=dest, **mapping)
    return result, [row for _, row in iter_rows(dest)]


def refusal(tmp_path: Path, data: bytes, fmt: str = "csv", **mapping) -> DataFileError:
    """Ingest bytes that must be refused and return the error."""
    with pytest.raises(DataFileError) as info:
        run_ingest(tmp_path, data, fmt, **mapping)
    return info.value


def parquet_bytes(table: pa.Table) -> bytes:
    """Write a table to Parquet in memory."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


# Formats


@pytest.mark.parametrize(
    ("filename", "declared", "expected"),
    [
        ("train.csv", None, "csv"),
        ("TRAIN.TSV", None, "tsv"),
        ("data.tab", None, "tsv"),
        ("data.jsonl", None, "jsonl"),
        ("data.ndjson", None, "jsonl"),
        ("data.json", None, "jsonl"),
        ("data.parquet", None, "parquet"),
        ("data.csv", "parquet", "parquet"),
        (None, "JSONL", "jsonl"),
        ("noext", "tsv", "tsv"),
    ],
)
def test_detect_format_prefers_declared_then_extension(filename, declared, expected):
    assert detect_format(filename, declared) == expected


@pytest.mark.parametrize(
    ("filename", "declared"), [("data.xlsx", None), (None, None), ("a.csv", "xml")]
)
def test_detect_format_refuses_unknown(filename, declared):
    with pytest.raises(DataFileError) as info:
        detect_format(filename, declared)
    assert info.value.code == "unsupported_format"
    assert "csv" in info.value.message


def test_ingest_refuses_unknown_format(tmp_path):
    assert refusal(tmp_path, SMALL_CSV, fmt="xlsx").code == "unsupported_format"


def test_csv_is_written_as_canonical_json_lines(tmp_path):
    result, rows = run_ingest(tmp_path, SMALL_CSV)
    assert result.row_count == 3
    assert result.columns == ["text", "label"]
    assert rows == [
        {"text": "I love it", "label": "pos"},
        {"text": "Not great at all", "label": "neg"},
        {"text": "Fine", "label": "pos"},
    ]
    assert count_rows(tmp_path / "canonical.jsonl") == 3


def test_tsv_keeps_commas_in_text(tmp_path):
    data = b"id\ttext\tlabel\n1\tgood, cheap, fast\tpos\n2\tslow\tneg\n"
    result, rows = run_ingest(tmp_path, data, fmt="tsv")
    assert result.columns == ["id", "text", "label"]
    assert rows[0] == {"id": "1", "text": "good, cheap, fast", "label": "pos"}


def test_jsonl_values_become_strings_and_missing_keys_null(tmp_path):
    lines = [
        {"text": "first", "label": 1, "flag": True, "score": 0.5, "note": None},
        {"text": "second", "label": 0, "flag": False, "meta": {"a": [1, 2]}},
    ]
    data = ("\n".join(json.dumps(line) for line in lines) + "\n\n").encode()
    result, rows = run_ingest(tmp_path, data, fmt="jsonl")
    assert result.columns == ["text", "label", "flag", "score", "note", "meta"]
    assert rows[0] == {"text": "first", "label": "1", "flag": "true", "score": "0.5", "note": None}
    assert rows[1]["label"] == "0"
    assert rows[1]["flag"] == "false"
    assert rows[1]["score"] is None and rows[1]["note"] is None
    assert json.loads(rows[1]["meta"]) == {"a": [1, 2]}


def test_parquet_is_read_batch_by_batch(tmp_path):
    table = pa.table(
        {
            "sentence": ["good", "bad", "fine"],
            "target": [1, 0, 1],
            "extra": [None, "x", "y"],
        }
    )
    result, rows = run_ingest(
        tmp_path, parquet_bytes(table), fmt="parquet", text_column="sentence", label_column="target"
    )
    assert result.row_count == 3
    assert result.columns == ["sentence", "target", "extra"]
    assert rows[0] == {"sentence": "good", "target": "1", "extra": None}
    assert result.stats["label_distribution"] == {"1": 2, "0": 1}


def test_parquet_from_unseekable_stream(tmp_path):
    data = parquet_bytes(pa.table({"text": ["a", "b"], "label": ["x", "y"]}))

    class Unseekable(io.BytesIO):
        def seekable(self):
            return False

    dest = tmp_path / "out.jsonl"
    result = ingest(
        Unseekable(data), fmt="parquet", dest=dest, text_column="text", label_column="label"
    )
    assert result.row_count == 2
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_column_mapping_and_unlabelled_upload(tmp_path):
    data = b"review,sentiment\nGreat shop,positive\nAwful app,negative\n"
    result, rows = run_ingest(tmp_path, data, text_column="review", label_column=None)
    assert rows[1] == {"review": "Awful app", "sentiment": "negative"}
    assert "label_distribution" not in result.stats
    assert result.stats["num_labels"] == 0


def test_sha256_is_of_the_raw_bytes(tmp_path):
    for data, fmt in [
        (SMALL_CSV, "csv"),
        (b'{"text": "a", "label": "b"}\n', "jsonl"),
        (parquet_bytes(pa.table({"text": ["a"], "label": ["b"]})), "parquet"),
    ]:
        result, _ = run_ingest(tmp_path, data, fmt=fmt)
        assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_utf8_bom_is_dropped_from_the_header(tmp_path):
    data = b"\xef\xbb\xbf" + "text,label\ncaf\u00e9 cr\u00e8me,pos\n".encode()
    result, rows = run_ingest(tmp_path, data)
    assert result.columns == ["text", "label"]
    assert rows == [{"text": "caf\u00e9 cr\u00e8me", "label": "pos"}]
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_quoted_newlines_and_quotes_in_csv(tmp_path):
    data = b'text,label\n"line one\nline two, with comma",pos\n"she said ""hi""",neg\r\n'
    result, rows = run_ingest(tmp_path, data)
    assert result.row_count == 2
    assert rows[0]["text"] == "line one\nline two, with comma"
    assert rows[1]["text"] == 'she said "hi"'


def test_labels_are_stripped_and_header_names_trimmed(tmp_path):
    _, rows = run_ingest(tmp_path, b"text, label\nhello, pos \n")
    assert rows == [{"text": "hello", "label": "pos"}]


def test_stats_on_a_known_file(tmp_path):
    texts = ["a" * n for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)]
    labels = ["x"] * 6 + ["y"] * 3 + ["z"]
    data = "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(texts, labels))
    result, _ = run_ingest(tmp_path, data.encode())
    assert result.stats == {
        "label_distribution": {"x": 6, "y": 3, "z": 1},
        "num_labels": 3,
        "text_length_chars": {"min": 1, "p50": 5, "p90": 9, "p99": 10, "max": 10, "mean": 5.5,
                              "histogram": {"edges": [0, 8, 16], "counts": [7, 3]}},  # 1..7, then 8..10
    }


def test_iter_rows_starts_at_an_index(tmp_path):
    run_ingest(tmp_path, SMALL_CSV)
    rows = list(iter_rows(tmp_path / "canonical.jsonl", start=1))
    assert [index for index, _ in rows] == [1, 2]
    assert rows[0][1]["text"] == "Not great at all"


def test_iter_rows_picks_only_the_rows_asked_for_in_order(tmp_path):
    path = tmp_path / "canonical.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(10)))
    assert [(i, row["text"]) for i, row in iter_rows(path, only=iter([1, 4, 9]))] == [(1, "t1"), (4, "t4"), (9, "t9")]
    assert [i for i, _ in iter_rows(path, start=5, only=[1, 4, 6, 9])] == [6, 9]  # a resumed job's rest
    assert list(iter_rows(path, only=[])) == []
    with pytest.raises(ValueError, match="ascend"):
        list(iter_rows(path, only=[4, 2]))
    with pytest.raises(ValueError, match="row 12 is past the end"):
        list(iter_rows(path, only=[3, 12]))


# Refusals


def test_unterminated_quote_names_the_row(tmp_path):
    error = refusal(tmp_path, b'text,label\nok,pos\n"never closed,neg\nmore,pos\n')
    assert error.code == "malformed_csv"
    assert "Row 2" in error.message
    assert error.details["row"] == 2


def test_wrong_field_count_names_row_and_line(tmp_path):
    error = refusal(tmp_path, b'text,label\n"two\nlines",pos\na,b,c\n')
    assert error.code == "malformed_csv"
    assert "Row 2 (line 4)" in error.message
    assert "3 fields" in error.message
    assert error.details == {"row": 2, "line": 4}


def test_duplicate_header_is_refused(tmp_path):
    error = refusal(tmp_path, b"text,text,label\na,b,c\n")
    assert error.code == "malformed_csv"
    assert "'text'" in error.message


def test_missing_column_lists_available_columns(tmp_path):
    error = refusal(tmp_path, b"review,sentiment\nnice,pos\n")
    assert error.code == "missing_column"
    assert "'text'" in error.message
    assert "review, sentiment" in error.message
    assert "text_column=... label_column=..." in error.message
    assert error.details["available_columns"] == ["review", "sentiment"]


def test_missing_label_column_in_jsonl(tmp_path):
    error = refusal(tmp_path, b'{"text": "a", "y": "b"}\n', fmt="jsonl")
    assert error.code == "missing_column"
    assert error.details == {
        "column": "label",
        "role": "label_column",
        "available_columns": ["text", "y"],
    }


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", "csv"),
        (b"\n\n", "csv"),
        (b"text,label\n", "csv"),
        (b"\xef\xbb\xbftext,label\r\n\r\n", "csv"),
        (b"", "jsonl"),
        (b"\n  \n", "jsonl"),
        (b"", "parquet"),
    ],
)
def test_empty_files_are_refused(tmp_path, data, fmt):
    assert refusal(tmp_path, data, fmt).code == "empty_file"


def test_header_only_parquet_is_empty(tmp_path):
    table = pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())})
    assert refusal(tmp_path, parquet_bytes(table), "parquet").code == "empty_file"


def test_invalid_utf8_names_row_and_offset(tmp_path):
    data = b"text,label\nfine,pos\ncaf\xe9,neg\n"
    error = refusal(tmp_path, data)
    assert error.code == "not_utf8"
    assert error.details == {"row": 2, "line": 3, "byte_offset": data.index(b"\xe9")}
    assert "row 2" in error.message and "UTF-8" in error.message


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b'{"text": "a", "label": "b"', "not valid JSON"),
        (b'["a", "b"]', "JSON list, not an object"),
    ],
)
def test_malformed_json_names_the_line(tmp_path, line, fragment):
    data = b'{"text": "ok", "label": "b"}\n\n' + line + b"\n"
    error = refusal(tmp_path, data, "jsonl")
    assert error.code == "malformed_json"
    assert "Line 3 (row 2)" in error.message
    assert fragment in error.message
    assert error.details == {"row": 2, "line": 3}


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_text_names_row_and_column(tmp_path, text):
    data = b'{"text": "ok", "label": "b"}\n' + json.dumps({"text": text, "label": "b"}).encode()
    error = refusal(tmp_path, data, "jsonl")
    assert error.code == "empty_text"
    assert "Row 2" in error.message and "'text'" in error.message
    assert error.details["row"] == 2 and error.details["column"] == "text"


def test_unlabelled_data_keeps_blank_texts_for_the_batch_job_to_report(tmp_path):
    dest = tmp_path / "out.jsonl"
    data = b'{"id": 1, "text": "ok"}\n{"id": 2, "text": "  "}\n{"id": 3}\n'
    result = ingest(io.BytesIO(data), fmt="jsonl", dest=dest, text_column="text", label_column=None)
    assert result.row_count == 3
    assert [row.get("text") for _, row in iter_rows(dest)] == ["ok", "  ", ""]


def test_empty_text_in_csv(tmp_path):
    error = refusal(tmp_path, b"text,label\nok,pos\n  ,neg\n")
    assert error.code == "empty_text"
    assert error.details == {"row": 2, "column": "text", "line": 3}


def test_structured_text_is_refused(tmp_path):
    error = refusal(tmp_path, b'{"text": ["a", "b"], "label": "x"}\n', "jsonl")
    assert error.code == "bad_text"


@pytest.mark.parametrize(
    ("label", "fragment"),
    [
        (["a", "b"], "one label per row"),
        ({"a": 1}, "one label per row"),
        (None, "has no label"),
        ("  ", "has no label"),
        ("x" * 201, "at most 200 characters"),
    ],
)
def test_bad_labels_name_row_and_column(tmp_path, label, fragment):
    data = b'{"text": "ok", "label": "b"}\n' + json.dumps({"text": "t", "label": label}).encode()
    error = refusal(tmp_path, data, "jsonl")
    assert error.code == "bad_label"
    assert fragment in error.message
    assert "Row 2" in error.message and "'label'" in error.message
    assert error.details["row"] == 2 and error.details["column"] == "label"


def test_multi_valued_label_string_is_one_label(tmp_path):
    result, rows = run_ingest(tmp_path, b'text,label\nhi,"a,b"\n')
    assert rows[0]["label"] == "a,b"
    assert result.stats["num_labels"] == 1


def test_label_length_limit_is_configurable(tmp_path):
    with pytest.raises(DataFileError) as info:
        ingest(io.BytesIO(b"text,label\nhi,abcdef\n"), fmt="csv", dest=tmp_path / "out.jsonl",
               schema=TextRows("text", "label", max_label_chars=5))
    error = info.value
    assert error.code == "bad_label"
    assert error.details["max_chars"] == 5


def test_empty_label_in_csv(tmp_path):
    error = refusal(tmp_path, b"text,label\nhi,pos\nthere,\n")
    assert error.code == "bad_label"
    assert error.details == {"row": 2, "column": "label", "line": 3}


def test_garbage_parquet_is_refused(tmp_path):
    error = refusal(tmp_path, b"PAR1 this is not parquet at all", "parquet")
    assert error.code == "malformed_parquet"


def test_parquet_list_label_is_refused(tmp_path):
    table = pa.table({"text": ["a", "b"], "label": [["x"], ["y", "z"]]})
    error = refusal(tmp_path, parquet_bytes(table), "parquet")
    assert error.code == "bad_label"
    assert error.details["row"] == 1


# Scale


def test_large_csv_streams_in_bounded_memory(tmp_path):
    source = tmp_path / "big.csv"
    rows = 200_000
    with open(source, "w", encoding="utf-8", newline="") as out:
        out.write("id,text,label\n")
        for i in range(rows):
            out.write(f'{i},"review number {i}, which says the product was fine",l{i % 7}\n')
    dest = tmp_path / "big.jsonl"
    tracemalloc.start()
    try:
        with open(source, "rb") as src:
            result = ingest(src, fmt="csv", dest=dest, text_column="text", label_column="label")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.row_count == rows
    assert count_rows(dest) == rows
    assert result.stats["num_labels"] == 7
    assert result.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert peak < 50 * 1024 * 1024


# The demo files the project ships


DEMO = Path(__file__).resolve().parents[2] / "nightshift" / "demo_data"


def test_demo_reviews_ingest_balanced(tmp_path):
    with open(DEMO / "reviews.csv", "rb") as src:
        result = ingest(
            src, fmt="csv", dest=tmp_path / "r.jsonl",
            text_column="review", label_column="sentiment",
        )
    assert result.row_count == 600
    assert result.stats["label_distribution"] == {"negative": 300, "positive": 300}


def test_demo_documents_ingest_unlabelled(tmp_path):
    with open(DEMO / "documents.jsonl", "rb") as src:
        result = ingest(
            src, fmt="jsonl", dest=tmp_path / "d.jsonl", text_column="text", label_column=None
        )
    assert result.row_count == 2000
    assert result.columns == ["id", "text"]


def test_overlong_line_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("worker.datafiles.MAX_LINE_BYTES", 32)
    error = refusal(tmp_path, b"text,label\nshort,a\n" + b"x" * 40 + b",b\n")
    assert error.code == "line_too_long"
    assert error.details == {"line": 3}

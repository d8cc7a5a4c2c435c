"""Uploads the API refuses: each says what to fix, and leaves no row and no file behind."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.api.helpers import API, assert_error, dataset_ids, files_under, upload

PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00"


def _parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def _jsonl(*rows: dict) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


LABELLED = {"label_column": "label"}
NER = {"task": "token-classification"}

# (id, filename, content, form fields, code, what the message must name)
REJECTED = [
    ("csv-extra-field", "d.csv", b"text,label\nok,pos\ntoo,many,fields\n", LABELLED, "malformed_csv", ["Row 2"]),
    ("csv-unclosed-quote", "d.csv", b'text,label\nok,pos\n"never closed,neg\n', LABELLED, "malformed_csv", ["Row 2"]),
    ("csv-duplicate-header", "d.csv", b"text,text\na,b\n", {}, "malformed_csv", ["'text'"]),
    ("json-bad-line", "d.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", label: y}\n', LABELLED,
     "malformed_json", ["Line 2"]),
    ("json-array", "d.jsonl", b'[{"text": "a", "label": "x"}]\n', LABELLED, "malformed_json", ["Line 1"]),
    ("missing-text-column", "d.csv", b"review,sentiment\nhello,pos\n", {}, "missing_column",
     ["'text'", "review, sentiment"]),
    ("misnamed-label-column", "d.csv", b"text,sentiment\nhello,pos\n", LABELLED, "missing_column",
     ["'label'", "text, sentiment"]),
    ("misnamed-parquet-column", "d.parquet", _parquet([{"body": "hi", "label": "a"}]), LABELLED, "missing_column",
     ["'text'", "body, label"]),
    ("empty-csv", "d.csv", b"", {}, "empty_file", []),
    ("empty-jsonl", "d.jsonl", b"", {}, "empty_file", []),
    ("empty-parquet", "d.parquet", b"", {}, "empty_file", []),
    ("blank-lines-jsonl", "d.jsonl", b"\n\n  \n", {}, "empty_file", []),
    ("header-only-csv", "d.csv", b"text,label\n", LABELLED, "empty_file", []),
    ("header-only-tsv", "d.tsv", b"text\tlabel\r\n", LABELLED, "empty_file", []),
    ("latin-1-csv", "d.csv", b"text,label\ncaf\xe9,pos\n", LABELLED, "not_utf8", ["Line 2", "UTF-8"]),
    ("latin-1-jsonl", "d.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', {}, "not_utf8", ["Line 2"]),
    ("binary-as-csv", "d.csv", PNG_HEADER * 50, {}, "not_utf8", ["Line 1"]),
    ("binary-as-jsonl", "d.jsonl", PNG_HEADER * 50, {}, "not_utf8", ["Line 1"]),
    ("binary-as-parquet", "d.parquet", PNG_HEADER * 50, {}, "malformed_parquet", ["Parquet"]),
    ("label-is-a-list", "d.jsonl", _jsonl({"text": "a", "label": "x"}, {"text": "b", "label": ["x", "y"]}), LABELLED,
     "bad_label", ["Row 2", "'label'", "one label per row"]),
    ("parquet-label-list", "d.parquet", _parquet([{"text": "a", "label": ["x", "y"]}]), LABELLED, "bad_label",
     ["Row 1", "'label'"]),
    ("label-missing", "d.csv", b"text,label\nhello,pos\nworld,\n", LABELLED, "bad_label", ["Row 2", "'label'"]),
    ("text-blank", "d.csv", b"text,label\nhello,pos\n   ,neg\n", LABELLED, "empty_text", ["Row 2", "'text'"]),
    ("text-absent-in-row", "d.jsonl", _jsonl({"text": "a", "label": "x"}, {"body": "b"}), LABELLED, "empty_text", ["Row 2", "'text'"]),
    ("text-is-an-object", "d.jsonl", _jsonl({"text": {"en": "hi"}}), {}, "bad_text", ["Row 1", "'text'"]),
    ("unsupported-extension", "data.xlsx", b"PK\x03\x04", {}, "unsupported_format", ["data.xlsx", ".csv"]),
    ("no-extension", "data", b"text\nhi\n", {}, "unsupported_format", ["'data'"]),
    ("unsupported-declared-format", "d.csv", b"text\nhi\n", {"format": "xml"}, "unsupported_format", ["'xml'"]),
    ("nul-in-label", "d.csv", b"text,label\nhello,p\x00s\n", LABELLED, "bad_label", ["NUL"]),
    ("nul-in-column-name", "d.csv", b"text,la\x00bel\nhello,pos\n", {}, "bad_column_name", ["NUL"]),
    ("nul-in-name", "d.csv", b"text\nhello\n", {"name": "a\x00b"}, "invalid_input", ["name", "NUL"]),
    ("overlong-text-column", "d.csv", b"text\nhello\n", {"text_column": "t" * 201}, "invalid_input",
     ["text_column", "200"]),
    ("unknown-task", "d.csv", b"text\nhello\n", {"task": "poetry"}, "unknown_task", ["'poetry'", "token-classification"]),
    ("conll-i-after-o", "d.conll", b"Alice\tB-PER\n\nin\tO\nYork\tI-LOC\n", NER, "bad_tag",
     ["Row 2 (line 3)", "'I-LOC'", "token 2 ('York')", "B-LOC"]),
    ("conll-no-tag", "d.conll", b"Alice\tB-PER\nvisited\n", NER, "malformed_conll", ["Line 2", "tab or spaces"]),
    ("conll-not-a-tag", "d.conll", b"Alice\tPERSON\n", NER, "bad_tag", ["Row 1", "'PERSON'", "B-TYPE"]),
    ("ner-count-mismatch", "d.jsonl", _jsonl({"tokens": ["a", "b"], "tags": ["O"]}), NER, "tag_count_mismatch",
     ["Row 1", "1 tags for 2 tokens"]),
    ("ner-misnamed-tags", "d.jsonl", _jsonl({"tokens": ["a"], "ner": ["O"]}), NER, "missing_column",
     ["'tags'", "tags_column", "tokens, ner"]),
    ("qa-answer-elsewhere", "d.jsonl", _jsonl({"question": "q?", "context": "Oslo is in Norway.",
     "answers": {"text": ["Norway"], "answer_start": [0]}}), {"task": "question-answering"}, "answer_not_in_context",
     ["Row 1", "'answers'", "answer 1 'Norway' at character 0", "it occurs at 11"]),
    ("squad-not-a-document", "d.json", b'[{"question": "q"}]', {"task": "question-answering"}, "malformed_squad",
     ['{"data": [...]}']),
    ("translation-empty-target", "d.jsonl", _jsonl({"source": "a", "target": "b"}, {"source": "c", "target": " "}),
     {"task": "translation"}, "empty_text", ["Row 2", "'target'"]),
    ("summary-column-misnamed", "d.jsonl", _jsonl({"document": "a", "headline": "b"}), {"task": "summarization"},
     "missing_column", ["'summary'", "summary_column", "document, headline"]),
    ("generation-no-text", "d.jsonl", _jsonl({"body": "a"}), {"task": "text-generation"}, "missing_column",
     ["'prompt'", "prompt_column"]),
    ("ner-nul-in-tag", "d.jsonl", _jsonl({"tokens": ["a"], "tags": ["B-P\u0000R"]}), NER, "bad_label", ["NUL"]),
]


@pytest.fixture
def before(client, auth, data_dir, labelled):
    """What exists before the rejected upload: one good dataset and its file."""
    return dataset_ids(client, auth), files_under(data_dir)


def assert_nothing_written(client, auth, data_dir, before) -> None:
    assert (dataset_ids(client, auth), files_under(data_dir)) == before


@pytest.mark.parametrize(("filename", "content", "form", "code", "mentions"),
                         [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED])
def test_rejected_upload_says_what_to_fix(client, auth, data_dir, before, filename, content, form, code, mentions):
    response = upload(client, auth, content, filename, **form)

    assert_error(response, 422, code, *mentions)
    assert_nothing_written(client, auth, data_dir, before)


def test_rejected_row_is_in_details(client, auth, data_dir, before):
    response = upload(client, auth, b"text,label\nok,pos\nok,pos\nbad,row,here\n", "d.csv", label_column="label")
    error = assert_error(response, 422, "malformed_csv", "Row 3", "line 4")
    assert error["details"] == {"row": 3, "line": 4}


def test_missing_column_lists_available_columns(client, auth, data_dir, before):
    response = upload(client, auth, b"review,sentiment\nhello,pos\n", "d.csv", text_column="body")
    error = assert_error(response, 422, "missing_column", "'body'", "text_column")
    assert error["details"]["available_columns"] == ["review", "sentiment"]
    assert_nothing_written(client, auth, data_dir, before)


def test_missing_file_field(client, auth, data_dir, before):
    response = client.post(f"{API}/datasets", headers=auth, data={"name": "x", "text_column": "text"},
                           content_type="multipart/form-data")
    assert_error(response, 422, "file_missing", "'file'")
    assert_error(client.post(f"{API}/datasets", headers=auth, json={"file": "a,b"}), 422, "file_missing")
    assert_nothing_written(client, auth, data_dir, before)


def test_oversized_upload_is_413(client, auth, data_dir, before):
    content = b"text\n" + b"a long line of text\n" * 300_000  # 6 MB, over the fixture's 5 MB limit

    response = upload(client, auth, content, "big.csv")

    error = assert_error(response, 413, "upload_too_large", "5000000")
    assert error["details"] == {"limit_bytes": 5_000_000}
    assert_nothing_written(client, auth, data_dir, before)


@pytest.mark.parametrize("filename", ["../../x.csv", "../datasets/../../x.csv", "/tmp/x.csv", "..\\..\\x.csv"])
def test_path_traversal_filename_stays_inside_data_dir(client, auth, data_dir, tmp_path, filename):
    response = upload(client, auth, b"text\nhello\n", filename)

    assert response.status_code == 201, response.get_data(as_text=True)
    assert "/" not in response.get_json()["name"]
    [stored] = [path for path in files_under(data_dir) if path != "secret_key"]  # the dashboard's cookie key
    assert stored.startswith("datasets/") and stored.endswith(".jsonl")
    assert response.get_json()["name"] not in stored
    assert files_under(tmp_path) == [f"data/{stored}", "data/secret_key"]
    assert not (data_dir / "datasets" / ".." / ".." / "x.csv").exists()

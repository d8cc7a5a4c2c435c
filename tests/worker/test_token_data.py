"""Token-classification uploads: CoNLL and JSON Lines rows, BIO checks, errors that name the row."""

from __future__ import annotations

import io
import json

import pytest

from worker.datafiles import DataFileError, ingest, iter_rows
from worker.ml.tasks.token_classification import TokenTagRows, check_trainable, entity_spans, words_with_offsets

CONLL = b"""-DOCSTART- -X- -X- O

Alice\tB-PER
visited\tO
New\tB-LOC
York\tI-LOC

Bob NNP B-PER
   \t
left O
"""


def ingest_tagged(tmp_path, data: bytes, fmt: str, **columns):
    dest = tmp_path / "rows.jsonl"
    result = ingest(io.BytesIO(data), fmt=fmt, dest=dest, schema=TokenTagRows(**columns))
    return result, [row for _, row in iter_rows(dest)]


def refusal(tmp_path, data: bytes, fmt: str = "jsonl", **columns) -> DataFileError:
    with pytest.raises(DataFileError) as info:
        ingest_tagged(tmp_path, data, fmt, **columns)
    return info.value


def test_conll_sentences_become_rows_skipping_docstart_and_whitespace_lines(tmp_path):
    result, rows = ingest_tagged(tmp_path, CONLL, "conll")
    assert rows == [
        {"tokens": ["Alice", "visited", "New", "York"], "tags": ["B-PER", "O", "B-LOC", "I-LOC"]},
        # CoNLL-2003's middle columns are skipped: the tag is the last field; a blank-looking line ends a sentence.
        {"tokens": ["Bob"], "tags": ["B-PER"]},
        {"tokens": ["left"], "tags": ["O"]},
    ]
    assert result.row_count == 3
    assert result.stats["entity_counts"] == {"PER": 2, "LOC": 1}
    assert result.stats["label_distribution"] == {"B-PER": 2, "O": 2, "B-LOC": 1, "I-LOC": 1}
    assert result.stats["tokens_per_row"]["max"] == 4


def test_jsonl_lists_and_csv_whitespace_separated_words_are_both_accepted(tmp_path):
    jsonl = json.dumps({"words": ["Oslo", "rocks"], "ner": ["B-LOC", "O"]}).encode() + b"\n"
    _, rows = ingest_tagged(tmp_path, jsonl, "jsonl", tokens_column="words", tags_column="ner")
    assert rows == [{"words": ["Oslo", "rocks"], "ner": ["B-LOC", "O"]}]
    _, rows = ingest_tagged(tmp_path, b"tokens,tags\nOslo rocks,B-LOC O\n", "csv")
    assert rows == [{"tokens": ["Oslo", "rocks"], "tags": ["B-LOC", "O"]}]


@pytest.mark.parametrize("tags, message", [
    (["O", "I-PER"], "tag 'I-PER' at token 2 ('b') after 'O'; in BIO an entity starts with B-PER"),
    (["B-LOC", "I-PER"], "tag 'I-PER' at token 2 ('b') after 'B-LOC'"),
    (["PER", "O"], "tag 'PER' at token 1 ('a'); tags are O, B-TYPE or I-TYPE"),
    (["B-", "O"], "tag 'B-' at token 1"),
])
def test_a_tag_that_breaks_bio_names_the_row_the_token_and_the_fix(tmp_path, tags, message):
    good = json.dumps({"tokens": ["x"], "tags": ["O"]})
    bad = json.dumps({"tokens": ["a", "b"], "tags": tags})
    error = refusal(tmp_path, f"{good}\n{bad}\n".encode())
    assert error.code == "bad_tag"
    assert error.message.startswith("Row 2: column 'tags' has ") and message in error.message
    assert error.details["row"] == 2 and error.details["line"] == 2


def test_a_token_tag_count_mismatch_is_refused_with_both_counts(tmp_path):
    error = refusal(tmp_path, json.dumps({"tokens": ["a", "b", "c"], "tags": ["O", "O"]}).encode())
    assert error.code == "tag_count_mismatch"
    assert "has 2 tags for 3 tokens" in error.message and "one tag per token" in error.message


def test_a_conll_line_without_a_tag_names_its_line(tmp_path):
    error = refusal(tmp_path, b"Alice\tB-PER\nvisited\n", "conll")
    assert error.code == "malformed_conll" and error.details == {"line": 2}
    assert "Line 2 holds one field ('visited')" in error.message and "tab or spaces" in error.message


@pytest.mark.parametrize("row, code", [
    ({"tokens": [], "tags": []}, "bad_tokens"),
    ({"tokens": ["a", " "], "tags": ["O", "O"]}, "bad_tokens"),
    ({"tokens": "[not json", "tags": ["O"]}, "bad_tokens"),
    ({"tokens": ["a"], "tags": [None]}, "bad_tags"),
])
def test_empty_or_malformed_token_lists_are_refused(tmp_path, row, code):
    assert refusal(tmp_path, json.dumps(row).encode()).code == code


def test_a_missing_column_lists_the_columns_there_are(tmp_path):
    error = refusal(tmp_path, json.dumps({"words": ["a"], "tags": ["O"]}).encode())
    assert error.code == "missing_column" and error.details["available_columns"] == ["words", "tags"]
    assert "tokens_column" in error.message


def test_data_without_entities_cannot_train_a_tagger():
    refused = check_trainable({"entity_counts": {}, "label_distribution": {"O": 9}})
    assert refused.code == "no_entities" and "every tag is O" in refused.problem
    assert check_trainable({"entity_counts": {"PER": 1}}) is None


def test_raw_text_splits_into_words_with_their_offsets():
    text = "Dr. O'Neil flew to New-York, twice!"
    words = words_with_offsets(text)
    assert [w for w, _, _ in words] == ["Dr", ".", "O'Neil", "flew", "to", "New-York", ",", "twice", "!"]
    assert all(text[start:end] == word for word, start, end in words)


def test_entity_spans_join_bio_runs_and_cover_the_original_text():
    text = "alice  visited new   york"
    words = words_with_offsets(text)
    tags = [("B-PER", 0.9), ("O", 0.8), ("B-LOC", 0.6), ("I-LOC", 0.8)]
    assert entity_spans(text, words, tags) == [
        {"type": "PER", "text": "alice", "start": 0, "end": 5, "score": 0.9},
        {"type": "LOC", "text": "new   york", "start": 15, "end": 25, "score": pytest.approx(0.7)},
    ]
    # An I- of another type, or after O, starts a new entity (the lenient reading of a model's output).
    tags = [("I-PER", 0.5), ("I-LOC", 0.5), ("B-LOC", 0.5), ("B-LOC", 0.5)]
    assert [(e["type"], e["text"]) for e in entity_spans(text, words, tags)] == [
        ("PER", "alice"), ("LOC", "visited"), ("LOC", "new"), ("LOC", "york")]

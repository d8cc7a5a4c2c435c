"""Extractive QA on a tiny BERT: SQuAD metrics by hand, answers checked at upload, windows, spans."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.helpers import qa_examples
from tests.tiny_models import build_tiny_reader_base
from worker.datafiles import DataFileError, detect_format, ingest, iter_rows
from worker.ml.hooks import NullHooks
from worker.ml.tasks import question_answering as qa
from worker.params import EvaluateParams, FinetuneParams

COLUMNS = {"question": "question", "context": "context", "answers": "answers"}
SQUAD = {"version": "1.1", "data": [{"title": "Oslo", "paragraphs": [{
    "context": "Oslo is the capital of Norway.",
    "qas": [{"id": "a", "question": "What is Oslo?", "answers": [{"text": "the capital of Norway", "answer_start": 8}]},
            {"id": "b", "question": "Of what?", "answers": [{"text": "Norway", "answer_start": 23}]}]}]}]}


def rows_file(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def upload(tmp_path, data: bytes, fmt: str):
    dest = tmp_path / "rows.jsonl"
    result = ingest(io.BytesIO(data), fmt=fmt, dest=dest, schema=qa.row_schema(COLUMNS))
    return result, [row for _, row in iter_rows(dest)]


# ---- metrics ---------------------------------------------------------------------------------------


def test_squad_metrics_follow_the_official_normalisation():
    assert qa.normalize_answer("The  Denver Broncos!") == "denver broncos"
    metrics = qa.squad_metrics(["Denver Broncos", "the Panthers", "in 2016"], [
        ["Denver Broncos", "The Broncos"],  # exact after normalising
        ["Carolina Panthers"],  # 1 of 1 predicted token right, 1 of 2 gold: P 1, R 1/2, F1 2/3
        ["February 7, 2016"],  # '2016' shared: P 1/2, R 1/3, F1 0.4
    ])
    assert metrics["exact_match"] == pytest.approx(100 / 3)
    assert metrics["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0.4) / 3)


# ---- data -----------------------------------------------------------------------------------------


def test_a_squad_document_becomes_one_row_per_question(tmp_path):
    assert detect_format("dev-v1.1.json", None, qa.FORMAT_BY_EXTENSION) == "squad"
    assert detect_format("dev-v1.1.json", None) == "jsonl"  # for other tasks .json stays JSON Lines
    result, rows = upload(tmp_path, json.dumps(SQUAD).encode(), "squad")
    assert [(r["id"], r["title"], r["answers"]) for r in rows] == [
        ("a", "Oslo", {"text": ["the capital of Norway"], "answer_start": [8]}),
        ("b", "Oslo", {"text": ["Norway"], "answer_start": [23]})]
    assert result.stats["answers"] == 2 and result.stats["labelled"] is True


@pytest.mark.parametrize("answers, code, message", [
    ({"text": ["Norway"], "answer_start": [3]}, "answer_not_in_context",
     "has answer 1 'Norway' at character 3, where the context holds 'o is t'; it occurs at 23"),
    ({"text": ["Sweden"], "answer_start": [23]}, "answer_not_in_context", "it does not occur in the context at all"),
    ({"text": ["Norway", "Oslo"], "answer_start": [23]}, "bad_answers", "2 answer texts but 1 answer_start"),
    ({"text": []}, "bad_answers", "at least one answer"),
])
def test_an_answer_that_is_not_in_its_context_is_refused_naming_the_row(tmp_path, answers, code, message):
    good = {"question": "Of what?", "context": "Oslo is the capital of Norway.",
            "answers": {"text": ["Norway"], "answer_start": [23]}}
    data = (json.dumps(good) + "\n" + json.dumps(good | {"answers": answers}) + "\n").encode()
    with pytest.raises(DataFileError) as refused:
        upload(tmp_path, data, "jsonl")
    assert refused.value.code == code and message in refused.value.message
    assert refused.value.message.startswith("Row 2: column 'answers' ")


def test_rows_without_answers_are_questions_to_answer(tmp_path):
    result, rows = upload(tmp_path, b'{"question": "q?", "context": "c."}\n', "jsonl")
    assert result.stats["labelled"] is False and rows == [{"question": "q?", "context": "c."}]
    assert qa.check_trainable(result.stats).code == "dataset_unlabelled"


# ---- model ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reader_base(tmp_path_factory) -> Path:
    return build_tiny_reader_base(tmp_path_factory.mktemp("reader"))


def test_long_contexts_become_overlapping_windows_labelled_where_the_answer_is(reader_base):
    _model, tokenizer = qa.load_reader(str(reader_base))
    filler = " ".join(["the weather was fine"] * 12)
    row = {"question": "where does alice live ?", "context": f"{filler} . alice lives in oslo . {filler}",
           "answers": None}
    start = row["context"].index("oslo")
    examples = qa.Examples([row["question"]], [{"text": ["oslo"], "answer_start": [start]}])
    features = qa._train_features(tokenizer, examples, [row["context"]], max_length=48)
    assert len(features) > 2  # one context, several windows
    labelled = [(s, e) for s, e in zip(features["start_positions"], features["end_positions"]) if s]
    assert labelled and all(s == e for s, e in labelled)  # 'oslo' is one token
    for window, (s, _e) in enumerate(zip(features["start_positions"], features["end_positions"])):
        if s:
            assert tokenizer.convert_ids_to_tokens(features["input_ids"][window][s]) == "oslo"


def test_fine_tune_learns_to_answer_and_the_predictor_returns_spans(reader_base, tmp_path):
    train = rows_file(tmp_path / "train.jsonl", qa_examples(400, seed=1))
    held_out = rows_file(tmp_path / "eval.jsonl", qa_examples(60, seed=9))
    params = FinetuneParams(base_model=str(reader_base), train_dataset_id=1, max_steps=800, batch_size=16,
                            learning_rate=3e-3, max_length=64, save_steps=1000)
    outcome = qa.finetune(params, base_model=str(reader_base), train_path=train, validation_path=None, columns=COLUMNS,
                          output_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ck", hooks=NullHooks())
    assert outcome["train"]["global_step"] == 800 and set(outcome["metrics"]) == {"exact_match", "f1", "support"}
    evaluation = qa.evaluate(str(tmp_path / "model"), data_path=held_out, columns=COLUMNS, hooks=NullHooks(),
                             params=EvaluateParams(model="m", dataset_id=1, batch_size=16, max_length=64))
    # Untrained: 0. Trained, two runs on this machine measured 100 and 70 (the float order of a loaded
    # CPU moves a tiny model trained at a high learning rate).
    assert evaluation["rows"] == 60 and evaluation["exact_match"] >= 50, evaluation

    reader = qa.Predictor(str(tmp_path / "model"), max_length=64, batch_tokens=512, max_batch_size=8)
    context = "alice lives in oslo . bob works in rome ."  # the order of the synthetic training contexts
    results = reader.predict_chunk([(0, {"question": "where does bob work ?", "context": context}),
                                    (1, {"question": " ", "context": context}), (2, None)])
    assert results[0]["answer"] == "rome" and context[results[0]["start"]:results[0]["end"]] == "rome"
    assert 0 < results[0]["score"] <= 1
    assert results[1] == {"row": 1, "error": "empty question"}
    assert results[2] == {"row": 2, "error": "empty question and context"}


def test_a_short_window_batched_with_a_long_one_gets_a_span_inside_its_own_context(reader_base):
    # Padded to the long window's length, the short window's best positions fell in its padding (an
    # IndexError, as SQuAD fine-tunes hit at validation): candidates are the window's own tokens.
    model, tokenizer = qa.load_reader(str(reader_base))
    model.eval()
    contexts = ["alice lives in oslo .", " ".join(["the weather was fine"] * 12) + " . bob works in rome ."]
    spans = qa.answer_spans(model, tokenizer, ["where ?", "where does bob work ?"], contexts, max_length=64,
                            batch_tokens=4096, max_batch_size=8)
    for span, context in zip(spans, contexts):
        assert 0 <= span["start"] <= span["end"] <= len(context) and span["text"] == context[span["start"]:span["end"]]
        assert 0 <= span["score"] <= 1

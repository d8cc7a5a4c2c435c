"""Token classification on a tiny BERT: entity metrics, fine-tune, resume, evaluate, entity spans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ner_sentences
from tests.tiny_models import build_tiny_tagger_base
from tests.worker.ml.hooks import InterruptAfter
from worker.errors import JobInterrupted
from worker.ml.hooks import NullHooks
from worker.ml.tasks import token_classification as ner
from worker.params import EvaluateParams, FinetuneParams

COLUMNS = {"tokens": "tokens", "tags": "tags"}


@pytest.fixture(scope="module")
def tagger_base(tmp_path_factory) -> Path:
    return build_tiny_tagger_base(tmp_path_factory.mktemp("tagger-base"))


def write_tagged(path: Path, rows: int, seed: int) -> Path:
    path.write_text("".join(json.dumps({"tokens": t, "tags": g}) + "\n" for t, g in ner_sentences(rows, seed=seed)))
    return path


def params_for(base: Path, **overrides) -> FinetuneParams:
    values = dict(base_model=str(base), train_dataset_id=1, max_steps=120, batch_size=16, learning_rate=5e-3,
                  logging_steps=20, save_steps=40, max_length=32, validation_fraction=0.2)
    return FinetuneParams(**(values | overrides))


def finetune(params, train: Path, tmp_path: Path, hooks=None) -> dict:
    return ner.finetune(params, base_model=params.base_model, train_path=train, validation_path=None,
                        columns=COLUMNS, output_dir=tmp_path / "model", checkpoint_dir=tmp_path / "checkpoints",
                        hooks=hooks or NullHooks())


def test_entity_metrics_match_a_count_by_hand():
    gold = [["B-PER", "O", "B-LOC", "I-LOC"], ["B-PER", "O"]]
    predicted = [["B-PER", "O", "B-LOC", "O"], ["B-PER", "B-LOC"]]
    metrics = ner.entity_metrics(gold, predicted)
    # Gold entities: PER(0), LOC(2-3), PER(0). Predicted: PER(0), LOC(2), PER(0), LOC(1).
    # Correct: both PERs; the LOC span 2-2 is not 2-3. So P = 2/4, R = 2/3, F1 = 2PR/(P+R) = 4/7.
    assert metrics["precision"] == pytest.approx(2 / 4)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(4 / 7)
    assert metrics["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert metrics["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["accuracy"] == pytest.approx(4 / 6)  # token level: 4 of 6 tags right
    assert metrics["support"] == 3 and metrics["sentences"] == 2


@pytest.fixture(scope="module")
def trained(tagger_base, tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("ner-run")
    outcome = finetune(params_for(tagger_base), write_tagged(folder / "train.jsonl", 200, seed=1), folder)
    return folder / "model", outcome


def test_finetune_learns_the_entities_and_reports_seqeval_metrics(trained):
    _model, outcome = trained
    assert outcome["label_names"] == ["O", "B-LOC", "I-LOC", "B-PER"]
    assert outcome["train"]["global_step"] == 120 and outcome["train"]["validation_rows"] == 40
    metrics = outcome["metrics"]
    assert set(metrics["per_type"]) == {"LOC", "PER"}
    assert metrics["f1"] >= 0.9, metrics  # the synthetic entities are easy: an untrained model scores ~0


def test_evaluate_scores_a_saved_tagger_on_new_sentences(trained, tmp_path):
    model, _outcome = trained
    metrics = ner.evaluate(str(model), data_path=write_tagged(tmp_path / "eval.jsonl", 50, seed=9), columns=COLUMNS,
                           params=EvaluateParams(model="m", dataset_id=1, batch_size=16, max_length=32),
                           hooks=NullHooks())
    assert metrics["rows"] == 50 and metrics["f1"] >= 0.9, metrics


def test_predictor_returns_entity_spans_of_the_raw_text(trained):
    model, _outcome = trained
    predictor = ner.Predictor(str(model), max_length=32, batch_tokens=512, max_batch_size=8)
    text = "Yesterday Alice flew from New York to Oslo"
    results = predictor.predict_chunk([(0, text), (1, "   "), (2, "the weather was fine")])
    entities = results[0]["entities"]
    assert [(e["type"], e["text"]) for e in entities] == [("PER", "Alice"), ("LOC", "New York"), ("LOC", "Oslo")]
    assert all(text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1 for e in entities)
    assert results[1] == {"row": 1, "error": "empty text"}
    assert results[2] == {"row": 2, "entities": []}


def test_a_text_longer_than_the_model_takes_is_tagged_to_its_last_word(trained):
    model, _outcome = trained
    sentences = ner_sentences(30, seed=21)
    text = " ".join(" ".join(tokens) for tokens, _tags in sentences)
    expected = []
    for tokens, tags in sentences:
        for token, tag in zip(tokens, tags):
            if tag.startswith("B-"):
                expected.append([tag[2:], token])
            elif tag.startswith("I-"):
                expected[-1][1] += " " + token
    predictor = ner.Predictor(str(model), max_length=32, batch_tokens=512, max_batch_size=8)
    assert len(predictor.tokenizer(text)["input_ids"]) > 3 * 32  # several windows, not one

    entities = predictor.predict_chunk([(0, text)])[0]["entities"]

    assert [[e["type"], e["text"]] for e in entities] == expected
    assert all(text[e["start"]:e["end"]] == e["text"] for e in entities)


def test_an_interrupted_fine_tune_resumes_from_its_checkpoint(tagger_base, tmp_path):
    train = write_tagged(tmp_path / "train.jsonl", 80, seed=2)
    params = params_for(tagger_base, max_steps=30, save_steps=10)
    with pytest.raises(JobInterrupted):
        finetune(params, train, tmp_path, hooks=InterruptAfter(step=12))
    outcome = finetune(params, train, tmp_path)
    assert outcome["train"]["resumed_from_step"] == 10 and outcome["train"]["global_step"] == 30

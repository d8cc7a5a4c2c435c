"""Translation and summarization on tiny T5-, BART- and BERT2BERT-style models; their metrics checked by hand."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tests.helpers import translation_pairs
from tests.tiny_models import build_tiny_encoder, build_tiny_seq2seq
from tests.worker.ml.hooks import InterruptAfter
from worker.datafiles import DataFileError, TextPairRows, ingest, iter_rows
from worker.errors import JobInterrupted
from worker.ml.hooks import NullHooks
from worker.ml.tasks import summarization, translation
from worker.params import (
    GenerationEvaluateParams,
    GenerationFinetuneParams,
    GenerationOptions,
)

COLUMNS = {"source": "source", "target": "target"}


def write_pairs(path: Path, rows: int, seed: int, columns=("source", "target")) -> Path:
    path.write_text("".join(json.dumps(dict(zip(columns, pair))) + "\n" for pair in translation_pairs(rows, seed=seed)))
    return path


def params_for(base: Path, **overrides) -> GenerationFinetuneParams:
    values = dict(base_model=str(base), train_dataset_id=1, max_steps=300, batch_size=16, learning_rate=3e-3,
                  max_length=32, max_target_length=32, save_steps=100, validation_fraction=0.1,
                  generation=GenerationOptions(max_new_tokens=12))
    return GenerationFinetuneParams(**(values | overrides))


def finetune(module, params, train: Path, tmp_path: Path, columns=COLUMNS, hooks=None) -> dict:
    return module.finetune(params, base_model=params.base_model, train_path=train, validation_path=None,
                           columns=columns, output_dir=tmp_path / "model", checkpoint_dir=tmp_path / "checkpoints",
                           hooks=hooks or NullHooks())


def evaluate(module, model: Path, data: Path, columns=COLUMNS) -> dict:
    params = GenerationEvaluateParams(model="m", dataset_id=1, batch_size=16, max_length=32,
                                      generation=GenerationOptions(max_new_tokens=12))
    return module.evaluate(str(model), data_path=data, columns=columns, params=params, hooks=NullHooks())


# ---- metrics ---------------------------------------------------------------------------------------


def test_bleu_and_chrf_are_sacrebleus_corpus_scores():
    perfect = translation.translation_metrics(["der hund bellt laut"], ["der hund bellt laut"])
    assert (perfect["bleu"], perfect["chrf"]) == (pytest.approx(100.0), pytest.approx(100.0))
    disjoint = translation.translation_metrics(["ab cd ef gh"], ["xy zw uv st"])
    assert (disjoint["bleu"], disjoint["chrf"]) == (0.0, 0.0)
    # Partial overlap: the reference implementation's corpus scores (BLEU with its default exp smoothing).
    import sacrebleu

    predictions, references = ["der katze x y", "gut tag"], ["der hund bellt y", "gut tag heute"]
    half = translation.translation_metrics(predictions, references)
    assert half["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    assert half["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
    assert 0 < half["bleu"] < 100 and 0 < half["chrf"] < 100
    assert "nrefs:1" in perfect["bleu_signature"] and perfect["support"] == 1


def test_rouge_matches_a_count_by_hand():
    metrics = summarization.rouge_metrics(["the cat sat"], ["the cat"])
    # Unigrams: 2 shared, 3 predicted, 2 reference: P 2/3, R 1, F = 0.8. Bigrams: 1 of 2, 1 of 1: F = 2/3.
    assert metrics["rouge1"] == pytest.approx(0.8)
    assert metrics["rouge2"] == pytest.approx(2 / 3)
    assert metrics["rougeL"] == pytest.approx(0.8)
    assert summarization.rouge_metrics(["a b", "x"], ["a b", "y"])["rouge1"] == pytest.approx(0.5)  # mean of 1 and 0


# ---- data -----------------------------------------------------------------------------------------


def test_an_empty_target_is_refused_naming_its_row(tmp_path):
    rows = b'{"source": "good day", "target": "gut tag"}\n{"source": "bad", "target": "  "}\n'
    with pytest.raises(DataFileError) as refused:
        ingest(io.BytesIO(rows), fmt="jsonl", dest=tmp_path / "out.jsonl", schema=TextPairRows(COLUMNS))
    assert refused.value.code == "empty_text" and refused.value.message.startswith("Row 2: column 'target'")


def test_parallel_text_files_become_pairs_and_a_missing_line_is_named(tmp_path):
    dest = tmp_path / "out.jsonl"
    result = ingest(io.BytesIO(b"good day\nbad room\n"), fmt="parallel", dest=dest, schema=TextPairRows(COLUMNS),
                    target_src=io.BytesIO(b"gut tag\r\nschlecht zimmer\r\n"))
    assert [row for _, row in iter_rows(dest)] == [
        {"source": "good day", "target": "gut tag"}, {"source": "bad room", "target": "schlecht zimmer"}]
    assert result.row_count == 2 and result.stats["target_length_chars"]["max"] == 15
    with pytest.raises(DataFileError) as refused:
        ingest(io.BytesIO(b"a\nb\nc\n"), fmt="parallel", dest=dest, schema=TextPairRows(COLUMNS),
               target_src=io.BytesIO(b"x\ny\n"))
    assert refused.value.code == "parallel_mismatch" and "line 3 has no partner" in refused.value.message


# ---- training -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def t5_base(tmp_path_factory) -> Path:
    return build_tiny_seq2seq(tmp_path_factory.mktemp("t5"), "t5")


@pytest.fixture(scope="module")
def translated(t5_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("translation")
    return folder, finetune(translation, params_for(t5_base), write_pairs(folder / "train.jsonl", 300, seed=1), folder)


def test_translation_fine_tune_learns_beyond_the_untrained_model(t5_base, translated, tmp_path):
    folder, outcome = translated
    held_out = write_pairs(tmp_path / "eval.jsonl", 40, seed=9)
    before = evaluate(translation, t5_base, held_out)
    after = evaluate(translation, folder / "model", held_out)
    assert outcome["train"]["global_step"] == 300 and outcome["metrics"]["support"] == 30
    assert after["rows"] == 40 and len(after["examples"]) == 5
    assert after["chrf"] > before["chrf"] + 20, (before, after)  # measured ~56 after, ~10 before


def test_generator_writes_text_per_row_in_order_with_blank_rows_as_errors(translated):
    folder, _outcome = translated
    generator = translation.Predictor(str(folder / "model"), max_length=32, batch_tokens=256, max_batch_size=4,
                                      options=GenerationOptions(max_new_tokens=8, num_beams=2))
    rows = [(0, "good day"), (1, " "), (2, "the movie was bad and the food was awful"), (3, None)]
    results = generator.predict_chunk(rows)
    assert [r["row"] for r in results] == [0, 1, 2, 3]
    assert results[1] == {"row": 1, "error": "empty text"} and results[3] == {"row": 3, "error": "empty text"}
    assert all(isinstance(results[i]["text"], str) and results[i]["text"] for i in (0, 2))


def test_stop_strings_cut_the_output():
    from worker.ml.generation import cut_at_stop

    assert cut_at_stop("gut tag. und mehr\nnoch", [".", "\n"]) == "gut tag"
    assert cut_at_stop("gut tag", ["###"]) == "gut tag"


@pytest.mark.parametrize("architecture", ["bart", "bert2bert"])
def test_bart_and_a_warm_started_bert_encoder_train_save_and_reload(architecture, tmp_path):
    base = (build_tiny_encoder(tmp_path / "base") if architecture == "bert2bert"
            else build_tiny_seq2seq(tmp_path / "base", "bart"))
    train = write_pairs(tmp_path / "train.jsonl", 60, seed=3, columns=("document", "summary"))
    columns = {"document": "document", "summary": "summary"}
    outcome = finetune(summarization, params_for(base, max_steps=20, save_steps=10), train, tmp_path, columns=columns)
    assert outcome["train"]["global_step"] == 20 and set(outcome["metrics"]) >= {"rouge1", "rouge2", "rougeL"}
    reloaded = evaluate(summarization, tmp_path / "model", train, columns=columns)  # from the saved directory
    assert reloaded["rows"] == 60 and 0 <= reloaded["rougeL"] <= 1


def test_a_decoder_only_base_is_refused_for_translation(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt")
    from worker.errors import PermanentJobError
    from worker.ml.seq2seq import load_seq2seq

    with pytest.raises(PermanentJobError, match="is a gpt2 model, neither an encoder-decoder"):
        load_seq2seq(str(tmp_path / "gpt"))


def test_an_interrupted_seq2seq_fine_tune_resumes_from_its_checkpoint(t5_base, tmp_path):
    train = write_pairs(tmp_path / "train.jsonl", 60, seed=4)
    params = params_for(t5_base, max_steps=24, save_steps=10)
    with pytest.raises(JobInterrupted):
        finetune(translation, params, train, tmp_path, hooks=InterruptAfter(step=12))
    outcome = finetune(translation, params, train, tmp_path)
    assert outcome["train"]["resumed_from_step"] == 10 and outcome["train"]["global_step"] == 24

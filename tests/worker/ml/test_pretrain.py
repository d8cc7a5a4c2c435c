"""Continued pre-training on tiny models: masked-LM on a BERT, causal-LM on a GPT-2, blocks, resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.tiny_models import SENTENCES, build_tiny_gpt2, build_tiny_seq2seq
from tests.worker.ml.hooks import InterruptAfter
from worker.errors import JobInterrupted, PermanentJobError
from worker.ml import pretrain as lm
from worker.ml.hooks import NullHooks
from worker.params import PretrainParams

PATTERNS = [
    "the movie was good and the food was great",
    "the service was bad and the room was awful",
    "i liked it a lot, what a nice day!",
    "i hated it, what a terrible day?",
]


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def write_texts(path: Path, count: int, *, seed: int) -> Path:
    """Rows of repetitive text (a few patterns), so a model that learns them predicts masked and next words."""
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"id": i, "body": rng.choice(PATTERNS)}) + "\n" for i in range(count)))
    return path


def params_for(base: Path, **overrides) -> PretrainParams:
    values = dict(base_model=str(base), train_dataset_id=1, max_steps=40, batch_size=8, learning_rate=3e-3,
                  max_length=32, save_steps=20, validation_fraction=0.2)
    return PretrainParams(**(values | overrides))


def run(params: PretrainParams, data: Path, tmp_path: Path, hooks=None) -> dict:
    return lm.pretrain(params, base_model=params.base_model, train_path=data, validation_path=None, text_column="body",
                       output_dir=tmp_path / "model", checkpoint_dir=tmp_path / "checkpoints", hooks=hooks or NullHooks())


def base_perplexity(base: Path, data: Path, objective: str, params: PretrainParams) -> float:
    """The untrained base's perplexity on the same held-out documents, blocks and masks."""
    from transformers import set_seed

    set_seed(params.seed)  # a new head is initialised the same way each time
    _train, held_out = lm.split_documents(lm.read_texts(data, "body", "d"), params.validation_fraction, params.seed)
    model, tokenizer = lm.load_language_model(str(base), objective)
    blocks = lm.group_texts(lm.tokenize(tokenizer, held_out, objective), params.max_length)
    return lm.perplexity(model, tokenizer, blocks, objective, params, NullHooks())["perplexity"]


def test_texts_are_concatenated_and_cut_into_full_blocks(tiny_classifier, gpt2_base):
    import numpy as np

    ids = np.arange(10)
    assert lm.group_texts(ids, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the incomplete last block is dropped
    assert lm.group_texts(ids[:3], 4).tolist() == [[0, 1, 2]]  # less than one block: one short block

    bert = lm.load_tokenizer(str(tiny_classifier), "mlm")
    masked = lm.tokenize(bert, ["good day", "bad day"], "mlm").tolist()
    assert masked == bert("good day")["input_ids"] + bert("bad day")["input_ids"]  # [CLS] ... [SEP] each
    gpt = lm.load_tokenizer(str(gpt2_base), "clm")
    causal = lm.tokenize(gpt, ["good day", "bad day"], "clm").tolist()
    assert causal.count(gpt.eos_token_id) == 2 and causal[-1] == gpt.eos_token_id  # each document ends with eos


def test_the_objective_follows_the_model_and_a_mismatch_is_refused(tiny_classifier, gpt2_base, tmp_path):
    assert lm.choose_objective(str(tiny_classifier), "auto") == "mlm"
    assert lm.choose_objective(str(gpt2_base), "auto") == "clm"
    with pytest.raises(PermanentJobError, match="not a decoder.*use objective=mlm"):
        lm.choose_objective(str(tiny_classifier), "clm")
    with pytest.raises(PermanentJobError, match=r"\(gpt2\) has no masked-LM form; use objective=clm"):
        lm.choose_objective(str(gpt2_base), "mlm")
    with pytest.raises(PermanentJobError, match="encoder-decoder"):
        lm.choose_objective(str(build_tiny_seq2seq(tmp_path / "t5")), "auto")


def test_masked_lm_projects_only_the_masked_tokens_onto_the_vocabulary_with_the_same_loss(tiny_classifier):
    import torch

    params = params_for(tiny_classifier)
    model, tokenizer = lm.load_language_model(str(tiny_classifier), "mlm")
    blocks = lm.group_texts(lm.tokenize(tokenizer, PATTERNS * 4, "mlm"), 16)
    torch.manual_seed(0)
    batch = lm.collator("mlm", tokenizer, params)([{"input_ids": row.tolist()} for row in blocks])
    labels = batch.pop("labels")
    full = lm.language_model_loss("mlm")(model(**batch), labels)

    project = lm.defer_vocabulary_projection(model)
    outputs = model(**batch)
    assert outputs.logits.shape[-1] == model.config.hidden_size  # the forward stops before the projection
    deferred = lm.language_model_loss("mlm", project)(outputs, labels)
    assert torch.allclose(full, deferred, atol=1e-5), (full, deferred)
    assert lm.defer_vocabulary_projection(model) is not None  # again: still the same projection


def test_masked_lm_lowers_held_out_perplexity_and_saves_a_base_any_task_loads(tiny_classifier, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    data = write_texts(tmp_path / "texts.jsonl", 120, seed=1)
    params = params_for(tiny_classifier, mlm_probability=0.2)
    hooks = NullHooks()
    outcome = run(params, data, tmp_path, hooks)

    assert outcome["objective"] == "mlm" and outcome["train"]["mlm_probability"] == 0.2
    assert outcome["train"]["global_step"] == 40 and outcome["train"]["block_tokens"] == 32
    assert outcome["train"]["train_documents"] == 96 and outcome["train"]["validation_documents"] == 24
    before = base_perplexity(tiny_classifier, data, "mlm", params)
    assert outcome["metrics"]["perplexity"] < before / 3, (outcome["metrics"], before)
    logs = [value for kind, value in hooks.events if kind == "log"]
    assert any("no masked language modelling head: a new one is initialised" in line for line in logs), logs
    metrics = [value for kind, value in hooks.events if kind == "metric" and "eval_perplexity" in value[1]]
    assert metrics == [(40, {"eval_loss": outcome["metrics"]["loss"], "eval_perplexity": outcome["metrics"]["perplexity"]})]

    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model", num_labels=3)
    tagger = AutoModelForTokenClassification.from_pretrained(tmp_path / "model", num_labels=5)
    masked, _tokenizer = lm.load_language_model(str(tmp_path / "model"), "mlm")
    for model in (classifier, tagger):
        assert torch.equal(model.bert.encoder.layer[1].output.dense.weight, masked.bert.encoder.layer[1].output.dense.weight)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    assert not torch.equal(base.bert.encoder.layer[1].output.dense.weight, classifier.bert.encoder.layer[1].output.dense.weight)


def test_causal_lm_resumes_after_an_interruption_and_lowers_perplexity(gpt2_base, tmp_path):
    data = write_texts(tmp_path / "texts.jsonl", 120, seed=2)
    params = params_for(gpt2_base)
    with pytest.raises(JobInterrupted):
        run(params, data, tmp_path, InterruptAfter(25))
    assert (tmp_path / "checkpoints" / "checkpoint-20" / "COMPLETE").is_file()

    hooks = NullHooks()
    outcome = run(params, data, tmp_path, hooks)
    assert outcome["objective"] == "clm" and outcome["train"]["resumed_from_step"] == 20
    assert outcome["train"]["global_step"] == 40
    assert ("log", "resuming from checkpoint-20") in hooks.events
    assert outcome["metrics"]["perplexity"] < base_perplexity(gpt2_base, data, "clm", params) / 3


def test_held_out_perplexity_is_repeatable_for_masked_lm(tiny_classifier, tmp_path):
    data = write_texts(tmp_path / "texts.jsonl", 40, seed=3)
    params = params_for(tiny_classifier)
    assert base_perplexity(tiny_classifier, data, "mlm", params) == base_perplexity(tiny_classifier, data, "mlm", params)


def test_unusable_text_is_refused_with_what_to_do(tmp_path):
    lists = tmp_path / "lists.jsonl"
    lists.write_text(json.dumps({"tokens": ["a", "b"]}) + "\n")
    with pytest.raises(PermanentJobError, match="row 1 of the train dataset holds a list or object in column 'tokens'"):
        lm.read_texts(lists, "tokens", "train")
    with pytest.raises(PermanentJobError, match="has no column 'text'"):
        lm.read_texts(lists, "text", "train")
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": " "}) + "\n" + json.dumps({"text": None}) + "\n")
    with pytest.raises(PermanentJobError, match="holds no text"):
        lm.read_texts(blank, "text", "train")
    with pytest.raises(PermanentJobError, match="one document.*validation_dataset_id"):
        lm.split_documents([SENTENCES[0]], 0.1, 0)

"""Causal-LM text generation on a tiny GPT-2: plain text and prompt/completion, perplexity, continuations."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from tests.helpers import translation_pairs
from tests.tiny_models import build_tiny_gpt2
from worker.datafiles import DataFileError, ingest
from worker.ml.hooks import NullHooks
from worker.ml.tasks import text_generation as lm
from worker.params import (
    GenerationEvaluateParams,
    GenerationFinetuneParams,
    GenerationOptions,
)

PAIRS = {"prompt": "prompt", "completion": "completion"}
ALL_ROLES = {"text": "text", **PAIRS}


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def write_prompts(path: Path, rows: int, seed: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"translate {s} :", "completion": t}) + "\n"
                            for s, t in translation_pairs(rows, seed=seed)))
    return path


def params_for(base: Path, **overrides) -> GenerationFinetuneParams:
    values = dict(base_model=str(base), train_dataset_id=1, max_steps=200, batch_size=16, learning_rate=3e-3,
                  max_length=24, max_target_length=16, save_steps=100, validation_fraction=0.1)
    return GenerationFinetuneParams(**(values | overrides))


def evaluate(model: Path, data: Path, columns=PAIRS) -> dict:
    params = GenerationEvaluateParams(model="m", dataset_id=1, batch_size=16, max_length=48)
    return lm.evaluate(str(model), data_path=data, columns=columns, params=params, hooks=NullHooks())


def test_the_first_row_decides_between_plain_text_and_prompt_completion(tmp_path):
    schema = lm.row_schema(ALL_ROLES)
    ingest(io.BytesIO(b'{"text": "once upon a time"}\n'), fmt="jsonl", dest=tmp_path / "a.jsonl", schema=schema)
    assert schema.columns == {"text": "text"}
    schema = lm.row_schema(ALL_ROLES)
    ingest(io.BytesIO(b'{"prompt": "q", "completion": "a"}\n'), fmt="jsonl", dest=tmp_path / "b.jsonl", schema=schema)
    assert schema.columns == PAIRS
    with pytest.raises(DataFileError) as refused:
        ingest(io.BytesIO(b'{"prompt": "q", "completion": "a"}\n{"prompt": "q2", "completion": ""}\n'),
               fmt="jsonl", dest=tmp_path / "c.jsonl", schema=lm.row_schema(ALL_ROLES))
    assert refused.value.code == "empty_text" and "Row 2: column 'completion'" in refused.value.message
    with pytest.raises(DataFileError) as refused:
        ingest(io.BytesIO(b'{"body": "x"}\n'), fmt="jsonl", dest=tmp_path / "d.jsonl", schema=lm.row_schema(ALL_ROLES))
    assert refused.value.code == "missing_column"


def test_prompt_tokens_are_masked_out_of_the_loss(gpt2_base):
    _model, tokenizer = lm.load_lm(str(gpt2_base))
    ids, labels = lm._token_ids(tokenizer, "translate good day :", "gut tag", max_length=32)
    prompt_length = len(tokenizer("translate good day :", add_special_tokens=False)["input_ids"])
    assert labels[:prompt_length] == [-100] * prompt_length
    assert labels[prompt_length:] == ids[prompt_length:] and ids[-1] == tokenizer.eos_token_id


def test_perplexity_is_the_exponential_of_the_mean_token_loss(gpt2_base, tmp_path):
    import torch

    model, tokenizer = lm.load_lm(str(gpt2_base))
    examples = lm._read(write_prompts(tmp_path / "d.jsonl", 6, seed=3), PAIRS, "evaluation")
    metrics = lm.language_model_metrics(model.eval(), tokenizer, examples, max_length=48, batch_tokens=64,
                                        max_batch_size=2)
    # The same by hand, one row at a time with the model's own (shifted) loss on the completion tokens.
    total = count = 0
    for prompt, text in zip(examples.texts, examples.labels):
        ids, labels = lm._token_ids(tokenizer, prompt, text, 48)
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        counted = sum(label != -100 for label in labels[1:])
        total, count = total + float(loss) * counted, count + counted
    assert metrics["tokens"] == count
    assert metrics["loss"] == pytest.approx(total / count, rel=1e-4)
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_fine_tune_lowers_perplexity_and_the_predictor_continues_prompts(gpt2_base, tmp_path):
    train = write_prompts(tmp_path / "train.jsonl", 300, seed=1)
    held_out = write_prompts(tmp_path / "eval.jsonl", 40, seed=9)
    before = evaluate(gpt2_base, held_out)
    outcome = lm.finetune(params_for(gpt2_base), base_model=str(gpt2_base), train_path=train, validation_path=None,
                          columns=PAIRS, output_dir=tmp_path / "model", checkpoint_dir=tmp_path / "ck",
                          hooks=NullHooks())
    after = evaluate(tmp_path / "model", held_out)
    assert outcome["train"]["global_step"] == 200 and set(outcome["metrics"]) >= {"loss", "perplexity"}
    assert after["perplexity"] < before["perplexity"] / 5, (before, after)

    generator = lm.Predictor(str(tmp_path / "model"), max_length=24, batch_tokens=256, max_batch_size=4,
                             options=GenerationOptions(max_new_tokens=8, stop=[":"]))
    results = generator.predict_chunk([(0, "translate good day :"), (1, ""), (2, "translate the movie was bad :")])
    assert results[1] == {"row": 1, "error": "empty text"}
    assert all(":" not in results[i]["text"] and results[i]["text"] for i in (0, 2))


def test_plain_text_trains_on_every_token(gpt2_base, tmp_path):
    train = tmp_path / "text.jsonl"
    train.write_text("".join(json.dumps({"text": f"{s} . {t}"}) + "\n" for s, t in translation_pairs(60, seed=5)))
    outcome = lm.finetune(params_for(gpt2_base, max_steps=10), base_model=str(gpt2_base), train_path=train,
                          validation_path=None, columns={"text": "text"}, output_dir=tmp_path / "model",
                          checkpoint_dir=tmp_path / "ck", hooks=NullHooks())
    assert outcome["metrics"]["tokens"] > 6 * outcome["metrics"]["support"]  # whole texts are scored, not just ends


def test_an_encoder_decoder_is_refused_for_text_generation(tmp_path):
    from tests.tiny_models import build_tiny_seq2seq
    from worker.errors import PermanentJobError

    with pytest.raises(PermanentJobError, match="needs a decoder-only model"):
        lm.load_lm(str(build_tiny_seq2seq(tmp_path / "t5", "bart")))

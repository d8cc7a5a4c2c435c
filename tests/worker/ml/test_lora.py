"""LoRA adapters for every task: what trains, what is saved, and that base + adapter loads back the same model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.helpers import topic_rows
from tests.tiny_models import (
    build_tiny_classifier,
    build_tiny_gpt2,
    build_tiny_reader_base,
    build_tiny_seq2seq,
    build_tiny_tagger_base,
)
from tests.worker.ml.hooks import InterruptAfter
from tests.worker.ml.test_text_classification import make_params, run_finetune
from tests.worker.ml.test_training_control import _rows
from worker.errors import JobInterrupted, PermanentJobError
from worker.ml import adapters
from worker.ml.hooks import NullHooks
from worker.ml.loading import load_model
from worker.ml.tasks import get_task
from worker.params import FinetuneParams, LoraOptions

ARCHITECTURES = {  # builder, model class, default targets, head modules, a label count for a new head
    "bert-classifier": (None, "AutoModelForSequenceClassification", ["query", "value"], ["classifier"], 3),
    "bert-tagger": (build_tiny_tagger_base, "AutoModelForTokenClassification", ["query", "value"], ["classifier"], 5),
    "t5": (lambda p: build_tiny_seq2seq(p, "t5"), "AutoModelForSeq2SeqLM", ["q", "v"], [], None),
    "bart": (lambda p: build_tiny_seq2seq(p, "bart"), "AutoModelForSeq2SeqLM", ["q_proj", "v_proj"], [], None),
    "gpt2": (build_tiny_gpt2, "AutoModelForCausalLM", ["c_attn"], [], None),
}


def _base(name, tmp_path, tiny_classifier) -> Path:
    builder = ARCHITECTURES[name][0]
    return tiny_classifier if builder is None else builder(tmp_path / "base")


def _outputs(model, tokenizer):
    import torch

    batch = tokenizer(["the movie was good", "bad awful day"], return_tensors="pt", padding=True)
    if model.config.is_encoder_decoder:
        batch["decoder_input_ids"] = batch["input_ids"][:, :3]
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_base_plus_adapter_loads_back_the_trained_model(name, tmp_path, tiny_classifier):
    import torch

    _, model_class, targets, heads, labels = ARCHITECTURES[name]
    base = _base(name, tmp_path, tiny_classifier)
    label_names = [f"L{i}" for i in range(labels)] if labels else None
    model, tokenizer = load_model(str(base), model_class, "a model", label_names=label_names)
    peft_model, stats, line = adapters.wrap(model, LoraOptions(r=4))
    assert stats["target_modules"] == sorted(targets) and stats["head_modules"] == heads
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable), trainable
    assert stats["trainable_params"] == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert line.startswith(f"LoRA r=4 alpha=16 on {','.join(targets)}")
    torch.manual_seed(1)
    with torch.no_grad():  # as if trained: nonzero updates and a changed head
        for n, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    expected = _outputs(peft_model, tokenizer)

    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    assert not list(adapter_dir.glob("model.safetensors")) and (adapter_dir / "config.json").is_file()
    record = adapters.write_record(adapter_dir, base_model="base:1", base_path=str(base), stats=stats)
    assert 0 < record["adapter_bytes"] < (base / "model.safetensors").stat().st_size

    loaded, loaded_tokenizer = load_model(str(adapter_dir), model_class, "a model")
    assert not hasattr(loaded, "peft_config")  # merged in memory for inference
    torch.testing.assert_close(_outputs(loaded, loaded_tokenizer), expected, atol=1e-5, rtol=1e-4)

    merged_dir = tmp_path / "merged"
    adapters.merged(peft_model).save_pretrained(merged_dir)
    full, _ = load_model(str(merged_dir), model_class, "a model")
    torch.testing.assert_close(_outputs(full, tokenizer), expected, atol=1e-5, rtol=1e-4)


def test_the_base_is_found_where_the_job_runner_resolved_it(tmp_path, tiny_classifier):
    import shutil

    model, tokenizer = load_model(str(tiny_classifier), "AutoModelForSequenceClassification", "a model")
    peft_model, stats, _ = adapters.wrap(model, LoraOptions())
    peft_model.save_pretrained(tmp_path / "adapter")
    moved = shutil.copytree(tiny_classifier, tmp_path / "elsewhere")
    adapters.write_record(tmp_path / "adapter", base_model="base:1", base_path=str(tmp_path / "gone"), stats=stats)
    with pytest.raises(PermanentJobError, match="base model 'base:1' of adapter"):
        load_model(str(tmp_path / "adapter"), "AutoModelForSequenceClassification", "a model")
    adapters.use_base(tmp_path / "adapter", str(moved))
    assert load_model(str(tmp_path / "adapter"), "AutoModelForSequenceClassification", "a model")[0] is not None


def test_an_unknown_target_module_is_refused_naming_the_model_layers(tiny_classifier):
    model, _ = load_model(str(tiny_classifier), "AutoModelForSequenceClassification", "a model")
    with pytest.raises(PermanentJobError, match=r"lora.target_modules: c_attn is not a linear layer .* query"):
        adapters.wrap(model, LoraOptions(target_modules=["query", "c_attn"]))


@pytest.mark.parametrize("values, field", [
    ({"lora": {"r": 0}}, "lora.r"), ({"lora": {"dropout": 1.0}}, "lora.dropout"),
    ({"lora": {"target_modules": []}}, "lora.target_modules"),
    ({"lora": {"r": 8}, "freeze_layers": 1}, "freeze_layers would change nothing"),
    ({"lora": {"r": 8}, "freeze_base": True}, "freeze_base would change nothing"),
    ({"merge_adapter": True}, "merge_adapter merges a LoRA adapter"),
])
def test_bad_lora_options_are_refused(values, field):
    with pytest.raises(ValidationError, match=field):
        FinetuneParams(base_model="m", train_dataset_id=1, **values)


def test_a_lora_fine_tune_saves_a_small_adapter_that_evaluates_like_the_merged_model(
        tiny_classifier, sentiment_data, tmp_path, sentiment_rows, write_jsonl):
    import torch

    params = make_params(tiny_classifier, max_steps=6, learning_rate=1e-2, lora={"r": 4})
    hooks = NullHooks()
    result = run_finetune(params, sentiment_data, tmp_path / "adapter", hooks)
    lora = result["train"]["lora"]
    assert 0 < lora["trainable_share"] < 0.2 and lora["head_modules"] == ["classifier"]
    assert any(v.startswith("LoRA r=4 alpha=16 on query,value and the head (classifier): ")
               for k, v in hooks.events if k == "log")
    adapter_dir = tmp_path / "adapter" / "model"
    assert (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "model.safetensors").exists()
    adapters.write_record(adapter_dir, base_model="tiny:1", base_path=str(tiny_classifier), stats=lora)

    merged = run_finetune(params.model_copy(update={"merge_adapter": True}), sentiment_data, tmp_path / "merged")
    assert (tmp_path / "merged" / "model" / "model.safetensors").is_file()
    assert merged["metrics"]["accuracy"] == result["metrics"]["accuracy"]
    a, tokenizer = load_model(str(adapter_dir), "AutoModelForSequenceClassification", "a model")
    b, _ = load_model(str(tmp_path / "merged" / "model"), "AutoModelForSequenceClassification", "a model")
    torch.testing.assert_close(_outputs(a, tokenizer), _outputs(b, tokenizer), atol=1e-5, rtol=1e-4)

    validation = write_jsonl(tmp_path / "val.jsonl", sentiment_rows(20, seed=9))
    params_class = get_task("text-classification").PARAMS["evaluate"]
    evaluate = get_task("text-classification").evaluate
    scores = [evaluate(str(path), data_path=validation, columns={"text": "text", "label": "label"},
                       params=params_class(model="m", dataset_id=1, precision="fp32"), hooks=NullHooks())
              for path in (adapter_dir, tmp_path / "merged" / "model")]
    assert scores[0]["accuracy"] == scores[1]["accuracy"] and scores[0]["f1_macro"] == scores[1]["f1_macro"]


def test_a_killed_lora_fine_tune_resumes_from_its_adapter_checkpoint(tiny_classifier, sentiment_data, tmp_path):
    import torch

    params = make_params(tiny_classifier, max_steps=8, save_steps=2, learning_rate=1e-2, lora={"r": 4})
    run_finetune(params, sentiment_data, tmp_path / "straight")
    with pytest.raises(JobInterrupted):
        run_finetune(params, sentiment_data, tmp_path, InterruptAfter(step=3))
    checkpoint = next((tmp_path / "checkpoints").glob("checkpoint-*"))
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    resumed = run_finetune(params, sentiment_data, tmp_path)
    assert resumed["train"]["resumed_from_step"] and resumed["train"]["global_step"] == 8
    assert (tmp_path / "model" / "adapter_config.json").is_file()
    for path in (tmp_path / "model", tmp_path / "straight" / "model"):
        adapters.write_record(path, base_model="tiny:1", base_path=str(tiny_classifier), stats=resumed["train"]["lora"])
    a, tokenizer = load_model(str(tmp_path / "model"), "AutoModelForSequenceClassification", "a model")
    b, _ = load_model(str(tmp_path / "straight" / "model"), "AutoModelForSequenceClassification", "a model")
    torch.testing.assert_close(_outputs(a, tokenizer), _outputs(b, tokenizer), atol=1e-5, rtol=1e-4)


TASKS = {
    "multi-label-classification": (build_tiny_classifier, {"text": "text", "label": "labels"}),
    "token-classification": (build_tiny_tagger_base, {"tokens": "tokens", "tags": "tags"}),
    "question-answering": (build_tiny_reader_base, {"question": "question", "context": "context",
                                                    "answers": "answers"}),
    "translation": (lambda path: build_tiny_seq2seq(path, "t5"), {"source": "source", "target": "target"}),
    "summarization": (lambda path: build_tiny_seq2seq(path, "bart"), {"document": "source", "summary": "target"}),
    "text-generation": (build_tiny_gpt2, {"text": "text"}),
}


HEADS = {"multi-label-classification": ["classifier"], "token-classification": ["classifier"],
         "question-answering": ["qa_outputs"]}


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_trains_and_evaluates_a_lora_adapter(task, tmp_path):
    build, columns = TASKS[task]
    base = build(tmp_path / "base")
    rows = topic_rows(32, seed=3) if task == "multi-label-classification" else \
        _rows("translation" if task == "summarization" else task, 32, seed=3)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    module = get_task(task)
    params = module.PARAMS["finetune"](base_model=str(base), train_dataset_id=1, max_steps=4, batch_size=8, max_length=32,
                          learning_rate=1e-3, save_steps=100, validation_fraction=0.25, lora={"r": 4})
    result = module.finetune(params, base_model=str(base), train_path=data, validation_path=None, columns=columns,
                             output_dir=tmp_path / "model", checkpoint_dir=tmp_path / "checkpoints",
                             hooks=NullHooks())
    lora = result["train"]["lora"]
    assert 0 < lora["trainable_share"] < 0.2
    assert lora["head_modules"] == HEADS.get(task, []), lora  # a task's own output layer trains with the adapters
    model_dir = tmp_path / "model"
    assert (model_dir / "adapter_config.json").is_file() and not (model_dir / "model.safetensors").exists()
    record = adapters.write_record(model_dir, base_model="base:1", base_path=str(base), stats=lora)
    assert record["adapter_bytes"] < (base / "model.safetensors").stat().st_size / 2
    evaluate_params = module.PARAMS["evaluate"](model="m", dataset_id=1, precision="fp32")
    metrics = module.evaluate(str(model_dir), data_path=data, columns=columns, params=evaluate_params,
                              hooks=NullHooks())
    assert metrics["rows"] == len(rows)

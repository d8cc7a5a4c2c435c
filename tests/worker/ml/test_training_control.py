"""What trains and when it stops, for every task: bottom-layer freezing, layer-wise learning rates, early stopping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.helpers import ner_sentences, qa_examples, translation_pairs
from tests.tiny_models import (
    build_tiny_encoder,
    build_tiny_gpt2,
    build_tiny_reader_base,
    build_tiny_seq2seq,
    build_tiny_tagger_base,
)
from tests.worker.ml.hooks import InterruptAfter, StopAfter
from tests.worker.ml.test_text_classification import make_params, run_finetune
from worker.errors import JobInterrupted, PermanentJobError
from worker.ml.hooks import NullHooks
from worker.ml.layers import apply_freezing, config_layer_count, model_parts
from worker.ml.loading import load_classifier
from worker.ml.tasks import eval_metrics, get_task
from worker.params import FinetuneParams, GenerationFinetuneParams


def logs(hooks) -> list[str]:
    return [value for name, value in hooks.events if name == "log"]


def evaluations(hooks) -> list[tuple[int, dict]]:
    return [(step, values) for name, (step, values) in
            ((n, v) for n, v in hooks.events if n == "metric") if "eval_loss" in values]


def weights(model) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def saved_weights(path: Path) -> dict:
    return weights(load_classifier(str(path))[0])


@pytest.fixture
def flipped_data(tmp_path, sentiment_rows, write_jsonl) -> tuple[Path, Path]:
    """Train rows with every label swapped, validation rows labelled right: validation loss soon gets worse."""
    rows = sentiment_rows(60)
    for row in rows:
        row["label"] = "negative" if row["label"] == "positive" else "positive"
    return write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "val.jsonl", sentiment_rows(20, seed=5))


# ---- which parameters belong to which layer -------------------------------------------------------


def _load(builder, auto_class: str, path: Path):
    import transformers

    if builder is build_tiny_encoder:  # warm-started BERT2BERT, as seq2seq fine-tunes build it
        from worker.ml.seq2seq import load_seq2seq

        return load_seq2seq(str(builder(path)))[0]
    return getattr(transformers, auto_class).from_pretrained(builder(path))


@pytest.mark.parametrize(
    ("builder", "auto_class", "stack", "embeddings"),
    [
        (build_tiny_tagger_base, "AutoModelForSequenceClassification", "bert.encoder.layer",
         {"bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
          "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
          "bert.embeddings.LayerNorm.bias"}),
        (build_tiny_gpt2, "AutoModelForCausalLM", "transformer.h", {"transformer.wte.weight", "transformer.wpe.weight"}),
        (lambda path: build_tiny_seq2seq(path, "t5"), "AutoModelForSeq2SeqLM", "encoder.block", {"shared.weight"}),
        (lambda path: build_tiny_seq2seq(path, "bart"), "AutoModelForSeq2SeqLM", "model.encoder.layers",
         {"model.shared.weight", "model.encoder.embed_positions.weight", "model.encoder.layernorm_embedding.weight",
          "model.encoder.layernorm_embedding.bias"}),
        (build_tiny_encoder, None, "encoder.encoder.layer",
         {"encoder.embeddings.word_embeddings.weight", "encoder.embeddings.position_embeddings.weight",
          "encoder.embeddings.token_type_embeddings.weight", "encoder.embeddings.LayerNorm.weight",
          "encoder.embeddings.LayerNorm.bias"}),
    ],
    ids=["bert", "gpt2", "t5", "bart", "bert2bert"],
)
def test_layers_and_embeddings_are_found_in_each_family(tmp_path, builder, auto_class, stack, embeddings):
    model = _load(builder, auto_class, tmp_path / "model")
    parts = model_parts(model)
    names = {id(p): n for n, p in model.named_parameters()}

    assert parts.stack == stack and len(parts.layers) == 2
    assert {names[id(p)] for p in parts.embeddings} == embeddings
    for i, layer in enumerate(parts.layers):
        assert layer and all(names[id(p)].startswith(f"{stack}.{i}.") for p in layer)
    counted = [id(p) for p in parts.head + parts.embeddings] + [id(p) for layer in parts.layers for p in layer]
    assert sorted(counted) == sorted(names)  # every parameter in exactly one part; a decoder is in the head


def test_freeze_layers_in_an_encoder_decoder_fixes_only_the_encoders_bottom_layers(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(build_tiny_seq2seq(tmp_path / "t5", "t5"))
    params = FinetuneParams(base_model="t5", train_dataset_id=1, freeze_layers=1)
    line = apply_freezing(model, params)

    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("encoder.block.0.") for name in frozen)
    assert {name for name in dict(model.named_parameters()) if name.startswith("encoder.block.0.")} == frozen
    assert line.startswith("froze the bottom 1 of 2 layers of encoder.block; ")


@pytest.mark.parametrize(
    ("builder", "auto_class", "trains"),
    [
        (build_tiny_reader_base, "AutoModelForQuestionAnswering", {"qa_outputs.weight", "qa_outputs.bias"}),
        (build_tiny_tagger_base, "AutoModelForTokenClassification", {"classifier.weight", "classifier.bias"}),
        (lambda path: build_tiny_seq2seq(path, "bart"), "AutoModelForSeq2SeqLM", None),
    ],
    ids=["reader", "tagger", "bart"],
)
def test_freeze_base_leaves_only_the_head_to_train_in_each_family(tmp_path, builder, auto_class, trains):
    import transformers

    model = getattr(transformers, auto_class).from_pretrained(builder(tmp_path / "model"))
    line = apply_freezing(model, FinetuneParams(base_model="m", train_dataset_id=1, freeze_base=True))

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if trains is None:  # an encoder-decoder: the encoder (and the embeddings it shares) fixed, the decoder trains
        assert trainable and not any(name.startswith(("model.encoder.", "model.shared.")) for name in trainable)
        assert any(name.startswith("model.decoder.layers.") for name in trainable) and line.startswith("froze the encoder")
    else:
        assert trainable == trains and line.startswith("froze the base model (")
    assert line.endswith(f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} of "
                         f"{sum(p.numel() for p in model.parameters()):,} parameters train")


def test_freeze_base_of_a_gpt_style_model_is_refused_saying_why(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_tiny_gpt2(tmp_path / "gpt2"))
    with pytest.raises(PermanentJobError, match="output layer is tied to its embeddings.*use freeze_layers"):
        apply_freezing(model, GenerationFinetuneParams(base_model="m", train_dataset_id=1, freeze_base=True))


def test_freeze_layers_trains_exactly_the_layers_above(tiny_classifier, sentiment_data, tmp_path):
    hooks = NullHooks()
    params = make_params(tiny_classifier, freeze_layers=1, freeze_embeddings=True, max_steps=3, save_steps=100)
    run_finetune(params, sentiment_data, tmp_path, hooks)

    before, after = saved_weights(tiny_classifier), saved_weights(tmp_path / "model")
    fixed = {name for name in before if name.startswith(("bert.embeddings.", "bert.encoder.layer.0."))}
    unchanged = {name for name in before if name in after and (before[name] == after[name]).all()}
    assert fixed <= unchanged  # the embeddings and layer 0 did not move
    trained = [name for name in before if name.endswith("weight") and name not in fixed]
    assert trained and not unchanged & set(trained)  # every weight above them did
    assert any(line.startswith("froze the bottom 1 of 2 layers and the embeddings of bert.encoder.layer; ")
               for line in logs(hooks)), logs(hooks)


def test_freezing_more_layers_than_the_model_has_is_refused(tiny_classifier):
    model, _ = load_classifier(str(tiny_classifier))
    params = FinetuneParams(base_model="m", train_dataset_id=1, freeze_layers=3)
    with pytest.raises(PermanentJobError, match=r"freeze_layers is 3, but this BertForSequenceClassification has 2 "
                                                r"transformer layers \(bert.encoder.layer\): choose at most 2"):
        apply_freezing(model, params)


def test_layer_counts_are_read_from_config_files():
    assert config_layer_count({"model_type": "bert", "num_hidden_layers": 6}) == 6
    assert config_layer_count({"model_type": "t5", "num_layers": 6, "num_decoder_layers": 3}) == 6
    assert config_layer_count({"model_type": "bart", "encoder_layers": 12, "decoder_layers": 2,
                               "num_hidden_layers": 12}) == 12
    assert config_layer_count({"model_type": "gpt2", "n_layer": 4}) == 4
    assert config_layer_count({"encoder": {"num_hidden_layers": 2}, "decoder": {"num_hidden_layers": 9}}) == 2
    assert config_layer_count({"model_type": "custom"}) is None


# ---- layer-wise learning-rate decay ---------------------------------------------------------------


def test_layer_lr_decay_gives_each_layer_its_rate_and_the_head_the_full_rate(tiny_classifier, sentiment_data,
                                                                             tmp_path):
    from transformers import DataCollatorWithPadding

    from worker.ml.tasks import text_classification as tc
    from worker.ml.training import TrainingSetup, _build_trainer

    params = make_params(tiny_classifier, layer_lr_decay=0.5, learning_rate=1e-3, weight_decay=0.01, max_steps=2)
    model, tokenizer = load_classifier(str(tiny_classifier), label_names=["negative", "positive"])
    rows = tc.read_labelled(sentiment_data, "text", "label", "train")
    encoded = tc._encode(tokenizer, rows, {"negative": 0, "positive": 1}, 32)
    built = TrainingSetup(model, tokenizer, encoded, DataCollatorWithPadding(tokenizer))
    trainer = _build_trainer(params, built, tmp_path / "checkpoints", "cpu", "fp32", NullHooks())
    trainer.train()  # the Trainer trains with this optimizer rather than building its own

    names = {id(p): n for n, p in model.named_parameters()}
    rate, decay = {}, {}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            assert names[id(p)] not in rate  # in one group only
            rate[names[id(p)]], decay[names[id(p)]] = group["initial_lr"], group["weight_decay"]
    assert set(rate) == set(names.values())
    expected = {"classifier.": 1e-3, "bert.pooler.": 1e-3, "bert.encoder.layer.1.": 1e-3,
                "bert.encoder.layer.0.": 5e-4, "bert.embeddings.": 2.5e-4}
    for name, lr in rate.items():
        [want] = [value for prefix, value in expected.items() if name.startswith(prefix)]
        assert lr == pytest.approx(want), name
    assert decay["bert.encoder.layer.0.attention.self.query.weight"] == 0.01
    assert decay["bert.encoder.layer.0.attention.self.query.bias"] == 0.0
    assert decay["bert.embeddings.LayerNorm.weight"] == 0.0
    assert all("layer" in group for group in trainer.optimizer.param_groups)  # ours, not one the Trainer built
    assert trainer.optimizer.param_groups[0]["layer"] == "head"  # the group whose rate is logged as learning_rate


# ---- early stopping -------------------------------------------------------------------------------


def test_early_stopping_stops_when_the_metric_plateaus(tiny_classifier, sentiment_data, tmp_path):
    # At this learning rate no prediction changes, so f1 stays put: the first evaluation stays the best.
    hooks = NullHooks()
    params = make_params(tiny_classifier, learning_rate=1e-9, max_steps=40, eval_steps=2, save_steps=10,
                         early_stopping_patience=2)
    result = run_finetune(params, sentiment_data, tmp_path, hooks)

    train = result["train"]
    assert [step for step, _ in evaluations(hooks)] == [2, 4, 6]
    assert (train["global_step"], train["stopped_early"], train["best_step"]) == (6, True, 2)
    assert train["early_stopping_metric"] == "f1_macro"  # the task's main metric, by default
    assert train["best_metric"] == pytest.approx(evaluations(hooks)[0][1]["eval_f1_macro"])
    assert (f"early stopping: f1_macro did not improve on {train['best_metric']:.4g} (step 2) for 2 evaluations; "
            "stopped at step 6 of 40; keeping the checkpoint of step 2") in logs(hooks)
    assert "checkpoints every 10 steps" not in " ".join(logs(hooks))  # 10 is a multiple of 2: kept as asked


def test_early_stopping_keeps_the_best_checkpoint_not_the_last(tiny_classifier, flipped_data, tmp_path):
    train_path, validation_path = flipped_data
    hooks = NullHooks()
    params = make_params(tiny_classifier, max_steps=40, eval_steps=2, save_steps=5, early_stopping_patience=2,
                         early_stopping_metric="eval_loss")
    result = run_finetune(params, train_path, tmp_path, hooks, validation_path=validation_path)

    train = result["train"]
    curve = dict((step, values["eval_loss"]) for step, values in evaluations(hooks))
    best_step = min(curve, key=curve.get)
    assert train["stopped_early"] and train["global_step"] < 40
    assert (train["best_step"], train["best_metric"]) == (best_step, pytest.approx(curve[best_step]))
    assert train["global_step"] == best_step + 2 * 2  # two evaluations without improvement after the best
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == sorted(
        {f"checkpoint-{best_step}", f"checkpoint-{train['global_step']}"})
    result_weights = saved_weights(tmp_path / "model")
    assert same_weights(result_weights, saved_weights(checkpoints / f"checkpoint-{best_step}"))
    assert not same_weights(result_weights, saved_weights(checkpoints / f"checkpoint-{train['global_step']}"))
    assert "checkpoints every 6 steps: save_steps 5 rounded up to a multiple of eval_steps 2" in " ".join(logs(hooks))


def test_a_killed_run_resumes_with_its_best_checkpoint(tiny_classifier, flipped_data, tmp_path):
    train_path, validation_path = flipped_data
    params = make_params(tiny_classifier, max_steps=40, eval_steps=2, save_steps=4, early_stopping_patience=2,
                         early_stopping_metric="loss")
    straight = run_finetune(params, train_path, tmp_path / "straight", validation_path=validation_path)["train"]
    best = straight["best_step"]

    # Stop it just before its last evaluation: the best checkpoint is older than the one it resumes from.
    with pytest.raises(JobInterrupted):
        run_finetune(params, train_path, tmp_path, InterruptAfter(step=straight["global_step"] - 1),
                     validation_path=validation_path)
    left = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert best in left and max(left) > best

    hooks = NullHooks()
    resumed = run_finetune(params, train_path, tmp_path, hooks, validation_path=validation_path)["train"]
    assert resumed["resumed_from_step"] == max(left)
    assert (resumed["global_step"], resumed["best_step"], resumed["stopped_early"]) == (
        straight["global_step"], best, True)
    assert resumed["best_metric"] == pytest.approx(straight["best_metric"])
    assert same_weights(saved_weights(tmp_path / "model"), saved_weights(tmp_path / "straight" / "model"))


def test_a_run_stopped_for_its_window_checkpoints_the_step_its_progress_shows(tiny_classifier, sentiment_data,
                                                                             tmp_path):
    params = make_params(tiny_classifier, max_steps=40, save_steps=100)
    hooks = StopAfter(step=5)
    with pytest.raises(JobInterrupted):
        run_finetune(params, sentiment_data, tmp_path, hooks)
    saved = [step for name, (_, step) in ((n, v) for n, v in hooks.events if n == "checkpoint")]
    trained = [done for name, (_, stage, done, _) in ((n, v) for n, v in hooks.events if n == "progress")
               if stage == "training"]
    assert saved == [6] and trained[-1] == 6  # seen at the step after; a paused job shows the step it resumes after

    resumed = NullHooks()
    assert run_finetune(params, sentiment_data, tmp_path, resumed)["train"]["resumed_from_step"] == 6
    trained = [done for name, (_, stage, done, _) in ((n, v) for n, v in resumed.events if n == "progress")
               if stage == "training"]
    assert trained[0] == 7 and trained[-1] == 40


def test_a_rerun_after_an_early_stop_returns_the_best_checkpoint_without_training(tiny_classifier, flipped_data,
                                                                                 tmp_path):
    train_path, validation_path = flipped_data
    params = make_params(tiny_classifier, max_steps=40, eval_steps=2, save_steps=100, early_stopping_patience=2,
                         early_stopping_metric="loss")
    first = run_finetune(params, train_path, tmp_path, validation_path=validation_path)["train"]
    shutil.rmtree(tmp_path / "model")  # a crash after training, before the model was saved

    hooks = NullHooks()
    again = run_finetune(params, train_path, tmp_path, hooks, validation_path=validation_path)["train"]
    assert again["resumed_from_step"] == first["global_step"]  # the stop was saved: nothing left to train
    assert not any(name == "progress" and value[1] == "training" for name, value in hooks.events)
    assert (again["stopped_early"], again["best_step"]) == (True, first["best_step"])
    assert same_weights(saved_weights(tmp_path / "model"),
                        saved_weights(tmp_path / "checkpoints" / f"checkpoint-{first['best_step']}"))


# ---- every task evaluates during training, reports its metrics and can stop early ----------------


def _rows(task: str, count: int, seed: int) -> list[dict]:
    if task == "token-classification":
        return [{"tokens": tokens, "tags": tags} for tokens, tags in ner_sentences(count, seed=seed)]
    if task == "question-answering":
        return qa_examples(count, seed=seed)
    if task == "translation":
        return [{"source": s, "target": t} for s, t in translation_pairs(count, seed=seed)]
    return [{"text": f"{s} = {t}"} for s, t in translation_pairs(count, seed=seed)]


TASK_CASES = {
    "token-classification": (build_tiny_tagger_base, {"tokens": "tokens", "tags": "tags"}),
    "question-answering": (build_tiny_reader_base, {"question": "question", "context": "context",
                                                    "answers": "answers"}),
    "translation": (lambda path: build_tiny_seq2seq(path, "t5"), {"source": "source", "target": "target"}),
    "text-generation": (build_tiny_gpt2, {"text": "text"}),
}


@pytest.mark.parametrize("task", list(TASK_CASES))
def test_every_task_evaluates_freezes_and_stops_early(task, tmp_path):
    build, columns = TASK_CASES[task]
    base = build(tmp_path / "base")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _rows(task, 48, seed=3)))
    module = get_task(task)
    params_class = GenerationFinetuneParams if module.PARAMS["finetune"] is GenerationFinetuneParams else FinetuneParams
    # No evaluation can improve by a million: the second one stops training, whatever the metric does.
    params = params_class(base_model=str(base), train_dataset_id=1, max_steps=20, batch_size=8, max_length=32,
                          learning_rate=1e-3, eval_steps=2, save_steps=100, early_stopping_patience=1,
                          early_stopping_threshold=1e6, freeze_layers=1, layer_lr_decay=0.8, validation_fraction=0.25)
    hooks = NullHooks()
    result = module.finetune(params, base_model=str(base), train_path=data, validation_path=None, columns=columns,
                             output_dir=tmp_path / "model", checkpoint_dir=tmp_path / "checkpoints", hooks=hooks)

    train = result["train"]
    assert (train["global_step"], train["stopped_early"]) == (4, True)
    assert train["early_stopping_metric"] == next(iter(eval_metrics(task))) and train["best_step"] in (2, 4)
    for _, values in evaluations(hooks):  # what the task declares is what its evaluation reports
        assert {f"eval_{name}" for name in eval_metrics(task)} <= set(values)
    assert any(line.startswith("froze the bottom 1 of 2 layers of ") for line in logs(hooks)), logs(hooks)
    assert any(line.startswith("early stopping: ") for line in logs(hooks))


# ---- parameters refused -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"early_stopping_patience": 3}, "early_stopping_patience needs eval_steps: set eval_steps"),
        ({"early_stopping_metric": "f1_macro"}, "early_stopping_metric applies only with early stopping: set "
                                                "early_stopping_patience"),
        ({"early_stopping_threshold": 0.01, "early_stopping_metric": "loss"},
         "early_stopping_metric and early_stopping_threshold apply only with early stopping"),
        ({"freeze_base": True, "freeze_layers": 2}, "freeze_base already fixes the embeddings and every layer"),
        ({"freeze_base": True, "layer_lr_decay": 0.9}, "so layer_lr_decay would change nothing"),
        ({"layer_lr_decay": 0.0}, "greater than 0"),
        ({"freeze_layers": -1}, "greater than or equal to 0"),
        ({"early_stopping_patience": 0, "eval_steps": 5}, "greater than or equal to 1"),
    ],
)
def test_contradictory_or_incomplete_settings_are_refused(values, says):
    with pytest.raises(ValidationError, match=says):
        FinetuneParams(base_model="m", train_dataset_id=1, **values)


def test_the_metric_name_is_taken_with_or_without_its_eval_prefix():
    params = FinetuneParams(base_model="m", train_dataset_id=1, eval_steps=5, early_stopping_patience=2,
                            early_stopping_metric="eval_f1_macro")
    assert params.early_stopping_metric == "f1_macro"


def test_a_metric_the_task_does_not_report_is_refused_before_training(tiny_classifier, sentiment_data, tmp_path):
    params = make_params(tiny_classifier, eval_steps=2, early_stopping_patience=2, early_stopping_metric="bleu")
    with pytest.raises(PermanentJobError, match="early_stopping_metric 'bleu' is not reported by this task's "
                                                "evaluation during training; choose one of f1_macro, accuracy, loss"):
        run_finetune(params, sentiment_data, tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").glob("checkpoint-*"))

import json
import shutil

import pytest

from tests.worker.ml.hooks import InterruptAfter
from worker.errors import JobInterrupted, PermanentJobError
from worker.ml.hooks import NullHooks
from worker.ml.loading import load_classifier
from worker.ml.tasks import get_task
from worker.ml.tasks import text_classification as tc
from worker.params import EvaluateParams, FinetuneParams

METRIC_KEYS = {
    "accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "per_class",
    "confusion_matrix",
    "support",
}


def make_params(tiny_classifier, **overrides) -> FinetuneParams:
    values = dict(
        base_model=str(tiny_classifier),
        train_dataset_id=1,
        max_steps=8,
        batch_size=8,
        learning_rate=5e-3,
        logging_steps=2,
        save_steps=2,
        validation_fraction=0.2,
    )
    return FinetuneParams(**(values | overrides))


def run_finetune(params, train_path, tmp_path, hooks=None, validation_path=None):
    return tc.finetune(
        params,
        base_model=params.base_model,
        train_path=train_path,
        validation_path=validation_path,
        columns={"text": "text", "label": "label"},
        output_dir=tmp_path / "model",
        checkpoint_dir=tmp_path / "checkpoints",
        hooks=hooks or NullHooks(),
    )


def events(hooks, kind):
    return [value for name, value in hooks.events if name == kind]


@pytest.fixture(scope="module")
def trained_model(tiny_classifier, tmp_path_factory, sentiment_rows, write_jsonl):
    """A tiny classifier fine-tuned until it separates the synthetic sentiment rows."""
    tmp_path = tmp_path_factory.mktemp("trained")
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(80, seed=1))
    params = make_params(tiny_classifier, max_steps=40, batch_size=16, learning_rate=1e-2, save_steps=100)
    run_finetune(params, train, tmp_path)
    return tmp_path / "model"


def test_finetune_saves_a_labelled_model_and_reports(tiny_classifier, sentiment_data, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hooks = NullHooks()
    result = run_finetune(make_params(tiny_classifier), sentiment_data, tmp_path, hooks)

    assert result["label_names"] == ["negative", "positive"]
    assert set(result["metrics"]) == METRIC_KEYS
    assert result["metrics"]["support"] == result["train"]["validation_rows"] == 12
    train = result["train"]
    assert train["global_step"] == 8 and train["resumed_from_step"] is None
    assert train["train_rows"] == 48 and train["device"] == "cpu"
    assert train["precision"] in ("fp32", "bf16")  # auto measures: bf16 only where a step runs clearly faster
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert next(model.parameters()).dtype == torch.float32  # mixed precision keeps fp32 weights
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    assert (tmp_path / "model" / "model.safetensors").is_file()
    AutoTokenizer.from_pretrained(tmp_path / "model")

    losses = [values["loss"] for step, values in events(hooks, "metric") if "loss" in values]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)
    stages = [stage for _, stage, _, _ in events(hooks, "progress")]
    assert stages.index("evaluating") > stages.index("training")
    assert events(hooks, "progress")[stages.index("evaluating") - 1][0] == 1.0


def test_checkpoints_are_marked_complete_and_rotated(tiny_classifier, sentiment_data, tmp_path):
    hooks = NullHooks()
    run_finetune(make_params(tiny_classifier), sentiment_data, tmp_path, hooks)

    saved = [step for _, step in events(hooks, "checkpoint")]
    assert saved == [2, 4, 6, 8]
    left = sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert left == ["checkpoint-6", "checkpoint-8"]
    assert all((tmp_path / "checkpoints" / name / "COMPLETE").is_file() for name in left)
    geometry = json.loads((tmp_path / "checkpoints" / "geometry.json").read_text())
    assert geometry["batch_size"] == 8 and geometry["train_rows"] == 48


def test_interrupted_run_resumes_from_last_complete_checkpoint(tiny_classifier, sentiment_data, tmp_path):
    params = make_params(tiny_classifier)
    with pytest.raises(JobInterrupted):
        run_finetune(params, sentiment_data, tmp_path, InterruptAfter(step=4))
    assert not (tmp_path / "model").exists()
    left = sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert left == ["checkpoint-2", "checkpoint-4"]

    hooks = NullHooks()
    result = run_finetune(params, sentiment_data, tmp_path, hooks)

    assert result["train"]["resumed_from_step"] == 4
    assert result["train"]["global_step"] == 8
    assert [step for _, step in events(hooks, "checkpoint")] == [6, 8]
    assert "resuming from checkpoint-4" in events(hooks, "log")


def test_incomplete_checkpoint_is_ignored_and_removed(tiny_classifier, sentiment_data, tmp_path):
    params = make_params(tiny_classifier)
    with pytest.raises(JobInterrupted):
        run_finetune(params, sentiment_data, tmp_path, InterruptAfter(step=4))
    # A save cut short by a crash: files written, marker missing.
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(checkpoints / "checkpoint-4", checkpoints / "checkpoint-6")
    (checkpoints / "checkpoint-6" / "COMPLETE").unlink()

    hooks = NullHooks()
    result = run_finetune(params, sentiment_data, tmp_path, hooks)

    assert result["train"]["resumed_from_step"] == 4
    assert "removed incomplete checkpoint checkpoint-6" in events(hooks, "log")
    assert (checkpoints / "checkpoint-6" / "COMPLETE").is_file()


def test_resume_with_changed_geometry_is_refused(tiny_classifier, sentiment_data, tmp_path):
    with pytest.raises(JobInterrupted):
        run_finetune(make_params(tiny_classifier), sentiment_data, tmp_path, InterruptAfter(step=3))

    with pytest.raises(PermanentJobError, match=r"batch geometry changed \(batch_size 8 -> 16\)"):
        run_finetune(make_params(tiny_classifier, batch_size=16), sentiment_data, tmp_path)


def test_freeze_base_trains_only_the_head(tiny_classifier, sentiment_data, tmp_path):
    import torch

    params = make_params(tiny_classifier, freeze_base=True, max_steps=2, save_steps=100)
    run_finetune(params, sentiment_data, tmp_path)

    before, _ = load_classifier(str(tiny_classifier))
    after, _ = load_classifier(str(tmp_path / "model"))
    layer_before, layer_after = before.bert.encoder.layer[0], after.bert.encoder.layer[0]
    assert torch.equal(layer_before.output.dense.weight, layer_after.output.dense.weight)
    assert not torch.equal(before.classifier.weight, after.classifier.weight)


def test_explicit_validation_with_unseen_labels_is_refused(
    tiny_classifier, sentiment_data, tmp_path, write_jsonl
):
    validation = write_jsonl(tmp_path / "val.jsonl", [{"text": "meh", "label": "neutral"}])

    with pytest.raises(PermanentJobError, match="'neutral'"):
        run_finetune(make_params(tiny_classifier), sentiment_data, tmp_path, validation_path=validation)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "no rows"),
        ([{"text": "good", "sentiment": "positive"}], "no label column 'label'"),
        ([{"text": "good", "label": "positive"}, {"text": "bad", "label": ""}], "empty in 1 row"),
        ([{"text": "good", "label": "pos"}, {"text": "nice", "label": "pos"}], "at least 2 classes"),
    ],
)
def test_data_errors_say_what_to_fix(tiny_classifier, tmp_path, write_jsonl, rows, message):
    train = write_jsonl(tmp_path / "train.jsonl", rows)

    with pytest.raises(PermanentJobError, match=message):
        run_finetune(make_params(tiny_classifier), train, tmp_path)


def test_evaluate_returns_metrics_of_a_trained_model(trained_model, tmp_path, sentiment_rows, write_jsonl):
    data = write_jsonl(tmp_path / "test.jsonl", sentiment_rows(30, seed=7))
    hooks = NullHooks()

    metrics = tc.evaluate(
        str(trained_model), data_path=data, columns={"text": "text", "label": "label"},
        params=EvaluateParams(model="m", dataset_id=1, batch_size=8, max_length=64), hooks=hooks,
    )

    assert set(metrics) == METRIC_KEYS | {"rows", "dtype"}
    assert metrics["rows"] == metrics["support"] == 30
    assert metrics["accuracy"] >= 0.8
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 30
    assert events(hooks, "progress")[-1] == (1.0, "evaluating", 30, 30)


def test_evaluate_refuses_labels_the_model_does_not_know(trained_model, tmp_path, write_jsonl):
    data = write_jsonl(tmp_path / "test.jsonl", [{"text": "good", "label": "neutral"}])

    with pytest.raises(PermanentJobError, match="'neutral'"):
        tc.evaluate(
            str(trained_model), data_path=data, columns={"text": "text", "label": "label"},
            params=EvaluateParams(model="m", dataset_id=1, batch_size=8, max_length=64), hooks=NullHooks(),
        )


def test_predictor_keeps_input_order_and_reports_bad_rows(trained_model):
    predictor = tc.Predictor(str(trained_model), max_length=64, batch_tokens=40, max_batch_size=3)
    texts = ["awful", "good " * 30, None, "great nice lovely day", "", "terrible sad ugly room", "ok"]
    rows = [(100 + i, text) for i, text in enumerate(texts)]

    results = predictor.predict_chunk(rows)

    assert [r["row"] for r in results] == [row for row, _ in rows]
    assert results[2] == {"row": 102, "error": "empty text"}
    assert results[4] == {"row": 104, "error": "empty text"}
    assert predictor.label_names == ["negative", "positive"]
    assert [results[i]["label"] for i in (0, 1, 3, 5)] == ["negative", "positive", "positive", "negative"]
    for result in (r for r in results if "label" in r):
        assert sum(result["probabilities"].values()) == pytest.approx(1.0)
        assert result["score"] == max(result["probabilities"].values())
    # "awful" is the shortest row, so it was padded in its batch: padding must not change its score.
    alone = predictor.predict_chunk([(0, texts[0])])[0]
    batched = results[0]["probabilities"]["negative"]
    assert alone["probabilities"]["negative"] == pytest.approx(batched, abs=1e-5)


def test_length_batches_respect_the_token_budget():
    lengths = [5, 50, 7, 12, 3, 30, 30, 8, 100]

    batches = tc.length_batches(lengths, batch_tokens=60, max_batch_size=3)

    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert batches[0] == [8]  # longer than the budget on its own: still gets a batch
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 60


def test_get_task_finds_text_classification_and_refuses_unknown():
    assert get_task("text-classification") is tc
    with pytest.raises(PermanentJobError, match="unknown task 'poetry'"):
        get_task("poetry")


def test_load_classifier_refuses_custom_code(tiny_classifier, tmp_path):
    custom = shutil.copytree(tiny_classifier, tmp_path / "custom")
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (custom / "config.json").write_text(json.dumps(config))

    with pytest.raises(PermanentJobError, match="custom code"):
        load_classifier(str(custom))


def test_load_classifier_explains_a_missing_model():
    with pytest.raises(PermanentJobError, match="model 'no-such-model' not found: give a registered model"):
        load_classifier("no-such-model")



def test_eval_steps_report_eval_metrics(tiny_classifier, sentiment_data, tmp_path):
    hooks = NullHooks()
    run_finetune(make_params(tiny_classifier, eval_steps=4, save_steps=100), sentiment_data, tmp_path, hooks)

    evaluated = [step for step, values in events(hooks, "metric") if "eval_accuracy" in values]
    assert evaluated == [4, 8]
    assert all("eval_loss" in values for _, values in events(hooks, "metric") if "eval_accuracy" in values)


def test_save_minutes_forces_checkpoints_between_save_steps(tiny_classifier, sentiment_data, tmp_path):
    hooks = NullHooks()
    params = make_params(tiny_classifier, max_steps=3, save_steps=100, save_minutes=1e-6)
    run_finetune(params, sentiment_data, tmp_path, hooks)

    assert [step for _, step in events(hooks, "checkpoint")] == [1, 2, 3]


def test_rerun_after_training_finished_resumes_at_the_end(tiny_classifier, sentiment_data, tmp_path):
    # A crash after the last checkpoint but before the model was saved: nothing left to train.
    params = make_params(tiny_classifier)
    run_finetune(params, sentiment_data, tmp_path)
    shutil.rmtree(tmp_path / "model")

    result = run_finetune(params, sentiment_data, tmp_path)

    assert result["train"]["resumed_from_step"] == result["train"]["global_step"] == 8
    assert (tmp_path / "model" / "config.json").is_file()


def test_loss_stays_a_mean_with_gradient_accumulation(tiny_classifier, sentiment_data, tmp_path):
    hooks = NullHooks()
    params = make_params(tiny_classifier, max_steps=2, gradient_accumulation_steps=4, learning_rate=1e-9)
    result = run_finetune(params, sentiment_data, tmp_path, hooks)

    # An untrained two-class head scores about ln 2 per example, however many micro-batches add up.
    losses = [values["loss"] for _, values in events(hooks, "metric") if "loss" in values]
    assert losses and all(loss == pytest.approx(0.693, abs=0.05) for loss in losses)
    assert result["train"]["train_loss"] == pytest.approx(0.693, abs=0.05)


def test_gpu_out_of_memory_splits_the_batch_and_keeps_the_order(trained_model):
    import torch

    from worker.ml.predict import predict_probabilities

    predictor = tc.Predictor(str(trained_model), max_length=64, batch_tokens=4096, max_batch_size=64,
                             precision="fp32")
    texts = ["good great", "bad", "awful terrible sad day", "lovely", "poor poor poor", "fine"] * 3
    expected = predictor.predict_probabilities(texts)

    class SmallMemory(torch.nn.Module):
        """The same model, but any batch over 2 rows raises CUDA's out-of-memory error."""

        def __init__(self, model):
            super().__init__()
            self.inner, self.config = model, model.config

        @property
        def device(self):
            return self.inner.device

        def forward(self, **inputs):
            if inputs["input_ids"].shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return self.inner(**inputs)

    got = predict_probabilities(SmallMemory(predictor.model), predictor.tokenizer, texts, max_length=64,
                                batch_tokens=4096, max_batch_size=64)
    assert torch.allclose(got, expected, atol=1e-5)


def test_lean_tokenization_keeps_the_ids_of_every_slice_and_no_encodings(tiny_classifier, monkeypatch):
    from transformers import AutoTokenizer

    from worker.ml import predict

    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    texts = [f"good {'bad ' * i}day" for i in range(10)]
    monkeypatch.setattr(predict, "TOKENIZE_SLICE", 3)  # four slices, the last one short
    lean = predict.tokenize_lean(tokenizer, texts, truncation=True, max_length=8)
    full = tokenizer(texts, truncation=True, max_length=8)
    assert set(lean) == set(full) - {"attention_mask"} and type(lean) is dict
    assert all(lean[key] == full[key] for key in lean)

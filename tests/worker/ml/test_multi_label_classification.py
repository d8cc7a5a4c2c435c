"""Multi-label classification: label sets at upload, a tuned threshold stored with the model, metrics, output."""

import json

import pytest

from tests.helpers import topic_rows
from tests.tiny_models import build_tiny_distilbert_classifier
from tests.worker.ml.hooks import InterruptAfter
from worker.datafiles import DataFileError, ingest
from worker.errors import JobInterrupted, PermanentJobError
from worker.ml.hooks import NullHooks
from worker.ml.metrics import multi_label_metrics
from worker.ml.tasks import get_task
from worker.ml.tasks import multi_label_classification as ml

COLUMNS = {"text": "text", "label": "labels"}


def make_params(base, **overrides) -> ml.MultiLabelFinetuneParams:
    values = dict(base_model=str(base), train_dataset_id=1, max_steps=8, batch_size=8, learning_rate=5e-3,
                  logging_steps=2, save_steps=2, validation_fraction=0.2, precision="fp32")
    return ml.MultiLabelFinetuneParams(**(values | overrides))


def run_finetune(params, train_path, tmp_path, hooks=None, validation_path=None):
    return ml.finetune(params, base_model=params.base_model, train_path=train_path, validation_path=validation_path,
                       columns=COLUMNS, output_dir=tmp_path / "model", checkpoint_dir=tmp_path / "checkpoints",
                       hooks=hooks or NullHooks())


def evaluate_params(**overrides) -> ml.MultiLabelEvaluateParams:
    return ml.MultiLabelEvaluateParams(**({"model": "m", "dataset_id": 1, "batch_size": 8, "max_length": 32} | overrides))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny untrained DistilBERT classifier (BERT's tanh pooler, at this size, learns one label of two)."""
    return build_tiny_distilbert_classifier(tmp_path_factory.mktemp("tiny-distilbert"))


@pytest.fixture(scope="module")
def topic_data(tmp_path_factory, write_jsonl):
    return write_jsonl(tmp_path_factory.mktemp("topics") / "train.jsonl", topic_rows(60))


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory, write_jsonl):
    """A tiny multi-label classifier fine-tuned until it finds the topics; (model dir, fine-tune result)."""
    tmp_path = tmp_path_factory.mktemp("trained-multi-label")
    train = write_jsonl(tmp_path / "train.jsonl", topic_rows(160, seed=1))
    params = make_params(base, max_steps=100, batch_size=16, learning_rate=1e-2, save_steps=1000,
                         max_length=32, eval_steps=50)
    hooks = NullHooks()
    result = run_finetune(params, train, tmp_path, hooks)
    return tmp_path / "model", result, hooks


# ---- fine-tuning ------------------------------------------------------------------------------


def test_finetune_tunes_a_threshold_and_stores_it_with_a_multi_label_model(trained):
    from transformers import AutoConfig

    model_dir, result, hooks = trained
    assert result["label_names"] == ["complaint", "praise"]
    metrics = result["metrics"]
    assert {"subset_accuracy", "hamming_loss", "f1_micro", "f1_macro", "precision_micro", "recall_macro",
            "f1_weighted", "per_class", "support", "threshold", "threshold_source"} <= set(metrics)
    assert metrics["threshold_source"] == "tuned on validation" and 0 < metrics["threshold"] < 1
    assert metrics["f1_micro"] >= 0.9 and metrics["subset_accuracy"] >= 0.8
    assert set(metrics["per_class"]) == {"complaint", "praise"}
    assert result["train"]["threshold"] == metrics["threshold"] and result["train"]["validation_rows"] == 32
    config = AutoConfig.from_pretrained(model_dir)
    assert config.problem_type == "multi_label_classification"
    assert config.multi_label_threshold == metrics["threshold"]
    assert config.id2label == {0: "complaint", 1: "praise"}
    # Periodic evaluations (eval_steps) score label sets too.
    metrics_logged = [values for name, (_step, values) in
                      ((name, value) for name, value in hooks.events if name == "metric")]
    assert any("eval_f1_micro" in values for values in metrics_logged), metrics_logged


def test_a_given_threshold_is_stored_instead_of_tuned(base, topic_data, tmp_path):
    from transformers import AutoConfig

    result = run_finetune(make_params(base, threshold=0.3), topic_data, tmp_path)

    assert (result["metrics"]["threshold"], result["metrics"]["threshold_source"]) == (0.3, "job")
    assert AutoConfig.from_pretrained(tmp_path / "model").multi_label_threshold == 0.3


def test_interrupted_multi_label_run_resumes_from_its_checkpoint(base, topic_data, tmp_path):
    params = make_params(base)
    with pytest.raises(JobInterrupted):
        run_finetune(params, topic_data, tmp_path, InterruptAfter(step=4))
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    result = run_finetune(params, topic_data, tmp_path)

    assert result["train"]["resumed_from_step"] == 4 and result["train"]["global_step"] == 8
    assert "threshold" in result["metrics"]


def test_early_stopping_watches_micro_f1_and_the_threshold_is_tuned_on_the_kept_model(base, topic_data, tmp_path):
    # No evaluation can improve by a million: the second one stops training.
    params = make_params(base, max_steps=20, eval_steps=2, save_steps=100, early_stopping_patience=1,
                         early_stopping_threshold=1e6)

    result = run_finetune(params, topic_data, tmp_path)

    train = result["train"]
    assert (train["global_step"], train["stopped_early"], train["early_stopping_metric"]) == (4, True, "f1_micro")
    assert train["threshold_source"] == "tuned on validation"


def test_a_lora_adapter_keeps_the_multi_label_head_and_threshold(base, topic_data, tmp_path):
    from worker.ml import adapters

    result = run_finetune(make_params(base, max_steps=6, learning_rate=1e-2, lora={"r": 4}, threshold=0.4),
                          topic_data, tmp_path)

    adapter_dir = tmp_path / "model"
    assert (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "model.safetensors").exists()
    adapters.write_record(adapter_dir, base_model="tiny:1", base_path=str(base), stats=result["train"]["lora"])
    predictor = ml.Predictor(str(adapter_dir), max_length=32, batch_tokens=64, max_batch_size=4)
    assert predictor.decision() == {"threshold": 0.4, "threshold_source": "model"}
    assert set(predictor.predict_chunk([(0, "good bad")])[0]["scores"]) == {"complaint", "praise"}


def test_the_loss_is_the_mean_over_every_label_of_the_accumulated_batch():
    import torch
    from types import SimpleNamespace

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]])
    labels = torch.tensor([[1, 0, 1], [0, 1, 0]])
    outputs = SimpleNamespace(logits=logits)
    mean = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())

    assert ml.MULTI_LABEL.loss(outputs, labels) == pytest.approx(mean.item())
    # One of two accumulated micro-batches of 3 rows x 3 labels: 18 targets in all.
    assert ml.MULTI_LABEL.loss(outputs, labels, num_items_in_batch=18) == pytest.approx(mean.item() * 6 / 18)


@pytest.mark.parametrize(("rows", "message"), [
    ([{"text": "good", "labels": []}, {"text": "bad", "labels": []}], "holds no label in any row"),
    ([{"text": "good", "labels": "praise"}], "not a list of labels"),
    ([{"text": "good", "labels": ["praise"]}, {"text": "bad", "labels": None}], "empty in 1 row"),
])
def test_data_errors_say_what_to_fix(base, tmp_path, write_jsonl, rows, message):
    with pytest.raises(PermanentJobError, match=message):
        run_finetune(make_params(base), write_jsonl(tmp_path / "train.jsonl", rows), tmp_path)


def test_validation_labels_the_train_data_lacks_are_refused(base, topic_data, tmp_path, write_jsonl):
    validation = write_jsonl(tmp_path / "val.jsonl", [{"text": "good", "labels": ["praise", "irony"]}])

    with pytest.raises(PermanentJobError, match="'irony'"):
        run_finetune(make_params(base), topic_data, tmp_path, validation_path=validation)


# ---- threshold and metrics --------------------------------------------------------------------


def test_tune_threshold_picks_the_best_micro_f1_nearest_one_half():
    import torch

    names = ["a", "b"]
    probabilities = torch.tensor([[0.9, 0.61], [0.31, 0.2], [0.1, 0.3]])
    # True: a and b in row 0. Every threshold in (0.31, 0.61] predicts exactly those; 0.5 is one.
    assert ml.tune_threshold(probabilities, [["a", "b"], [], []], names) == 0.5
    # a in row 1 too (0.31), while b in row 2 (0.3) is not: only 0.31 is perfect.
    assert ml.tune_threshold(probabilities, [["a", "b"], ["a"], []], names) == pytest.approx(0.31)
    # No true label at all: nothing to tune on, so the default.
    assert ml.tune_threshold(probabilities, [[], [], []], names) == ml.DEFAULT_THRESHOLD


def test_multi_label_metrics_by_label_and_averaged():
    names = ["a", "b", "c"]
    expected = [["a", "b"], ["a"], ["c"], []]
    predicted = [["a"], ["a", "c"], ["c"], []]

    metrics = multi_label_metrics(expected, predicted, names)

    assert metrics["subset_accuracy"] == pytest.approx(2 / 4)
    assert metrics["hamming_loss"] == pytest.approx(2 / 12)
    # Micro: TP 3 (a, a, c), FP 1 (c in row 2), FN 1 (b in row 1).
    assert metrics["precision_micro"] == pytest.approx(3 / 4) and metrics["recall_micro"] == pytest.approx(3 / 4)
    assert metrics["per_class"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2, "predicted": 2}
    assert metrics["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0}
    assert metrics["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert metrics["f1_macro"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert metrics["support"] == 4
    json.dumps(metrics)  # stored as JSON


def test_multi_label_metrics_of_a_single_label_score_its_presence():
    metrics = multi_label_metrics([["x"], [], ["x"], ["x"]], [["x"], ["x"], [], ["x"]], ["x"])

    assert metrics["precision_micro"] == pytest.approx(2 / 3) and metrics["recall_micro"] == pytest.approx(2 / 3)
    assert list(metrics["per_class"]) == ["x"] and metrics["per_class"]["x"]["support"] == 3
    assert metrics["subset_accuracy"] == pytest.approx(0.5)


# ---- evaluation and batch inference ------------------------------------------------------------


def test_evaluate_scores_label_sets_at_the_models_threshold_or_the_jobs(trained, tmp_path, write_jsonl):
    model_dir, result, _hooks = trained
    data = write_jsonl(tmp_path / "test.jsonl", topic_rows(40, seed=7))

    def evaluate(**params):
        return ml.evaluate(str(model_dir), data_path=data, columns=COLUMNS, params=evaluate_params(**params),
                           hooks=NullHooks())

    metrics = evaluate()
    assert metrics["rows"] == metrics["support"] == 40
    assert (metrics["threshold"], metrics["threshold_source"]) == (result["metrics"]["threshold"], "model")
    assert metrics["f1_micro"] >= 0.9
    everything = evaluate(threshold=0.001)
    assert (everything["threshold"], everything["threshold_source"]) == (0.001, "job")
    assert everything["recall_micro"] == 1.0 and everything["f1_micro"] < metrics["f1_micro"]


def test_evaluate_refuses_labels_the_model_does_not_know(trained, tmp_path, write_jsonl):
    data = write_jsonl(tmp_path / "test.jsonl", [{"text": "good", "labels": ["praise", "irony"]}])

    with pytest.raises(PermanentJobError, match="'irony'"):
        ml.evaluate(str(trained[0]), data_path=data, columns=COLUMNS, params=evaluate_params(), hooks=NullHooks())


def test_predictor_gives_each_row_its_labels_above_the_threshold_and_every_score(trained):
    model_dir, result, _hooks = trained
    predictor = ml.Predictor(str(model_dir), max_length=32, batch_tokens=64, max_batch_size=4)
    texts = ["the food was good great and lovely", None, "awful sad poor room", "the movie",
             "good awful great nasty lovely terrible happy ugly", " "]

    results = predictor.predict_chunk([(10 + i, text) for i, text in enumerate(texts)])

    assert [r["row"] for r in results] == [10, 11, 12, 13, 14, 15]
    assert results[1] == {"row": 11, "error": "empty text"} and results[5] == {"row": 15, "error": "empty text"}
    assert results[0]["labels"] == ["praise"] and results[2]["labels"] == ["complaint"]
    assert results[3]["labels"] == [] and sorted(results[4]["labels"]) == ["complaint", "praise"], results
    threshold = result["metrics"]["threshold"]
    for row in (r for r in results if "labels" in r):
        assert set(row) == {"row", "labels", "scores"} and list(row["scores"]) == predictor.label_names
        assert row["labels"] == sorted((n for n, s in row["scores"].items() if s >= threshold),
                                       key=lambda n: -row["scores"][n])


def test_a_batch_jobs_threshold_overrides_the_models(trained):
    params = ml.MultiLabelBatchParams(model="m", dataset_id=1, threshold=0.999999)
    predictor = ml.Predictor.for_job(str(trained[0]), params)

    assert predictor.decision() == {"threshold": 0.999999, "threshold_source": "job"}
    assert predictor.predict_chunk([(0, "good great nice")])[0]["labels"] == []


def test_a_single_label_classifier_is_refused_for_multi_label_jobs(tiny_classifier):
    with pytest.raises(PermanentJobError, match="not a multi-label classifier.*task=multi-label-classification"):
        ml.Predictor(str(tiny_classifier), max_length=32, batch_tokens=64, max_batch_size=4)


def test_get_task_finds_the_module():
    assert get_task("multi-label-classification") is ml


# ---- upload ---------------------------------------------------------------------------------------


def ingest_bytes(tmp_path, content: bytes, fmt: str, **options):
    import io

    schema = ml.row_schema({"text": "text", "label": "labels"}, **options)
    dest = tmp_path / "out.jsonl"
    result = ingest(io.BytesIO(content), fmt=fmt, dest=dest, schema=schema)
    return result, [json.loads(line) for line in dest.read_text().splitlines()]


def test_upload_reads_json_lists_in_csv_cells_and_counts_labels(tmp_path):
    content = b'text,labels\nfood and room,"[""food"", ""room""]"\nnothing,[]\nmovie,"[""movie"", ""movie"", 7]"\n'

    result, rows = ingest_bytes(tmp_path, content, "csv")

    assert [row["labels"] for row in rows] == [["food", "room"], [], ["movie", "7"]]
    assert result.stats["label_distribution"] == {"7": 1, "food": 1, "movie": 1, "room": 1}
    assert result.stats["num_labels"] == 4 and result.stats["rows_without_labels"] == 1
    assert result.stats["labels_per_row"]["max"] == 2


def test_upload_splits_labels_on_a_separator(tmp_path):
    content = b"text\tlabels\nfood and room\tfood| room|\nnothing\t\n"

    _result, rows = ingest_bytes(tmp_path, content, "tsv", label_separator="|")

    assert [row["labels"] for row in rows] == [["food", "room"], []]


def test_upload_takes_native_lists_of_json_lines(tmp_path):
    content = b'{"text": "a", "labels": ["x", "y"]}\n{"text": "b", "labels": []}\n'

    _result, rows = ingest_bytes(tmp_path, content, "jsonl", label_separator=",")

    assert [row["labels"] for row in rows] == [["x", "y"], []]


@pytest.mark.parametrize(("content", "fmt", "mentions"), [
    (b'text,labels\nok,[]\nbad,"[""food"", "\n', "csv", ["Row 2 (line 3)", "not a valid JSON list", "label_separator"]),
    (b"text,labels\nok,[]\nbad,food|room\n", "csv", ["Row 2", "'food|room'", "not a JSON list", "label_separator"]),
    (b'{"text": "a", "labels": ["x", ""]}\n', "jsonl", ["Row 1", "position 2"]),
    (b'{"text": "a", "labels": [["x"]]}\n', "jsonl", ["Row 1", "position 1"]),
    (b'{"text": "a", "labels": {"x": 1}}\n', "jsonl", ["Row 1", "not a list of labels"]),
    (b'{"text": "a", "labels": []}\n{"text": "b"}\n', "jsonl", ["Row 2", "holds nothing"]),
])
def test_bad_label_cells_name_the_row_and_what_to_fix(tmp_path, content, fmt, mentions):
    with pytest.raises(DataFileError) as refused:
        ingest_bytes(tmp_path, content, fmt)

    assert refused.value.code == "bad_labels"
    for text in mentions:
        assert text in refused.value.message, refused.value.message
    assert refused.value.details["column"] == "labels"

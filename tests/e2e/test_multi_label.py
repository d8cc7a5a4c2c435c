"""Multi-label classification end to end: JSON-list and separated uploads, a fine-tune killed and resumed,
evaluate at the model's threshold and at the job's, batch inference with every label above the threshold."""

from __future__ import annotations

import csv
import json

import pytest

from nightshift.client import ApiError
from tests.e2e.conftest import kill_after_first_checkpoint
from tests.helpers import topic_rows
from tests.tiny_models import build_tiny_distilbert_classifier

pytestmark = pytest.mark.slow

TASK = "multi-label-classification"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_distilbert_classifier(tmp_path_factory.mktemp("multi-label-base"))


def write_labelled(path, rows: list[dict], separator: str | None = None):
    """Write rows as CSV or TSV: labels as a JSON list, or joined by `separator`."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow(["text", "labels"])
        for row in rows:
            writer.writerow([row["text"], separator.join(row["labels"]) if separator else json.dumps(row["labels"])])
    return path


@pytest.fixture(scope="module")
def trained(system, database, base, tmp_path_factory):
    """Fine-tune on a JSON-list CSV with a separated TSV as validation, killing the process once after a checkpoint."""
    client, _settings, _stack = system
    folder = tmp_path_factory.mktemp("multi-label-data")
    train = client.upload_dataset(write_labelled(folder / "train.csv", topic_rows(240, seed=1)), task=TASK)
    validation = client.upload_dataset(write_labelled(folder / "val.tsv", topic_rows(60, seed=2), separator="|"),
                                       task=TASK, label_separator="|")
    job = client.submit("finetune", {
        "base_model": str(base), "train_dataset_id": train["id"], "validation_dataset_id": validation["id"],
        "max_steps": 250, "batch_size": 16, "learning_rate": 3e-3, "logging_steps": 20, "save_steps": 20,
        "max_length": 32, "precision": "fp32", "model_name": "tiny-topics",
    }, task=TASK)
    kill_after_first_checkpoint(database, job["id"])
    return client, client.wait(job["id"], timeout=600), train, validation


def test_both_label_formats_upload_as_label_sets(trained):
    _client, _job, train, validation = trained
    for dataset, rows in ((train, 240), (validation, 60)):
        assert dataset["task"] == TASK and dataset["row_count"] == rows
        assert dataset["columns_by_role"] == {"text": "text", "label": "labels"}
        assert set(dataset["stats"]["label_distribution"]) == {"praise", "complaint"}
        assert dataset["stats"]["rows_without_labels"] > 0 and dataset["stats"]["labels_per_row"]["max"] == 2


def test_a_killed_fine_tune_resumes_and_registers_a_multi_label_model_with_its_threshold(trained):
    client, job, _train, validation = trained
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["result"]["train"]["resumed_from_step"] >= 20
    assert job["result"]["model"] == "tiny-topics:1"
    assert job["result"]["metrics"]["f1_micro"] >= 0.9 and job["result"]["metrics"]["subset_accuracy"] >= 0.8
    assert job["result"]["train"]["threshold_source"] == "tuned on validation"
    model = client.request("GET", "/models/tiny-topics")["items"][0]
    assert model["task"] == TASK and model["label_names"] == ["complaint", "praise"]
    evaluation = client.request("GET", f"/evaluations/{job['result']['evaluation_id']}")
    assert evaluation["dataset_id"] == validation["id"] and evaluation["split"] == "validation"
    assert set(evaluation["metrics"]["per_class"]) == {"complaint", "praise"}
    assert evaluation["metrics"]["threshold"] == job["result"]["train"]["threshold"]


def test_evaluate_uses_the_models_threshold_unless_the_job_gives_one(trained, tmp_path):
    client, job, _train, _validation = trained
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in topic_rows(50, seed=5)))
    data = client.upload_dataset(path, task=TASK)

    def evaluate(**params) -> dict:
        done = client.wait(client.submit("evaluate", {"model": "tiny-topics", "dataset_id": data["id"], **params},
                                         task=TASK)["id"], timeout=180)
        assert done["status"] == "succeeded", done["error"]
        return client.request("GET", f"/evaluations/{done['result']['evaluation_id']}")["metrics"]

    metrics = evaluate()
    assert metrics["rows"] == 50 and metrics["f1_micro"] >= 0.9
    assert (metrics["threshold"], metrics["threshold_source"]) == (job["result"]["train"]["threshold"], "model")
    everything = evaluate(threshold=0.0001)
    assert (everything["threshold"], everything["threshold_source"]) == (0.0001, "job")
    assert everything["recall_micro"] == 1.0 and everything["f1_micro"] < metrics["f1_micro"]


def test_batch_inference_gives_every_label_above_the_threshold_row_by_row_in_order(trained, tmp_path):
    client, job, _train, _validation = trained
    rows = topic_rows(300, seed=8)
    rows[11]["text"] = " "
    with open(tmp_path / "docs.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "text"])
        writer.writerows([f"d{i}", row["text"]] for i, row in enumerate(rows))
    docs = client.upload_dataset(tmp_path / "docs.csv")
    batch = client.submit("batch_inference", {"model": "tiny-topics", "dataset_id": docs["id"], "chunk_rows": 64},
                          task=TASK)
    batch = client.wait(batch["id"], timeout=180)
    assert batch["status"] == "succeeded", batch["error"]

    output = [json.loads(line) for line in client.download_output(batch["id"], tmp_path / "p.jsonl").open()]
    errors = [json.loads(line) for line in client.download_output(batch["id"], tmp_path / "e.jsonl", errors=True).open()]
    assert [e["row"] for e in errors] == [11]
    assert (batch["result"]["threshold"], batch["result"]["threshold_source"]) == (job["result"]["train"]["threshold"],
                                                                                   "model")
    assert [r["row"] for r in output] == [i for i in range(300) if i != 11] and output[0]["id"] == "d0"
    threshold = job["result"]["train"]["threshold"]
    for line in output:
        assert set(line) == {"row", "id", "labels", "scores"} and set(line["scores"]) == {"complaint", "praise"}
        assert line["labels"] == sorted((n for n, s in line["scores"].items() if s >= threshold),
                                        key=lambda n: -line["scores"][n])
    right = sum(sorted(line["labels"]) == rows[line["row"]]["labels"] for line in output)
    assert right >= 0.9 * len(output)

    strict = client.wait(client.submit("batch_inference", {"model": "tiny-topics", "dataset_id": docs["id"],
                                                           "threshold": 0.999999}, task=TASK)["id"], timeout=180)
    assert strict["status"] == "succeeded", strict["error"]
    assert (strict["result"]["threshold"], strict["result"]["threshold_source"]) == (0.999999, "job")
    lines = [json.loads(line) for line in client.download_output(strict["id"], tmp_path / "s.jsonl").open()]
    assert len(lines) == 299 and sum(bool(line["labels"]) for line in lines) < len(lines) // 2


def test_a_multi_label_model_is_refused_for_single_label_jobs(trained, tmp_path):
    client, _job, _train, _validation = trained
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\ngood,pos\nbad,neg\n")
    reviews = client.upload_dataset(path, label_column="label")
    with pytest.raises(ApiError) as refused:
        client.submit("evaluate", {"model": "tiny-topics", "dataset_id": reviews["id"]})
    assert refused.value.status == 422 and refused.value.body["error"]["code"] == "wrong_task"
    assert f"model tiny-topics:1 is a {TASK} model; this job is text-classification" in str(refused.value)

"""Named-entity recognition end to end: CoNLL upload, a fine-tune killed and resumed, evaluate, batch inference."""

from __future__ import annotations

import csv
import json

import pytest

from nightshift.client import ApiError
from tests.e2e.conftest import kill_after_first_checkpoint
from tests.helpers import ner_sentences, write_conll
from tests.tiny_models import build_tiny_tagger_base

pytestmark = pytest.mark.slow

TASK = "token-classification"


@pytest.fixture(scope="module")
def tagger_base(tmp_path_factory):
    return build_tiny_tagger_base(tmp_path_factory.mktemp("tagger-base"))


@pytest.fixture(scope="module")
def trained(system, database, tagger_base, tmp_path_factory):
    """Fine-tune a tagger from a CoNLL upload, killing its process once after the first checkpoint."""
    client, _settings, _stack = system
    folder = tmp_path_factory.mktemp("ner-data")
    train = client.upload_dataset(write_conll(folder / "train.conll", ner_sentences(160, seed=1)), task=TASK)
    job = client.submit("finetune", {
        "base_model": str(tagger_base), "train_dataset_id": train["id"], "max_steps": 1500, "batch_size": 16,
        "learning_rate": 5e-3, "logging_steps": 20, "save_steps": 25, "model_name": "tiny-ner", "max_length": 32,
    }, task=TASK)
    # Many steps, so that no machine finishes before the kill; the resumed attempt does the rest.
    kill_after_first_checkpoint(database, job["id"])
    return client, client.wait(job["id"], timeout=600), train


def test_conll_upload_records_the_task_its_columns_and_entity_counts(trained):
    _client, _job, train = trained
    assert train["task"] == TASK and train["row_count"] == 160
    assert train["columns_by_role"] == {"tokens": "tokens", "tags": "tags"}
    assert set(train["stats"]["entity_counts"]) == {"PER", "LOC"}


def test_a_killed_fine_tune_resumes_and_registers_a_tagger(trained):
    client, job, _train = trained
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["result"]["train"]["resumed_from_step"] >= 25
    assert job["result"]["model"] == "tiny-ner:1" and job["result"]["metrics"]["f1"] >= 0.9
    model = client.request("GET", "/models/tiny-ner")["items"][0]
    assert model["task"] == TASK and model["label_names"] == ["O", "B-LOC", "I-LOC", "B-PER"]
    assert model["tokenizer"]["type"] == "WordPiece" and model["tokenizer"]["vocab_size"] > 100
    evaluation = client.request("GET", f"/evaluations/{job['result']['evaluation_id']}")
    assert set(evaluation["metrics"]["per_type"]) == {"PER", "LOC"}


def test_evaluate_job_scores_the_tagger_on_jsonl_sentences(trained, tmp_path):
    client, _job, _train = trained
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps({"words": t, "ner": g}) + "\n" for t, g in ner_sentences(40, seed=5)))
    data = client.upload_dataset(path, task=TASK, tokens_column="words", tags_column="ner")
    job = client.wait(client.submit("evaluate", {"model": "tiny-ner", "dataset_id": data["id"]}, task=TASK)["id"],
                      timeout=180)
    assert job["status"] == "succeeded", job["error"]
    metrics = client.request("GET", f"/evaluations/{job['result']['evaluation_id']}")["metrics"]
    assert metrics["rows"] == 40 and metrics["f1"] >= 0.9


def test_batch_inference_finds_entity_spans_row_by_row_in_order(trained, tmp_path):
    client, _job, _train = trained
    texts = [" ".join(tokens).title() for tokens, _ in ner_sentences(300, seed=8)]
    texts[7] = " "
    with open(tmp_path / "docs.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "text"])
        writer.writerows([f"d{i}", text] for i, text in enumerate(texts))
    docs = client.upload_dataset(tmp_path / "docs.csv")
    job = client.submit("batch_inference", {"model": "tiny-ner", "dataset_id": docs["id"], "chunk_rows": 64},
                        task=TASK)
    job = client.wait(job["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    rows = [json.loads(line) for line in client.download_output(job["id"], tmp_path / "p.jsonl").open()]
    errors = [json.loads(line) for line in client.download_output(job["id"], tmp_path / "e.jsonl", errors=True).open()]
    assert [e["row"] for e in errors] == [7]
    assert [r["row"] for r in rows] == [i for i in range(300) if i != 7]
    assert rows[0]["id"] == "d0"
    for row in rows:
        text = texts[row["row"]]
        assert row["entities"], text  # every synthetic sentence names someone or somewhere
        assert all(text[e["start"]:e["end"]] == e["text"] for e in row["entities"])


def test_a_tagger_job_on_classification_data_or_model_is_refused(trained, tmp_path):
    client, _job, train = trained
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text("text,label\ngood,pos\nbad,neg\n")
    reviews = client.upload_dataset(csv_path, label_column="label")
    with pytest.raises(ApiError) as refused:
        client.submit("evaluate", {"model": "tiny-ner", "dataset_id": reviews["id"]}, task=TASK)
    assert refused.value.status == 422 and refused.value.body["error"]["code"] == "wrong_task"
    assert "holds text-classification data; this job is token-classification" in str(refused.value)
    with pytest.raises(ApiError) as refused:
        client.submit("evaluate", {"model": "tiny-ner", "dataset_id": train["id"]})
    assert refused.value.status == 422
    assert "model tiny-ner:1 is a token-classification model; this job is text-classification" in str(refused.value)

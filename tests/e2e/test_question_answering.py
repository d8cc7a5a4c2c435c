"""Extractive QA end to end: SQuAD JSON upload, a fine-tune killed and resumed, evaluate, answers in batch."""

from __future__ import annotations

import json

import pytest

from nightshift.client import ApiError
from tests.e2e.conftest import kill_after_first_checkpoint
from tests.helpers import qa_examples
from tests.tiny_models import build_tiny_reader_base

pytestmark = pytest.mark.slow

TASK = "question-answering"


def squad_document(rows: list[dict]) -> dict:
    """The synthetic rows as a SQuAD v1.1 document: one article, one paragraph per row."""
    paragraphs = [{"context": r["context"], "qas": [{"id": r["id"], "question": r["question"], "answers": [
        {"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])]}]}
        for r in rows]
    return {"version": "1.1", "data": [{"title": "People and places", "paragraphs": paragraphs}]}


@pytest.fixture(scope="module")
def reader(system, database, tmp_path_factory):
    client, _settings, _stack = system
    folder = tmp_path_factory.mktemp("qa")
    base = build_tiny_reader_base(folder / "base")
    (folder / "train.json").write_text(json.dumps(squad_document(qa_examples(400, seed=1))))
    train = client.upload_dataset(folder / "train.json", task=TASK)
    job = client.submit("finetune", {
        "base_model": str(base), "train_dataset_id": train["id"], "max_steps": 800, "batch_size": 16,
        "learning_rate": 3e-3, "max_length": 64, "save_steps": 40, "model_name": "tiny-reader",
    }, task=TASK)
    kill_after_first_checkpoint(database, job["id"])
    return client, client.wait(job["id"], timeout=600), train


def test_a_squad_upload_is_one_row_per_question(reader):
    _client, _job, train = reader
    assert train["task"] == TASK and train["format"] == "squad" and train["row_count"] == 400
    assert train["stats"]["answers"] == 400


def test_a_killed_qa_fine_tune_resumes_and_scores_exact_match(reader):
    client, job, _train = reader
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["result"]["train"]["resumed_from_step"] >= 40
    assert job["result"]["metrics"]["exact_match"] >= 50  # an untrained head scores 0 on these
    assert client.request("GET", "/models/tiny-reader")["items"][0]["task"] == TASK


def test_qa_evaluate_and_batch_answers(reader, tmp_path):
    client, _job, _train = reader
    held_out = tmp_path / "eval.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in qa_examples(50, seed=9)))
    data = client.upload_dataset(held_out, task=TASK)
    evaluation = client.wait(client.submit("evaluate", {"model": "tiny-reader", "dataset_id": data["id"]},
                                           task=TASK)["id"], timeout=180)
    assert evaluation["status"] == "succeeded", evaluation["error"]
    metrics = client.request("GET", f"/evaluations/{evaluation['result']['evaluation_id']}")["metrics"]
    assert metrics["rows"] == 50 and metrics["exact_match"] >= 50

    questions = [{"question": r["question"], "context": r["context"]} for r in qa_examples(90, seed=4)]
    questions[5]["question"] = " "
    unlabelled = tmp_path / "ask.jsonl"
    unlabelled.write_text("".join(json.dumps(q) + "\n" for q in questions))
    ask = client.upload_dataset(unlabelled, task=TASK)
    assert ask["label_column"] is None  # questions to answer, not training data
    batch = client.wait(client.submit("batch_inference", {"model": "tiny-reader", "dataset_id": ask["id"],
                                                          "chunk_rows": 32}, task=TASK)["id"], timeout=180)
    assert batch["status"] == "succeeded", batch["error"]
    rows = [json.loads(line) for line in client.download_output(batch["id"], tmp_path / "p.jsonl").open()]
    errors = [json.loads(line) for line in client.download_output(batch["id"], tmp_path / "e.jsonl", errors=True).open()]
    assert errors == [{"row": 5, "error": "empty question"}]
    assert [r["row"] for r in rows] == [i for i in range(90) if i != 5]
    assert all(questions[r["row"]]["context"][r["start"]:r["end"]] == r["answer"] for r in rows)

    with pytest.raises(ApiError) as refused:  # unlabelled questions cannot train a reader
        client.submit("finetune", {"base_model": "tiny-reader", "train_dataset_id": ask["id"]}, task=TASK)
    assert refused.value.status == 422 and refused.value.body["error"]["code"] == "dataset_unlabelled"

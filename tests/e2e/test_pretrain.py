"""Continued pre-training end to end: unlabelled text uploaded (.jsonl and .txt), a masked-LM pretrain
killed after its first checkpoint and resumed, perplexity in its result, a classifier fine-tuned from the
registered base model, evaluation of the base refused; causal-LM from a .txt file."""

from __future__ import annotations

import json
import random

import pytest

from nightshift.client import ApiError
from tests.e2e.conftest import kill_after_first_checkpoint
from tests.helpers import write_reviews

pytestmark = pytest.mark.slow

PATTERNS = [
    "the movie was good and the food was great",
    "the service was bad and the room was awful",
    "i liked it a lot, what a nice day!",
    "i hated it, what a terrible day?",
]
# An untrained masked-LM head over this vocabulary (about 300 words) scores a perplexity in the hundreds.
TRAINED_PERPLEXITY = 30


def texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(PATTERNS) for _ in range(count)]


@pytest.fixture(scope="module")
def pretrained(system, database, tiny_model, tmp_path_factory):
    """Upload unlabelled JSON Lines and pre-train the tiny BERT on it, killing its process after the first checkpoint."""
    client, _settings, _stack = system
    path = tmp_path_factory.mktemp("pretrain") / "texts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": text}) + "\n" for i, text in enumerate(texts(240, seed=1))))
    data = client.upload_dataset(path, text_column="body")
    job = client.submit("pretrain", {
        "base_model": str(tiny_model), "train_dataset_id": data["id"], "max_steps": 160, "batch_size": 8,
        "learning_rate": 3e-3, "max_length": 32, "save_steps": 20, "mlm_probability": 0.2,
        "model_name": "tiny-domain-lm",
    })
    assert job["task"] == "language-modeling"
    kill_after_first_checkpoint(database, job["id"])
    return client, client.wait(job["id"], timeout=600), data


def test_a_killed_masked_lm_pretrain_resumes_and_reports_perplexity(pretrained):
    client, job, data = pretrained
    assert data["task"] is None and data["label_column"] is None
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["result"]["train"]["resumed_from_step"] >= 20
    assert job["result"]["objective"] == "mlm" and job["result"]["train"]["global_step"] == 160
    assert job["result"]["metrics"]["perplexity"] < TRAINED_PERPLEXITY, job["result"]["metrics"]
    model = client.request("GET", "/models/tiny-domain-lm")["items"][0]
    assert (model["task"], model["label_names"]) == ("language-modeling", [])
    assert model["metrics"]["perplexity"] == job["result"]["metrics"]["perplexity"]
    evaluation = client.request("GET", f"/evaluations/{job['result']['evaluation_id']}")
    assert evaluation["split"] == "held-out 10% of train" and evaluation["metrics"]["objective"] == "mlm"
    events = client.request("GET", f"/jobs/{job['id']}/events", params={"type": "metric", "limit": 5000})["items"]
    assert any(e["data"].get("eval_perplexity") == job["result"]["metrics"]["perplexity"] for e in events)


def test_evaluate_and_batch_inference_refuse_the_pretrained_model(pretrained, tmp_path):
    client, _job, _data = pretrained
    labelled = client.upload_dataset(write_reviews(tmp_path / "r.csv", 20, seed=3), label_column="label")
    for kind in ("evaluate", "batch_inference"):
        with pytest.raises(ApiError) as refused:
            client.submit(kind, {"model": "tiny-domain-lm", "dataset_id": labelled["id"]})
        assert refused.value.status == 422 and refused.value.code == "no_task_head"
        assert "fine-tune it first" in str(refused.value)


def test_a_classifier_fine_tuned_from_the_pretrained_model(pretrained, tmp_path):
    client, _job, _data = pretrained
    train = client.upload_dataset(write_reviews(tmp_path / "train.csv", 200, seed=4), label_column="label")
    job = client.wait(client.submit("finetune", {
        "base_model": "tiny-domain-lm", "train_dataset_id": train["id"], "max_steps": 40, "batch_size": 16,
        "learning_rate": 3e-3, "max_length": 32, "model_name": "tiny-domain-classifier",
    })["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["metrics"]["accuracy"] > 0.8, job["result"]["metrics"]
    model = client.request("GET", "/models/tiny-domain-classifier")["items"][0]
    assert (model["task"], model["base_model"], sorted(model["label_names"])) == (
        "text-classification", "tiny-domain-lm", ["neg", "pos"])


def test_causal_lm_pretrain_on_a_txt_file_of_paragraphs(system, tmp_path):
    from tests.tiny_models import build_tiny_gpt2

    client, _settings, _stack = system
    base = build_tiny_gpt2(tmp_path / "gpt2")
    corpus = tmp_path / "corpus.txt"
    # Paragraphs of two wrapped lines each, between blank lines.
    lines = texts(240, seed=5)
    corpus.write_text("\n\n".join(f"{a}\n{b}" for a, b in zip(lines[::2], lines[1::2])) + "\n")
    data = client.upload_dataset(corpus)
    assert (data["format"], data["row_count"], data["columns"]) == ("text", 120, ["text"])
    job = client.wait(client.submit("pretrain", {
        "base_model": str(base), "train_dataset_id": data["id"], "max_steps": 40, "batch_size": 8,
        "learning_rate": 3e-3, "max_length": 32, "model_name": "tiny-causal-lm",
    })["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["objective"] == "clm" and job["result"]["train"]["validation_documents"] == 12
    assert job["result"]["metrics"]["perplexity"] < 10, job["result"]["metrics"]

"""Translation, summarization and text generation end to end: upload, fine-tune (killed once, resumed),
evaluate, batch generation."""

from __future__ import annotations

import json

import pytest

from nightshift.client import ApiError
from tests.e2e.conftest import kill_after_first_checkpoint
from tests.helpers import translation_pairs
from tests.tiny_models import build_tiny_seq2seq

pytestmark = pytest.mark.slow

GENERATION = {"max_new_tokens": 12}


@pytest.fixture(scope="module")
def t5_base(tmp_path_factory):
    return build_tiny_seq2seq(tmp_path_factory.mktemp("t5-base"), "t5")


@pytest.fixture(scope="module")
def translator(system, database, t5_base, tmp_path_factory):
    """Upload parallel text files and fine-tune a translator, killing its process after the first checkpoint."""
    client, _settings, _stack = system
    folder = tmp_path_factory.mktemp("translation")
    pairs = translation_pairs(200, seed=1)
    (folder / "train.en").write_text("".join(source + "\n" for source, _ in pairs))
    (folder / "train.xx").write_text("".join(target + "\n" for _, target in pairs))
    with open(folder / "train.en", "rb") as source, open(folder / "train.xx", "rb") as target:
        train = client.request("POST", "/datasets", data={"task": "translation"},
                               files={"file": ("train.en", source), "target_file": ("train.xx", target)})
    job = client.submit("finetune", {
        "base_model": str(t5_base), "train_dataset_id": train["id"], "max_steps": 1200, "batch_size": 16,
        "learning_rate": 3e-3, "save_steps": 30, "max_length": 32, "max_target_length": 32,
        "model_name": "tiny-translator", "validation_fraction": 0.1, "generation": GENERATION,
    }, task="translation")
    kill_after_first_checkpoint(database, job["id"])
    return client, client.wait(job["id"], timeout=600), train


def test_parallel_files_upload_as_translation_pairs(translator):
    _client, _job, train = translator
    assert train["task"] == "translation" and train["format"] == "parallel" and train["row_count"] == 200
    assert train["columns_by_role"] == {"source": "source", "target": "target"}


def test_a_killed_translation_fine_tune_resumes_and_scores_bleu(translator):
    client, job, _train = translator
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["result"]["train"]["resumed_from_step"] >= 30
    assert set(job["result"]["metrics"]) >= {"bleu", "chrf"} and job["result"]["metrics"]["chrf"] > 30
    model = client.request("GET", "/models/tiny-translator")["items"][0]
    assert model["task"] == "translation"


def test_translation_evaluate_and_batch_generation(translator, tmp_path):
    client, _job, _train = translator
    held_out = tmp_path / "eval.jsonl"
    held_out.write_text("".join(json.dumps({"en": s, "xx": t}) + "\n" for s, t in translation_pairs(30, seed=7)))
    data = client.upload_dataset(held_out, task="translation", source_column="en", target_column="xx")
    evaluation = client.wait(client.submit("evaluate", {"model": "tiny-translator", "dataset_id": data["id"],
                                                        "generation": GENERATION}, task="translation")["id"], timeout=180)
    assert evaluation["status"] == "succeeded", evaluation["error"]
    metrics = client.request("GET", f"/evaluations/{evaluation['result']['evaluation_id']}")["metrics"]
    assert metrics["rows"] == 30 and metrics["chrf"] > 30 and len(metrics["examples"]) == 5

    docs = tmp_path / "docs.csv"
    sources = [s for s, _ in translation_pairs(150, seed=8)]
    sources[4] = ""
    docs.write_text("id,text\n" + "".join(f"d{i},{s}\n" for i, s in enumerate(sources)))
    batch = client.submit("batch_inference", {"model": "tiny-translator", "dataset_id": client.upload_dataset(docs)["id"],
                                              "chunk_rows": 32, "generation": {"max_new_tokens": 10, "num_beams": 2}},
                          task="translation")
    batch = client.wait(batch["id"], timeout=240)
    assert batch["status"] == "succeeded", batch["error"]
    rows = [json.loads(line) for line in client.download_output(batch["id"], tmp_path / "p.jsonl").open()]
    errors = [json.loads(line) for line in client.download_output(batch["id"], tmp_path / "e.jsonl", errors=True).open()]
    assert [e["row"] for e in errors] == [4]
    assert [r["row"] for r in rows] == [i for i in range(150) if i != 4]
    assert rows[0]["id"] == "d0" and all(isinstance(r["text"], str) for r in rows)


def test_summarization_with_a_bart_style_model_on_jsonl_documents_killed_and_resumed(system, database, tmp_path):
    client, _settings, _stack = system
    base = build_tiny_seq2seq(tmp_path / "bart", "bart")
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"article": f"{s} and {s}", "headline": t}) + "\n"
                            for s, t in translation_pairs(80, seed=2)))
    data = client.upload_dataset(path, task="summarization", document_column="article", summary_column="headline")
    job = client.submit("finetune", {
        "base_model": str(base), "train_dataset_id": data["id"], "max_steps": 200, "batch_size": 16,
        "save_steps": 10, "max_length": 48, "max_target_length": 32, "model_name": "tiny-summarizer",
        "generation": GENERATION,
    }, task="summarization")
    kill_after_first_checkpoint(database, job["id"])
    job = client.wait(job["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["result"]["train"]["resumed_from_step"] >= 10
    assert set(job["result"]["metrics"]) >= {"rouge1", "rouge2", "rougeL"}

    evaluation = client.wait(client.submit("evaluate", {"model": "tiny-summarizer", "dataset_id": data["id"],
                                                        "generation": GENERATION}, task="summarization")["id"],
                             timeout=180)
    assert evaluation["status"] == "succeeded", evaluation["error"]
    assert client.request("GET", f"/evaluations/{evaluation['result']['evaluation_id']}")["metrics"]["rows"] == 80
    batch = client.wait(client.submit("batch_inference", {"model": "tiny-summarizer", "dataset_id": data["id"],
                                                          "text_column": "article", "chunk_rows": 16,
                                                          "generation": GENERATION}, task="summarization")["id"],
                        timeout=180)
    assert batch["status"] == "succeeded", batch["error"]
    rows = [json.loads(line) for line in client.download_output(batch["id"], tmp_path / "s.jsonl").open()]
    assert [r["row"] for r in rows] == list(range(80))


def test_generation_parameters_are_checked_at_submit(translator):
    client, _job, train = translator
    with pytest.raises(ApiError) as refused:
        client.submit("batch_inference", {"model": "tiny-translator", "dataset_id": train["id"],
                                          "generation": {"num_beams": 0}}, task="translation")
    assert refused.value.status == 422 and "params.generation.num_beams" in str(refused.value)
    with pytest.raises(ApiError) as refused:  # classification parameters know nothing of generation
        client.submit("batch_inference", {"model": "tiny-translator", "dataset_id": train["id"], "generation": {}})
    assert refused.value.status == 422 and "params.generation" in str(refused.value)


def test_text_generation_from_prompt_completion_pairs_killed_and_resumed(system, database, tmp_path):
    from tests.tiny_models import build_tiny_gpt2

    client, _settings, _stack = system
    base = build_tiny_gpt2(tmp_path / "gpt2")
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"translate {s} :", "completion": t}) + "\n"
                            for s, t in translation_pairs(120, seed=3)))
    data = client.upload_dataset(path, task="text-generation")
    assert data["columns_by_role"] == {"prompt": "prompt", "completion": "completion"}
    job = client.submit("finetune", {
        "base_model": str(base), "train_dataset_id": data["id"], "max_steps": 600, "batch_size": 16,
        "learning_rate": 3e-3, "save_steps": 30, "max_length": 24, "max_target_length": 16, "model_name": "tiny-lm",
    }, task="text-generation")
    kill_after_first_checkpoint(database, job["id"])
    job = client.wait(job["id"], timeout=600)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["result"]["train"]["resumed_from_step"] >= 30
    # An untrained model's perplexity is of the order of its vocabulary (~400 words here);
    # tests/worker/ml/test_text_generation.py compares the two on held-out rows.
    assert job["result"]["metrics"]["perplexity"] < 100

    prompts = tmp_path / "ask.csv"
    prompts.write_text("text\ntranslate good day :\n\ntranslate the food was bad :\n")
    batch = client.wait(client.submit("batch_inference", {
        "model": "tiny-lm", "dataset_id": client.upload_dataset(prompts)["id"],
        "generation": {"max_new_tokens": 8, "stop": [":"]}}, task="text-generation")["id"], timeout=180)
    assert batch["status"] == "succeeded", batch["error"]
    rows = [json.loads(line) for line in client.download_output(batch["id"], tmp_path / "p.jsonl").open()]
    assert [r["row"] for r in rows] == [0, 1] and all(r["text"] and ":" not in r["text"] for r in rows)

    evaluation = client.wait(client.submit("evaluate", {"model": "tiny-lm", "dataset_id": data["id"]},
                                           task="text-generation")["id"], timeout=180)
    assert evaluation["status"] == "succeeded", evaluation["error"]
    metrics = client.request("GET", f"/evaluations/{evaluation['result']['evaluation_id']}")["metrics"]
    assert metrics["rows"] == 120 and metrics["perplexity"] < 100

"""A LoRA fine-tune through the real API and worker: killed after its first checkpoint and resumed, registered
as a small adapter referencing its base, then evaluated and run over a dataset; a merged model predicts the same."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import kill_after_first_checkpoint
from tests.helpers import write_reviews

pytestmark = pytest.mark.slow

SETTINGS = {"max_steps": 60, "batch_size": 8, "learning_rate": 1e-2, "logging_steps": 5, "save_steps": 5,
            "max_length": 32, "lora": {"r": 4}}


@pytest.fixture(scope="module")
def adapted(system, database, tiny_model, tmp_path_factory):
    client, _settings, _stack = system
    folder = tmp_path_factory.mktemp("data")
    train = client.upload_dataset(write_reviews(folder / "train.csv", 120, seed=1), text_column="text",
                                  label_column="label")
    job = client.submit("finetune", {"base_model": str(tiny_model), "train_dataset_id": train["id"],
                                     "model_name": "tiny-lora", **SETTINGS})
    kill_after_first_checkpoint(database, job["id"])
    job = client.wait(job["id"], timeout=600)
    merged = client.wait(client.submit("finetune", {"base_model": str(tiny_model), "train_dataset_id": train["id"],
                                                    "model_name": "tiny-lora-merged", "merge_adapter": True,
                                                    **SETTINGS})["id"], timeout=600)
    return client, job, merged


@pytest.fixture(scope="module")
def merged_later(adapted):
    """The registered adapter merged into its base by a merge job."""
    client, _job, _merged = adapted
    return client.wait(client.submit("merge", {"model": "tiny-lora:1", "model_name": "tiny-lora-full"})["id"],
                       timeout=300)


def test_the_resumed_job_registers_a_small_adapter_referencing_its_base(adapted, tiny_model):
    client, job, _merged = adapted
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["result"]["train"]["resumed_from_step"] >= 5
    adapter = job["result"]["adapter"]
    assert adapter["base_model"] == str(tiny_model)
    assert 0 < adapter["adapter_bytes"] < (tiny_model / "model.safetensors").stat().st_size / 2
    assert 0 < adapter["trainable_share"] < 0.2 and adapter["head_modules"] == ["classifier"]
    model = client.request("GET", "/models/tiny-lora")["items"][0]
    assert model["base_model"] == str(tiny_model) and model["metrics"]["adapter"] == adapter
    logs = [e["message"] for e in client.request("GET", f"/jobs/{job['id']}/events", params={"type": "log"})["items"]]
    assert sum(m.startswith("LoRA r=4 alpha=16 on query,value and the head (classifier): ") for m in logs) == 2, logs
    assert any(m.startswith("resuming from checkpoint-") for m in logs)
    assert any(m.startswith(f"LoRA adapter of {tiny_model} saved: ") for m in logs)


def test_a_merge_job_registers_the_adapter_folded_into_its_base_as_a_full_model(adapted, merged_later, tiny_model):
    client, job, _merged = adapted
    assert merged_later["status"] == "succeeded", merged_later["error"]
    result = merged_later["result"]
    assert (result["model"], result["merged_from"], result["base_model"]) == ("tiny-lora-full:1", "tiny-lora:1",
                                                                              str(tiny_model))
    assert result["model_bytes"] > result["adapter_bytes"] == job["result"]["adapter"]["adapter_bytes"]
    model = client.request("GET", "/models/tiny-lora-full")["items"][0]
    assert (model["task"], model["base_model"], model["source_job_id"]) == ("text-classification", str(tiny_model),
                                                                            merged_later["id"])
    assert model["metrics"]["merged_from"] == "tiny-lora:1" and "adapter" not in model["metrics"]
    assert model["label_names"] == client.request("GET", "/models/tiny-lora")["items"][0]["label_names"]
    logs = [e["message"] for e in client.request("GET", f"/jobs/{merged_later['id']}/events",
                                                 params={"type": "log"})["items"]]
    assert any(m.startswith(f"merging LoRA adapter tiny-lora:1 (r=4) into its base {tiny_model}") for m in logs), logs


def test_evaluate_and_batch_inference_load_base_plus_adapter_like_the_merged_models(adapted, merged_later, tmp_path):
    client, job, merged = adapted
    assert merged["status"] == "succeeded", merged["error"]
    assert "adapter" not in merged["result"] and merged["result"]["train"]["lora"]["r"] == 4
    data = client.upload_dataset(write_reviews(tmp_path / "eval.csv", 60, seed=7), text_column="text",
                                 label_column="label")
    scores, predictions = [], []
    for name in ("tiny-lora", "tiny-lora-merged", "tiny-lora-full"):
        evaluation = client.wait(client.submit("evaluate", {"model": name, "dataset_id": data["id"],
                                                            "precision": "fp32"})["id"], timeout=300)
        assert evaluation["status"] == "succeeded", evaluation["error"]
        scores.append(evaluation["result"]["metrics"])
        run = client.wait(client.submit("batch_inference", {"model": name, "dataset_id": data["id"],
                                                            "precision": "fp32"})["id"], timeout=300)
        assert run["status"] == "succeeded", run["error"]
        rows = [json.loads(line) for line in client.download_output(run["id"], tmp_path / f"{name}.jsonl").open()]
        assert len(rows) == 60
        predictions.append([row["label"] for row in rows])
    assert scores[0]["accuracy"] == scores[1]["accuracy"] == scores[2]["accuracy"]
    assert predictions[0] == predictions[1] == predictions[2]

"""A fine-tune with frozen bottom layers that stops early, killed once on the way, through the real API and worker."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import kill_after_first_checkpoint
from tests.helpers import write_reviews

pytestmark = pytest.mark.slow

PATIENCE = 20  # evaluations without improvement: long enough that the kill lands before the stop


@pytest.fixture(scope="module")
def stopped(system, database, tiny_model, tmp_path_factory):
    """Fine-tune at a learning rate too small to change a prediction, so f1 plateaus from the first evaluation."""
    client, _settings, _stack = system
    folder = tmp_path_factory.mktemp("data")
    train = client.upload_dataset(write_reviews(folder / "train.csv", 120, seed=1), text_column="text",
                                  label_column="label")
    job = client.submit("finetune", {
        "base_model": str(tiny_model), "train_dataset_id": train["id"], "max_steps": 400, "batch_size": 8,
        "learning_rate": 1e-9, "logging_steps": 10, "eval_steps": 2, "save_steps": 5, "max_length": 32,
        "early_stopping_patience": PATIENCE, "freeze_layers": 1, "layer_lr_decay": 0.8,
        "model_name": "tiny-early-stopped",
    })
    kill_after_first_checkpoint(database, job["id"])  # the resumed attempt must go on counting from its checkpoint
    return client, client.wait(job["id"], timeout=600)


def test_the_job_stops_early_keeps_the_best_checkpoint_and_says_why(stopped):
    client, job = stopped
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    train = job["result"]["train"]
    stop = 2 + 2 * PATIENCE  # the first evaluation is the best; PATIENCE more without improvement
    assert (train["stopped_early"], train["best_step"], train["global_step"]) == (True, 2, stop)
    assert train["early_stopping_metric"] == "f1_macro" and train["resumed_from_step"] >= 2

    logs = [e["message"] for e in client.request("GET", f"/jobs/{job['id']}/events", params={"type": "log"})["items"]]
    assert any(m.startswith("resuming from checkpoint-") for m in logs), logs
    assert sum(m.startswith("froze the bottom 1 of 2 layers of bert.encoder.layer; ") for m in logs) == 2  # each attempt
    assert "checkpoints every 6 steps: save_steps 5 rounded up to a multiple of eval_steps 2" in " ".join(logs)
    [reason] = [m for m in logs if m.startswith("early stopping: ")]
    assert reason == (f"early stopping: f1_macro did not improve on {train['best_metric']:.4g} (step 2) for {PATIENCE} "
                      f"evaluations; stopped at step {stop} of 400; keeping the checkpoint of step 2")
    metrics = client.request("GET", f"/jobs/{job['id']}/events", params={"type": "metric", "limit": 5000})["items"]
    evaluated = {e["step"]: e["data"]["eval_f1_macro"] for e in metrics if "eval_f1_macro" in e["data"]}
    assert sorted(evaluated) == list(range(2, stop + 1, 2))  # the validation curve, both attempts together
    assert set(evaluated.values()) == {train["best_metric"]}  # flat: why it stopped

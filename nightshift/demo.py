"""The main job, end to end over HTTP: upload reviews, fine-tune, evaluate, batch-classify."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from nightshift.client import Client
from worker.config import Settings

DEMO_DIR = Path(__file__).parent / "demo_data"


def run_demo(settings: Settings, token: str, *, base_model: str, epochs: float) -> dict:
    """Run the demo against the API at `settings.base_url`; return the jobs it ran."""
    client = Client(settings.base_url, token)
    reviews = client.upload_dataset(DEMO_DIR / "reviews.csv", text_column="review", label_column="sentiment",
                                    name="demo reviews")
    print(f"uploaded dataset {reviews['id']}: {reviews['row_count']} reviews, "
          f"labels {reviews['stats'].get('label_distribution')}")
    finetune = client.submit("finetune", {
        "base_model": base_model, "train_dataset_id": reviews["id"], "validation_fraction": 0.2,
        "epochs": epochs, "batch_size": 16, "learning_rate": 1e-4, "max_length": 64, "logging_steps": 10,
        "save_steps": 50, "model_name": "demo-sentiment",
    })
    print(f"fine-tune job {finetune['id']} queued: {base_model} -> demo-sentiment")
    finetune = _wait(client, finetune["id"])
    evaluation = client.request("GET", f"/evaluations/{finetune['result']['evaluation_id']}")
    _print_evaluation(evaluation)
    documents = client.upload_dataset(DEMO_DIR / "documents.jsonl", text_column="text", name="demo documents")
    batch = client.submit("batch_inference", {"model": finetune["result"]["model"], "dataset_id": documents["id"]})
    print(f"batch job {batch['id']} queued: {documents['row_count']} documents")
    batch = _wait(client, batch["id"])
    out = client.download_output(batch["id"], Path(settings.data_dir).resolve() / "demo-predictions.jsonl")
    counts = collections.Counter(json.loads(line)["label"] for line in out.open())
    print(f"classified {sum(counts.values())} documents: {dict(counts)}; predictions in {out}")
    return {"finetune": finetune, "batch": batch, "evaluation": evaluation}


def _wait(client: Client, job_id: int) -> dict:
    def show(event: dict) -> None:
        if event["type"] == "metric" and "loss" in event["data"]:
            print(f"  step {event['step']:>5}  loss {event['data']['loss']:.4f}")
        elif event["type"] in ("status", "rescue"):
            print(f"  {event['message']}")

    job = client.wait(job_id, on_event=show)
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job_id} {job['status']}: {job['error']}")
    return job


def _print_evaluation(evaluation: dict) -> None:
    metrics = evaluation["metrics"]
    print(f"evaluation {evaluation['id']} of {evaluation['model_ref']} on {evaluation['split']}:")
    print(f"  accuracy {metrics['accuracy']:.3f}  precision {metrics['precision_macro']:.3f}  "
          f"recall {metrics['recall_macro']:.3f}  F1 {metrics['f1_macro']:.3f} (macro)")
    matrix = metrics["confusion_matrix"]
    print("  confusion matrix (rows true, columns predicted):", matrix["labels"])
    for label, row in zip(matrix["labels"], matrix["matrix"]):
        print(f"    {label:>10} {row}")

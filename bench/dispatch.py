"""Dispatch latency: from `POST /api/v1/jobs` to the job `running` on an idle worker.

Starts the one-machine stack (SQLite, embedded Redis, one worker), then submits --jobs small
batch_inference jobs one at a time, each after the previous one has finished and the worker has
been idle for --idle seconds. For each job: the API's `created_at` (the row is written) to the
worker's `started_at` (the job claimed under its lease), both stamped on this machine, and the
client's own submit-to-running time (polling `GET /jobs/{id}` every 5 ms). Prints median, p90, worst.

    python bench/dispatch.py [--jobs 20] [--idle 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from _common import command_line, minilm_path, running_stack


def save_classifier(directory: Path) -> str:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = minilm_path()
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return str(directory)


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"median {statistics.median(values) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms   worst {ordered[-1] * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds the worker is left idle before each submit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = save_classifier(folder / "model")
        docs = folder / "docs.jsonl"
        docs.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(8)))
        server, client_side = [], []
        with running_stack() as (client, _settings):
            dataset = client.upload_dataset(docs, text_column="text")
            client.wait(client.submit("batch_inference", {"model": model, "dataset_id": dataset["id"]})["id"])  # warm-up
            for _ in range(args.jobs):
                time.sleep(args.idle)  # an idle worker: the previous job's process has been replaced
                started = time.perf_counter()
                job = client.submit("batch_inference", {"model": model, "dataset_id": dataset["id"]})
                while client.job(job["id"])["status"] == "queued":
                    time.sleep(0.005)
                client_side.append(time.perf_counter() - started)
                done = client.wait(job["id"], timeout=300, poll=0.1)
                assert done["status"] == "succeeded", done["error"]
                server.append((_ts(done["started_at"]) - _ts(done["created_at"])).total_seconds())
    print(f"command: {command_line()}")
    print(f"{args.jobs} jobs, one worker, SQLite, embedded Redis")
    print(f"row written -> running (server clocks):    {summary(server)}")
    print(f"POST sent -> running seen by the client:   {summary(client_side)}")


if __name__ == "__main__":
    main()

"""Batch-inference throughput: a Nightshift batch_inference job vs a plain `pipeline` loop.

Both classify the same SST-2 sentences with the same MiniLM classifier on this machine, in one
run. Prints docs/s of each and their ratio.

    python bench/infer_throughput.py [--docs 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

from _common import command_line, minilm_path, running_stack, sst2_rows


def save_classifier(directory: Path) -> str:
    """Save MiniLM with a 2-label head, so both sides load identical weights."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = minilm_path()
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
    )
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return str(directory)


def pipeline_docs_per_second(model_dir: str, texts: list[str]) -> tuple[float, list[str]]:
    from transformers import pipeline

    classify = pipeline("text-classification", model=model_dir, tokenizer=model_dir, device=-1)
    classify(texts[:64], batch_size=32)  # warm-up, as a long-running loop would be
    start = time.perf_counter()
    outputs = classify(texts, batch_size=32, truncation=True, max_length=256)
    elapsed = time.perf_counter() - start
    assert len(outputs) == len(texts)
    return len(texts) / elapsed, [o["label"] for o in outputs]


def service_runs(model_dir: str, texts: list[str], folder: Path) -> dict[str, dict]:
    """Run a batch_inference job per precision; return docs/s (submit->done and run time) and labels."""
    docs = folder / "docs.jsonl"
    with open(docs, "w") as out:
        for i, text in enumerate(texts):
            out.write(json.dumps({"id": i, "text": text}) + "\n")
    runs = {}
    with running_stack() as (client, _settings):
        dataset = client.upload_dataset(docs, text_column="text")
        for precision in ("auto", "fp32"):
            start = time.perf_counter()
            job = client.submit("batch_inference", {"model": model_dir, "dataset_id": dataset["id"],
                                                    "max_length": 256, "precision": precision})
            job = client.wait(job["id"], timeout=7200, poll=0.5)
            elapsed = time.perf_counter() - start
            assert job["status"] == "succeeded", job["error"]
            assert job["result"]["rows_ok"] == len(texts), job["result"]
            run = (_ts(job["finished_at"]) - _ts(job["started_at"])).total_seconds()
            output = client.download_output(job["id"], folder / f"predictions-{precision}.jsonl")
            labels = [json.loads(line)["label"] for line in output.open()]
            runs[precision] = {"total": len(texts) / elapsed, "run": len(texts) / run, "labels": labels,
                               "dtype": job["result"]["precision"]}
    return runs


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    args = parser.parse_args()
    texts = [text for text, _label in sst2_rows(args.docs, seed=21)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_classifier(Path(tmp) / "model")
        runs = service_runs(model_dir, texts, Path(tmp))
        baseline, baseline_labels = pipeline_docs_per_second(model_dir, texts)
    print(f"command: {command_line()}")
    print(f"documents: {len(texts)} SST-2 sentences, model all-MiniLM-L6-v2 (2-label head), CPU")
    print(f"{'':40}{'docs/s':>9}{'vs pipeline':>13}{'same label as pipeline':>24}")
    print(f"{'pipeline(batch_size=32), fp32':40}{baseline:9.1f}{'1.00x':>13}{'':>24}")
    for precision, run in runs.items():
        agree = sum(a == b for a, b in zip(run["labels"], baseline_labels)) / len(texts)
        for what, rate in (("submit->done", run["total"]), ("run time", run["run"])):
            name = f"job precision={precision} ({run['dtype']}), {what}"
            print(f"{name:40}{rate:9.1f}{rate / baseline:12.2f}x{agree:23.2%}")


if __name__ == "__main__":
    main()

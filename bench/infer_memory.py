"""Batch inference memory and time against document count: the same job over 10,000 and 1,000,000 docs.

Starts the one-machine stack (SQLite, embedded Redis, one worker), builds a small BERT classifier from
a config with a tokenizer trained on the spot (no download; the model is small so that a million
documents take minutes, and what is measured is what the job holds besides the model), writes
generated documents of 3 to 60 words, uploads each set and runs one fp32 batch_inference job over it.

For each job it prints the run time (the job's started_at to finished_at), docs/s, and the job
process's peak resident memory twice: as the job reports it (`peak_rss_mb`, the kernel's high-water
mark) and as sampled from outside every 0.2 s. The last lines give the growth of peak memory and the
time per document of the largest set against the smallest (linear time: the same docs/s).

    python bench/infer_memory.py [--docs 10000,1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path

from _common import REPO, command_line, running_stack

sys.path.insert(0, str(REPO))  # the tiny-model builder the tests use

WORDS = ("good great nice lovely excellent wonderful happy fine superb bad awful terrible horrible poor sad ugly "
         "nasty dreadful the movie was and food service room i liked it a lot what day hated this is plain "
         "sentence about nothing in particular").split()


def write_docs(path: Path, count: int, *, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        for i in range(count):
            out.write(json.dumps({"id": i, "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 60)))}) + "\n")
    return path


def build_model(directory: Path) -> str:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tests.tiny_models import SENTENCES, _build_tokenizer

    tokenizer = _build_tokenizer(SENTENCES + [" ".join(WORDS)], 300)
    tokenizer.save_pretrained(directory)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128, num_labels=2,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    return str(directory)


class PeakSampler:
    """Sample the resident memory of the worker's job processes every `period` s; keep the peak."""

    def __init__(self, period: float = 0.2) -> None:
        self.period, self.peak_mb, self._stop = period, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.period):
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    # A job runs in a child of the worker's main process (a fresh process per job).
                    if "celery" in " ".join(proc.info["cmdline"] or []) and proc.parent() is not None \
                            and "celery" in " ".join(proc.parent().cmdline()):
                        self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", default="10000,1000000", help="comma-separated document counts")
    args = parser.parse_args()
    counts = [int(n) for n in args.docs.split(",")]

    with tempfile.TemporaryDirectory(prefix="nightshift-memory-") as tmp, running_stack() as (client, _settings):
        folder = Path(tmp)
        model = build_model(folder / "model")
        client.wait(client.submit("batch_inference", {  # the first job measures batch budgets: not timed
            "model": model, "dataset_id": client.upload_dataset(write_docs(folder / "warm.jsonl", 2000, seed=1))["id"],
            "precision": "fp32"})["id"], timeout=600)
        rows = []
        for count in counts:
            dataset = client.upload_dataset(write_docs(folder / f"docs-{count}.jsonl", count))
            with PeakSampler() as sampler:
                job = client.submit("batch_inference", {"model": model, "dataset_id": dataset["id"], "precision": "fp32"})
                job = client.wait(job["id"], timeout=4 * 3600, poll=1.0)
            assert job["status"] == "succeeded", job["error"]
            assert job["result"]["rows_ok"] == count, job["result"]
            run = (_ts(job["finished_at"]) - _ts(job["started_at"])).total_seconds()
            rows.append((count, run, count / run, job["result"]["peak_rss_mb"], sampler.peak_mb))
            print(f"  {count:,} docs: {run:.1f} s, peak {job['result']['peak_rss_mb']:.0f} MiB", flush=True)
            client.delete_dataset(dataset["id"])

    print(f"\n`{command_line()}`\n")
    print("| documents | run s | docs/s | peak RSS, job's own (MiB) | peak RSS, sampled (MiB) |")
    print("|---|---|---|---|---|")
    for count, run, rate, peak, sampled in rows:
        print(f"| {count:,} | {run:.1f} | {rate:.0f} | {peak:.0f} | {sampled:.0f} |")
    (small, _, small_rate, small_peak, _), (large, _, large_rate, large_peak, _) = rows[0], rows[-1]
    print(f"\npeak memory, {large:,} docs against {small:,}: {100 * (large_peak / small_peak - 1):+.1f}%")
    print(f"time per document, {large:,} docs against {small:,}: {small_rate / large_rate:.2f}x (1.00x = linear)")


if __name__ == "__main__":
    main()

"""Batch-inference throughput against the model's compute floor on this machine.

One run, one machine, one fine-tuned MiniLM sentiment classifier (fine-tuned here first on SST-2 rows
that are not among the documents), side by side:

- the compute floor: a bare loop over pre-tokenized documents, sorted by length, in batches under a
  token budget, fp32, `torch.inference_mode()`; several budgets, the fastest is the floor (on a GPU
  where there is one: each padded batch is copied to it inside the timed loop, as a job must; with
  --floor-precisions fp32,bf16 also in bf16, the bare loop the GPU's `auto` job compares with);
- `transformers.pipeline(batch_size=32)`, the usual baseline;
- Nightshift batch_inference jobs (submit over HTTP to output written) in fp32, each compared with the mean
  of the floor runs (at its best budget) right before and right after it (`--repeats` jobs: the machine drifts
  between minutes),
  then in `auto` and int8, with their label agreement with fp32;
- a 200-document job's submit-to-done time, as the stack's first job (cold) and again (warm).

Corpora: 20,000 SST-2 sentences; the 7,600 AG News test rows (title + description) cycled to 20,000.

    python bench/infer_throughput.py [--docs 20000] [--corpus sst2,agnews] [--train-rows 1500]
        [--precisions fp32,auto,int8] [--floor-budgets 1024,2048,4096,8192,16384] [--floor-precisions fp32]
        [--batch-tokens N] [--pipeline sst2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

from worker.ml.device import pick_device  # where the bare loops run: the jobs' device

from _common import command_line, machine_line, minilm_path, require_dataset, running_stack, sst2_rows

MAX_LENGTH = 256
FLOOR_BUDGETS = "1024,2048,4096,8192,16384"
FLOOR_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}  # None: the weights as saved (fp32)
LABELS = {0: "negative", 1: "positive"}


def fine_tune(directory: Path, rows: list[tuple[str, str]]) -> str:
    """Fine-tune MiniLM with a 2-label head for one epoch on `rows` (a plain loop); save it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source, device = minilm_path(), pick_device()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for start in range(0, len(rows), 32):
        batch = rows[start:start + 32]
        inputs = tokenizer([text for text, _ in batch], truncation=True, max_length=64, padding=True,
                           return_tensors="pt").to(device)
        loss = model(**inputs, labels=torch.tensor([int(label) for _, label in batch], device=device)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def agnews_texts(count: int) -> list[str]:
    with open(require_dataset("ag_news/test.csv"), newline="", encoding="utf-8") as handle:
        texts = [f"{title} {body}".replace("\\", " ") for _label, title, body in csv.reader(handle)]
    return list(itertools.islice(itertools.cycle(texts), count))


def floor(model_dir: str, texts: list[str], budgets: list[int], precision: str = "fp32",
          ) -> tuple[dict[int, float], list[str]]:
    """docs/s of the bare sorted loop per token budget (tokenization not timed), and its labels."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    device = pick_device()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval().to(device)
    if FLOOR_DTYPES[precision] is not None:
        model = model.to(getattr(torch, FLOOR_DTYPES[precision]))
    encoded = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    rates, labels = {}, [""] * len(texts)
    for budget in budgets:
        batches, current = [], []
        for index in order:
            width = len(encoded[current[0]]) if current else len(encoded[index])
            if current and width * (len(current) + 1) > budget:
                batches.append(current)
                current = []
            current.append(index)
        batches.append(current)
        tensors = []
        for batch in batches:  # padded before the clock starts: the floor is the forward passes alone
            padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            tensors.append((batch, padded))
        with torch.inference_mode():
            model(**tensors[-1][1].to(device))  # warm-up
            start = time.perf_counter()
            for batch, padded in tensors:  # .tolist() waits for the device: every batch is done when timed
                predicted = model(**padded.to(device)).logits.argmax(-1).tolist()
                for index, label in zip(batch, predicted):
                    labels[index] = LABELS[label]
            rates[budget] = len(texts) / (time.perf_counter() - start)
    return rates, labels


def pipeline_rate(model_dir: str, texts: list[str]) -> float:
    from transformers import pipeline

    classify = pipeline("text-classification", model=model_dir, tokenizer=model_dir, device=pick_device())
    classify(texts[:64], batch_size=32)  # warm-up, as a long-running loop would be
    start = time.perf_counter()
    outputs = classify(texts, batch_size=32, truncation=True, max_length=MAX_LENGTH)
    assert len(outputs) == len(texts)
    return len(texts) / (time.perf_counter() - start)


def write_docs(path: Path, texts: list[str]) -> Path:
    with open(path, "w") as out:
        for i, text in enumerate(texts):
            out.write(json.dumps({"id": i, "text": text}) + "\n")
    return path


def run_job(client, model_dir: str, dataset_id: int, precision: str, folder: Path, batch_tokens: int | None = None,
            ) -> dict:
    start = time.perf_counter()
    params = {"model": model_dir, "dataset_id": dataset_id, "max_length": MAX_LENGTH, "precision": precision}
    if batch_tokens:  # the job's upper bound on its token budget (it searches the fastest one up to it)
        params["batch_tokens"] = batch_tokens
    job = client.submit("batch_inference", params)
    job = client.wait(job["id"], timeout=7200, poll=0.2)
    elapsed = time.perf_counter() - start
    assert job["status"] == "succeeded", job["error"]
    run = (_ts(job["finished_at"]) - _ts(job["started_at"])).total_seconds()
    output = client.download_output(job["id"], folder / f"predictions-{job['id']}.jsonl")
    labels = [json.loads(line)["label"] for line in output.open()]
    queued = (_ts(job["started_at"]) - _ts(job["created_at"])).total_seconds()
    return {"elapsed": elapsed, "run": run, "queued": queued, "labels": labels, "reason": job["result"]["precision_reason"],
            "rows": job["result"]["rows_ok"], "seconds": job["result"].get("seconds", {})}


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--corpus", default="sst2,agnews", help="comma-separated: sst2, agnews")
    parser.add_argument("--train-rows", type=int, default=1500, help="SST-2 rows the classifier is fine-tuned on")
    parser.add_argument("--precisions", default="fp32,auto,int8")
    parser.add_argument("--floor-budgets", default=FLOOR_BUDGETS, help="token budgets the bare loop runs at")
    parser.add_argument("--floor-precisions", default="fp32",
                        help="precisions the bare loop also runs in, beside fp32 (which the fp32 jobs compare "
                             "with): bf16 or fp16, the bare loop of a GPU's `auto` job")
    parser.add_argument("--batch-tokens", type=int, default=None,
                        help="the jobs' upper bound on their token budget (default: the job's own default)")
    parser.add_argument("--pipeline", default="sst2", help="corpora to time pipeline() on ('' for none)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fp32 jobs per corpus, each followed by the floor at its best budget")
    args = parser.parse_args()

    sst2 = sst2_rows(args.docs + args.train_rows, seed=21)
    corpora = {"sst2": [text for text, _ in sst2[: args.docs]]}
    if "agnews" in args.corpus.split(","):
        corpora["agnews"] = agnews_texts(args.docs)
    corpora = {name: texts for name, texts in corpora.items() if name in args.corpus.split(",")}
    print(f"command: {command_line()}")
    print(f"machine: {machine_line()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        model_dir = fine_tune(folder / "model", sst2[args.docs:])
        print(f"classifier: all-MiniLM-L6-v2 fine-tuned 1 epoch on {args.train_rows} other SST-2 rows "
              f"({time.perf_counter() - started:.0f} s)")
        with running_stack() as (client, _settings):
            small = client.upload_dataset(write_docs(folder / "small.jsonl", corpora["sst2"][:200] if "sst2" in corpora
                                                     else next(iter(corpora.values()))[:200]), text_column="text")
            cold = run_job(client, model_dir, small["id"], "fp32", folder, args.batch_tokens)
            warm = run_job(client, model_dir, small["id"], "fp32", folder, args.batch_tokens)
            print(f"200-document job, submit to done: first job of the stack (cold) {cold['elapsed']:.2f} s "
                  f"(queued {cold['queued']:.2f} s, ran {cold['run']:.2f} s), next job (warm) {warm['elapsed']:.2f} s "
                  f"(queued {warm['queued']:.2f} s, ran {warm['run']:.2f} s)")
            for name, texts in corpora.items():
                dataset = client.upload_dataset(write_docs(folder / f"{name}.jsonl", texts), text_column="text")
                budgets = [int(b) for b in args.floor_budgets.split(",")]
                rates, floor_labels = floor(model_dir, texts, budgets)
                best = max(rates, key=rates.get)
                lower = {p: floor(model_dir, texts, budgets, p) for p in args.floor_precisions.split(",")
                         if p != "fp32"}
                # (fp32 job, the floor beside it): the mean of the floor runs right before and right after the
                # job, each at its best budget. The machine drifts from one minute to the next; a floor on one
                # side only would charge the drift to the job.
                pairs, before = [], rates[best]
                for _ in range(args.repeats):
                    job = run_job(client, model_dir, dataset["id"], "fp32", folder, args.batch_tokens)
                    after = floor(model_dir, texts, [best])[0][best]
                    pairs.append((job, (before, after)))
                    before = after
                others = {p: run_job(client, model_dir, dataset["id"], p, folder, args.batch_tokens)
                          for p in args.precisions.split(",") if p != "fp32"}
                baseline = pipeline_rate(model_dir, texts) if name in args.pipeline.split(",") else None
                report(name, texts, rates, floor_labels, baseline, pairs, others, lower)


def report(name, texts, rates, floor_labels, baseline, pairs, others, lower) -> None:
    import statistics

    words = sum(len(t.split()) for t in texts) / len(texts)
    print(f"\n{name}: {len(texts)} documents, {words:.1f} words on average, max length {MAX_LENGTH}")
    best = max(rates.values())
    print(f"{'':56}{'docs/s':>9}{'vs floor':>10}{'same label as fp32 floor':>26}")
    for budget, rate in rates.items():
        print(f"{f'floor: bare sorted loop, {budget} tokens/batch':56}{rate:9.1f}{rate / best:9.2f}x")
    for precision, (lower_rates, lower_labels) in lower.items():
        agree = sum(a == b for a, b in zip(lower_labels, floor_labels)) / len(texts)
        for budget, rate in lower_rates.items():
            print(f"{f'floor in {precision}, {budget} tokens/batch':56}{rate:9.1f}{rate / best:9.2f}x{agree:25.2%}")
    if baseline is not None:
        print(f"{'pipeline(batch_size=32), fp32':56}{baseline:9.1f}{baseline / best:9.2f}x")
    ratios = {"submit to done": [], "run time": []}
    for number, (job, (before, after)) in enumerate(pairs, 1):
        agree = sum(a == b for a, b in zip(job["labels"], floor_labels)) / len(texts)
        floor_rate = (before + after) / 2
        print(f"{f'floor beside run {number}: mean of {before:.1f} before, {after:.1f} after':56}{floor_rate:9.1f}"
              f"{1:9.2f}x")
        for what, seconds in (("submit to done", job["elapsed"]), ("run time", job["run"])):
            rate = job["rows"] / seconds
            ratios[what].append(rate / floor_rate)
            print(f"{f'job precision=fp32 run {number}, {what}':56}{rate:9.1f}{rate / floor_rate:9.2f}x{agree:25.2%}")
        phases = ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in job["seconds"].items())
        print(f"    run {number}: {job['run']:.2f} s; phases: {phases}")
    for what, values in ratios.items():
        print(f"job precision=fp32 / floor beside it, {what}: median {statistics.median(values):.2f}x "
              f"of {len(values)} ({', '.join(f'{v:.2f}' for v in values)})")
    floor_rate = statistics.median(sum(rates) / 2 for _, rates in pairs)
    for precision, job in others.items():
        agree = sum(a == b for a, b in zip(job["labels"], floor_labels)) / len(texts)
        for what, seconds in (("submit to done", job["elapsed"]), ("run time", job["run"])):
            rate = job["rows"] / seconds
            print(f"{f'job precision={precision}, {what} (vs median floor)':56}{rate:9.1f}{rate / floor_rate:9.2f}x"
                  f"{agree:25.2%}")
        print(f"    {precision}: {job['reason']}")


if __name__ == "__main__":
    main()

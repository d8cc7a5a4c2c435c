"""Does continued pre-training on a dataset's own unlabelled text help a small labelled fine-tune?

Continues MiniLM's pre-training (masked-LM, a pretrain job) on the unlabelled text of one dataset (AG News
descriptions or SST-2 sentences, their labels dropped), then fine-tunes it and the plain MiniLM on the
same small labelled sample with the same settings and seeds, both evaluated on the same other rows. The
evaluation rows are never in the unlabelled text. With --control, a third base is pre-trained the same way
on as much text (in characters) of the other dataset: what it gains is what pre-training gives without the
domain. Everything runs as jobs over HTTP on one stack, in one
run on this machine. Prints each fine-tune's accuracy and macro F1 (mean over seeds, and each seed), the
pretrain job's perplexity and cost, and the fine-tunes' costs.

all-MiniLM-L6-v2 ships without a masked-LM head: the pretrain job starts one from random weights, so
its first steps mostly train the head.

    flock /work/bench.lock python bench/pretrain_then_finetune.py [--dataset ag_news|sst2] [--scale 1.0]
        [--labelled 200] [--seeds 2] [--pretrain-steps 120] [--unlabelled 2000] [--evaluation 500] [--control]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from _common import command_line, minilm_path, require_dataset, running_stack, sst2_rows, write_csv

AG_NEWS_CLASSES = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}
MAX_LENGTH = 64
PRETRAIN = dict(batch_size=16, learning_rate=2e-4, warmup_ratio=0.06, max_length=MAX_LENGTH, mlm_probability=0.15,
                save_steps=100, validation_fraction=0.05, logging_steps=10, seed=42)
FINETUNE = dict(epochs=3.0, batch_size=16, learning_rate=5e-5, max_length=MAX_LENGTH, save_steps=1000)


def ag_news(labelled: int, evaluation: int, unlabelled: int, seed: int):
    """Return (labelled rows, evaluation rows, unlabelled texts), disjoint, from AG News (title. description)."""
    with open(require_dataset("ag_news/test.csv"), newline="") as handle:
        rows = [(f"{title}. {description}".replace("\\", " "), AG_NEWS_CLASSES[label])
                for label, title, description in csv.reader(handle)]
    random.Random(seed).shuffle(rows)
    return _split(rows, labelled, evaluation, unlabelled)


def sst2(labelled: int, evaluation: int, unlabelled: int, seed: int):
    rows = [(text, "positive" if label == "1" else "negative")
            for text, label in sst2_rows(labelled + evaluation + unlabelled, seed=seed)]
    return _split(rows, labelled, evaluation, unlabelled)


def _split(rows, labelled: int, evaluation: int, unlabelled: int):
    if labelled + evaluation + unlabelled > len(rows):
        raise SystemExit(f"asked for {labelled + evaluation + unlabelled} rows; the dataset has {len(rows)}")
    train, held_out = rows[:labelled], rows[labelled:labelled + evaluation]
    texts = [text for text, _label in rows[labelled + evaluation:labelled + evaluation + unlabelled]]
    return train, held_out, texts


def pretrain(client, text_file: Path, steps: int, name: str = "domain-lm") -> dict:
    data = client.upload_dataset(text_file)
    start = time.perf_counter()
    job = client.submit("pretrain", {"base_model": "all-MiniLM-L6-v2", "train_dataset_id": data["id"],
                                     "max_steps": steps, "model_name": name, **PRETRAIN})
    job = client.wait(job["id"], timeout=7200, poll=1.0)
    wall = time.perf_counter() - start
    assert job["status"] == "succeeded", job["error"]
    events = client.request("GET", f"/jobs/{job['id']}/events", params={"type": "metric", "limit": 5000})["items"]
    losses = [e["data"]["loss"] for e in events if "loss" in e["data"] and "eval_loss" not in e["data"]]
    return {"documents": data["row_count"], "wall_s": wall, "result": job["result"], "losses": losses}


def finetune(client, base: str, train_id: int, evaluation_id: int, seed: int) -> dict:
    start = time.perf_counter()
    job = client.submit("finetune", {"base_model": base, "train_dataset_id": train_id,
                                     "validation_dataset_id": evaluation_id, "seed": seed, **FINETUNE})
    job = client.wait(job["id"], timeout=7200, poll=0.5)
    wall = time.perf_counter() - start
    assert job["status"] == "succeeded", job["error"]
    metrics = job["result"]["metrics"]
    return {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"], "wall_s": wall,
            "train_s": job["result"]["train"]["train_runtime_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("ag_news", "sst2"), default="ag_news")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies the unlabelled documents, pretrain steps and evaluation rows")
    parser.add_argument("--labelled", type=int, default=200, help="labelled rows each fine-tune trains on")
    parser.add_argument("--evaluation", type=int, default=500, help="rows both fine-tunes are evaluated on")
    parser.add_argument("--unlabelled", type=int, default=2000, help="documents of unlabelled text pre-trained on")
    parser.add_argument("--pretrain-steps", type=int, default=120)
    parser.add_argument("--seeds", type=int, default=2, help="fine-tunes of each base (seeds 1, 2, ...)")
    parser.add_argument("--control", action="store_true",
                        help="also pre-train on the other dataset's text (same documents and steps) and fine-tune it")
    args = parser.parse_args()
    scaled = lambda n: max(1, round(n * args.scale))  # noqa: E731
    unlabelled, steps, evaluation = scaled(args.unlabelled), scaled(args.pretrain_steps), scaled(args.evaluation)
    minilm_path()  # exit early, with the reason, where the model package is missing
    split = ag_news if args.dataset == "ag_news" else sst2
    train, held_out, texts = split(args.labelled, evaluation, unlabelled, seed=7)
    other = sst2 if args.dataset == "ag_news" else ag_news
    control_texts = same_length(other(0, 0, 7000, seed=7)[2], texts) if args.control else None

    with tempfile.TemporaryDirectory() as folder, running_stack() as (client, _settings):
        folder = Path(folder)
        train_id = client.upload_dataset(write_csv(folder / "train.csv", train), label_column="label")["id"]
        evaluation_id = client.upload_dataset(write_csv(folder / "eval.csv", held_out), label_column="label")["id"]
        lm = pretrain(client, text_file(folder / "unlabelled.txt", texts), steps)
        bases = ["all-MiniLM-L6-v2", lm["result"]["model"]]
        control = None
        if control_texts is not None:
            control = pretrain(client, text_file(folder / "control.txt", control_texts), steps, name="other-lm")
            bases.append(control["result"]["model"])
        runs = {base: [finetune(client, base, train_id, evaluation_id, seed) for seed in range(1, args.seeds + 1)]
                for base in bases}
    report(args, lm, runs, unlabelled, steps, evaluation, control)


def same_length(candidates: list[str], texts: list[str]) -> list[str]:
    """Return the first candidates that hold as many characters as `texts`: as much text to pre-train on."""
    chosen, target = [], sum(len(text) for text in texts)
    for text in candidates:
        if target <= 0:
            break
        chosen.append(text)
        target -= len(text)
    return chosen


def text_file(path: Path, texts: list[str]) -> Path:
    """Write one document a line: no blank line, which would make the file's documents paragraphs."""
    path.write_text("".join(" ".join(text.split()) + "\n" for text in texts if text.split()))
    return path


def report(args, lm: dict, runs: dict, unlabelled: int, steps: int, evaluation: int, control: dict | None) -> None:
    train = lm["result"]["train"]
    print(f"$ {command_line()}")
    print(f"{args.dataset}: MiniLM (all-MiniLM-L6-v2), {os.cpu_count()} CPUs; fine-tunes on {args.labelled} labelled "
          f"rows, {FINETUNE['epochs']:g} epochs, evaluated on {evaluation} other rows; seeds 1..{args.seeds}")
    print(f"pretrain job: {lm['result']['objective']} on {unlabelled} unlabelled documents (.txt, one a line; "
          f"{train['train_blocks']} blocks of {train['block_tokens']} tokens), {steps} steps of "
          f"{PRETRAIN['batch_size']} blocks, precision {train['precision']}")
    losses = lm["losses"]
    print(f"  held-out perplexity {lm['result']['metrics']['perplexity']:.1f} ({train['validation_documents']} "
          f"documents); training loss {losses[0]:.2f} (first {PRETRAIN['logging_steps']} steps) -> {losses[-1]:.2f} "
          f"(last {PRETRAIN['logging_steps']})" if losses else "")
    print(f"  cost: {lm['wall_s']:.0f} s from submit to succeeded ({train['train_runtime_s']:.0f} s training)")
    if control is not None:
        other = "sst2" if args.dataset == "ag_news" else "ag_news"
        print(f"control pretrain job: the same on {control['documents']} documents of {other} text (as many characters): "
              f"held-out perplexity (on "
              f"{other}) {control['result']['metrics']['perplexity']:.1f}, {control['wall_s']:.0f} s")
    print(f"{'fine-tuned from':<22} {'accuracy':>9} {'f1_macro':>9} {'train s':>8} {'wall s':>7}   per seed (accuracy)")
    for base, results in runs.items():
        mean = {key: statistics.mean(r[key] for r in results) for key in results[0]}
        seeds = " ".join(f"{r['accuracy']:.3f}" for r in results)
        name = ("plain MiniLM" if base == "all-MiniLM-L6-v2" else
                f"control ({base})" if control and base == control["result"]["model"] else f"pretrained ({base})")
        print(f"{name:<22} {mean['accuracy']:>9.3f} {mean['f1_macro']:>9.3f} {mean['train_s']:>8.0f} "
              f"{mean['wall_s']:>7.0f}   {seeds}")
    plain, adapted, *controlled = (statistics.mean(r["accuracy"] for r in results) for results in runs.values())
    one_finetune = statistics.mean(r["wall_s"] for results in runs.values() for r in results)
    print(f"accuracy change from pre-training: {adapted - plain:+.3f}; pre-training cost "
          f"{lm['wall_s'] / one_finetune:.1f}x one fine-tune's wall time")
    if controlled:
        print(f"accuracy change from pre-training on the other dataset's text: {controlled[0] - plain:+.3f}; "
              f"the domain's own text over it: {adapted - controlled[0]:+.3f}")


if __name__ == "__main__":
    main()

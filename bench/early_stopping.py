"""Early stopping on a small labelled budget: MiniLM on 500 SST-2 rows, with and without it.

Each variant is a finetune job over HTTP (all-MiniLM-L6-v2, the same seed, rows and settings) that
evaluates on 200 validation rows every `eval_steps`; then an evaluate job scores the trained model on
1,000 other held-out rows. Without early stopping the result is the last step's weights; with it,
training stops after `patience` evaluations without a better validation F1 and the result is the best
checkpoint. Printed per variant: the validation curve (macro F1 per evaluation, * at the kept
checkpoint), the held-out accuracy and macro F1, steps trained and seconds (submit to succeeded).

    python bench/early_stopping.py [--train 500] [--validation 200] [--test 1000] [--epochs 5] [--patience 3] [--all]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import command_line, running_stack, sst2_rows, write_csv

SETTINGS = dict(learning_rate=5e-5, batch_size=16, max_length=64, seed=42, warmup_ratio=0.1, logging_steps=16,
                eval_steps=16, save_steps=64, precision="fp32")


def variants(patience: int, everything: bool) -> dict[str, dict]:
    chosen = {
        "no early stopping": {},
        f"early stopping (patience {patience})": {"early_stopping_patience": patience},
        "early stopping, bottom 3 of 6 layers frozen": {"early_stopping_patience": patience, "freeze_layers": 3,
                                                         "freeze_embeddings": True},
    }
    if everything:
        chosen["early stopping, layer-wise LR decay 0.8"] = {"early_stopping_patience": patience, "layer_lr_decay": 0.8}
    return chosen


def run(client, name: str, extra: dict, data: dict, epochs: float) -> dict:
    model_name = "bench-" + "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")[:60]
    start = time.perf_counter()
    job = client.submit("finetune", {"base_model": "all-MiniLM-L6-v2", "train_dataset_id": data["train"],
                                     "validation_dataset_id": data["validation"], "epochs": epochs,
                                     "model_name": model_name, **SETTINGS, **extra})
    job = client.wait(job["id"], timeout=7200, poll=0.5)
    seconds = time.perf_counter() - start
    assert job["status"] == "succeeded", job["error"]
    events = client.request("GET", f"/jobs/{job['id']}/events", params={"type": "metric", "limit": 5000})["items"]
    curve = {e["step"]: e["data"]["eval_f1_macro"] for e in events if "eval_f1_macro" in e["data"]}
    logs = [e["message"] for e in client.request("GET", f"/jobs/{job['id']}/events", params={"type": "log"})["items"]]
    scored = client.wait(client.submit("evaluate", {"model": job["result"]["model"], "dataset_id": data["test"],
                                                    "max_length": SETTINGS["max_length"]})["id"], timeout=3600)
    assert scored["status"] == "succeeded", scored["error"]
    train = job["result"]["train"]
    return {"curve": curve, "train": train, "seconds": seconds, "test": scored["result"]["metrics"],
            "why": [m for m in logs if m.startswith(("early stopping:", "training ran all", "froze", "all "))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--all", action="store_true", help="also run layer-wise learning-rate decay")
    args = parser.parse_args()
    rows = sst2_rows(args.train + args.validation + args.test)
    parts = {"train": rows[:args.train], "validation": rows[args.train:args.train + args.validation],
             "test": rows[args.train + args.validation:]}
    results = {}
    with tempfile.TemporaryDirectory() as tmp, running_stack() as (client, _settings):
        data = {part: client.upload_dataset(write_csv(Path(tmp) / f"{part}.csv", part_rows), text_column="text",
                                            label_column="label")["id"] for part, part_rows in parts.items()}
        for name, extra in variants(args.patience, args.all).items():
            results[name] = run(client, name, extra, data, args.epochs)

    print(f"command: {command_line()}")
    print(f"data: SST-2 train.tsv shuffled (seed 13): {args.train} train, {args.validation} validation (early "
          f"stopping's), {args.test} held-out test rows; all-MiniLM-L6-v2, {args.epochs:g} epochs at most, {SETTINGS}")
    for name, r in results.items():
        train = r["train"]
        kept = train.get("best_step") or train["global_step"]
        curve = "  ".join(f"{step}:{value:.3f}{'*' if step == kept else ''}" for step, value in sorted(r["curve"].items()))
        print(f"\n{name}")
        print(f"  validation F1 by step: {curve}")
        for line in r["why"]:
            print(f"  event: {line}")
    print(f"\n{'':48}{'steps':>6}{'kept':>6}{'val F1':>8}{'test acc':>10}{'test F1':>9}{'train s':>9}{'job s':>8}")
    for name, r in results.items():
        train = r["train"]
        kept = train.get("best_step") or train["global_step"]
        print(f"{name:48}{train['global_step']:6d}{kept:6d}{r['curve'].get(kept, float('nan')):8.3f}"
              f"{r['test']['accuracy']:10.4f}{r['test']['f1_macro']:9.4f}{train['train_runtime_s']:9.1f}"
              f"{r['seconds']:8.1f}")


if __name__ == "__main__":
    main()

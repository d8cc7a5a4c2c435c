"""LoRA vs full fine-tuning on the same data: quality, training speed, trainable share, artifact size.

Fine-tunes all-MiniLM-L6-v2 on the same SST-2 rows for the same epochs twice in one run, through the
text-classification task's own fine-tune (the code a worker runs): every weight at a full-fine-tune
learning rate, then LoRA adapters (r=8 on query/value, the classifier head trained) at a LoRA
learning rate. Both are scored on the same held-out rows; the LoRA adapter is scored a second time
through the evaluate job's loader (base + adapter, merged in memory) to show it gives the same figures.

    python bench/lora_vs_full.py [--train 2000] [--eval 500] [--rank 8] [--epochs 3] [--lora-learning-rate 2e-3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import command_line, minilm_path, sst2_rows

SETTINGS = dict(batch_size=16, max_length=64, seed=42, save_steps=10_000)
FULL_LR, LORA_LR = 5e-5, 2e-3  # adapters start at zero and need larger steps (5e-4 learnt nothing in 125 steps)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows), encoding="utf-8")
    return path


def run(name: str, params, train: Path, validation: Path, tmp: Path) -> dict:
    from worker.ml.hooks import NullHooks
    from worker.ml.tasks import text_classification

    start = time.perf_counter()
    result = text_classification.finetune(
        params, base_model=params.base_model, train_path=train, validation_path=validation,
        columns={"text": "text", "label": "label"}, output_dir=tmp / name / "model",
        checkpoint_dir=tmp / name / "checkpoints", hooks=NullHooks())
    model_dir = tmp / name / "model"
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    lora = result["train"].get("lora")
    return {
        "accuracy": result["metrics"]["accuracy"], "f1_macro": result["metrics"]["f1_macro"],
        "samples_per_second": result["train"]["train_samples_per_second"],
        "wall_seconds": time.perf_counter() - start, "bytes": weights, "model_dir": model_dir,
        "trainable_share": lora["trainable_share"] if lora else 1.0, "lora": lora,
    }


def main() -> None:
    from worker.ml import adapters
    from worker.ml.hooks import NullHooks
    from worker.ml.tasks import text_classification
    from worker.params import EvaluateParams, FinetuneParams

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=3.0, help="of both fine-tunes")
    parser.add_argument("--full-learning-rate", type=float, default=FULL_LR)
    parser.add_argument("--lora-learning-rate", type=float, default=LORA_LR)
    args = parser.parse_args()
    settings = SETTINGS | {"epochs": args.epochs}
    rows = sst2_rows(args.train + args.eval)
    base = minilm_path()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        train = write_jsonl(tmp / "train.jsonl", rows[: args.train])
        validation = write_jsonl(tmp / "validation.jsonl", rows[args.train:])
        full = run("full", FinetuneParams(base_model=base, train_dataset_id=1, learning_rate=args.full_learning_rate,
                                          **settings),
                   train, validation, tmp)
        lora = run("lora", FinetuneParams(base_model=base, train_dataset_id=1, learning_rate=args.lora_learning_rate,
                                          lora={"r": args.rank, "alpha": 2 * args.rank}, **settings),
                   train, validation, tmp)
        adapters.write_record(lora["model_dir"], base_model="all-MiniLM-L6-v2", base_path=base, stats=lora["lora"])
        reloaded = text_classification.evaluate(
            str(lora["model_dir"]), data_path=validation, columns={"text": "text", "label": "label"},
            params=EvaluateParams(model="m", dataset_id=1, precision="fp32"), hooks=NullHooks())
    print(f"command: {command_line()}")
    print(f"data: {args.train} SST-2 train rows, {args.eval} other rows held out; settings {settings}; "
          f"learning rate full {args.full_learning_rate:g}, LoRA {args.lora_learning_rate:g}")
    print(f"LoRA: r={lora['lora']['r']} alpha={lora['lora']['alpha']:g} on {','.join(lora['lora']['target_modules'])}"
          f" + head {','.join(lora['lora']['head_modules'])}: {lora['lora']['trainable_params']:,} of "
          f"{lora['lora']['total_params']:,} parameters trainable")
    print(f"{'':18}{'accuracy':>10}{'F1 macro':>10}{'samples/s':>11}{'wall s':>9}{'trainable':>11}{'artifact':>12}")
    for label, r in (("full fine-tune", full), (f"LoRA r={args.rank}", lora)):
        print(f"{label:18}{r['accuracy']:10.4f}{r['f1_macro']:10.4f}{r['samples_per_second']:11.1f}"
              f"{r['wall_seconds']:9.1f}{r['trainable_share']:11.2%}{r['bytes'] / 1e6:10.2f}MB")
    print(f"LoRA adapter evaluated through the loader (base + adapter, merged): accuracy {reloaded['accuracy']:.4f}, "
          f"F1 macro {reloaded['f1_macro']:.4f}")
    print(f"artifact {full['bytes'] / lora['bytes']:.0f}x smaller, training {lora['samples_per_second'] / full['samples_per_second']:.2f}x "
          f"the samples/s, accuracy {100 * (lora['accuracy'] - full['accuracy']):+.2f} points")


if __name__ == "__main__":
    main()

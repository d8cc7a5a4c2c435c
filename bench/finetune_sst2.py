"""Fine-tune quality and speed: a Nightshift finetune job vs a bare Transformers Trainer script.

Both fine-tune all-MiniLM-L6-v2 on the same 4,000 SST-2 rows for one epoch with the same settings
and evaluate on the same 1,000 other rows, in one run on this machine. Prints accuracy, macro F1,
training samples/s and wall time of each, and the service's time overhead.

    python bench/finetune_sst2.py [--train 4000] [--eval 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import command_line, minilm_path, running_stack, sst2_rows, write_csv

SETTINGS = dict(epochs=1.0, learning_rate=5e-5, batch_size=16, max_length=64, seed=42, save_steps=200)


def bare_trainer(train_rows, eval_rows, output_dir: Path) -> dict:
    """The baseline: the plainest Trainer script with the same data and hyperparameters."""
    import numpy as np
    from datasets import Dataset
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments, set_seed)

    start = time.perf_counter()
    labels = sorted({label for _text, label in train_rows})
    label_ids = {label: i for i, label in enumerate(labels)}
    set_seed(SETTINGS["seed"])
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=len(labels))

    def encode(rows):
        encoded = tokenizer([t for t, _ in rows], truncation=True, max_length=SETTINGS["max_length"])
        return Dataset.from_dict({**encoded, "labels": [label_ids[label] for _, label in rows]})

    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=SETTINGS["epochs"], learning_rate=SETTINGS["learning_rate"],
        per_device_train_batch_size=SETTINGS["batch_size"], per_device_eval_batch_size=64, seed=SETTINGS["seed"],
        save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, logging_steps=100,
    )
    trainer = Trainer(model=model, args=args, train_dataset=encode(train_rows),
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    stats = trainer.train()
    predictions = np.argmax(trainer.predict(encode(eval_rows)).predictions, axis=-1)
    truth = [label_ids[label] for _, label in eval_rows]
    return {
        "accuracy": accuracy_score(truth, predictions),
        "f1_macro": f1_score(truth, predictions, average="macro"),
        "samples_per_second": stats.metrics["train_samples_per_second"],
        "wall_seconds": time.perf_counter() - start,
    }


def service(train_csv: Path, eval_csv: Path) -> dict:
    """The same fine-tune submitted to Nightshift over HTTP; wall time from submit to succeeded."""
    with running_stack() as (client, _settings):
        train = client.upload_dataset(train_csv, text_column="text", label_column="label")
        evaluation_set = client.upload_dataset(eval_csv, text_column="text", label_column="label")
        start = time.perf_counter()
        job = client.submit("finetune", {
            "base_model": "all-MiniLM-L6-v2", "train_dataset_id": train["id"],
            "validation_dataset_id": evaluation_set["id"], **SETTINGS,
        })
        job = client.wait(job["id"], timeout=7200, poll=0.5)
        wall = time.perf_counter() - start
        assert job["status"] == "succeeded", job["error"]
        metrics = client.request("GET", f"/evaluations/{job['result']['evaluation_id']}")["metrics"]
    return {
        "accuracy": metrics["accuracy"],
        "f1_macro": metrics["f1_macro"],
        "samples_per_second": job["result"]["train"]["train_samples_per_second"],
        "wall_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--eval", type=int, default=1000)
    args = parser.parse_args()
    rows = sst2_rows(args.train + args.eval)
    train_rows, eval_rows = rows[: args.train], rows[args.train:]
    with tempfile.TemporaryDirectory() as tmp:
        train_csv = write_csv(Path(tmp) / "train.csv", train_rows)
        eval_csv = write_csv(Path(tmp) / "eval.csv", eval_rows)
        ours = service(train_csv, eval_csv)
        base = bare_trainer(train_rows, eval_rows, Path(tmp) / "baseline")
    print(f"command: {command_line()}")
    print(f"data: {len(train_rows)} SST-2 train rows, {len(eval_rows)} other rows for evaluation; settings {SETTINGS}")
    print(f"{'':22}{'accuracy':>10}{'F1 macro':>10}{'samples/s':>11}{'wall s':>9}")
    for name, r in (("bare Trainer script", base), ("nightshift finetune", ours)):
        print(f"{name:22}{r['accuracy']:10.4f}{r['f1_macro']:10.4f}{r['samples_per_second']:11.1f}"
              f"{r['wall_seconds']:9.1f}")
    print(f"accuracy difference: {100 * (ours['accuracy'] - base['accuracy']):+.2f} points")
    print(f"time overhead (wall, submit -> succeeded vs script start -> end): "
          f"{100 * (ours['wall_seconds'] / base['wall_seconds'] - 1):+.1f}%")


if __name__ == "__main__":
    main()

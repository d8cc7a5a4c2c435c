"""Multi-label quality on real annotations: which entity types does a WNUT-17 sentence mention?

WNUT-17 labels tokens, not sentences. The label set of a sentence here is the set of entity types its
gold BIO tags mark (person, location, group, creative-work, corporation, product): empty for most
sentences, several for some. The labels are the annotators' own, only read at the sentence level; the
task is harder than it looks (emerging and rare entities in noisy user text).

Split: WNUT-17 train minus its last `--validation` sentences to train on, those to validate on (the
threshold is tuned there), WNUT-17 dev as the held-out test set. A MiniLM multi-label fine-tune runs as
a job over HTTP (train uploaded as a JSON-list CSV, validation as a `|`-separated TSV, test as JSON
Lines), then evaluate jobs score the test set at the tuned threshold and at 0.5, and a batch job labels
it (rows/s). Baselines on the same split, in this process: the empty set for every sentence, and
TF-IDF word and character n-grams with one logistic regression per label, its threshold tuned on the
same validation sentences the same way.

    python bench/multilabel.py [--validation 500] [--epochs 5] [--learning-rate 1e-4]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from _common import command_line, require_dataset, running_stack

TASK = "multi-label-classification"
SETTINGS = dict(batch_size=16, max_length=64, seed=42, warmup_ratio=0.1, save_steps=500, precision="auto")


def sentences(path: Path) -> list[dict]:
    """Read a CoNLL file into rows {"text", "labels"}: the tokens joined, the entity types tagged B-."""
    rows, tokens, types = [], [], set()
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        fields = line.split()
        if not fields:
            if tokens:
                rows.append({"text": " ".join(tokens), "labels": sorted(types)})
            tokens, types = [], set()
            continue
        tokens.append(fields[0])
        if fields[-1].startswith("B-"):
            types.add(fields[-1][2:])
    return rows


def write_parts(folder: Path, train: list[dict], validation: list[dict], test: list[dict]) -> dict[str, Path]:
    """Write the three parts in the three label formats an upload takes."""
    paths = {"train": folder / "train.csv", "validation": folder / "validation.tsv", "test": folder / "test.jsonl"}
    with open(paths["train"], "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "labels"])
        writer.writerows([row["text"], json.dumps(row["labels"])] for row in train)
    with open(paths["validation"], "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, delimiter="\t")
        writer.writerow(["text", "labels"])
        writer.writerows([row["text"], "|".join(row["labels"])] for row in validation)
    paths["test"].write_text("".join(json.dumps(row) + "\n" for row in test), encoding="utf-8")
    return paths


def service(paths: dict[str, Path], epochs: float, learning_rate: float) -> dict:
    """Fine-tune, evaluate at two thresholds and batch-label the test set, all as jobs over HTTP."""
    with running_stack() as (client, _settings):
        ids = {"train": client.upload_dataset(paths["train"], task=TASK)["id"],
               "validation": client.upload_dataset(paths["validation"], task=TASK, label_separator="|")["id"],
               "test": client.upload_dataset(paths["test"], task=TASK)["id"]}
        start = time.perf_counter()
        job = client.wait(client.submit("finetune", {
            "base_model": "all-MiniLM-L6-v2", "train_dataset_id": ids["train"], "validation_dataset_id": ids["validation"],
            "epochs": epochs, "learning_rate": learning_rate, "model_name": "wnut-types", **SETTINGS,
        }, task=TASK)["id"], timeout=7200, poll=1.0)
        assert job["status"] == "succeeded", job["error"]
        finetune_seconds = time.perf_counter() - start
        scores = {}
        for name, extra in (("tuned", {}), ("0.5", {"threshold": 0.5})):
            done = client.wait(client.submit("evaluate", {"model": "wnut-types", "dataset_id": ids["test"], **extra},
                                             task=TASK)["id"], timeout=3600)
            assert done["status"] == "succeeded", done["error"]
            scores[name] = client.request("GET", f"/evaluations/{done['result']['evaluation_id']}")["metrics"]
        start = time.perf_counter()
        batch = client.wait(client.submit("batch_inference", {"model": "wnut-types", "dataset_id": ids["test"]},
                                          task=TASK)["id"], timeout=3600)
        assert batch["status"] == "succeeded", batch["error"]
        batch_seconds = time.perf_counter() - start
    return {"train": job["result"]["train"], "finetune_seconds": finetune_seconds, "scores": scores,
            "batch": batch["result"], "batch_seconds": batch_seconds}


def tfidf_baseline(train: list[dict], validation: list[dict], test: list[dict], label_names: list[str]) -> dict:
    """One logistic regression per label on TF-IDF n-grams; the threshold tuned on validation like the job's."""
    import torch
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from worker.ml.metrics import indicator_matrix, multi_label_metrics
    from worker.ml.tasks.multi_label_classification import above, tune_threshold

    words = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
    texts = [row["text"] for row in train]
    features = hstack([words.fit_transform(texts), chars.fit_transform(texts)]).tocsr()

    def encode(rows):
        texts = [row["text"] for row in rows]
        return hstack([words.transform(texts), chars.transform(texts)]).tocsr()

    truth = indicator_matrix([row["labels"] for row in train], label_names)
    models = [LogisticRegression(max_iter=2000, C=10.0).fit(features, truth[:, i])
              for i in range(len(label_names))]

    def probabilities(rows):
        encoded = encode(rows)
        return torch.tensor([[model.predict_proba(row)[0, 1] for model in models] for row in encoded])

    threshold = tune_threshold(probabilities(validation), [row["labels"] for row in validation], label_names)
    predicted = above(probabilities(test), label_names, threshold)
    return multi_label_metrics([row["labels"] for row in test], predicted, label_names) | {"threshold": threshold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validation", type=int, default=500, help="sentences at the end of train to validate on")
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    args = parser.parse_args()
    rows = sentences(require_dataset("wnut17/train.conll"))
    test = sentences(require_dataset("wnut17/dev.conll"))
    train, validation = rows[:-args.validation], rows[-args.validation:]
    label_names = sorted({label for row in train for label in row["labels"]})

    from worker.ml.metrics import multi_label_metrics

    baselines = {"empty set": multi_label_metrics([r["labels"] for r in test], [[] for _ in test], label_names),
                 "TF-IDF + logistic regression": tfidf_baseline(train, validation, test, label_names)}
    with tempfile.TemporaryDirectory() as tmp:
        result = service(write_parts(Path(tmp), train, validation, test), args.epochs, args.learning_rate)

    print(f"command: {command_line()}")
    print(f"data: WNUT-17 sentences labelled with the entity types they mention: {len(train)} train, "
          f"{len(validation)} validation (the end of train.conll), {len(test)} test (dev.conll)")
    for name, part in (("train", train), ("test", test)):
        counts = {label: sum(label in row["labels"] for row in part) for label in label_names}
        empty = sum(not row["labels"] for row in part)
        print(f"  {name}: rows per label {counts}; without a label {empty} ({empty / len(part):.0%})")
    train_summary = result["train"]
    print(f"fine-tune: all-MiniLM-L6-v2, {args.epochs:g} epochs, learning rate {args.learning_rate:g}, {SETTINGS}; "
          f"{train_summary['global_step']} steps, {train_summary['precision']}, threshold {train_summary['threshold']} "
          f"({train_summary['threshold_source']}), {result['finetune_seconds']:.0f} s submit to done")
    batch = result["batch"]
    print(f"batch inference over the test set: {batch['rows_ok']} rows in {result['batch_seconds']:.1f} s submit to "
          f"done ({batch['rows_ok'] / result['batch_seconds']:.0f} rows/s), threshold {batch.get('threshold')}")
    table = {f"MiniLM job, threshold {result['scores']['tuned']['threshold']:g} (tuned)": result["scores"]["tuned"],
             "MiniLM job, threshold 0.5": result["scores"]["0.5"]} | {
        (f"{name}, threshold {metrics['threshold']:g} (tuned)" if "threshold" in metrics else name): metrics
        for name, metrics in baselines.items()}
    print(f"\n{'test set (' + str(len(test)) + ' sentences)':52}{'micro F1':>9}{'macro F1':>9}{'subset acc':>11}"
          f"{'Hamming':>9}  F1 per label")
    for name, metrics in table.items():
        per_label = " ".join(f"{label}:{metrics['per_class'][label]['f1']:.2f}" for label in label_names)
        print(f"{name:52}{metrics['f1_micro']:9.3f}{metrics['f1_macro']:9.3f}{metrics['subset_accuracy']:11.3f}"
              f"{metrics['hamming_loss']:9.3f}  {per_label}")


if __name__ == "__main__":
    main()

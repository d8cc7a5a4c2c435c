"""Quality of every task on real data, through the service, from the packaged MiniLM encoder.

Each benchmark uploads ../shared/datasets data over HTTP, fine-tunes all-MiniLM-L6-v2 as a Nightshift
job and reads the evaluation the job stored:
- ner:         WNUT-17 train.conll -> entity F1 on dev.conll (seqeval);
- qa:          SQuAD v1.1 dev, split by article with a fixed seed into train and evaluation parts (EM/F1);
- translation: Multi30k en->de, train -> BLEU and chrF on val (BERT2BERT warm-started from MiniLM);
- agnews:      AG News test.csv, split with a fixed seed, 4-class accuracy and macro F1.
For ner and qa a bare Transformers Trainer script runs on the same data with the same budget in the
same run, and the difference in points is printed. Budgets are small enough for a CPU; figures are
what this machine measured, low ones included.

    python bench/tasks.py [--tasks ner,qa,translation,agnews] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time
from pathlib import Path

from _common import command_line, minilm_path, require_dataset, running_stack

SEED = 42


def submit_and_wait(client, task: str, params: dict) -> tuple[dict, dict, float]:
    start = time.perf_counter()
    job = client.submit("finetune", {"base_model": "all-MiniLM-L6-v2", "seed": SEED, "save_steps": 500, **params},
                        task=task)
    job = client.wait(job["id"], timeout=6 * 3600, poll=1.0)
    wall = time.perf_counter() - start
    if job["status"] != "succeeded":
        raise SystemExit(f"{task} job {job['id']} {job['status']}: {job['error']}")
    metrics = client.request("GET", f"/evaluations/{job['result']['evaluation_id']}")["metrics"]
    return job, metrics, wall


# ---- NER ------------------------------------------------------------------------------------------


def ner(client, scale: float) -> list[str]:
    train, dev = require_dataset("wnut17/train.conll"), require_dataset("wnut17/dev.conll")
    # MiniLM is small: at 5e-5 and under an epoch it still tags everything O on WNUT-17.
    params = {"epochs": round(3 * scale, 2), "learning_rate": 2e-4, "batch_size": 16, "max_length": 96}
    train_set = client.upload_dataset(train, task="token-classification")
    dev_set = client.upload_dataset(dev, task="token-classification")
    job, metrics, wall = submit_and_wait(client, "token-classification",
                                         {**params, "train_dataset_id": train_set["id"],
                                          "validation_dataset_id": dev_set["id"]})
    bare = bare_ner(train, dev, params)
    return [
        f"NER WNUT-17 ({train_set['row_count']} train / {dev_set['row_count']} dev sentences, {params}):",
        f"  nightshift  entity F1 {metrics['f1']:.4f}  P {metrics['precision']:.4f}  R {metrics['recall']:.4f}"
        f"  ({job['result']['train']['global_step']} steps, {wall:.0f} s submit->succeeded)",
        f"  bare Trainer entity F1 {bare['f1']:.4f}  P {bare['precision']:.4f}  R {bare['recall']:.4f}  ({bare['wall']:.0f} s)",
        f"  difference {100 * (metrics['f1'] - bare['f1']):+.2f} F1 points",
    ]


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences, tokens, tags = [], [], []
    for line in open(path, encoding="utf-8"):
        fields = line.split()
        if not fields:
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
        elif fields[0] != "-DOCSTART-":
            tokens.append(fields[0])
            tags.append(fields[-1])
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def bare_ner(train_path: Path, dev_path: Path, params: dict) -> dict:
    """The Transformers token-classification recipe: first word piece labelled, seqeval on dev."""
    import numpy as np
    from datasets import Dataset
    from seqeval.metrics import f1_score, precision_score, recall_score
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments, set_seed)

    start = time.perf_counter()
    train, dev = read_conll(train_path), read_conll(dev_path)
    labels = sorted({t for _, tags in train for t in tags}, key=lambda t: (t != "O", t[2:], t[:1]))
    label_ids = {t: i for i, t in enumerate(labels)}
    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModelForTokenClassification.from_pretrained(
        minilm_path(), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids)

    def encode(sentences):
        encoded = tokenizer([t for t, _ in sentences], is_split_into_words=True, truncation=True,
                            max_length=params["max_length"])
        all_labels = []
        for i, (_, tags) in enumerate(sentences):
            previous, row = None, []
            for word in encoded.word_ids(i):
                row.append(-100 if word is None or word == previous else label_ids[tags[word]])
                previous = word
            all_labels.append(row)
        return encoded, Dataset.from_dict({**encoded, "labels": all_labels})

    args = TrainingArguments(output_dir=tempfile.mkdtemp(), num_train_epochs=params["epochs"],
                             learning_rate=params["learning_rate"], per_device_train_batch_size=params["batch_size"],
                             per_device_eval_batch_size=64, seed=SEED, save_strategy="no", report_to=[],
                             disable_tqdm=True, use_cpu=True, logging_steps=100)
    _, train_set = encode(train)
    trainer = Trainer(model=model, args=args, train_dataset=train_set,
                      data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer)
    trainer.train()
    dev_encoded, dev_set = encode(dev)
    logits = trainer.predict(dev_set.remove_columns("labels")).predictions
    predicted = []
    for i, (tokens, _) in enumerate(dev):
        words, previous = ["O"] * len(tokens), None
        for piece, word in enumerate(dev_encoded.word_ids(i)):
            if word is not None and word != previous:
                words[word] = labels[int(np.argmax(logits[i][piece]))]
            previous = word
        predicted.append(words)
    gold = [tags for _, tags in dev]
    return {"f1": f1_score(gold, predicted), "precision": precision_score(gold, predicted),
            "recall": recall_score(gold, predicted), "wall": time.perf_counter() - start}


# ---- QA -------------------------------------------------------------------------------------------


def qa(client, scale: float) -> list[str]:
    document = json.load(open(require_dataset("squad_v1.1/dev-v1.1.json"), encoding="utf-8"))
    articles = list(document["data"])
    random.Random(SEED).shuffle(articles)
    held_out = max(1, round(len(articles) * 0.2))
    parts = {"train": articles[held_out:], "eval": articles[:held_out]}
    params = {"max_steps": max(10, int(600 * scale)), "learning_rate": 1e-4, "batch_size": 16, "max_length": 256}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, part in parts.items():
            paths[name] = Path(tmp) / f"squad-{name}.json"
            paths[name].write_text(json.dumps({"version": "1.1", "data": part}))
        train_set = client.upload_dataset(paths["train"], task="question-answering")
        eval_set = client.upload_dataset(paths["eval"], task="question-answering")
        job, metrics, wall = submit_and_wait(client, "question-answering",
                                             {**params, "train_dataset_id": train_set["id"],
                                              "validation_dataset_id": eval_set["id"]})
        bare = bare_qa(parts["train"], parts["eval"], params)
    return [
        f"QA SQuAD v1.1 dev split by article (seed {SEED}: {len(parts['train'])} articles / {train_set['row_count']} "
        f"questions train, {len(parts['eval'])} / {eval_set['row_count']} eval, {params}):",
        f"  nightshift  EM {metrics['exact_match']:.2f}  F1 {metrics['f1']:.2f}  ({wall:.0f} s submit->succeeded)",
        f"  bare Trainer EM {bare['exact_match']:.2f}  F1 {bare['f1']:.2f}  ({bare['wall']:.0f} s)",
        f"  difference {metrics['f1'] - bare['f1']:+.2f} F1 points, {metrics['exact_match'] - bare['exact_match']:+.2f} EM",
    ]


def squad_examples(articles) -> list[dict]:
    return [{"question": qa["question"], "context": p["context"], "answers": [a["text"] for a in qa["answers"]],
             "start": qa["answers"][0]["answer_start"], "text": qa["answers"][0]["text"]}
            for article in articles for p in article["paragraphs"] for qa in p["qas"]]


def bare_qa(train_articles, eval_articles, params: dict) -> dict:
    """The Transformers question-answering recipe: doc-stride windows, n-best spans, the official metric."""
    import numpy as np
    from datasets import Dataset
    from transformers import (AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from worker.ml.tasks.question_answering import squad_metrics  # the official SQuAD v1.1 normalisation

    start = time.perf_counter()
    max_length, stride = params["max_length"], min(64, params["max_length"] // 4)
    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModelForQuestionAnswering.from_pretrained(minilm_path())
    train, evaluation = squad_examples(train_articles), squad_examples(eval_articles)

    def windows(examples):
        return tokenizer([e["question"] for e in examples], [e["context"] for e in examples], truncation="only_second",
                         max_length=max_length, stride=stride, return_overflowing_tokens=True,
                         return_offsets_mapping=True)

    encoded = windows(train)
    starts, ends = [], []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        example = train[encoded["overflow_to_sample_mapping"][i]]
        first, last = example["start"], example["start"] + len(example["text"])
        context = [k for k, s in enumerate(encoded.sequence_ids(i)) if s == 1]
        if offsets[context[0]][0] > first or offsets[context[-1]][1] < last:
            starts.append(0)
            ends.append(0)
            continue
        starts.append(next(k for k in context if offsets[k][1] > first))
        ends.append(next(k for k in reversed(context) if offsets[k][0] < last))
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    train_set = Dataset.from_dict({k: encoded[k] for k in keys} | {"start_positions": starts, "end_positions": ends})
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=params["max_steps"],
                             learning_rate=params["learning_rate"], per_device_train_batch_size=params["batch_size"],
                             per_device_eval_batch_size=64, seed=SEED, save_strategy="no", report_to=[],
                             disable_tqdm=True, use_cpu=True, logging_steps=100)
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer)
    trainer.train()
    encoded = windows(evaluation)
    eval_set = Dataset.from_dict({k: encoded[k] for k in keys})
    start_logits, end_logits = trainer.predict(eval_set).predictions
    best = [("", -np.inf)] * len(evaluation)
    for i in range(len(eval_set)):
        example = encoded["overflow_to_sample_mapping"][i]
        offsets, sequence = encoded["offset_mapping"][i], encoded.sequence_ids(i)
        for s in np.argsort(start_logits[i])[-20:]:
            for e in np.argsort(end_logits[i])[-20:]:
                if s >= len(sequence) or e >= len(sequence) or sequence[s] != 1 or sequence[e] != 1 \
                        or e < s or e - s + 1 > 30:
                    continue
                score = start_logits[i][s] + end_logits[i][e]
                if score > best[example][1]:
                    best[example] = (evaluation[example]["context"][offsets[s][0]:offsets[e][1]], score)
    metrics = squad_metrics([text for text, _ in best], [e["answers"] for e in evaluation])
    return metrics | {"wall": time.perf_counter() - start}


# ---- translation and classification -------------------------------------------------------------------


def translation(client, scale: float) -> list[str]:
    en, de = require_dataset("multi30k/train.en"), require_dataset("multi30k/train.de")
    val_en, val_de = require_dataset("multi30k/val.en"), require_dataset("multi30k/val.de")
    params = {"max_steps": max(10, int(1500 * scale)), "learning_rate": 1e-4, "batch_size": 32, "max_length": 48,
              "max_target_length": 48, "generation": {"max_new_tokens": 48, "num_beams": 1}, "eval_batch_size": 64}
    with open(en, "rb") as source, open(de, "rb") as target:
        train_set = client.request("POST", "/datasets", data={"task": "translation"},
                                   files={"file": ("train.en", source), "target_file": ("train.de", target)})
    with open(val_en, "rb") as source, open(val_de, "rb") as target:
        val_set = client.request("POST", "/datasets", data={"task": "translation"},
                                 files={"file": ("val.en", source), "target_file": ("val.de", target)})
    job, metrics, wall = submit_and_wait(client, "translation", {**params, "train_dataset_id": train_set["id"],
                                                                 "validation_dataset_id": val_set["id"]})
    example = metrics["examples"][0]
    return [
        f"translation Multi30k en->de ({train_set['row_count']} train pairs, {val_set['row_count']} val; BERT2BERT "
        f"warm-started from MiniLM; {params}):",
        f"  nightshift  BLEU {metrics['bleu']:.2f}  chrF {metrics['chrf']:.2f}  ({metrics['bleu_signature']}; "
        f"{job['result']['train']['global_step']} steps, {wall:.0f} s submit->succeeded)",
        f"  e.g. {example['source']!r} -> {example['prediction']!r} (reference {example['reference']!r})",
    ]


def agnews(client, scale: float) -> list[str]:
    names = ["World", "Sports", "Business", "Sci/Tech"]
    with open(require_dataset("ag_news/test.csv"), newline="", encoding="utf-8") as handle:
        rows = [(f"{title} {body}".replace("\\", " "), names[int(label) - 1]) for label, title, body in csv.reader(handle)]
    random.Random(SEED).shuffle(rows)
    held_out = len(rows) // 5
    params = {"epochs": round(1.0 * scale, 2), "learning_rate": 1e-4, "batch_size": 32, "max_length": 96}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, part in (("train", rows[held_out:]), ("eval", rows[:held_out])):
            paths[name] = Path(tmp) / f"{name}.csv"
            with open(paths[name], "w", newline="") as out:
                writer = csv.writer(out)
                writer.writerow(["text", "label"])
                writer.writerows(part)
        train_set = client.upload_dataset(paths["train"], label_column="label")
        eval_set = client.upload_dataset(paths["eval"], label_column="label")
        _job, metrics, wall = submit_and_wait(client, "text-classification", {
            **params, "train_dataset_id": train_set["id"], "validation_dataset_id": eval_set["id"]})
    return [f"AG News 4 classes (test.csv split seed {SEED}: {train_set['row_count']} train / {eval_set['row_count']} eval, "
            f"{params}):",
            f"  nightshift  accuracy {metrics['accuracy']:.4f}  F1 macro {metrics['f1_macro']:.4f}  ({wall:.0f} s)"]


BENCHMARKS = {"ner": ner, "qa": qa, "translation": translation, "agnews": agnews}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every training budget (steps, epochs)")
    args = parser.parse_args()
    print(f"command: {command_line()}", flush=True)
    with running_stack() as (client, _settings):
        for name in args.tasks.split(","):
            for line in BENCHMARKS[name](client, args.scale):
                print(line, flush=True)


if __name__ == "__main__":
    main()

"""Fine-tune speed of every task: a Nightshift finetune job vs a bare Transformers Trainer script.

For each task, in one run on this machine, the same fine-tune twice on the same rows and settings
(base model, max_length, batch size, epochs, learning rate, seed, precision, checkpoint every
save_steps, at most 2 kept):

- the bare script: load the model, tokenize with the task module's own encoding, build the task's
  collator, `Trainer.train()`, save the model; in a fresh process of its own, as each job runs in one;
- the job: upload train and validation rows over HTTP, submit a finetune job, wait for it to end.

Training throughput is the Trainer's own `train_samples_per_second` (train() time, checkpoint saves
included) on both sides; for the job it comes from the job's result summary. The bare script trains
in the precision the job chose (`auto`). Each pair runs --repeats times, alternating which goes first
(job, bare, bare, job, ...), and the table shows each side's best run, so a burst of other load on
the machine does not decide the ratio; every run's figure is printed too. Whole wall times are
printed beside: submit -> succeeded for the job (it also evaluates on the validation rows and
registers the model), load -> saved for the script.

Data: SST-2 (text classification), WNUT-17 (token classification), SQuAD v1.1 dev (question
answering) with the pretrained all-MiniLM-L6-v2; Multi30k en->de (translation), AG News description
-> title (summarization) and AG News descriptions (text generation) with small T5- and GPT-2-style
models built here from a config (no pretrained checkpoint is available offline) with a WordPiece
tokenizer trained on the task's rows.

    python bench/finetune_vs_trainer.py [--tasks text-classification,translation,...] [--scale 1.0]
                                        [--repeats 2] [--profile DIR]

--profile DIR records each job's process with py-spy (`--format raw`, one file per task) instead of
timing it fairly: py-spy's sampling costs the job some CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from _common import (DATASETS, command_line, machine_line, minilm_path, require_dataset, running_stack, sst2_rows,
                     write_csv)

TARGET_RATIO = 0.95
VALIDATION_ROWS = 32  # the job scores these after training; not part of the comparison
COMMON = dict(epochs=1.0, learning_rate=5e-5, batch_size=16, seed=42, logging_steps=10)
GENERATION = {"max_new_tokens": 24}


@dataclass
class Case:
    """One task's fine-tune: upload specs for the job, and how the bare script builds the same run."""

    task: str
    model_name: str
    base: str
    rows: int
    params: dict
    upload: Callable[[Any], tuple[int, int]]  # client -> (train id, validation id)
    bare_setup: Callable[[], tuple[Any, Any, Any, Any]]  # -> (model, tokenizer, train set, collator)
    jobs: list[dict] = field(default_factory=list)
    bares: list[dict] = field(default_factory=list)
    uploaded: tuple[int, int] | None = None

    def best(self, side: str) -> dict:
        return max(self.jobs if side == "job" else self.bares, key=lambda run: run["samples_per_second"])


# ---- small models built from a config -------------------------------------------------------------


def build_tokenizer(corpus: list[str], vocab_size: int, path: Path):
    """Train a WordPiece tokenizer ([CLS] text [SEP]) on `corpus` and save it under `path`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                                  show_progress=False))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", backend.token_to_id("[CLS]")), ("[SEP]", backend.token_to_id("[SEP]"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_max_length=512)
    tokenizer.save_pretrained(path)
    return tokenizer


def build_t5(corpus: list[str], path: Path) -> str:
    """A T5-style encoder-decoder of about 8M parameters (3+3 layers, d_model 256); kept if already built."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    if (path / "config.json").is_file():  # the bare script's process reuses what the benchmark built
        return str(path)
    tokenizer = build_tokenizer(corpus, 8000, path)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=256, d_kv=32, d_ff=1024, num_layers=3, num_heads=8,
                      dropout_rate=0.1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(path)
    return str(path)


def build_gpt2(corpus: list[str], path: Path) -> str:
    """A GPT-2-style decoder of about 5M parameters (4 layers, n_embd 256); kept if already built."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if (path / "config.json").is_file():
        return str(path)
    tokenizer = build_tokenizer(corpus, 8000, path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=256, n_layer=4, n_head=4,
                        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    return str(path)


def parameters(path: str, model_class: str) -> int:
    import transformers

    return sum(p.numel() for p in getattr(transformers, model_class).from_pretrained(path).parameters())


# ---- data and cases -------------------------------------------------------------------------------


def thirds(rows: int) -> int:
    """save_steps that checkpoint each third of a one-epoch run."""
    return max(1, -(-rows // COMMON["batch_size"]) // 3)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def conll_sentences(name: str) -> list[tuple[list[str], list[str]]]:
    sentences, tokens, tags = [], [], []
    for line in require_dataset(f"wnut17/{name}").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields:
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def agnews_rows() -> list[tuple[str, str]]:
    """(title, description) of the AG News test rows, in file order."""
    with open(require_dataset("ag_news/test.csv"), newline="", encoding="utf-8") as handle:
        return [(title.strip(), body.replace("\\", " ").strip()) for _label, title, body in csv.reader(handle)]


def text_classification(folder: Path, rows: int) -> Case:
    from worker.ml.tasks import text_classification as task

    data = sst2_rows(rows + VALIDATION_ROWS)
    train, validation = data[:rows], data[rows:]
    params = COMMON | dict(max_length=64, save_steps=thirds(rows))

    def upload(client):
        train_csv, validation_csv = write_csv(folder / "sst2-train.csv", train), write_csv(folder / "sst2-val.csv", validation)
        return (client.upload_dataset(train_csv, text_column="text", label_column="label")["id"],
                client.upload_dataset(validation_csv, text_column="text", label_column="label")["id"])

    bare_setup = minilm_setup("AutoModelForSequenceClassification", "DataCollatorWithPadding", task._encode,
                              train, sorted({label for _, label in train}), params["max_length"])
    return Case("text-classification", "MiniLM-L6 (22.7M, pretrained)", "all-MiniLM-L6-v2", rows, params,
                upload, bare_setup)


def minilm_setup(model_class: str, collator_class: str, encode, train, names: list[str], max_length: int):
    """The bare script's (model, tokenizer, encoded rows, collator) for a MiniLM task, encoded by the task's own `encode`."""

    def setup():
        import transformers

        from worker.ml.data import Examples

        tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
        model = getattr(transformers, model_class).from_pretrained(minilm_path(), num_labels=len(names))
        encoded = encode(tokenizer, Examples([text for text, _ in train], [target for _, target in train]),
                         {name: i for i, name in enumerate(names)}, max_length)
        return model, tokenizer, encoded, getattr(transformers, collator_class)(tokenizer)

    return setup


def token_classification(folder: Path, rows: int) -> Case:
    from worker.ml.tasks import token_classification as task

    sentences = conll_sentences("train.conll")
    train = sentences[:rows]
    known = {tag for _, tags in train for tag in tags}
    validation = [s for s in sentences[rows:] if set(s[1]) <= known][:VALIDATION_ROWS]
    params = COMMON | dict(max_length=128, save_steps=thirds(rows))

    def upload(client):
        ids = []
        for name, part in (("wnut-train.conll", train), ("wnut-val.conll", validation)):
            text = "\n".join("".join(f"{token}\t{tag}\n" for token, tag in zip(*sentence)) for sentence in part)
            (folder / name).write_text(text, encoding="utf-8")
            ids.append(client.upload_dataset(folder / name, task="token-classification")["id"])
        return ids[0], ids[1]

    bare_setup = minilm_setup("AutoModelForTokenClassification", "DataCollatorForTokenClassification", task._encode,
                              train, task._tag_order(known), params["max_length"])
    return Case("token-classification", "MiniLM-L6 (22.7M, pretrained)", "all-MiniLM-L6-v2", rows, params,
                upload, bare_setup)


def question_answering(folder: Path, rows: int) -> Case:
    from worker.ml.tasks import question_answering as task

    document = json.loads(require_dataset("squad_v1.1/dev-v1.1.json").read_text(encoding="utf-8"))
    questions = [(qa["question"], paragraph["context"], qa["answers"])
                 for article in document["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    train, validation = questions[:rows], questions[rows:rows + VALIDATION_ROWS]
    params = COMMON | dict(max_length=192, save_steps=thirds(rows))

    def upload(client):
        ids = []
        for name, part in (("squad-train.jsonl", train), ("squad-val.jsonl", validation)):
            write_jsonl(folder / name, [{"question": q, "context": c, "answers": a} for q, c, a in part])
            ids.append(client.upload_dataset(folder / name, task="question-answering")["id"])
        return ids[0], ids[1]

    def bare_setup():
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding

        from worker.ml.data import Examples

        tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        model = AutoModelForQuestionAnswering.from_pretrained(minilm_path())
        answers = [{"text": [a["text"] for a in found], "answer_start": [a["answer_start"] for a in found]}
                   for _, _, found in train]
        examples = Examples([q for q, _, _ in train], answers)
        encoded = task._train_features(tokenizer, examples, [c for _, c, _ in train], params["max_length"])
        return model, tokenizer, encoded, DataCollatorWithPadding(tokenizer)

    return Case("question-answering", "MiniLM-L6 (22.7M, pretrained)", "all-MiniLM-L6-v2", rows, params,
                upload, bare_setup)


def seq2seq_case(task_name: str, folder: Path, pairs: list[tuple[str, str]], rows: int, params: dict,
                 upload_pairs: Callable) -> Case:
    from worker.ml import seq2seq

    train, validation = pairs[:rows], pairs[rows:rows + VALIDATION_ROWS]
    base = build_t5([text for pair in train for text in pair], folder / f"t5-{task_name}")

    def bare_setup():
        from transformers import AutoTokenizer, DataCollatorForSeq2Seq, T5ForConditionalGeneration

        from worker.ml.data import Examples

        tokenizer = AutoTokenizer.from_pretrained(base)
        model = T5ForConditionalGeneration.from_pretrained(base)
        encoded = seq2seq._encode(tokenizer, Examples([s for s, _ in train], [t for _, t in train]),
                                  params["max_length"], params["max_target_length"])
        return model, tokenizer, encoded, DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    size = parameters(base, "T5ForConditionalGeneration") / 1e6
    return Case(task_name, f"T5-style ({size:.1f}M, from config)", base, rows, params,
                lambda client: upload_pairs(client, train, validation), bare_setup)


def translation(folder: Path, rows: int) -> Case:
    english = (DATASETS / "multi30k/train.en").read_text(encoding="utf-8").splitlines()
    german = require_dataset("multi30k/train.de").read_text(encoding="utf-8").splitlines()
    params = COMMON | dict(max_length=48, max_target_length=48, learning_rate=1e-3, save_steps=thirds(rows),
                           generation=GENERATION)

    def upload(client, train, validation):
        ids = []
        for name, part in (("train", train), ("val", validation)):
            source, target = folder / f"mt-{name}.en", folder / f"mt-{name}.de"
            source.write_text("".join(s + "\n" for s, _ in part), encoding="utf-8")
            target.write_text("".join(t + "\n" for _, t in part), encoding="utf-8")
            ids.append(client.upload_dataset(source, task="translation", target_file=target)["id"])
        return ids[0], ids[1]

    return seq2seq_case("translation", folder, list(zip(english, german)), rows, params, upload)


def summarization(folder: Path, rows: int) -> Case:
    pairs = [(body, title) for title, body in agnews_rows()]
    params = COMMON | dict(max_length=128, max_target_length=32, learning_rate=1e-3, save_steps=thirds(rows),
                           generation=GENERATION)

    def upload(client, train, validation):
        ids = []
        for name, part in (("sum-train.jsonl", train), ("sum-val.jsonl", validation)):
            write_jsonl(folder / name, [{"document": d, "summary": s} for d, s in part])
            ids.append(client.upload_dataset(folder / name, task="summarization")["id"])
        return ids[0], ids[1]

    return seq2seq_case("summarization", folder, pairs, rows, params, upload)


def text_generation(folder: Path, rows: int) -> Case:
    from worker.ml.tasks import text_generation as task

    texts = [body for _, body in agnews_rows()]
    train, validation = texts[:rows], texts[rows:rows + VALIDATION_ROWS]
    base = build_gpt2(train, folder / "gpt2")
    params = COMMON | dict(max_length=96, max_target_length=32, learning_rate=1e-3, save_steps=thirds(rows))

    def upload(client):
        ids = []
        for name, part in (("lm-train.jsonl", train), ("lm-val.jsonl", validation)):
            write_jsonl(folder / name, [{"text": t} for t in part])
            ids.append(client.upload_dataset(folder / name, task="text-generation")["id"])
        return ids[0], ids[1]

    def bare_setup():
        from transformers import AutoTokenizer, DataCollatorForSeq2Seq, GPT2LMHeadModel

        from worker.ml.data import Examples

        model, tokenizer = task.with_lm_tokens(GPT2LMHeadModel.from_pretrained(base), AutoTokenizer.from_pretrained(base))
        encoded = task._encode(tokenizer, Examples([""] * len(train), train),
                               params["max_length"] + params["max_target_length"])
        return model, tokenizer, encoded, DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    size = parameters(base, "GPT2LMHeadModel") / 1e6
    return Case("text-generation", f"GPT-2-style ({size:.1f}M, from config)", base, rows, params, upload, bare_setup)


# Rows per task at --scale 1: about 30-60 s of training each on 2 CPU cores, in 3 checkpoints.
CASES = {
    "text-classification": (text_classification, 640),
    "token-classification": (token_classification, 640),
    "question-answering": (question_answering, 160),
    "translation": (translation, 5000),
    "summarization": (summarization, 2500),
    "text-generation": (text_generation, 2800),
}


# ---- the two runs -----------------------------------------------------------------------------------


def run_job(client, case: Case, profile: Path | None) -> dict:
    """Submit the fine-tune over HTTP and wait; throughput from the job's own training summary."""
    if case.uploaded is None:
        case.uploaded = case.upload(client)
    train_id, validation_id = case.uploaded
    start = time.perf_counter()
    job = client.submit("finetune", {"base_model": case.base, "train_dataset_id": train_id,
                                     "validation_dataset_id": validation_id, **case.params}, task=case.task)
    recorder = record_job_process(client, job["id"], profile / f"{case.task}-job{job['id']}.txt") if profile else None
    job = client.wait(job["id"], timeout=3600, poll=1.0)
    wall = time.perf_counter() - start
    if recorder is not None:
        recorder.wait(timeout=60)
    if job["status"] != "succeeded":
        raise SystemExit(f"{case.task}: job {job['id']} {job['status']}: {job['error']}")
    train = job["result"]["train"]
    checkpoints = [e for e in client.events(job["id"], limit=500)["items"]
                   if e["type"] == "log" and e["message"].startswith("checkpoint saved")]
    return {"samples_per_second": train["train_samples_per_second"], "train_seconds": train["train_runtime_s"],
            "wall_seconds": wall, "precision": train["precision"], "steps": train["global_step"],
            "checkpoints": len(checkpoints), "job_id": job["id"]}


def record_job_process(client, job_id: int, output: Path):
    """Start py-spy on the worker's pool process once the job runs there (one job per pool process)."""
    import subprocess

    import psutil

    while client.job(job_id)["status"] == "queued":
        time.sleep(0.2)
    workers = [p for p in psutil.Process().children() if "worker" in p.cmdline() and "celery" in " ".join(p.cmdline())]
    pool = [child for worker in workers for child in worker.children()]
    output.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pool[0].pid),
                             "--rate", "50", "--format", "raw", "--threads", "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


BARE_RESULT = "bare-result: "


def run_bare_apart(name: str, folder: Path, rows: int, precision: str, output_dir: Path) -> dict:
    """`run_bare` in a fresh process of its own, as each job runs in one: nothing one run leaves in memory
    (a model, datasets, freed heap) stays beside the runs after it."""
    import subprocess

    command = [sys.executable, str(Path(__file__).resolve()), "--bare", name, "--folder", str(folder),
               "--rows", str(rows), "--precision", precision, "--output", str(output_dir)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith(BARE_RESULT))
    return json.loads(line.removeprefix(BARE_RESULT))


def run_bare(case: Case, precision: str, output_dir: Path) -> dict:
    """The plainest Trainer script on the same rows and settings; wall from load to saved model."""
    from transformers import Trainer, TrainingArguments, set_seed

    from worker.ml.device import pick_device

    params = case.params
    start = time.perf_counter()
    set_seed(params["seed"])
    model, tokenizer, train_set, collator = case.bare_setup()
    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=params["epochs"], learning_rate=params["learning_rate"],
        per_device_train_batch_size=params["batch_size"], seed=params["seed"], logging_steps=params["logging_steps"],
        save_strategy="steps", save_steps=params["save_steps"], save_total_limit=2, report_to=[],
        disable_tqdm=True, use_cpu=pick_device() == "cpu",  # where the job trains
        bf16=precision == "bf16", fp16=precision == "fp16",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator,
                      processing_class=tokenizer)
    stats = trainer.train()
    model.save_pretrained(output_dir / "final")
    tokenizer.save_pretrained(output_dir / "final")
    checkpoints = stats.global_step // params["save_steps"] + (stats.global_step % params["save_steps"] != 0)
    import torch

    return {"samples_per_second": stats.metrics["train_samples_per_second"],
            "train_seconds": stats.metrics["train_runtime"], "wall_seconds": time.perf_counter() - start,
            "steps": stats.global_step, "checkpoints": checkpoints, "train_set": len(train_set),
            "threads": torch.get_num_threads()}


def print_table(cases: list[Case]) -> None:
    print(f"\n{'task':22}{'model':34}{'rows':>6}{'prec':>6}{'steps':>6}{'ckpts':>6}"
          f"{'bare samples/s':>16}{'job samples/s':>15}{'ratio':>7}{'':>4}"
          f"{'bare train s':>13}{'job train s':>12}{'bare wall s':>12}{'job wall s':>11}")
    for case in cases:
        bare, job = case.best("bare"), case.best("job")
        ratio = job["samples_per_second"] / bare["samples_per_second"]
        print(f"{case.task:22}{case.model_name:34}{case.rows:6d}{job['precision']:>6}{job['steps']:6d}"
              f"{job['checkpoints']:>3}/{bare['checkpoints']:<2}{bare['samples_per_second']:16.2f}"
              f"{job['samples_per_second']:15.2f}{ratio:7.3f}{'ok' if ratio >= TARGET_RATIO else 'LOW':>4}"
              f"{bare['train_seconds']:13.1f}{job['train_seconds']:12.1f}{bare['wall_seconds']:12.1f}"
              f"{job['wall_seconds']:11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(CASES), help="comma-separated tasks (default: all)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply each task's rows (0.1 for a smoke run)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side per task, order alternating")
    parser.add_argument("--profile", type=Path, help="record each job's process with py-spy into this folder")
    for internal in ("--bare", "--folder", "--rows", "--precision", "--output"):  # one bare run, in its own process
        parser.add_argument(internal, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        case = CASES[args.bare][0](Path(args.folder), int(args.rows))
        print(BARE_RESULT + json.dumps(run_bare(case, args.precision, Path(args.output))), flush=True)
        return
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    unknown = sorted(set(tasks) - set(CASES))
    if unknown:
        parser.error(f"unknown tasks {unknown}; known: {', '.join(CASES)}")
    random.seed(0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the stack on the way out
    done = []
    with tempfile.TemporaryDirectory(prefix="finetune-vs-trainer-") as tmp, running_stack() as (client, _settings):
        for name in tasks:
            builder, rows = CASES[name]
            folder = Path(tmp) / name
            folder.mkdir()
            case = builder(folder, max(32, int(rows * args.scale)))
            for repeat in range(args.repeats):
                for side in ("job", "bare") if repeat % 2 == 0 else ("bare", "job"):
                    if side == "job":
                        case.jobs.append(run_job(client, case, args.profile))
                    else:
                        case.bares.append(run_bare_apart(name, folder, case.rows, case.jobs[0]["precision"],
                                                         folder / f"bare{repeat}"))
                    print(f"{name}: {side} {(case.jobs if side == 'job' else case.bares)[-1]}", flush=True)
            done.append(case)
    print(f"\ncommand: {command_line()}")
    print(f"machine: {machine_line()}")
    print(f"settings shared by both runs: {COMMON} plus each task's max_length / save_steps "
          f"(checkpoints: job/bare); precision: what the job's auto chose")
    print_table(done)
    print("\nevery run, samples/s (job | bare):")
    for case in done:
        print(f"  {case.task:22}" + " ".join(f"{run['samples_per_second']:.2f}" for run in case.jobs) + " | "
              + " ".join(f"{run['samples_per_second']:.2f}" for run in case.bares))


if __name__ == "__main__":
    main()

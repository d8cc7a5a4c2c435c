"""Extractive question answering: (question, context) in, the answer's span of the context out.

Training data is SQuAD v1.1 JSON or JSON Lines `{question, context, answers: {text: [...],
answer_start: [...]}}`; each answer is checked to be at its offset of the context at upload. A
context longer than the model takes is cut into overlapping windows (doc stride); a window that does
not hold the answer learns to point at [CLS]. Answers are scored with the official SQuAD v1.1
exact match and F1 (normalised: lower case, no punctuation or articles).
"""

from __future__ import annotations

import collections
import re
import string
from pathlib import Path
from typing import Any

from worker.datafiles import cell_error, check_columns, length_summary, row_text
from worker.errors import PermanentJobError
from worker.ml.data import Examples, read_rows, split_examples
from worker.ml.hooks import JobHooks, progress_reporter
from worker.ml.loading import load_model
from worker.ml.predict import BatchPredictor, effective_max_length, map_batches
from worker.ml.tasks import Untrainable
from worker.ml.training import TrainingSetup, fit
from worker.params import (
    SHARED_PARAMS,
    EvaluateParams,
    FinetuneParams,
)

TASK = "question-answering"
ROLES = {"question": "question", "context": "context", "answers": "answers"}
INPUT_ROLES = ("question", "context")
PARAMS = SHARED_PARAMS
MODEL_CLASS = "AutoModelForQuestionAnswering"
TRAINED_HEADS = ("ForQuestionAnswering",)  # architecture names of models that already do this task
FORMAT_BY_EXTENSION = {".json": "squad"}  # a .json upload for this task is a SQuAD document
DOC_STRIDE = 64  # tokens shared by consecutive windows of a long context
MAX_ANSWER_TOKENS = 30
N_BEST = 20
# What the periodic evaluation (eval_steps) reports: the span loss of the validation windows.
EVAL_METRICS = {"loss": False}


# ---- data: schema and validation ---------------------------------------------------------------


class QuestionContextRows:
    """Rows of a question and its context, with answers (each checked against the context) when labelled."""

    def __init__(self, columns: dict[str, str]) -> None:
        self._all = dict(columns)
        self.columns = dict(columns)
        self.labelled = True
        self._answers = 0
        self._lengths: collections.Counter[int] = collections.Counter()

    def check_first(self, first: dict) -> None:
        self.labelled = self._all["answers"] in first
        self.columns = {role: column for role, column in self._all.items() if role != "answers" or self.labelled}
        check_columns(first, {f"{role}_column": column for role, column in self.columns.items()})

    def check(self, raw: dict, row: int, line: int | None) -> dict[str, Any]:
        # Training data needs every text; in questions to answer a blank one is kept, and the batch
        # job reports that row in its error file.
        question = row_text(raw, row, line, self.columns["question"], required=self.labelled)
        context = row_text(raw, row, line, self.columns["context"], required=self.labelled)
        checked: dict[str, Any] = {self.columns["question"]: question, self.columns["context"]: context}
        self._lengths[len(context)] += 1
        if self.labelled:
            column = self.columns["answers"]
            checked[column] = check_answers(raw.get(column), context, row, line, column)
            self._answers += len(checked[column]["text"])
        return checked

    def summary(self) -> dict[str, Any]:
        return {"answers": self._answers, "labelled": self.labelled, "context_length_chars": length_summary(self._lengths)}


def check_answers(value, context: str, row: int, line: int | None, column: str) -> dict[str, list]:
    """Return answers as {text: [...], answer_start: [...]}, each found at its offset of the context."""
    if isinstance(value, list):  # SQuAD's own shape: [{"text": ..., "answer_start": ...}]
        value = {"text": [a.get("text") for a in value if isinstance(a, dict)],
                 "answer_start": [a.get("answer_start") for a in value if isinstance(a, dict)]}
    if not isinstance(value, dict) or not isinstance(value.get("text"), list) \
            or not isinstance(value.get("answer_start"), list) or not value["text"]:
        raise cell_error("bad_answers", 'must hold {"text": [...], "answer_start": [...]} with at least one answer.',
                         row, line, column)
    texts, starts = value["text"], value["answer_start"]
    if len(texts) != len(starts):
        raise cell_error("bad_answers", f"has {len(texts)} answer texts but {len(starts)} answer_start offsets.",
                         row, line, column)
    for number, (text, start) in enumerate(zip(texts, starts), 1):
        if not isinstance(text, str) or not text.strip() or not isinstance(start, int) or isinstance(start, bool):
            raise cell_error("bad_answers", f"has answer {number} without a non-blank text and an integer answer_start.",
                             row, line, column)
        found = context[start:start + len(text)]
        if found != text:
            where = context.find(text)
            hint = f"; it occurs at {where}" if where >= 0 else "; it does not occur in the context at all"
            raise cell_error(
                "answer_not_in_context",
                f"has answer {number} {text[:60]!r} at character {start}, where the context holds {found[:60]!r}{hint}.",
                row, line, column, answer=number)
    return {"text": list(texts), "answer_start": list(starts)}


def row_schema(columns: dict[str, str]) -> QuestionContextRows:
    return QuestionContextRows(columns)


def check_trainable(stats: dict) -> Untrainable | None:
    if (stats or {}).get("labelled") is False:
        return Untrainable("dataset_unlabelled", "is absent: the rows have no answers to learn from; upload them "
                           "with an answers column")
    return None


# ---- metrics (the official SQuAD v1.1 evaluation) -----------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace (as the official script)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, truth: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(predicted) & collections.Counter(expected)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: list[str], answers: list[list[str]]) -> dict:
    """Exact match and F1 (0-100), each the best over a question's gold answers, averaged over questions."""
    exact = [max(float(normalize_answer(p) == normalize_answer(t)) for t in truths)
             for p, truths in zip(predictions, answers)]
    f1 = [max(_f1(p, t) for t in truths) for p, truths in zip(predictions, answers)]
    count = max(len(answers), 1)
    return {"exact_match": 100 * sum(exact) / count, "f1": 100 * sum(f1) / count, "support": len(answers)}


# ---- preprocessing -----------------------------------------------------------------------------


def _windows(tokenizer, questions: list[str], contexts: list[str], max_length: int):
    """Tokenize (question, context) pairs into overlapping windows of the context, with offsets."""
    if not tokenizer.is_fast:
        raise PermanentJobError("question answering needs a fast tokenizer (tokenizer.json) for character offsets")
    stride = min(DOC_STRIDE, max_length // 4)
    return tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True)


def _train_features(tokenizer, examples: Examples, contexts: list[str], max_length: int):
    """Windows labelled with the token span of the first answer, or [CLS] where it is not inside."""
    from datasets import Dataset

    encoded = _windows(tokenizer, examples.texts, contexts, max_length)
    starts, ends = [], []
    for window, offsets in enumerate(encoded["offset_mapping"]):
        example = encoded["overflow_to_sample_mapping"][window]
        answers = examples.labels[example]
        first = answers["answer_start"][0]
        last = first + len(answers["text"][0])
        sequence = encoded.sequence_ids(window)
        context_tokens = [i for i, s in enumerate(sequence) if s == 1]
        lo, hi = context_tokens[0], context_tokens[-1]
        if offsets[lo][0] > first or offsets[hi][1] < last:
            starts.append(0)
            ends.append(0)
            continue
        start = next(i for i in range(lo, hi + 1) if offsets[i][1] > first)
        end = next(i for i in range(hi, lo - 1, -1) if offsets[i][0] < last)
        starts.append(start)
        ends.append(end)
    data = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded}
    return Dataset.from_dict(data | {"start_positions": starts, "end_positions": ends})


def answer_spans(model, tokenizer, questions: list[str], contexts: list[str], *, max_length: int, batch_tokens: int,
                 max_batch_size: int, on_batch=None) -> list[dict]:
    """Return the best answer span of each (question, context): text, start, end, score."""
    import torch

    encoded = _windows(tokenizer, questions, contexts, max_length)

    def step(inputs, batch):
        output = model(**inputs)
        starts, ends = output.start_logits.float().cpu(), output.end_logits.float().cpu()
        # Over the window's own tokens only: a padding position is no answer (and, indexed into the
        # shorter window, was out of range), and the scores do not depend on what it was batched with.
        real = inputs["attention_mask"].bool().cpu()
        return [(torch.softmax(starts[row][real[row]], dim=-1), torch.softmax(ends[row][real[row]], dim=-1))
                for row in range(len(batch))]

    scored = map_batches(model, tokenizer, encoded, step=step, batch_tokens=batch_tokens,
                         max_batch_size=max_batch_size, on_batch=on_batch)
    best: list[dict] = [{"text": "", "start": 0, "end": 0, "score": 0.0} for _ in questions]
    for window, (start_p, end_p) in enumerate(scored):
        example = encoded["overflow_to_sample_mapping"][window]
        offsets, sequence = encoded["offset_mapping"][window], encoded.sequence_ids(window)
        in_context = [s == 1 for s in sequence]
        for start in torch.topk(start_p, min(N_BEST, len(start_p))).indices.tolist():
            for end in torch.topk(end_p, min(N_BEST, len(end_p))).indices.tolist():
                if not (in_context[start] and in_context[end]) or end < start or end - start + 1 > MAX_ANSWER_TOKENS:
                    continue
                score = float(start_p[start] * end_p[end])
                if score > best[example]["score"]:
                    first, last = offsets[start][0], offsets[end][1]
                    best[example] = {"text": contexts[example][first:last], "start": first, "end": last, "score": score}
    return best


# ---- fine-tune and evaluate -----------------------------------------------------------------------


def _read(path: Path, columns: dict[str, str], what: str) -> tuple[Examples, list[str]]:
    """Return (questions with their answers, contexts)."""
    rows = read_rows(path)
    if not rows:
        raise PermanentJobError(f"the {what} dataset has no rows: upload questions with their contexts and answers")
    try:
        examples = Examples([r[columns["question"]] for r in rows], [r[columns["answers"]] for r in rows])
        return examples, [r[columns["context"]] for r in rows]
    except KeyError:
        raise PermanentJobError(f"the {what} dataset has no answers: upload it with task=question-answering "
                                "and an answers column") from None


def load_reader(model_ref: str):
    return load_model(model_ref, MODEL_CLASS, "an extractive question-answering model")


def finetune(params: FinetuneParams, *, base_model: str, train_path: Path, validation_path: Path | None,
             columns: dict[str, str], output_dir: Path, checkpoint_dir: Path, hooks: JobHooks) -> dict:
    """Fine-tune a span-extraction head; score the validation questions with SQuAD EM and F1."""
    train, train_contexts = _read(train_path, columns, "train")
    # Keep each question with its own context through the split.
    paired = Examples(list(zip(train.texts, train_contexts)), train.labels)
    if validation_path is None:
        paired, held_out = split_examples(paired, params.validation_fraction, params.seed)
        validation = Examples([q for q, _ in held_out.texts], held_out.labels)
        validation_contexts = [c for _, c in held_out.texts]
    else:
        validation, validation_contexts = _read(validation_path, columns, "validation")
    train = Examples([q for q, _ in paired.texts], paired.labels)
    train_contexts = [c for _, c in paired.texts]

    def setup() -> TrainingSetup:
        from transformers import DataCollatorWithPadding

        model, tokenizer = load_reader(base_model)
        max_length = effective_max_length(tokenizer, params.max_length)
        evaluated = _train_features(tokenizer, validation, validation_contexts, max_length) if params.eval_steps else None
        return TrainingSetup(model, tokenizer, _train_features(tokenizer, train, train_contexts, max_length),
                             DataCollatorWithPadding(tokenizer), eval_set=evaluated)

    fitted = fit(params, train_rows=len(train.texts), checkpoint_dir=checkpoint_dir, hooks=hooks,
                 setup=setup, load_trained=load_reader, eval_metrics=EVAL_METRICS)
    model, tokenizer = fitted.model, fitted.tokenizer
    model.eval()
    spans = answer_spans(model, tokenizer, validation.texts, validation_contexts,
                         max_length=effective_max_length(tokenizer, params.max_length),
                         batch_tokens=params.eval_batch_size * params.max_length,
                         max_batch_size=params.eval_batch_size, on_batch=progress_reporter(hooks))
    metrics = squad_metrics([s["text"] for s in spans], [a["text"] for a in validation.labels])
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return {"label_names": [], "metrics": metrics, "train": fitted.summary | {"validation_rows": len(validation.texts)}}


def evaluate(model_dir: str, *, data_path: Path, columns: dict[str, str], params: EvaluateParams,
             hooks: JobHooks) -> dict:
    """Answer every question of a dataset and score the answers with SQuAD EM and F1."""
    examples, contexts = _read(data_path, columns, "evaluation")
    reader = Predictor(model_dir, max_length=params.max_length, batch_tokens=params.batch_size * params.max_length,
                       max_batch_size=params.batch_size, precision=params.precision)
    spans = reader.answer(examples.texts, contexts, on_batch=progress_reporter(hooks))
    metrics = squad_metrics([s["text"] for s in spans], [a["text"] for a in examples.labels])
    return metrics | {"rows": len(examples.texts), "dtype": reader.precision}


class Predictor(BatchPredictor):
    """Answer questions from their contexts with one loaded model."""

    load = staticmethod(load_reader)
    named_labels = False

    def answer(self, questions: list[str], contexts: list[str], *, on_batch=None) -> list[dict]:
        return answer_spans(self.model, self.tokenizer, questions, contexts, max_length=self.max_length,
                            batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size, on_batch=on_batch)

    def predict_chunk(self, rows: list[tuple[int, dict]]) -> list[dict]:
        """Return each row's answer (text, character span, score), in input order; incomplete rows as errors."""
        results: list[dict] = []
        valid = []
        for position, (row_id, value) in enumerate(rows):
            value = value if isinstance(value, dict) else {}
            missing = [role for role in INPUT_ROLES if not isinstance(value.get(role), str) or not value[role].strip()]
            results.append({"row": row_id, "error": f"empty {' and '.join(missing)}"} if missing else None)
            if not missing:
                valid.append(position)
        spans = self.answer([rows[i][1]["question"] for i in valid], [rows[i][1]["context"] for i in valid]) if valid else []
        for position, span in zip(valid, spans):
            results[position] = {"row": rows[position][0], "answer": span["text"], "start": span["start"],
                                 "end": span["end"], "score": span["score"]}
        return results

"""Summarization (sequence to sequence): document/summary pairs in, generated summaries out, ROUGE.

The shared sequence-to-sequence machinery is in `worker/ml/seq2seq.py`; this module names the task's
roles, its data check and its metrics (ROUGE-1, ROUGE-2 and ROUGE-L F-measures, 0-1, from `rouge-score`).
"""

from __future__ import annotations

from pathlib import Path

from worker.datafiles import TextPairRows
from worker.ml import seq2seq
from worker.ml.hooks import JobHooks
from worker.ml.tasks import Untrainable
from worker.params import (
    GENERATION_PARAMS,
    GenerationEvaluateParams,
    GenerationFinetuneParams,
)

TASK = "summarization"
ROLES = {"document": "document", "summary": "summary"}
INPUT_ROLES = ("text",)  # batch inference reads one text per row
PARAMS = GENERATION_PARAMS
MODEL_CLASS = seq2seq.MODEL_CLASS
TRAINED_HEADS = seq2seq.TRAINED_HEADS  # architecture names of models that already do this task
EVAL_METRICS = seq2seq.EVAL_METRICS  # what the periodic evaluation (eval_steps) reports
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def row_schema(columns: dict[str, str]) -> TextPairRows:
    return TextPairRows(columns)


def check_trainable(stats: dict) -> Untrainable | None:
    return None  # every row was checked to hold both texts at upload


def rouge_metrics(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE F-measures over the rows (Porter stemming, as in the reference implementation)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    return {name: total / max(len(references), 1) for name, total in totals.items()} | {"support": len(references)}


PAIR = seq2seq.Pair("document", "summary", rouge_metrics)
Predictor = seq2seq.Generator


def finetune(params: GenerationFinetuneParams, *, base_model: str, train_path: Path, validation_path: Path | None,
             columns: dict[str, str], output_dir: Path, checkpoint_dir: Path, hooks: JobHooks) -> dict:
    return seq2seq.finetune(params, PAIR, base_model=base_model, train_path=train_path,
                            validation_path=validation_path, columns=columns, output_dir=output_dir,
                            checkpoint_dir=checkpoint_dir, hooks=hooks)


def evaluate(model_dir: str, *, data_path: Path, columns: dict[str, str], params: GenerationEvaluateParams,
             hooks: JobHooks) -> dict:
    return seq2seq.evaluate(PAIR, model_dir, data_path=data_path, columns=columns, params=params, hooks=hooks)

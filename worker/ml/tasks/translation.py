"""Translation (sequence to sequence): source/target pairs in, generated translations out, BLEU and chrF.

The shared sequence-to-sequence machinery is in `worker/ml/seq2seq.py`; this module names the task's
roles, its data check and its metrics (sacreBLEU's corpus BLEU and chrF, both 0-100).
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

TASK = "translation"
ROLES = {"source": "source", "target": "target"}
INPUT_ROLES = ("text",)  # batch inference reads one text per row
PARAMS = GENERATION_PARAMS
MODEL_CLASS = seq2seq.MODEL_CLASS
TRAINED_HEADS = seq2seq.TRAINED_HEADS  # architecture names of models that already do this task
EVAL_METRICS = seq2seq.EVAL_METRICS  # what the periodic evaluation (eval_steps) reports


def row_schema(columns: dict[str, str]) -> TextPairRows:
    return TextPairRows(columns)


def check_trainable(stats: dict) -> Untrainable | None:
    return None  # every row was checked to hold both texts at upload


def translation_metrics(predictions: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacreBLEU defaults: 13a tokenisation, one reference per row)."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    return {"bleu": float(bleu.corpus_score(predictions, [references]).score),
            "chrf": float(chrf.corpus_score(predictions, [references]).score),
            "bleu_signature": str(bleu.get_signature()), "support": len(references)}


PAIR = seq2seq.Pair("source", "target", translation_metrics)
Predictor = seq2seq.Generator


def finetune(params: GenerationFinetuneParams, *, base_model: str, train_path: Path, validation_path: Path | None,
             columns: dict[str, str], output_dir: Path, checkpoint_dir: Path, hooks: JobHooks) -> dict:
    return seq2seq.finetune(params, PAIR, base_model=base_model, train_path=train_path,
                            validation_path=validation_path, columns=columns, output_dir=output_dir,
                            checkpoint_dir=checkpoint_dir, hooks=hooks)


def evaluate(model_dir: str, *, data_path: Path, columns: dict[str, str], params: GenerationEvaluateParams,
             hooks: JobHooks) -> dict:
    return seq2seq.evaluate(PAIR, model_dir, data_path=data_path, columns=columns, params=params, hooks=hooks)

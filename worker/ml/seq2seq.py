"""Sequence-to-sequence fine-tuning, evaluation and generation, shared by translation and summarization.

Each of those task modules names its two roles (source/target, document/summary) and its metrics;
everything else is here. A base model is an encoder-decoder (T5, BART, Marian ...) or a BERT-style
encoder, from which an encoder-decoder is warm-started (BERT2BERT: the encoder's weights start both
halves, the decoder's cross-attention starts fresh).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from worker.errors import PermanentJobError
from worker.ml.data import Examples, read_rows, split_examples
from worker.ml.generation import IGNORED, generate_texts, token_loss
from worker.ml.hooks import JobHooks, progress_reporter
from worker.ml.loading import load_model, refuse_custom_code
from worker.ml.predict import BatchPredictor, effective_max_length
from worker.ml.training import TrainingSetup, fit
from worker.params import (
    GenerationBatchParams,
    GenerationEvaluateParams,
    GenerationFinetuneParams,
    GenerationOptions,
)

MODEL_CLASS = "AutoModelForSeq2SeqLM"
TRAINED_HEADS = ("ForConditionalGeneration", "EncoderDecoderModel", "MTModel")
# Encoders whose BERT-style layers can also serve as a decoder with cross-attention.
WARM_START_ENCODERS = ("bert", "roberta", "xlm-roberta", "electra", "camembert")
# What the periodic evaluation (eval_steps) reports: the validation targets' loss (generating every
# eval_steps would cost far more than a training step).
EVAL_METRICS = {"loss": False}


@dataclass(frozen=True)
class Pair:
    """The two roles of a task's rows and how its generated text is scored."""

    source: str
    target: str
    metrics: Callable[[list[str], list[str]], dict]  # (predictions, references) -> metrics


def load_seq2seq(model_ref: str):
    """Load (model, tokenizer): an encoder-decoder as it is, an encoder as both halves of a new one."""
    from transformers import AutoConfig

    refuse_custom_code(model_ref)
    try:
        config = AutoConfig.from_pretrained(model_ref, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise PermanentJobError(f"model '{model_ref}' cannot be loaded: {exc}") from exc
    if config.is_encoder_decoder:
        return load_model(model_ref, MODEL_CLASS, "a sequence-to-sequence model")
    if config.model_type not in WARM_START_ENCODERS:
        raise PermanentJobError(
            f"model '{model_ref}' is a {config.model_type} model, neither an encoder-decoder (T5, BART, "
            f"Marian ...) nor an encoder to warm-start one from ({', '.join(WARM_START_ENCODERS)})"
        )
    return _warm_start(model_ref)


def _warm_start(model_ref: str):
    from transformers import AutoTokenizer, EncoderDecoderModel
    from transformers.utils import logging

    tokenizer = AutoTokenizer.from_pretrained(model_ref, trust_remote_code=False)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the fresh cross-attention weights are expected, not a warning
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(model_ref, model_ref)
    finally:
        logging.set_verbosity(verbosity)
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.eos_token_id = start, end
        config.pad_token_id = tokenizer.pad_token_id
    model.config.vocab_size = model.config.encoder.vocab_size
    return model, tokenizer


def read_pairs(path: Path, columns: dict[str, str], pair: Pair, what: str) -> Examples:
    rows = read_rows(path)
    if not rows:
        raise PermanentJobError(f"the {what} dataset has no rows: upload {pair.source}/{pair.target} pairs")
    source, target = columns[pair.source], columns[pair.target]
    try:
        return Examples([str(row[source]) for row in rows], [str(row[target]) for row in rows])
    except KeyError:
        raise PermanentJobError(
            f"the {what} dataset has no columns '{source}' and '{target}': upload it again with its task"
        ) from None


def _encode(tokenizer, examples: Examples, max_length: int, max_target_length: int):
    from datasets import Dataset

    encoded = tokenizer(examples.texts, truncation=True, max_length=max_length)
    labels = tokenizer(text_target=examples.labels, truncation=True, max_length=max_target_length)["input_ids"]
    data = {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}
    data["labels"] = labels
    return Dataset.from_dict(data)


def finetune(params: GenerationFinetuneParams, pair: Pair, *, base_model: str, train_path: Path,
             validation_path: Path | None, columns: dict[str, str], output_dir: Path, checkpoint_dir: Path,
             hooks: JobHooks) -> dict:
    """Fine-tune on source/target pairs; score generated validation outputs with the task's metrics."""
    train = read_pairs(train_path, columns, pair, "train")
    if validation_path is None:
        train, validation = split_examples(train, params.validation_fraction, params.seed)
    else:
        validation = read_pairs(validation_path, columns, pair, "validation")

    def setup() -> TrainingSetup:
        from transformers import DataCollatorForSeq2Seq

        model, tokenizer = load_seq2seq(base_model)
        max_length = effective_max_length(tokenizer, params.max_length)
        evaluated = _encode(tokenizer, validation, max_length, params.max_target_length) if params.eval_steps else None
        return TrainingSetup(
            model, tokenizer, _encode(tokenizer, train, max_length, params.max_target_length),
            DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORED), compute_loss=token_loss,
            eval_set=evaluated,
        )

    fitted = fit(params, train_rows=len(train.texts), checkpoint_dir=checkpoint_dir, hooks=hooks,
                 setup=setup, load_trained=lambda path: load_model(path, MODEL_CLASS, "a sequence-to-sequence model"),
                 eval_metrics=EVAL_METRICS)
    model, tokenizer = fitted.model, fitted.tokenizer
    model.eval()
    predictions = generate_texts(
        model, tokenizer, validation.texts, params.generation,
        max_length=effective_max_length(tokenizer, params.max_length),
        batch_tokens=params.eval_batch_size * params.max_length, max_batch_size=params.eval_batch_size,
        on_batch=progress_reporter(hooks, "generating"),
    )
    metrics = pair.metrics(predictions, validation.labels) | {"examples": _examples(validation, predictions)}
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    summary = fitted.summary | {"validation_rows": len(validation.texts)}
    return {"label_names": [], "metrics": metrics, "train": summary}


def evaluate(pair: Pair, model_dir: str, *, data_path: Path, columns: dict[str, str],
             params: GenerationEvaluateParams, hooks: JobHooks) -> dict:
    """Generate for every source of a dataset and score the outputs against its references."""
    examples = read_pairs(data_path, columns, pair, "evaluation")
    generator = Generator(model_dir, max_length=params.max_length, batch_tokens=params.batch_size * params.max_length,
                          max_batch_size=params.batch_size, precision=params.precision, options=params.generation)
    predictions = generator.generate(examples.texts, on_batch=progress_reporter(hooks, "generating"))
    return pair.metrics(predictions, examples.labels) | {
        "rows": len(examples.texts), "dtype": generator.precision, "examples": _examples(examples, predictions),
    }


def _examples(examples: Examples, predictions: list[str], count: int = 5) -> list[dict]:
    """A few (source, reference, prediction) triples, for a person reading the evaluation."""
    return [{"source": s, "reference": r, "prediction": p}
            for s, r, p in list(zip(examples.texts, examples.labels, predictions))[:count]]


class Generator(BatchPredictor):
    """Generate text for each row with one loaded model (an encoder-decoder, or a decoder-only LM)."""

    named_labels = False
    measure_precision = False  # generation is not measured: "auto" on CPU is fp32, never slower than asked

    def __init__(self, model_dir: str, *, options: GenerationOptions | None = None, **limits) -> None:
        super().__init__(model_dir, **limits)
        self.options = options or GenerationOptions()

    @staticmethod
    def load(model_dir: str):
        return load_model(model_dir, MODEL_CLASS, "a sequence-to-sequence model")

    @classmethod
    def job_options(cls, params: GenerationBatchParams) -> dict:
        return {**super().job_options(params), "options": params.generation}

    def generate(self, texts: list[str], *, on_batch=None) -> list[str]:
        return generate_texts(self.model, self.tokenizer, texts, self.options, max_length=self.max_length,
                              batch_tokens=self.batch_tokens, max_batch_size=self.max_batch_size, on_batch=on_batch)

    def predict_chunk(self, rows: list[tuple[int, str]]) -> list[dict]:
        """Return each row's generated text, in input order; blank rows as errors."""
        results: list[dict] = [{"row": row_id, "error": "empty text"} for row_id, _ in rows]
        valid = [i for i, (_, text) in enumerate(rows) if isinstance(text, str) and text.strip()]
        for position, text in zip(valid, self.generate([rows[i][1] for i in valid]) if valid else []):
            results[position] = {"row": rows[position][0], "text": text}
        return results


__all__ = ["Generator", "Pair", "evaluate", "finetune", "load_seq2seq"]

"""GPT-style text generation (causal language modelling): plain text or prompt/completion pairs in.

Plain text trains on every token; prompt/completion pairs train on the completion only (the prompt's
tokens are masked out of the loss). Evaluation is loss and perplexity on held-out rows; batch
inference continues each row's text with the job's generation options and stop strings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from worker.datafiles import check_columns, length_summary, row_text
from worker.errors import PermanentJobError
from worker.ml import seq2seq
from worker.ml.data import Examples, read_rows, split_examples
from worker.ml.generation import IGNORED
from worker.ml.hooks import JobHooks, progress_reporter
from worker.ml.loading import load_model
from worker.ml.predict import map_batches
from worker.ml.tasks import Untrainable
from worker.ml.training import TrainingSetup, fit
from worker.params import (
    GENERATION_PARAMS,
    GenerationEvaluateParams,
    GenerationFinetuneParams,
)

TASK = "text-generation"
# Either `text` alone, or `prompt` and `completion`: the first row of an upload decides which.
ROLES = {"text": "text", "prompt": "prompt", "completion": "completion"}
INPUT_ROLES = ("text",)  # batch inference reads one text per row
PARAMS = GENERATION_PARAMS
MODEL_CLASS = "AutoModelForCausalLM"
TRAINED_HEADS = ("ForCausalLM", "LMHeadModel")  # architecture names of models that already do this task
# What the periodic evaluation (eval_steps) reports: the validation tokens' loss (perplexity is its exp).
EVAL_METRICS = {"loss": False}


# ---- data: schema and validation ---------------------------------------------------------------


class CausalRows:
    """Rows of plain text, or of a prompt and its completion (both required)."""

    def __init__(self, columns: dict[str, str]) -> None:
        self._all = dict(columns)
        self.columns = dict(columns)
        self._lengths: dict[str, Any] = {}

    def check_first(self, first: dict) -> None:
        pair = {role: self._all[role] for role in ("prompt", "completion")}
        if self._all["completion"] in first or self._all["text"] not in first:
            check_columns(first, {f"{role}_column": column for role, column in pair.items()})
            self.columns = pair
        else:
            self.columns = {"text": self._all["text"]}

    def check(self, raw: dict, row: int, line: int | None) -> dict[str, Any]:
        from collections import Counter

        checked = {}
        for role, column in self.columns.items():
            checked[column] = row_text(raw, row, line, column, required=True)
            self._lengths.setdefault(role, Counter())[len(checked[column])] += 1
        return checked

    def summary(self) -> dict[str, Any]:
        return {f"{role}_length_chars": length_summary(lengths) for role, lengths in self._lengths.items()}


def row_schema(columns: dict[str, str]) -> CausalRows:
    return CausalRows(columns)


def check_trainable(stats: dict) -> Untrainable | None:
    return None  # every row was checked to hold its text at upload


# ---- model and preprocessing --------------------------------------------------------------------


def load_lm(model_ref: str):
    from transformers import AutoConfig

    try:
        encoder_decoder = AutoConfig.from_pretrained(model_ref, trust_remote_code=False).is_encoder_decoder
    except (OSError, ValueError):
        encoder_decoder = False  # load_model says what is wrong with it
    if encoder_decoder:  # transformers would quietly load its decoder half alone
        raise PermanentJobError(f"model '{model_ref}' is an encoder-decoder; text generation needs a decoder-only "
                                "model (GPT-2, Llama ...): use translation or summarization for this one")
    return with_lm_tokens(*load_model(model_ref, MODEL_CLASS, "a causal language model"))


def with_lm_tokens(model, tokenizer):
    """Give the tokenizer an end-of-text and a padding token, and the model's generation config both."""
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token  # BERT-style vocabularies end a text with [SEP]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def _read(path: Path, columns: dict[str, str], what: str) -> Examples:
    """Read prompts (empty for plain text) and the text trained on."""
    rows = read_rows(path)
    if not rows:
        raise PermanentJobError(f"the {what} dataset has no rows: upload text to train on")
    try:
        if "completion" in columns:
            return Examples([str(r[columns["prompt"]]) for r in rows], [str(r[columns["completion"]]) for r in rows])
        return Examples([""] * len(rows), [str(r[columns["text"]]) for r in rows])
    except KeyError:
        raise PermanentJobError(f"the {what} dataset lacks the columns {sorted(columns.values())}: "
                                "upload it again with task=text-generation") from None


def _token_ids(tokenizer, prompt: str, text: str, max_length: int) -> tuple[list[int], list[int]]:
    """Return (input_ids, labels): the prompt's tokens are masked out of the loss."""
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = start + (tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
    text_ids = tokenizer((" " if prompt else "") + text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + text_ids)[:max_length]
    labels = ([IGNORED] * len(prompt_ids) + text_ids)[:max_length]
    return ids, labels


def _encode(tokenizer, examples: Examples, max_length: int):
    from datasets import Dataset

    pairs = [_token_ids(tokenizer, p, t, max_length) for p, t in zip(examples.texts, examples.labels)]
    return Dataset.from_dict({"input_ids": [ids for ids, _ in pairs], "attention_mask": [[1] * len(ids) for ids, _ in pairs],
                              "labels": [labels for _, labels in pairs]})


def causal_loss(outputs, labels, num_items_in_batch=None):
    """Next-token cross-entropy: position t predicts label t+1; mean over the accumulated batch's tokens."""
    import torch.nn.functional as F

    logits = outputs.logits[:, :-1].float().flatten(0, 1)
    targets = labels[:, 1:].flatten()
    if num_items_in_batch is None:
        return F.cross_entropy(logits, targets, ignore_index=IGNORED)
    return F.cross_entropy(logits, targets, ignore_index=IGNORED, reduction="sum") / num_items_in_batch


def language_model_metrics(model, tokenizer, examples: Examples, *, max_length: int, batch_tokens: int,
                           max_batch_size: int, on_batch=None) -> dict:
    """Mean next-token loss over the trained-on tokens of `examples`, and its perplexity."""
    import torch
    import torch.nn.functional as F

    pairs = [_token_ids(tokenizer, p, t, max_length) for p, t in zip(examples.texts, examples.labels)]
    encoded = {"input_ids": [ids for ids, _ in pairs], "attention_mask": [[1] * len(ids) for ids, _ in pairs]}
    tokenizer.padding_side = "right"

    def step(inputs, batch):
        logits = model(**inputs).logits.float()
        results = []
        for row, example in enumerate(batch):
            labels = torch.tensor(pairs[example][1][1:], device=logits.device)
            losses = F.cross_entropy(logits[row, : len(labels)], labels, ignore_index=IGNORED, reduction="none")
            counted = labels != IGNORED
            results.append((float(losses[counted].sum()), int(counted.sum())))
        return results

    sums = map_batches(model, tokenizer, encoded, step=step, batch_tokens=batch_tokens,
                       max_batch_size=max_batch_size, on_batch=on_batch)
    total, count = sum(s for s, _ in sums), sum(c for _, c in sums)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count, "support": len(examples.texts)}


# ---- fine-tune and evaluate -----------------------------------------------------------------------


def finetune(params: GenerationFinetuneParams, *, base_model: str, train_path: Path, validation_path: Path | None,
             columns: dict[str, str], output_dir: Path, checkpoint_dir: Path, hooks: JobHooks) -> dict:
    """Fine-tune a causal LM; report loss and perplexity on the validation rows."""
    train = _read(train_path, columns, "train")
    if validation_path is None:
        train, validation = split_examples(train, params.validation_fraction, params.seed)
    else:
        validation = _read(validation_path, columns, "validation")
    max_length = params.max_length + params.max_target_length

    def setup() -> TrainingSetup:
        from transformers import DataCollatorForSeq2Seq

        model, tokenizer = load_lm(base_model)
        return TrainingSetup(model, tokenizer, _encode(tokenizer, train, max_length),
                             DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORED), compute_loss=causal_loss,
                             eval_set=_encode(tokenizer, validation, max_length) if params.eval_steps else None)

    fitted = fit(params, train_rows=len(train.texts), checkpoint_dir=checkpoint_dir, hooks=hooks,
                 setup=setup, load_trained=load_lm, eval_metrics=EVAL_METRICS)
    model, tokenizer = fitted.model, fitted.tokenizer
    model.eval()
    metrics = language_model_metrics(model, tokenizer, validation, max_length=max_length,
                                     batch_tokens=params.eval_batch_size * max_length,
                                     max_batch_size=params.eval_batch_size, on_batch=progress_reporter(hooks))
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return {"label_names": [], "metrics": metrics, "train": fitted.summary | {"validation_rows": len(validation.texts)}}


def evaluate(model_dir: str, *, data_path: Path, columns: dict[str, str], params: GenerationEvaluateParams,
             hooks: JobHooks) -> dict:
    """Loss and perplexity of a causal LM on a dataset's text (or completions)."""
    examples = _read(data_path, columns, "evaluation")
    generator = Predictor(model_dir, max_length=params.max_length, batch_tokens=params.batch_size * params.max_length,
                          max_batch_size=params.batch_size, precision=params.precision, options=params.generation)
    metrics = language_model_metrics(generator.model, generator.tokenizer, examples, max_length=params.max_length,
                                     batch_tokens=params.batch_size * params.max_length,
                                     max_batch_size=params.batch_size, on_batch=progress_reporter(hooks))
    return metrics | {"rows": len(examples.texts), "dtype": generator.precision}


class Predictor(seq2seq.Generator):
    """Continue each row's text with one loaded causal LM."""

    load = staticmethod(load_lm)


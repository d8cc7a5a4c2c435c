"""Continued pre-training on unlabelled text: masked-LM for encoders, causal-LM for decoders.

Documents are tokenized, concatenated and cut into blocks of `max_length` tokens, as transformers'
run_mlm.py and run_clm.py do (`group_texts`): no padding, every token trains. Each document keeps the
tokenizer's own markers for masked-LM ([CLS] ... [SEP]) and ends with the end-of-text token for
causal-LM, so the model sees where one text stops. The last, incomplete block is dropped, unless the
text holds less than one block. The held-out share is taken from the documents, never from the
blocks, so no text is on both sides; its perplexity is exp of the mean loss per predicted token:
the masked tokens for masked-LM (masked with a fixed seed, so it repeats), the next tokens for causal-LM.

Loops, checkpoints, resume, precision and time limits are `worker.ml.training.fit`'s, as for a fine-tune.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from worker.errors import PermanentJobError
from worker.ml.hooks import JobHooks, progress_reporter
from worker.ml.loading import load_model, refuse_custom_code
from worker.ml.predict import TOKENIZE_SLICE, effective_max_length
from worker.ml.training import TrainingSetup, fit
from worker.params import PretrainParams

IGNORED = -100  # the label of a token that is not predicted
MODEL_CLASSES = {"mlm": "AutoModelForMaskedLM", "clm": "AutoModelForCausalLM"}
OBJECTIVE_NAMES = {"mlm": "masked language modelling", "clm": "causal language modelling"}
HEADS = {"mlm": ("ForMaskedLM", "ForPreTraining"), "clm": ("ForCausalLM", "LMHeadModel")}
# Logits one evaluation batch may hold (rows x block x vocabulary): a BERT vocabulary's logits take
# 120 KB a token in fp32, so 64 rows of 128 tokens would take a gigabyte.
EVAL_LOGITS = 1 << 25


def pretrain(params: PretrainParams, *, base_model: str, train_path: Path, validation_path: Path | None,
             text_column: str, validation_column: str | None = None, output_dir: Path, checkpoint_dir: Path,
             hooks: JobHooks) -> dict:
    """Continue pre-training `base_model` on the texts, save it to `output_dir`; return metrics and a summary."""
    objective = choose_objective(base_model, params.objective)
    train_texts = read_texts(train_path, text_column, "train")
    if validation_path is None:
        train_texts, held_out = split_documents(train_texts, params.validation_fraction, params.seed)
    else:
        held_out = read_texts(validation_path, validation_column or text_column, "validation")
    tokenizer = load_tokenizer(base_model, objective)
    block = effective_max_length(tokenizer, params.max_length)
    train_blocks = group_texts(tokenize(tokenizer, train_texts, objective), block)
    eval_blocks = group_texts(tokenize(tokenizer, held_out, objective), block)
    hooks.log(f"{OBJECTIVE_NAMES[objective]}: {len(train_texts)} documents in {len(train_blocks)} blocks of "
              f"{train_blocks.shape[1]} tokens; {len(held_out)} held-out documents in {len(eval_blocks)} blocks")

    def setup() -> TrainingSetup:
        model, tokenizer = load_language_model(base_model, objective, hooks)
        project = defer_vocabulary_projection(model) if objective == "mlm" else None
        return TrainingSetup(
            model, tokenizer, Blocks(train_blocks, objective), collator(objective, tokenizer, params),
            compute_loss=language_model_loss(objective, project),
            eval_set=Blocks(eval_blocks, objective) if params.eval_steps else None,
            # Evaluation during training reports the loss; kept, every token's logits would fill memory.
            extra_args={"prediction_loss_only": True},
        )

    fitted = fit(params, train_rows=len(train_blocks), checkpoint_dir=checkpoint_dir, hooks=hooks, setup=setup,
                 load_trained=lambda path: load_language_model(path, objective))
    model, tokenizer = fitted.model, fitted.tokenizer
    metrics = perplexity(model, tokenizer, eval_blocks, objective, params, hooks)
    hooks.metric(fitted.summary["global_step"], {"eval_loss": metrics["loss"], "eval_perplexity": metrics["perplexity"]})
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    summary = fitted.summary | {
        "objective": objective, "block_tokens": int(train_blocks.shape[1]), "train_documents": len(train_texts),
        "train_blocks": len(train_blocks), "validation_documents": len(held_out), "validation_blocks": len(eval_blocks),
    }
    if objective == "mlm":
        summary["mlm_probability"] = params.mlm_probability
    return {"objective": objective, "metrics": metrics, "train": summary}


# ---- objective and model ------------------------------------------------------------------------


def choose_objective(model_ref: str, requested: str) -> str:
    """Return "mlm" or "clm" for the model: the requested one if the model has that form, else say why not.

    auto: causal-LM for decoders (a decoder config, a causal-LM head, or an architecture with no masked-LM
    form), masked-LM for the rest (encoders such as BERT).
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    refuse_custom_code(model_ref)
    try:
        config = AutoConfig.from_pretrained(model_ref, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise PermanentJobError(f"model '{model_ref}' cannot be loaded: {exc}") from exc
    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        raise PermanentJobError(f"model '{model_ref}' is an encoder-decoder ({kind}); pre-training here is masked-LM "
                                "for encoders (BERT ...) or causal-LM for decoders (GPT-2 ...)")
    decoder = (bool(getattr(config, "is_decoder", False)) or any(a.endswith(HEADS["clm"]) for a in config.architectures or ())
               or kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    objective = requested if requested != "auto" else ("clm" if decoder else "mlm")
    if objective == "mlm" and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise PermanentJobError(f"model '{model_ref}' ({kind}) has no masked-LM form; "
                                + ("use objective=clm (or auto)" if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                                   else "pre-training needs a BERT- or GPT-style language model"))
    if objective == "clm" and not (decoder and kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        raise PermanentJobError(f"model '{model_ref}' ({kind}) is not a decoder: its attention sees both ways, so "
                                "causal-LM would let it read the next token; use objective=mlm (or auto)")
    return objective


def load_tokenizer(model_ref: str, objective: str):
    """Load the model's tokenizer, with an end-of-text token (clm) or a mask token (mlm)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_ref, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise PermanentJobError(f"the tokenizer of model '{model_ref}' cannot be loaded: {exc}") from exc
    return _with_lm_tokens(tokenizer, objective, model_ref)


def load_language_model(model_ref: str, objective: str, hooks: JobHooks | None = None):
    """Load (model, tokenizer) with the objective's head; a base without one gets a new head (logged)."""
    model, tokenizer = load_model(model_ref, MODEL_CLASSES[objective], f"a {OBJECTIVE_NAMES[objective]} model")
    tokenizer = _with_lm_tokens(tokenizer, objective, model_ref)
    if objective == "clm":
        model.config.pad_token_id = tokenizer.pad_token_id
    architectures = _architectures(model_ref)
    if hooks is not None and architectures and not any(a.endswith(HEADS[objective]) for a in architectures):
        hooks.log(f"the base model ({', '.join(architectures)}) has no {OBJECTIVE_NAMES[objective]} head: "
                  "a new one is initialised and trained with the rest")
    return model, tokenizer


def _with_lm_tokens(tokenizer, objective: str, model_ref: str):
    if objective == "mlm" and tokenizer.mask_token is None:
        raise PermanentJobError(f"the tokenizer of model '{model_ref}' has no mask token, which masked-LM needs; "
                                "use objective=clm for a decoder")
    if objective == "clm":
        if tokenizer.eos_token is None and tokenizer.sep_token is not None:
            tokenizer.eos_token = tokenizer.sep_token  # BERT-style vocabularies end a text with [SEP]
        if tokenizer.eos_token is None:
            raise PermanentJobError(f"the tokenizer of model '{model_ref}' has no end-of-text token to separate "
                                    "documents with")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _architectures(model_ref: str) -> list[str]:
    try:
        return list(json.loads((Path(model_ref) / "config.json").read_text()).get("architectures") or [])
    except (OSError, ValueError):
        return []


# ---- data ----------------------------------------------------------------------------------------


def read_texts(path: Path, column: str, what: str) -> list[str]:
    """Read the non-blank texts of a canonical dataset's `column`, refusing structured values."""
    texts, seen = [], False
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            row = json.loads(line)
            if column not in row:
                continue
            seen = True
            value = row[column]
            if isinstance(value, (list, dict)):
                raise PermanentJobError(f"row {number} of the {what} dataset holds a list or object in column "
                                        f"'{column}', not text: pre-train on a column of plain text")
            if value is not None and str(value).strip():
                texts.append(str(value))
    if not seen:
        raise PermanentJobError(f"the {what} dataset has no column '{column}': name its text column with text_column")
    if not texts:
        raise PermanentJobError(f"the {what} dataset's column '{column}' holds no text: upload text to pre-train on")
    return texts


def split_documents(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Return (train, held-out) documents: a seeded shuffle, at least one document on each side."""
    if len(texts) < 2:
        raise PermanentJobError("the train dataset holds one document, and perplexity needs held-out text: upload "
                                "two or more documents (a .txt file: one per line, or paragraphs between blank "
                                "lines) or give a validation_dataset_id")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    held = min(len(order) - 1, max(1, round(len(order) * fraction)))
    return [texts[i] for i in order[held:]], [texts[i] for i in order[:held]]


def tokenize(tokenizer, texts: list[str], objective: str):
    """Return the token ids of every text, one after the other, as one int64 array."""
    import numpy as np

    end = [tokenizer.eos_token_id] if objective == "clm" else []
    pieces = []
    for start in range(0, len(texts), TOKENIZE_SLICE):
        encoded = tokenizer(texts[start:start + TOKENIZE_SLICE], add_special_tokens=objective == "mlm",
                            verbose=False)["input_ids"]
        pieces.extend(np.asarray(ids + end, dtype=np.int64) for ids in encoded)
    return np.concatenate(pieces)


def group_texts(ids, block: int):
    """Cut concatenated token ids into rows of `block` tokens, dropping the incomplete last one
    (a text shorter than one block is one short row)."""
    full = len(ids) // block
    if full == 0:
        return ids.reshape(1, -1)
    return ids[: full * block].reshape(full, block)


class Blocks:
    """Token blocks as training examples (causal-LM labels are the inputs; the model shifts them)."""

    def __init__(self, blocks, objective: str) -> None:
        self.blocks = blocks
        self.causal = objective == "clm"

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        ids = self.blocks[index].tolist()
        return {"input_ids": ids, "labels": ids} if self.causal else {"input_ids": ids}


def collator(objective: str, tokenizer, params: PretrainParams):
    """Masked-LM: mask `mlm_probability` of the tokens (80% [MASK], 10% random, 10% kept); causal-LM: stack."""
    from transformers import DataCollatorForLanguageModeling, default_data_collator

    if objective == "clm":
        return default_data_collator
    # No `seed` here: the collator's own generator refuses to run in a job's pool process (not the
    # main process, not a DataLoader worker); the evaluation seeds torch's instead.
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=params.mlm_probability)


def defer_vocabulary_projection(model):
    """Make a masked-LM stop short of its vocabulary projection; return the projection, for the masked
    tokens alone (None, the model unchanged, where its head does not end in one plain Linear layer).

    Only the masked tokens (15%) are scored, yet the model projects every token onto its vocabulary:
    for MiniLM, 30,522 words, most of the compute of a training step. The loss projects the masked ones.
    """
    import torch

    decoder = model.get_output_embeddings()
    if type(decoder) is not torch.nn.Linear:
        return None
    decoder.forward = lambda hidden: hidden  # on the instance: what is saved is unchanged
    try:
        with torch.no_grad():
            probe = torch.full((1, 2), model.config.pad_token_id or 0, device=decoder.weight.device)
            width = model(input_ids=probe).logits.shape[-1]
    except (RuntimeError, ValueError):  # the head adds to the projection's output, say
        width = None
    if width != decoder.in_features:
        del decoder.forward
        return None
    return lambda hidden: torch.nn.Linear.forward(decoder, hidden)


def language_model_loss(objective: str, project=None):
    """The loss over predicted tokens, summed and divided by the accumulated batch's count of them.

    Left to the model, transformers 5 adds up each micro-batch's mean (see text classification's loss).
    `project`: the vocabulary projection `defer_vocabulary_projection` took out of the model.
    """

    def loss(outputs, labels, num_items_in_batch=None):
        import torch.nn.functional as F

        logits, targets = _predicted(outputs.logits, labels, objective, project)
        if num_items_in_batch is None:
            return F.cross_entropy(logits, targets)
        return F.cross_entropy(logits, targets, reduction="sum") / num_items_in_batch

    return loss


def _predicted(logits, labels, objective: str, project=None):
    """Return (logits, targets) of the predicted tokens only, the logits in fp32."""
    if objective == "clm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    targets = labels.flatten()
    kept = targets != IGNORED
    selected = logits.flatten(0, 1)[kept]
    return (project(selected) if project is not None else selected).float(), targets[kept]


# ---- evaluation ------------------------------------------------------------------------------------


def perplexity(model, tokenizer, blocks, objective: str, params: PretrainParams, hooks: JobHooks) -> dict:
    """Mean loss per predicted token of the held-out blocks, and its exponential."""
    import torch
    import torch.nn.functional as F

    model.eval()
    project = defer_vocabulary_projection(model) if objective == "mlm" else None
    collate = collator(objective, tokenizer, params)
    rows = max(1, min(params.eval_batch_size, EVAL_LOGITS // (blocks.shape[1] * model.config.vocab_size)))
    starts = range(0, len(blocks), rows)
    report = progress_reporter(hooks)
    device = next(model.parameters()).device
    data = Blocks(blocks, objective)
    total, count = 0.0, 0
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)  # the same masks on every run (and the job's own stream untouched)
        for done, start in enumerate(starts, start=1):
            batch = collate([data[i] for i in range(start, min(start + rows, len(blocks)))])
            labels = batch.pop("labels").to(device)
            logits = model(**{key: value.to(device) for key, value in batch.items()}).logits
            logits, targets = _predicted(logits, labels, objective, project)
            total += float(F.cross_entropy(logits, targets, reduction="sum"))
            count += len(targets)
            report(done, len(starts))
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count, "blocks": len(blocks)}

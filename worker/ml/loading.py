"""Load models for any task safely: standard architectures only, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from worker.errors import PermanentJobError


def load_model(model_ref: str, model_class: str, what: str, *, label_names: list[str] | None = None):
    """Load (model, tokenizer) with a transformers Auto class, never running repository code.

    With `label_names`, the model gets a new head of that size (a checkpoint's head of another size
    is replaced) and the names in its config. A LoRA adapter's directory loads its base model with the
    adapter on it (`worker/ml/adapters.py`): merged for a registered adapter, trainable for a checkpoint.
    """
    import transformers
    from transformers import AutoTokenizer

    from worker.ml import adapters

    refuse_custom_code(model_ref)
    if adapters.is_adapter(model_ref):
        if label_names is not None and adapters.adapter_record(model_ref):
            raise PermanentJobError(f"model '{model_ref}' is a LoRA adapter: fine-tune from its base model, or from "
                                    "a full model (a fine-tune with merge_adapter registers one)")
        model, tokenizer = adapters.load(model_ref, model_class)
        _ensure_pad_token(model, tokenizer)
        return model, tokenizer
    kwargs: dict = {"trust_remote_code": False}
    if label_names is not None:
        kwargs.update(
            num_labels=len(label_names), ignore_mismatched_sizes=True,
            id2label=dict(enumerate(label_names)), label2id={name: i for i, name in enumerate(label_names)},
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_ref, trust_remote_code=False)
        model = getattr(transformers, model_class).from_pretrained(model_ref, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise PermanentJobError(_not_loadable_message(model_ref, what, exc)) from exc
    _ensure_pad_token(model, tokenizer)
    return model, tokenizer


def load_classifier(model_ref: str, *, label_names: list[str] | None = None):
    """Load (model, tokenizer) for sequence classification."""
    return load_model(model_ref, "AutoModelForSequenceClassification", "a sequence classifier",
                      label_names=label_names)


def label_names_of(model) -> list[str]:
    """Return the model's class names in logit order."""
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(model.config.num_labels)]


def refuse_custom_code(model_ref: str) -> None:
    directory = Path(model_ref)
    if not directory.is_dir():
        return
    for name in ("config.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file() and "auto_map" in _read_json(path):
            raise PermanentJobError(
                f"model '{model_ref}' needs custom code ({name} has an auto_map), which is not run "
                "here: use a model with a standard transformers architecture"
            )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PermanentJobError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _not_loadable_message(model_ref: str, what: str, exc: Exception) -> str:
    if "trust_remote_code" in str(exc):
        return (
            f"model '{model_ref}' needs custom code, which is not run here: use a model with a "
            "standard transformers architecture"
        )
    if Path(model_ref).is_dir():
        return f"model directory '{model_ref}' cannot be loaded as {what}: {exc}"
    return (
        f"model '{model_ref}' not found: give a registered model name, a local directory with "
        "config.json, or the hub id of a standard architecture available to this worker"
    )


def _ensure_pad_token(model, tokenizer) -> None:
    # Decoder-only models often ship without a pad token; batching needs one.
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id

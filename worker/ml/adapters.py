"""LoRA adapters (the peft library): wrap a model to train, save small artifacts, load base + adapter.

An adapter directory holds peft's `adapter_config.json` and weights (the low-rank updates and, with
`train_head`, the task's head), the tokenizer, the model's `config.json` (its labels, for rebuilding
the head) and `ADAPTER_FILE`, which names the base model by its registry reference. peft's own
`base_model_name_or_path` is a path on the training machine; the job runner resolves the reference
through the registry and hands the path to `use_base` before loading.

Target modules default to the attention's query and value projections, found by name in the model
(`DEFAULT_TARGETS`); the head is found by structure: the task model's children other than its base
model (`base_model_prefix`) and a language model's `lm_head`.
"""

from __future__ import annotations

import json
from pathlib import Path

from worker.errors import PermanentJobError

ADAPTER_FILE = "nightshift_adapter.json"  # the base model's registry reference, sizes, options
PEFT_CONFIG = "adapter_config.json"
# Query and value projections by architecture, first match wins: BERT/RoBERTa, DistilBERT, BART/Llama/OPT,
# T5, GPT-2 (one fused qkv Conv1D), GPT-NeoX/Falcon, MPT.
DEFAULT_TARGETS = (("query", "value"), ("q_lin", "v_lin"), ("q_proj", "v_proj"), ("q", "v"), ("c_attn",),
                   ("query_key_value",), ("Wqkv",))
# The linear layers of common families by config.json model_type, for checking target_modules at submit
# (before any model is loaded); other families are checked by the worker once the model is loaded.
LINEAR_NAMES = {
    "bert": ("query", "key", "value", "dense", "classifier", "qa_outputs"),
    "roberta": ("query", "key", "value", "dense", "out_proj", "classifier", "qa_outputs"),
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2", "pre_classifier", "classifier",
                   "vocab_transform", "vocab_projector", "qa_outputs"),
    "gpt2": ("c_attn", "c_proj", "c_fc", "lm_head", "score"),
    "t5": ("q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1", "lm_head"),
    "bart": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "dense", "lm_head"),
}
_BASE_PATHS: dict[str, str] = {}  # adapter directory -> its base model's path, resolved by the job runner


def unknown_targets(model_type: str | None, requested: list[str]) -> tuple[list[str], tuple[str, ...]] | None:
    """Return (unknown names, the family's linear layers) for a family in LINEAR_NAMES, or None if all is known."""
    known = LINEAR_NAMES.get(model_type or "")
    if known is None:
        return None
    unknown = [name for name in requested if name.rsplit(".", 1)[-1] not in known]
    return (unknown, known) if unknown else None


def is_adapter(model_dir: str | Path) -> bool:
    """Say whether `model_dir` holds a LoRA adapter rather than a full model."""
    return (Path(model_dir) / PEFT_CONFIG).is_file()


def use_base(adapter_dir: str | Path, base_path: str) -> None:
    """Record where the base model of the adapter in `adapter_dir` lies on this worker."""
    _BASE_PATHS[str(Path(adapter_dir).resolve())] = base_path


def adapter_record(adapter_dir: str | Path) -> dict:
    """Return what `ADAPTER_FILE` says about an adapter ({} for a training checkpoint)."""
    path = Path(adapter_dir) / ADAPTER_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def adapter_bytes(adapter_dir: str | Path) -> int:
    """Return the size on disk of an adapter's weights."""
    return sum(p.stat().st_size for p in Path(adapter_dir).glob("adapter_model.*"))


def linear_names(model) -> list[str]:
    """Return the last name part of each linear layer of `model` (what target_modules may name)."""
    from torch import nn

    conv1d = _conv1d_class()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name and isinstance(module, (nn.Linear, *conv1d))})


def target_modules(model, requested: list[str] | None) -> list[str]:
    """Return the target modules to adapt: those requested (checked to exist) or the default for the model."""
    available = linear_names(model)
    if requested is not None:
        unknown = [name for name in requested if name.rsplit(".", 1)[-1] not in available]
        if unknown:
            raise PermanentJobError(f"lora.target_modules: {', '.join(unknown)} is not a linear layer of this model; "
                                    f"its linear layers are {', '.join(available)}")
        return list(requested)
    for names in DEFAULT_TARGETS:
        if all(name in available for name in names):
            return list(names)
    raise PermanentJobError("lora.target_modules: no query/value projections were found in this model: name the "
                            f"linear layers to adapt, among {', '.join(available)}")


def head_modules(model) -> list[str]:
    """Return the names of the task head's modules: children outside the base model, but a language model's head."""
    from torch import nn

    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(model, prefix, None), nn.Module):
        return []  # no separate base (T5): nothing but the base and a tied LM head
    return [name for name, child in model.named_children()
            if name not in (prefix, "lm_head") and any(True for _ in child.parameters())]


def wrap(model, options, task_type: str | None = None):
    """Wrap `model` with fresh LoRA adapters; return (peft model, stats, a line saying what trains)."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules(model, options.target_modules)
    heads = head_modules(model) if options.train_head else []
    config = LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=targets, modules_to_save=heads or None, task_type=task_type)
    peft_model = get_peft_model(model, config)
    keep_config_on_save(peft_model)
    numbers = stats(peft_model, options)
    trainable, total = numbers["trainable_params"], numbers["total_params"]
    head = f" and the head ({','.join(heads)})" if heads else ""
    line = (f"LoRA r={options.r} alpha={options.alpha:g} on {','.join(targets)}{head}: {trainable / total:.2%} of "
            f"parameters trainable ({trainable:,} of {total:,})")
    return peft_model, numbers, line


def stats(peft_model, options) -> dict:
    """Describe a peft model's adapters: options, target and head modules, trainable parameters."""
    config = peft_model.peft_config[peft_model.active_adapter]
    trainable, total = peft_model.get_nb_trainable_parameters()
    return {"r": options.r, "alpha": options.alpha, "dropout": options.dropout,
            "target_modules": sorted(config.target_modules), "head_modules": sorted(config.modules_to_save or ()),
            "trainable_params": int(trainable), "total_params": int(total),
            "trainable_share": round(trainable / total, 6) if total else 0.0}


def keep_config_on_save(peft_model) -> None:
    """Make every save of `peft_model` (the Trainer's checkpoints, the task's result) also write config.json."""
    from peft import PeftModel

    def save_pretrained(output_dir, **kwargs):
        PeftModel.save_pretrained(peft_model, output_dir, **kwargs)
        base = peft_model.get_base_model()
        base.config.architectures = [type(base).__name__]
        base.config.save_pretrained(output_dir)  # the labels and head size, to rebuild the model on load

    peft_model.save_pretrained = save_pretrained  # an instance attribute: the class method stays untouched


def write_record(adapter_dir: Path, *, base_model: str, base_path: str, stats: dict) -> dict:
    """Write `ADAPTER_FILE` beside a trained adapter; return it with the weights' size."""
    record = {"base_model": base_model, "base_path": base_path, "adapter_bytes": adapter_bytes(adapter_dir)} | {
        key: stats[key] for key in ("r", "alpha", "target_modules", "head_modules", "trainable_params",
                                    "total_params", "trainable_share") if key in stats}
    (adapter_dir / ADAPTER_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return record


def base_path_of(adapter_dir: str | Path) -> str:
    """Return the path of the adapter's base model: as resolved by the job runner, else as trained."""
    resolved = _BASE_PATHS.get(str(Path(adapter_dir).resolve()))
    if resolved:
        return resolved
    recorded = adapter_record(adapter_dir).get("base_path")
    if not recorded:
        recorded = json.loads((Path(adapter_dir) / PEFT_CONFIG).read_text(encoding="utf-8")).get(
            "base_model_name_or_path")
    if not recorded or not Path(recorded).exists():
        name = adapter_record(adapter_dir).get("base_model") or recorded
        raise PermanentJobError(f"the base model '{name}' of adapter '{adapter_dir}' is not on this worker: "
                                "register it again, or use a model fine-tuned with merge_adapter")
    return recorded


def load(adapter_dir: str, model_class: str, *, merge: bool | None = None):
    """Load (model, tokenizer): the base model with the adapter of `adapter_dir` on it.

    A registered adapter (with `ADAPTER_FILE`) is merged into the base in memory, for fast inference;
    a training checkpoint stays a trainable peft model, so that saving it again writes an adapter.
    """
    import transformers
    from peft import PeftModel
    from transformers import AutoConfig, AutoTokenizer

    from worker.ml.loading import refuse_custom_code

    merge = bool(adapter_record(adapter_dir)) if merge is None else merge
    base_path = base_path_of(adapter_dir)
    refuse_custom_code(base_path)
    has_tokenizer = (Path(adapter_dir) / "tokenizer_config.json").is_file()
    try:
        config = AutoConfig.from_pretrained(adapter_dir, trust_remote_code=False)
        model = getattr(transformers, model_class).from_pretrained(
            base_path, config=config, ignore_mismatched_sizes=True, trust_remote_code=False)
        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=not merge)
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else base_path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise PermanentJobError(f"adapter '{adapter_dir}' cannot be loaded on its base '{base_path}': {exc}") from exc
    if merge:
        model = model.merge_and_unload()
    else:
        keep_config_on_save(model)
    return model, tokenizer


def merge_to(adapter_dir: str | Path, model_class: str, output_dir: Path) -> int:
    """Save the base model with the registered adapter of `adapter_dir` merged in, and its tokenizer, to
    `output_dir`; return the size of the saved weights."""
    from worker.ml.loading import load_model

    model, tokenizer = load_model(str(adapter_dir), model_class, "a LoRA adapter")  # merged on load
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return sum(path.stat().st_size for path in output_dir.glob("*.safetensors"))


def merged(model):
    """Return `model` with its adapters merged into the weights, a plain transformers model."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def _conv1d_class() -> tuple:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return ()
    return (Conv1D,)

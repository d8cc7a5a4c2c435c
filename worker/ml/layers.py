"""Which parameters train, and how fast: bottom-layer freezing and layer-wise learning-rate decay.

A model's parameters fall into three parts, found from its structure rather than its architecture name:
- the layers: the blocks of its layer stack, the outermost `ModuleList` of identical attention blocks
  (BERT's `encoder.layer`, DistilBERT's `transformer.layer`, GPT-2's `h`, Llama's `layers`, T5's
  `encoder.block`, BART's `encoder.layers`). In an encoder-decoder only the encoder's stack counts:
  its decoder (whose cross-attention is new in a warm-started BERT2BERT) always trains, at the full rate;
- the embeddings: outside the layers, every `nn.Embedding` and every module whose name says `embed`
  (BERT's `embeddings` with their LayerNorm, GPT-2's `wte`/`wpe`, T5's and BART's shared embeddings, BART's
  `embed_positions` and `layernorm_embedding`), of the encoder in an encoder-decoder. A weight tied to
  them (GPT-2's and T5's output projection) is the same tensor, so it is frozen and slowed with them;
- the rest, the head: classifier, pooler, final norms, LM head, decoder; it always trains at learning_rate.

Layer-wise decay follows Sun et al. 2019 ("How to Fine-Tune BERT for Text Classification?"): the top
layer trains at learning_rate, each layer below at `decay` times the rate of the one above, and the
embeddings at `decay` times the bottom layer's rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.errors import PermanentJobError
from worker.params import FinetuneParams


@dataclass
class Parts:
    """A model's parameters by part: `layers[i]` are those of layer i, bottom first."""

    stack: str  # the stack's module path, e.g. "bert.encoder.layer"; "" if none was found
    layers: list[list]
    embeddings: list
    head: list


def model_parts(model) -> Parts:
    """Split `model`'s parameters into its layer stack, its embeddings and the rest."""
    from torch import nn

    config = getattr(model, "config", None)
    scope = model.get_encoder() if getattr(config, "is_encoder_decoder", False) else model
    prefix = next((f"{name}." for name, module in model.named_modules() if module is scope and name), "")
    stack_name, stack = _layer_stack(scope)
    layers = [list(block.parameters()) for block in stack]
    in_layers = {id(p) for block in layers for p in block}
    embeddings, seen = [], set(in_layers)
    for name, module in scope.named_modules():
        if isinstance(module, nn.Embedding) or "embed" in name.rsplit(".", 1)[-1].lower():
            for parameter in module.parameters():
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    embeddings.append(parameter)
    head = [p for p in model.parameters() if id(p) not in seen]
    return Parts(prefix + stack_name if stack else "", layers, embeddings, head)


def _layer_stack(scope) -> tuple[str, list]:
    """Return (path, blocks) of the first outermost list of identical attention blocks, or ("", [])."""
    from torch import nn

    for name, module in scope.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) == 1 and _has_attention(module[0]):
            return name, list(module)
    return "", []


def _has_attention(block) -> bool:
    return any("att" in name.lower() or "att" in type(sub).__name__.lower() for name, sub in block.named_modules())


# config.json keys of the (encoder's) layer count, by model family, most specific first.
LAYER_COUNT_KEYS = ("encoder_layers", "num_layers", "n_layer", "num_hidden_layers")


def config_layer_count(config: dict) -> int | None:
    """Return the layer count freeze_layers is checked against, as a model's config.json states it, or None.

    A cheap check before a job is queued (no torch); the worker counts the loaded model's layers itself.
    """
    if isinstance(config.get("encoder"), dict):  # a saved EncoderDecoderModel
        config = config["encoder"]
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int) and not isinstance(config.get(key), bool):
            return config[key]
    return None


def apply_freezing(model, params: FinetuneParams) -> str | None:
    """Freeze what `params` asks for (the base, or the embeddings and bottom layers); return a line saying what
    trains, or None."""
    if params.freeze_base:
        return _freeze_base(model)
    if not params.freeze_embeddings and params.freeze_layers == 0 and params.layer_lr_decay == 1.0:
        return None
    parts = _checked_parts(model, params)
    frozen = list(parts.embeddings) if params.freeze_embeddings else []
    for block in parts.layers[:params.freeze_layers]:
        frozen.extend(block)
    for parameter in frozen:
        parameter.requires_grad = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    depth = len(parts.layers)
    what = [f"the bottom {params.freeze_layers} of {depth} layers"] if params.freeze_layers else []
    what += ["the embeddings"] if params.freeze_embeddings else []
    line = f"froze {' and '.join(what)} of {parts.stack}; {trainable:,} of {total:,} parameters train" if what \
        else f"all {total:,} parameters train ({depth} layers in {parts.stack})"
    if params.layer_lr_decay < 1.0:
        bottom = params.learning_rate * params.layer_lr_decay ** (depth - 1)
        line += (f"; layer-wise learning-rate decay {params.layer_lr_decay:g}: head and top layer "
                 f"{params.learning_rate:.3g}, bottom layer {bottom:.3g}, embeddings {bottom * params.layer_lr_decay:.3g}")
    return line


def _freeze_base(model) -> str:
    """Freeze the base model (the encoder, in an encoder-decoder), leaving the task's head to train."""
    encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    base = model.get_encoder() if encoder_decoder else model.base_model
    if base is model:
        raise PermanentJobError(f"freeze_base needs a base model under the task's head, and this {type(model).__name__} "
                                "has none: drop freeze_base, or use freeze_layers to keep its lower layers fixed")
    for parameter in base.parameters():
        parameter.requires_grad = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:  # e.g. GPT-2: its output layer is its input embeddings, tied
        raise PermanentJobError(
            f"freeze_base would leave nothing to train in this {type(model).__name__}: its output layer is tied to its "
            "embeddings, so it has no head of its own; drop freeze_base, or use freeze_layers to keep its lower "
            "layers fixed")
    what = "the encoder" if encoder_decoder else f"the base model ({type(base).__name__})"
    return f"froze {what}; {trainable:,} of {total:,} parameters train"


def _checked_parts(model, params: FinetuneParams) -> Parts:
    parts = model_parts(model)
    kind = type(model).__name__
    if not parts.layers and (params.freeze_layers or params.layer_lr_decay < 1.0):
        asked = "freeze_layers" if params.freeze_layers else "layer_lr_decay"
        raise PermanentJobError(
            f"{asked} needs the model's transformer layers, and none were found in this {kind} (no list of "
            "attention blocks): leave freeze_layers at 0 and layer_lr_decay at 1.0 for this model"
        )
    if params.freeze_layers > len(parts.layers):
        raise PermanentJobError(
            f"freeze_layers is {params.freeze_layers}, but this {kind} has {len(parts.layers)} transformer layers "
            f"({parts.stack}): choose at most {len(parts.layers)} ({len(parts.layers)} freezes every layer and "
            "trains the head alone)"
        )
    return parts


def learning_rate_groups(model, params: FinetuneParams) -> list[dict]:
    """Return optimizer groups of the trainable parameters, each with its layer's learning rate.

    The head comes first, so the rate the Trainer logs (the first group's) is learning_rate itself.
    """
    parts = _checked_parts(model, params)
    rate, decay = params.learning_rate, params.layer_lr_decay
    depth = len(parts.layers)
    groups = [("head", parts.head, rate)]
    groups += [(f"layer {i}", parts.layers[i], rate * decay ** (depth - 1 - i)) for i in reversed(range(depth))]
    groups.append(("embeddings", parts.embeddings, rate * decay ** depth))
    return [{"name": name, "params": [p for p in members if p.requires_grad], "lr": lr}
            for name, members, lr in groups if any(p.requires_grad for p in members)]


def layer_decay_optimizer(trainer, params: FinetuneParams):
    """Build the optimizer the Trainer would, with one learning rate per layer (weight decay as it does)."""
    model = trainer.model
    decayed = set(trainer.get_decay_parameter_names(model))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in learning_rate_groups(model, params):
        for weight_decay, members in ((params.weight_decay, [p for p in group["params"] if names[id(p)] in decayed]),
                                      (0.0, [p for p in group["params"] if names[id(p)] not in decayed])):
            if members:
                groups.append({"params": members, "lr": group["lr"], "weight_decay": weight_decay,
                               "layer": group["name"]})
    optimizer_class, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    return optimizer_class(groups, **kwargs)

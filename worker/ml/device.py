"""Choose the device and numeric precision a job runs with."""

from __future__ import annotations

from dataclasses import dataclass

from worker.errors import PermanentJobError
from worker.ml import tuning

PRECISIONS = ("fp32", "fp16", "bf16")


def pick_device() -> str:
    """Return "cuda" when a CUDA GPU is visible, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(requested: str, device: str) -> str:
    """Turn a requested precision ("auto" or explicit) into fp32, fp16 or bf16 for `device`."""
    if requested == "auto":
        if device != "cuda":
            return "fp32"
        return "bf16" if _cuda_supports_bf16() else "fp16"
    if requested not in PRECISIONS:
        raise PermanentJobError(f"unknown precision {requested!r}: use auto, fp32, fp16 or bf16")
    if requested == "fp16" and device != "cuda":
        raise PermanentJobError("precision fp16 needs a CUDA GPU; use auto or fp32 on CPU workers")
    if requested == "bf16" and device == "cuda" and not _cuda_supports_bf16():
        raise PermanentJobError("this GPU does not support bf16; use auto, fp16 or fp32")
    return requested


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a predictor runs in, and why (the job's events show `reason`)."""

    precision: str
    reason: str


PROBE_ROWS, PROBE_TOKENS = 16, 128  # the measured batch
MIN_SPEEDUP = 1.15  # a lower precision must beat fp32 by this much to be worth its rounding
MAX_CHANGED = 0.005  # ... and change at most this share of the probe's predictions


def place_for_inference(model, requested: str, *, measure: bool = True) -> tuple[str, PrecisionChoice]:
    """Move `model` to the worker's device in the precision asked for and put it in eval mode.

    An explicit precision is checked and used. "auto" is fp16/bf16 on a GPU (whichever it supports),
    and on a CPU the faster of fp32 and bf16 *measured on this model* (`measure`, encoder models that
    score tokens or sequences): a CPU that emulates bf16 runs it slower than fp32, whatever its
    capability flags say. Generative models on CPU, and CPUs without bf16 kernels, stay in fp32.
    """
    device = pick_device()
    if requested == "int8":
        return device, _quantize_int8(model, device)
    if requested == "auto" and device == "cpu":
        choice = _measured_cpu_choice(model) if measure else PrecisionChoice("fp32", "auto on CPU: fp32")
    else:
        precision = resolve_precision(requested, device)
        choice = PrecisionChoice(precision, f"{precision} ({'asked for' if requested != 'auto' else 'auto on ' + device})")
    model.to(device=device, dtype=torch_dtype(choice.precision)).eval()
    return device, choice


def _quantize_int8(model, device: str) -> PrecisionChoice:
    """Quantize `model`'s linear layers to int8 in place (weights now, activations per batch)."""
    import warnings

    import torch

    if device != "cpu":
        raise PermanentJobError("precision int8 runs on CPU workers; on a GPU use auto, bf16 or fp16")
    model.float().eval()
    with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return PrecisionChoice("int8", "int8 (asked for): linear layers dynamically quantized, the rest fp32")


def choose_training_precision(model, requested: str, device: str) -> PrecisionChoice:
    """The precision a fine-tune trains in (mixed precision: fp32 weights, bf16/fp16 compute).

    Explicit values are checked and used. "auto" takes bf16 (fp16 on a GPU without it) only where a
    training step of *this model* on *this device* measures at least MIN_SPEEDUP times faster than in
    fp32; a CPU without bf16 kernels trains in fp32 without measuring. Remembered per machine and
    model shape, like the inference choice.
    """
    if requested != "auto":
        precision = resolve_precision(requested, device)
        return PrecisionChoice(precision, f"{precision} (asked for)")
    lower = ("bf16" if _cuda_supports_bf16() else "fp16") if device == "cuda" else "bf16"
    if device == "cpu" and not _cpu_supports_bf16():
        return PrecisionChoice("fp32", "auto on CPU: fp32 (no bf16 kernels on this CPU)")
    key = {**tuning.model_key(model), "lower": lower}
    decided = tuning.remembered("training-precision", key, lambda: vars(_compare_training_step(model, device, lower)))
    return PrecisionChoice(**decided)


def _compare_training_step(model, device: str, lower: str) -> PrecisionChoice:
    """Time a forward and backward pass in fp32 and under `lower` autocast; the model is left as it was."""
    import torch

    was_training, original_device = model.training, next(model.parameters()).device
    model.to(device).train()
    inputs = tuning.probe_inputs(model, PROBE_ROWS, PROBE_TOKENS)
    with torch.random.fork_rng(devices=[]):  # dropout here must not shift the job's own random stream
        fp32_seconds = _time_step(model, inputs, device, None)
        lower_seconds = _time_step(model, inputs, device, torch_dtype(lower))
    model.zero_grad(set_to_none=True)
    model.to(original_device).train(was_training)
    speedup = fp32_seconds / lower_seconds
    where = "GPU" if device == "cuda" else "CPU"
    measured = f"{lower} {speedup:.2f}x fp32 per training step on a {PROBE_ROWS}x{PROBE_TOKENS} probe"
    if speedup >= MIN_SPEEDUP:
        return PrecisionChoice(lower, f"auto on {where}: {lower} ({measured})")
    return PrecisionChoice("fp32", f"auto on {where}: fp32 ({measured})")


def _time_step(model, inputs, device: str, dtype, repeats: int = 2) -> float:
    """Return the fastest of `repeats` timed forward+backward passes, after one warm-up."""
    import contextlib
    import time

    import torch

    def step():
        context = torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with context:
            output = model(**inputs)
        output[0].float().mean().backward()

    step()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def _measured_cpu_choice(model) -> PrecisionChoice:
    if not _cpu_supports_bf16():
        return PrecisionChoice("fp32", "auto on CPU: fp32 (no bf16 kernels on this CPU)")
    # Measured once per machine and model shape, then remembered (in the process and on disk).
    decided = tuning.remembered("precision", tuning.model_key(model), lambda: vars(_compare_bf16_with_fp32(model)))
    return PrecisionChoice(**decided)


def _compare_bf16_with_fp32(model) -> PrecisionChoice:
    """Time the model on a probe batch in fp32 and in bf16 and compare their predictions."""
    import copy

    import torch

    fp32 = model.float().eval()
    inputs = tuning.probe_inputs(fp32, PROBE_ROWS, PROBE_TOKENS)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    fp32_seconds, fp32_logits = _time_forward(fp32, inputs)
    bf16_seconds, bf16_logits = _time_forward(bf16, inputs)
    del bf16
    changed = (fp32_logits.argmax(-1) != bf16_logits.argmax(-1)).float().mean().item()
    speedup = fp32_seconds / bf16_seconds
    measured = f"bf16 {speedup:.2f}x fp32 on a {PROBE_ROWS}x{PROBE_TOKENS} probe, {changed:.1%} of its predictions changed"
    if speedup >= MIN_SPEEDUP and changed <= MAX_CHANGED:
        return PrecisionChoice("bf16", f"auto on CPU: bf16 ({measured})")
    return PrecisionChoice("fp32", f"auto on CPU: fp32 ({measured})")


def _time_forward(model, inputs, repeats: int = 3):
    """Return the fastest of `repeats` timed forward passes (after one warm-up) and the logits."""
    import time

    import torch

    with torch.inference_mode():
        output = model(**inputs)
        logits = output.logits if hasattr(output, "logits") else torch.stack([output.start_logits, output.end_logits])
        logits = logits.float()
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            model(**inputs)
            best = min(best, time.perf_counter() - started)
    return best, logits


def _cpu_supports_bf16() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def torch_dtype(precision: str):
    """Return the torch dtype for a resolved precision name."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _cuda_supports_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()

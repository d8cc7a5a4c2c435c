"""Choose the device and numeric precision a job runs with."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from worker.errors import PermanentJobError
from worker.ml import tuning

PRECISIONS = ("fp32", "fp16", "bf16")


def pick_device() -> str:
    """Return "cuda" when a CUDA GPU is visible (set up for jobs' batches), else "cpu"."""
    import torch

    if torch.cuda.is_available():
        configure_cuda()
        return "cuda"
    return "cpu"


@functools.cache
def configure_cuda() -> None:
    """Process-wide CUDA settings for batches whose shape changes from one batch to the next.

    A batch job's length-sorted token-budget batches, and a fine-tune's dynamically padded ones, give
    nearly every batch a (rows, width) of its own. On Hopper and newer GPUs torch sends attention with a
    padding mask to cuDNN first, and cuDNN builds an execution plan for each new shape: on an H200 about
    100 ms a batch in bf16, many times the batch's own compute (BENCHMARKS.md, "On a GPU"). torch's
    other attention kernels (flash, memory-efficient, math) need no plan; with cuDNN's left out they
    take its place.
    """
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


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
# On a GPU a batch of 2,048 tokens times kernel launches, not arithmetic: the probe is a batch of the
# size GPU jobs run (16,384 tokens), timed at widths it has not run before, as a job's batches are.
GPU_PROBE_ROWS, GPU_PROBE_TOKENS, GPU_PROBE_WIDTHS = 64, 256, 3
MIN_SPEEDUP = 1.15  # a lower precision must beat fp32 by this much to be worth its rounding
MAX_CHANGED = 0.005  # ... and change at most this share of the probe's predictions


def place_for_inference(model, requested: str, *, measure: bool = True) -> tuple[str, PrecisionChoice]:
    """Move `model` to the worker's device in the precision asked for and put it in eval mode.

    An explicit precision is checked and used. "auto" is the faster of fp32 and a lower precision
    *measured on this model* (`measure`: encoder models that score tokens or sequences) on the device:
    bf16 on a CPU (one that emulates it runs it slower than fp32, whatever its capability flags say),
    bf16 or fp16 on a GPU (whichever it supports; a GPU's lower precision can lose to fp32 too, as it
    did on an H200 while cuDNN built a plan per batch shape). Without `measure` (generative models),
    auto is fp32 on a CPU and the GPU's lower precision on a GPU; CPUs without bf16 kernels stay in fp32.
    """
    device = pick_device()
    if requested == "int8":
        return device, _quantize_int8(model, device)
    if requested == "auto" and measure:
        choice = _measured_choice(model, device)
    elif requested == "auto" and device == "cpu":
        choice = PrecisionChoice("fp32", "auto on CPU: fp32")
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


def _measured_choice(model, device: str) -> PrecisionChoice:
    if device == "cpu" and not _cpu_supports_bf16():
        return PrecisionChoice("fp32", "auto on CPU: fp32 (no bf16 kernels on this CPU)")
    # Measured once per machine and model shape, then remembered (in the process and on disk).
    decided = tuning.remembered("precision", tuning.model_key(model), lambda: vars(_compare_lower_with_fp32(model, device)))
    return PrecisionChoice(**decided)


def _compare_lower_with_fp32(model, device: str) -> PrecisionChoice:
    """Time the model on a probe batch in fp32 and in the device's lower precision; compare their predictions."""
    import copy

    lower = "bf16" if device == "cpu" or _cuda_supports_bf16() else "fp16"
    fp32 = model.float().to(device).eval()
    if device == "cpu":
        rows, width, probe = PROBE_ROWS, PROBE_TOKENS, tuning.probe_inputs(fp32, PROBE_ROWS, PROBE_TOKENS)
    else:  # the first width warms up; each timed pass runs a width of its own
        rows, width = GPU_PROBE_ROWS, GPU_PROBE_TOKENS
        probe = [tuning.probe_inputs(fp32, rows, width - 8 * step) for step in range(GPU_PROBE_WIDTHS + 1)]
    reduced = copy.deepcopy(fp32).to(torch_dtype(lower))
    fp32_seconds, fp32_logits = _time_forward(fp32, probe)
    lower_seconds, lower_logits = _time_forward(reduced, probe)
    del reduced
    changed = (fp32_logits.argmax(-1) != lower_logits.argmax(-1)).float().mean().item()
    speedup = fp32_seconds / lower_seconds
    where = "CPU" if device == "cpu" else "GPU"
    measured = f"{lower} {speedup:.2f}x fp32 on a {rows}x{width} probe, {changed:.1%} of its predictions changed"
    if speedup >= MIN_SPEEDUP and changed <= MAX_CHANGED:
        return PrecisionChoice(lower, f"auto on {where}: {lower} ({measured})")
    return PrecisionChoice("fp32", f"auto on {where}: fp32 ({measured})")


def _time_forward(model, inputs, repeats: int = 3):
    """Return the fastest of `repeats` timed forward passes (after one warm-up) and the warm-up's logits.

    `inputs` is one batch, or a list of batches: the first warms up, the timed passes take the others in turn.
    """
    import time

    import torch

    batches = inputs if isinstance(inputs, list) else [inputs]
    timed = batches[1:] or batches
    cuda = next(model.parameters()).device.type == "cuda"
    with torch.inference_mode():
        output = model(**batches[0])
        logits = output.logits if hasattr(output, "logits") else torch.stack([output.start_logits, output.end_logits])
        logits = logits.float()
        best = float("inf")
        for number in range(max(repeats, len(timed))):
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(**timed[number % len(timed)])
            if cuda:
                torch.cuda.synchronize()
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

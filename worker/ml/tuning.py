"""Speed choices measured on the machine at hand, remembered per device and model shape.

A choice made for speed (how many tokens one batch holds, which precision) depends on the CPU or GPU,
its threads and the model; a constant tuned on one machine is wrong on the next. Each choice here is
measured once with a short probe of the model itself and remembered under a key naming everything it
depends on: in this process, and, once `configure()` has named a directory (workers use
`<data_dir>/tuning`), in a small JSON file there, so later job processes on the same machine reuse it
instead of measuring again. Delete the directory to measure afresh (after a hardware change, say).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_remembered: dict[str, dict] = {}
_directory: Path | None = None
_measuring_seconds = 0.0  # spent on probes in this process: once per machine and model shape, not per job

# Candidate token budgets, doubling; the probe stops once SLOWER_IN_A_ROW of them in a row are
# clearly slower than the best so far.
BUDGET_CANDIDATES = (512, 1024, 2048, 4096, 8192, 16_384, 32_768, 65_536)
PROBE_WIDTH = 64  # tokens per probe row when the caller names no width
MIN_WIDTH = 16  # padded widths are measured in doubling buckets from here: 16, 32, 64, ...
MEASURED_TOKEN_SHARE = 0.1  # a width bucket holding less of the tokens borrows its neighbour's budget
NEAR_BEST = 0.97  # the smallest budget within this share of the best wins: less memory, same speed
WARM_UP_UP_TO = 4096  # batches up to this are timed best of 3 after a warm-up (set-up costs and noise weigh on them)
SLOWER_IN_A_ROW = 2  # the probe stops after this many candidates in a row clearly slower than the best: one slow
#                      pass on a shared machine must not end the search


def configure(directory: Path | str | None) -> None:
    """Remember measurements in `directory` too (None: in this process only)."""
    global _directory
    _directory = Path(directory) if directory is not None else None


def measuring_seconds() -> float:
    """Seconds this process has spent measuring so far (a job reports the difference: time it will not spend again)."""
    return _measuring_seconds


def reset() -> None:
    """Forget what this process measured (tests)."""
    _remembered.clear()


def remembered(what: str, key: dict, measure: Callable[[], dict]) -> dict:
    """Return the measurement `what` stored under `key`, measuring and storing it the first time."""
    full_key = {"what": what, **machine_key(), **key}
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    if digest in _remembered:
        return _remembered[digest]
    path = _directory / f"{what}-{digest}.json" if _directory is not None else None
    value = _read(path) if path is not None else None
    if value is None:
        global _measuring_seconds
        started = time.perf_counter()
        try:
            value = measure()
        finally:
            _measuring_seconds += time.perf_counter() - started
        if path is not None:
            _write(path, {"key": full_key, "value": value, "measured_at": time.time()})
    _remembered[digest] = value
    return value


def machine_key() -> dict:
    """What a measurement on this machine depends on besides the model: processor, threads, torch."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else _cpu_name()
    return {"device": device, "device_name": name, "cpu_flags": _cpu_flags_digest(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def model_key(model) -> dict:
    """The shape of `model` a measurement depends on (not its weights)."""
    config = model.config
    return {"class": type(model).__name__, "dtype": str(next(model.parameters()).dtype),
            **{name: getattr(config, name, None) for name in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                                                 "num_attention_heads", "d_model", "num_layers",
                                                                 "vocab_size")}}


def probe_inputs(model, rows: int, width: int) -> dict:
    """Random token ids of shape (rows, width) on the model's device, with what its forward needs."""
    import torch

    high = max(int(getattr(model.config, "vocab_size", 1000) or 1000), 2)
    ids = torch.randint(1, high, (rows, width), generator=torch.Generator().manual_seed(0)).to(model.device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.config, "is_encoder_decoder", False):  # the encoder pass and a short decoder prefix
        inputs["decoder_input_ids"] = ids[:, : max(width // 4, 1)]
    return inputs


def batch_token_budget(model, limit: int, width: int = PROBE_WIDTH, max_rows: int | None = None) -> int:
    """Return the fastest token budget per batch of rows `width` tokens wide for `model` here, at most `limit`.

    Measured with forward passes (best of a few) per doubling candidate budget up to `limit` (and
    `max_rows` rows) on rows of `width` tokens: throughput grows with the batch until activations fall out of cache (CPU)
    or the device is saturated, then flattens or drops, and where it drops depends on the width
    (attention grows with its square). The smallest budget within NEAR_BEST of the best is chosen:
    the same speed in less memory.
    """
    candidates = [budget for budget in BUDGET_CANDIDATES
                  if width <= budget <= limit and (max_rows is None or budget // width <= max_rows)]
    if not candidates:
        return limit
    key = {**model_key(model), "candidates": candidates, "width": width}
    measured = remembered("batch-tokens", key, lambda: _measure_budgets(model, candidates, width))
    rates = {int(budget): rate for budget, rate in measured["tokens_per_second"].items()}
    if not rates:  # even the smallest batch ran out of GPU memory: batches split further as they run
        return candidates[0]
    best = max(rates.values())
    return min(budget for budget, rate in rates.items() if rate >= NEAR_BEST * best)


def width_bucket(width: int) -> int:
    """The doubling bucket (16, 32, 64, ...) a batch padded to `width` tokens is measured in."""
    bucket = MIN_WIDTH
    while bucket < width:
        bucket *= 2
    return bucket


def budgets_by_width(model, limit: int, lengths: list[int], max_rows: int | None = None) -> Callable[[int], int]:
    """Return width -> token budget for batches of these rows, measuring the widths that matter.

    Each width bucket holding at least MEASURED_TOKEN_SHARE of the rows' tokens (and always the
    largest one) gets its own measured budget; the others borrow the nearest measured bucket's.
    """
    tokens: dict[int, int] = {}
    for length in lengths:
        bucket = width_bucket(length)
        tokens[bucket] = tokens.get(bucket, 0) + length
    if not tokens:
        return lambda _width: limit
    total = sum(tokens.values())
    measured = {bucket for bucket, count in tokens.items() if count >= MEASURED_TOKEN_SHARE * total}
    measured.add(max(tokens, key=tokens.__getitem__))
    budgets = {bucket: batch_token_budget(model, limit, bucket, max_rows) for bucket in sorted(measured)}

    def budget(width: int) -> int:
        bucket = width_bucket(width)
        if bucket not in budgets:
            bucket = min(budgets, key=lambda b: (abs(b.bit_length() - bucket.bit_length()), b))
        return budgets[bucket]

    return budget


def _measure_budgets(model, candidates: list[int], width: int = PROBE_WIDTH) -> dict:
    import torch

    rates: dict[str, float] = {}
    slower = 0
    started = time.perf_counter()
    with torch.inference_mode():
        for budget in candidates:
            rows = max(budget // width, 1)
            inputs = probe_inputs(model, rows, width)
            try:
                small = budget <= WARM_UP_UP_TO
                seconds = _best_of(model, inputs, repeats=3 if small else 2, warm_up=small)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                break
            rates[str(budget)] = rows * width / seconds
            slower = slower + 1 if rates[str(budget)] < NEAR_BEST * max(rates.values()) else 0
            if slower >= SLOWER_IN_A_ROW:
                break
    log.info("batch token budgets at width %d measured in %.1f s: %s", width, time.perf_counter() - started,
             {k: round(v) for k, v in rates.items()})
    return {"tokens_per_second": rates}


def _best_of(model, inputs, *, repeats: int, warm_up: bool) -> float:
    import torch

    if warm_up:
        model(**inputs)  # kernels chosen, memory allocated
    best = float("inf")
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        model(**inputs)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def _cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def _cpu_flags_digest() -> str:
    # Two CPUs sold under one name may differ in vector extensions (AVX-512, bf16, AMX).
    return hashlib.sha256(_cpuinfo_field("flags").encode()).hexdigest()[:12]


def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))["value"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, record: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot remember a measurement in %s: %s", path, exc)

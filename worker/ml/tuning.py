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

# Candidate token budgets, doubling; a width's search stops once SLOWER_IN_A_ROW of them in a row
# are clearly slower than the best so far.
BUDGET_CANDIDATES = (512, 1024, 2048, 4096, 8192, 16_384, 32_768, 65_536)
MIN_WIDTH = 16  # padded widths are measured in doubling buckets from here: 16, 32, 64, ...
NEAR_BEST = 0.99  # the smallest budget within this share of the best wins: less memory, a speed no timing tells apart
CLEARLY_SLOWER = 0.97  # a candidate under this share of the best so far counts as slower
SAMPLES = 3  # full batches timed per candidate budget; the fastest counts (a busy moment slows one, never speeds it)...
SAMPLE_TOKENS = 8192  # ...or fewer once they hold this many tokens: a search must not spend a small job on its largest batches
FULL_BATCH = 0.5  # a batch holding less than this share of its budget (the last of a run of rows) is not timed
SLOWER_IN_A_ROW = 2  # the search stops after this many candidates in a row clearly slower than the best; one slow
#                      sample on a shared machine must not end it


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
    value = _recall(what, key)
    if value is None:
        global _measuring_seconds
        started = time.perf_counter()
        try:
            value = measure()
        finally:
            _measuring_seconds += time.perf_counter() - started
        _store(what, key, value)
    return value


def _location(what: str, key: dict) -> tuple[dict, str, Path | None]:
    """The full key of a measurement of `what` under `key` on this machine, its digest, and its file (if any)."""
    full_key = {"what": what, **machine_key(), **key}
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return full_key, digest, (_directory / f"{what}-{digest}.json" if _directory is not None else None)


def _recall(what: str, key: dict) -> Any:
    """What is stored under `key` (this process first, then its file), or None."""
    _full_key, digest, path = _location(what, key)
    if digest not in _remembered and path is not None:
        value = _read(path)
        if value is not None:
            _remembered[digest] = value
    return _remembered.get(digest)


def _store(what: str, key: dict, value: Any) -> None:
    full_key, digest, path = _location(what, key)
    _remembered[digest] = value
    if path is not None:
        _write(path, {"key": full_key, "value": value, "measured_at": time.time()})


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


def width_bucket(width: int) -> int:
    """The doubling bucket (16, 32, 64, ...) a batch padded to `width` tokens is measured in."""
    bucket = MIN_WIDTH
    while bucket < width:
        bucket *= 2
    return bucket


class BatchBudgets:
    """How many tokens one batch of `model` should hold on this machine, per padded width, found while predicting.

    Throughput grows with the batch until activations fall out of cache (CPU) or the device is
    saturated, then flattens or drops, and where it drops depends on the width (attention grows with
    its square). So each doubling width bucket searches its own budget, on the job's own batches: a
    batch is built at the budget under trial, timed as it runs (`observe`), and its predictions are
    kept, so the search costs no extra forward pass. Candidates double from 512 tokens up to `limit`
    (and `max_rows` rows), each timed on SAMPLES full batches (fewer for large budgets: SAMPLE_TOKENS),
    the fastest counting; the search stops after SLOWER_IN_A_ROW clearly slower ones in a row, and the
    smallest budget within NEAR_BEST of the best wins (the same speed in less memory). Each finished
    candidate is remembered (`configure`), so a later job process continues the search where this one
    stopped and, once it is decided, uses it.
    """

    def __init__(self, model, limit: int, max_rows: int | None = None) -> None:
        self.model = model
        self.limit = limit
        self.max_rows = max_rows
        self._searches: dict[int, _Search] = {}

    def __call__(self, width: int) -> int:
        """The token budget for a batch of rows padded to `width` tokens: decided, or under trial."""
        search = self._search(width_bucket(width))
        return search.budget() if search is not None else self.limit

    def observe(self, width: int, rows: int, seconds: float) -> None:
        """Record that a batch of `rows` rows padded to `width` tokens took `seconds` (device work done)."""
        search = self._search(width_bucket(width))
        if search is not None:
            search.observe(rows * width, rows == self.max_rows, seconds)

    def too_big(self, width: int) -> None:
        """A batch at this width ran out of device memory: its budget and larger ones are out."""
        search = self._search(width_bucket(width))
        if search is not None:
            search.too_big()

    def decided(self) -> dict[int, int]:
        """The budget decided per width bucket so far (for logs and tests)."""
        return {bucket: search.decided for bucket, search in sorted(self._searches.items())
                if search is not None and search.decided is not None}

    def _search(self, bucket: int) -> _Search | None:
        if bucket not in self._searches:
            candidates = [budget for budget in BUDGET_CANDIDATES if bucket <= budget <= self.limit
                          and (self.max_rows is None or budget // bucket <= self.max_rows)]
            key = {**model_key(self.model), "candidates": candidates, "width": bucket}
            self._searches[bucket] = _Search(key, candidates) if candidates else None
        return self._searches[bucket]


class _Search:
    """The budget search of one width bucket: finished candidates are remembered, the one under trial is not."""

    WHAT = "batch-budget"

    def __init__(self, key: dict, candidates: list[int]) -> None:
        self.key = key
        self.candidates = candidates
        stored = _recall(self.WHAT, key) or {}
        self.rates = {int(budget): float(rate) for budget, rate in stored.get("tokens_per_second", {}).items()
                      if int(budget) in candidates}
        self.samples: list[float] = []  # tokens/s of the full batches timed at the candidate under trial
        self.sampled_tokens = 0
        self.decided, self.trying = verdict(candidates, self.rates)
        if stored.get("decided") in candidates:  # also a budget lowered after running out of memory
            self.decided = stored["decided"]

    def budget(self) -> int:
        return self.decided if self.decided is not None else self.trying

    def observe(self, tokens: int, at_row_cap: bool, seconds: float) -> None:
        full = FULL_BATCH * self.trying <= tokens or at_row_cap  # short rows: the row cap fills a batch first
        if self.decided is not None or seconds <= 0 or tokens > self.trying or not full:
            return
        self.samples.append(tokens / seconds)
        self.sampled_tokens += tokens
        if len(self.samples) >= SAMPLES or self.sampled_tokens >= SAMPLE_TOKENS:
            self.rates[self.trying] = max(self.samples)
            self.samples, self.sampled_tokens = [], 0
            self._settle()

    def too_big(self) -> None:
        current = self.budget()
        self.candidates = [budget for budget in self.candidates if budget < current] or self.candidates[:1]
        self.rates = {budget: rate for budget, rate in self.rates.items() if budget in self.candidates}
        self.rates.setdefault(self.candidates[0], 0.0)  # even the smallest ran out: batches split further as they run
        self.samples, self.sampled_tokens = [], 0
        self._settle()

    def _settle(self) -> None:
        self.decided, self.trying = verdict(self.candidates, self.rates)
        if self.decided is not None:
            log.info("batch token budget at width %d: %d (tokens/s by budget %s)", self.key["width"], self.decided,
                     {budget: round(rate) for budget, rate in self.rates.items()})
        _store(self.WHAT, self.key, {"tokens_per_second": {str(b): r for b, r in self.rates.items()},
                                     "decided": self.decided})


def verdict(candidates: list[int], rates: dict[int, float]) -> tuple[int | None, int]:
    """(the budget decided, or None; the candidate to try next) from the tokens/s measured per budget, in order.

    Decided once every candidate is measured or SLOWER_IN_A_ROW in a row were clearly slower (CLEARLY_SLOWER)
    than the best before them: the smallest budget within NEAR_BEST of the best.
    """
    best, slower, measured = 0.0, 0, {}
    for budget in candidates:
        if budget not in rates:
            return None, budget
        measured[budget] = rates[budget]
        slower = slower + 1 if rates[budget] < CLEARLY_SLOWER * best else 0
        best = max(best, rates[budget])
        if slower >= SLOWER_IN_A_ROW:
            break
    return min(budget for budget, rate in measured.items() if rate >= NEAR_BEST * best), candidates[-1]


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

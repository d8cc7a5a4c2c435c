"""One GPU per worker pool process: each process sees only the GPU its pool index picks.

Runs in `worker_process_init`, before a job imports torch: CUDA reads CUDA_VISIBLE_DEVICES once,
when it initialises, so the mask must be in place first. Nothing here imports torch or touches
CUDA; without CUDA_VISIBLE_DEVICES the GPUs are listed with `nvidia-smi -L`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
NVIDIA_SMI_TIMEOUT_SECONDS = 10
# `nvidia-smi -L` prints "GPU 0: NVIDIA H200 (UUID: GPU-5f0c...)"; MIG slices follow on indented lines.
_GPU_LINE = re.compile(r"^GPU \d+: .*\(UUID: (GPU-[0-9A-Za-z-]+)\)")


def pin_pool_process() -> str | None:
    """Restrict this pool process to the one GPU its pool index picks; return it (None: no GPU)."""
    from billiard.process import current_process

    return pin_gpu(getattr(current_process(), "index", None), os.environ)


def pin_gpu(index: int | None, environ: MutableMapping[str, str]) -> str | None:
    """Set CUDA_VISIBLE_DEVICES in `environ` to GPU number `index` (round robin) of those visible."""
    if index is None:  # not a pool process (e.g. the solo pool): leave the mask alone
        return None
    gpus = visible_gpus(environ)
    if not gpus:
        return None
    if index >= len(gpus):
        log.warning("pool process %s shares a GPU: %s processes for %s GPU(s); lower the worker concurrency",
                    index, index + 1, len(gpus))
    gpu = gpus[index % len(gpus)]
    environ[CUDA_VISIBLE_DEVICES] = gpu
    return gpu


def visible_gpus(environ: MutableMapping[str, str]) -> list[str]:
    """Return the GPUs this worker may use: CUDA_VISIBLE_DEVICES if set, else every GPU nvidia-smi lists."""
    mask = environ.get(CUDA_VISIBLE_DEVICES)
    if mask is not None:
        return [device.strip() for device in mask.split(",") if device.strip()]
    return _nvidia_smi_gpus()


def _nvidia_smi_gpus() -> list[str]:
    # UUIDs, not indexes: nvidia-smi numbers GPUs in PCI bus order, CUDA fastest first.
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True,
                                 timeout=NVIDIA_SMI_TIMEOUT_SECONDS).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot list GPUs with nvidia-smi (%s); pool processes see every GPU", exc)
        return []
    return [match.group(1) for line in listing.splitlines() if (match := _GPU_LINE.match(line))]

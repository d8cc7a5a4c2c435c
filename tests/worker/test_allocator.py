"""Job processes keep freed tensor memory for the next batch instead of page-faulting it in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from worker import allocator

BATCHES = textwrap.dedent("""
    import resource, sys
    import torch
    from worker import allocator

    if sys.argv[1] == "keep":
        assert allocator.keep_freed_memory()
    weights = torch.randn(384, 1536)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(30):  # a feed-forward layer's activations over batches of varying size: up to 25 MB
        rows = (2048, 512, 4096, 1024)[i % 4]
        hidden = torch.nn.functional.gelu(torch.randn(rows, 384) @ weights)
        del hidden
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", BATCHES, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the thresholds are glibc's")
def test_batches_reuse_freed_memory_instead_of_faulting_it_in():
    kept, default = page_faults("keep"), page_faults("default")
    assert kept < default / 2, (kept, default)


def test_a_c_library_without_mallopt_is_left_as_it_is(monkeypatch):
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda _name: None)
    assert allocator.keep_freed_memory() is False

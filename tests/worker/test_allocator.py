"""Job processes keep freed tensor memory for the next batch instead of page-faulting it in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from worker import allocator

# Two activation-sized blocks per batch, freed together: 40 MB of free heap at the top after each batch.
# glibc's default, once its self-adjusting thresholds have settled at 20 MB mmap / 40 MB trim, hands that
# back to the kernel after every batch and faults it in again in the next one. Plain malloc in one thread
# keeps the count deterministic (tensor ops add OpenMP threads and their arenas, which made it vary).
BATCHES = textwrap.dedent("""
    import ctypes, ctypes.util, resource, sys
    from worker import allocator

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    if sys.argv[1] == "keep":
        assert allocator.keep_freed_memory()
    SIZE = 20 * 1024 * 1024

    def batch():
        blocks = [libc.malloc(SIZE) for _ in range(2)]
        for block in blocks:
            libc.memset(block, 1, SIZE)
        for block in reversed(blocks):
            libc.free(block)

    for _ in range(3):  # the first batches fault their memory in whatever the thresholds
        batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        batch()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", BATCHES, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the thresholds are glibc's")
def test_batches_reuse_freed_memory_instead_of_faulting_it_in():
    kept, default = page_faults("keep"), page_faults("default")
    assert kept < default / 10, (kept, default)


def test_a_c_library_without_mallopt_is_left_as_it_is(monkeypatch):
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda _name: None)
    assert allocator.keep_freed_memory() is False

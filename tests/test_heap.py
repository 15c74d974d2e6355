"""glibc malloc settings (latentcube.heap), in a fresh process; their page-fault savings are a benchmark
(benchmarks/bench_heap.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings need glibc")

def test_reuse_large_blocks_takes_effect_and_is_idempotent():
    # The page faults it saves are measured by benchmarks/bench_heap.py (benchmarks/RESULTS.md).
    from latentcube import heap

    code = "from latentcube import heap; print(heap.reuse_large_blocks(), heap.reuse_large_blocks())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"] and callable(heap.release_free_memory)


_RELEASE = """
import numpy as np
from latentcube import heap

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

assert heap.reuse_large_blocks()
keep = np.ones(1_000_000)  # allocated after the big block: the freed block is not at the heap top
big = np.ones(16_000_000)  # 128 MB, now from the heap
pin = np.ones(1000)
del big
before = rss_mb()
released = heap.release_free_memory()
print(released, before - rss_mb())
"""


def test_release_free_memory_returns_kept_blocks_to_the_system():
    out = subprocess.run([sys.executable, "-c", _RELEASE], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True"
    assert float(out[1]) > 100, out  # most of the freed 128 MB leaves the resident set

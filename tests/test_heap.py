"""glibc malloc settings (latentcube.heap): measured by page faults in a fresh process."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings need glibc")

# Allocate and free the same 64 MB array ten times; count the minor page faults of the last nine.
_FAULTS = """
import resource, sys
import numpy as np
from latentcube import heap
if sys.argv[1] == "reuse":
    assert heap.reuse_large_blocks()
np.ones(8_000_000)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    a = np.ones(8_000_000)
    del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_reuse_large_blocks_stops_refaulting_freed_memory():
    # 64 MB = 15,625 pages of 4 KiB; glibc's default maps it afresh every time (>= one fault per huge or
    # small page each pass), the setting serves it again from the kept heap (almost no faults).
    default, reused = _faults("default"), _faults("reuse")
    assert default > 9 * 30, default  # even with 2 MiB transparent huge pages: 31 per pass
    assert reused < default / 10, (reused, default)


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

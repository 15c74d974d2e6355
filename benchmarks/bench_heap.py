"""Page faults of a repeated large allocation with glibc's defaults and with ``heap.reuse_large_blocks``.

Allocates and frees the same 64 MB array ten times in a fresh process and counts the minor page faults
of the last nine passes. With glibc's defaults every pass maps the block afresh (one fault per page,
15,625 pages of 4 KiB, or ~31 per pass with 2 MiB transparent huge pages); with the setting the block is
served again from the kept heap (almost no faults). Needs glibc.

    python benchmarks/bench_heap.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

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


def faults(mode: str) -> int:
    """Minor page faults of nine 64 MB allocate/free passes in a fresh process (``default`` or ``reuse``)."""
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def main(argv: list[str] | None = None) -> dict[str, int]:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    if platform.libc_ver()[0] != "glibc":
        raise SystemExit("needs glibc (mallopt)")
    result = {"default": faults("default"), "reuse_large_blocks": faults("reuse")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

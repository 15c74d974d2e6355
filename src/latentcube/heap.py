"""glibc malloc settings for long numerical runs (training steps, embedding blocks).

Both loops allocate and free the same large tensors (MBs to tens of MBs) thousands of times. With
glibc's defaults, blocks above the mmap threshold (128 KiB, raised dynamically to at most 32 MiB) are
fresh ``mmap`` pages on every allocation, and the heap top is trimmed and regrown: every pass over a
new tensor then pays one page fault per 4 KiB page. PyTorch's CPU performance guide suggests
jemalloc/tcmalloc via ``LD_PRELOAD`` for the same reason; ``mallopt`` does it from inside the process,
with no extra dependency and nothing to set before the interpreter starts (a Dask worker calls it for
itself). Settings are process-wide and idempotent; without glibc they are skipped. A library call that
applies them in the caller's process does so inside :func:`heap_settings_restored`, which puts back what
was there before on return.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterator

__all__ = [
    "TRAINING_HEAP_PAD",
    "INFERENCE_MMAP_THRESHOLD",
    "grow_heap_in_large_steps",
    "heap_settings",
    "heap_settings_restored",
    "reuse_large_blocks",
    "release_free_memory",
]

#: Bytes glibc's heap grows by beyond each request (``M_TOP_PAD``) during training.
TRAINING_HEAP_PAD = 1 << 30
#: Requests below this many bytes come from the heap, not fresh ``mmap`` pages, during inference
#: (and freed heap memory up to this much stays mapped for the next block instead of being trimmed).
INFERENCE_MMAP_THRESHOLD = 1 << 30

# malloc.h parameter numbers
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: glibc's values of those parameters in a process that never set them (malloc/malloc.c DEFAULT_*).
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 128 * 1024, _M_MMAP_THRESHOLD: 128 * 1024}
# What this module has set in this process (glibc has no getter): parameter -> value.
_SET: dict[int, int] = {}


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - absent outside glibc (musl, macOS): AttributeError
    except (OSError, AttributeError):
        return None
    return libc


def _mallopt(param: int, value: int) -> bool:
    libc = _libc()
    ok = bool(libc is not None and libc.mallopt(param, int(value)))
    if ok:
        _SET[param] = int(value)
    return ok


def heap_settings() -> dict[int, int]:
    """The malloc parameters this module has set in this process (``mallopt`` number -> value)."""
    return dict(_SET)


@contextlib.contextmanager
def heap_settings_restored() -> Iterator[None]:
    """Undo, on exit, the settings of this module made inside the block: each parameter changed goes back
    to its value before, or to glibc's default where it was never set (glibc then keeps that value fixed
    instead of adapting its mmap threshold, the one difference from an untouched process)."""
    before = dict(_SET)
    try:
        yield
    finally:
        for param in [p for p, v in _SET.items() if before.get(p) != v]:
            _mallopt(param, before.get(param, _GLIBC_DEFAULTS[param]))
            if param not in before:
                _SET.pop(param, None)


def grow_heap_in_large_steps(pad_bytes: int = TRAINING_HEAP_PAD) -> bool:
    """Let glibc malloc grow (and keep) the heap in ``pad_bytes`` steps; True when it took effect.

    Training allocates and frees the same few-MB activations every step. With glibc's defaults the heap
    top is trimmed and regrown all the time, and the page faults cost ~20 % of a CPU training step
    (benchmarks/RESULTS.md). Only address space is reserved:
    untouched pages are never resident. No-op (False) without glibc.
    """
    return _mallopt(_M_TOP_PAD, pad_bytes)


def reuse_large_blocks(threshold_bytes: int = INFERENCE_MMAP_THRESHOLD) -> bool:
    """Serve allocations below ``threshold_bytes`` from the heap and keep freed memory for reuse.

    For embedding: the dense encoder's temporal stage works on ~20 MB tensors (693 window-date rows x
    256 pixels x 32 features) that glibc otherwise maps afresh at every allocation, paying a page fault
    per 4 KiB page (benchmarks/RESULTS.md). Freed memory stays resident for the next tile, up to
    ``threshold_bytes``.
    Tensors over 64 MB made by threads other than the main one still use ``mmap`` (glibc's per-thread
    arenas cannot hold them; ``MALLOC_ARENA_MAX=1`` puts every thread on the main heap). True when both
    settings took effect.
    """
    mmap_set = _mallopt(_M_MMAP_THRESHOLD, threshold_bytes)
    return _mallopt(_M_TRIM_THRESHOLD, threshold_bytes) and mmap_set


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (``malloc_trim(0)``); True when some were released.

    Called between embedding blocks: ``reuse_large_blocks`` keeps freed memory for the next tile, which
    would otherwise raise a many-block run's peak; refaulting a block's working set is cheap against
    computing it (benchmarks/RESULTS.md).
    """
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))

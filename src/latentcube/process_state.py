"""Leave the caller's process as it was found: a context manager around library calls that train or embed.

Lightning's ``Trainer(deterministic=True)`` and ``seed_everything`` switch on deterministic algorithms, seed
the global random generators and set environment variables; torch thread counts and TF32 flags are
per-process. A library call that needs any of these sets them inside :func:`restored_process_state`, which
puts back, on return or error, what the caller had.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["restored_process_state"]

#: Environment variables Lightning sets during a fit (seed propagation, cuBLAS determinism).
_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")


def _flags() -> tuple[bool, bool, bool, bool]:
    import torch

    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)


@contextmanager
def restored_process_state() -> Iterator[None]:
    """Restore on exit: torch threads, deterministic-algorithm mode, float32 matmul precision, TF32 and
    cuDNN flags, the global random generators (Python, NumPy, torch), Lightning's environment variables
    and the warning filters."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    precision = torch.get_float32_matmul_precision()
    flags = _flags()
    env = {k: os.environ.get(k) for k in _ENV}
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        with warnings.catch_warnings():
            yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        # Set only what changed: torch refuses to read a precision set through both its legacy and new APIs.
        if _flags() != flags:
            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = flags
        if torch.get_float32_matmul_precision() != precision:
            torch.set_float32_matmul_precision(precision)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

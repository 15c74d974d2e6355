"""Test-session set-up shared by every test module."""

from __future__ import annotations

import os


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers), split the cores between the workers.

    Each worker would otherwise start torch with one thread per core, and two workers would run
    twice as many threads as there are cores. Child processes (CLI runs, Dask workers, DDP ranks)
    inherit the same count through ``OMP_NUM_THREADS`` unless a test sets their threads itself.
    """
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return
    threads = max(1, (os.cpu_count() or 1) // int(workers))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))

    import torch

    torch.set_num_threads(threads)

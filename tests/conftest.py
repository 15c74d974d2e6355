"""Test-session set-up and fixtures shared by every test module.

- ``one_torch_thread``: torch on one thread for the test, the caller's count restored afterwards.
- ``SHARED_DATA`` / ``shared_data``: the real-data folder, ``$LATENTCUBE_SHARED_DATA`` or ``../shared/data``
  beside the repository; tests on it skip cleanly when it is absent.
- ``demo_no_train``: one ``latentcube demo --no-train`` run with a relative ``--out``, started from a
  working directory outside the repository (as a user runs it), shared by the tests that read it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

#: The real-data folder (README there); ``LATENTCUBE_SHARED_DATA`` overrides the default beside the repository.
SHARED_DATA = Path(os.environ.get("LATENTCUBE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
# A small sensor autoencoder (the default class, small widths): a training stage in seconds on 2 cores.
SMALL_MODEL = {"widths": [8, 12, 16], "multiscale_branch_ch": 4, "d_model": 16, "n_heads": 2, "ffn_dim": 16,
               "decoder_d_model": 16, "decoder_ffn_dim": 16, "decoder_widths": [16, 8, 8], "decoder_branch_ch": 4}


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


@pytest.fixture
def one_torch_thread():
    """Torch on one thread inside the test (small models run faster, timings steadier); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; the test skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} absent (set LATENTCUBE_SHARED_DATA)")
    return SHARED_DATA


class DemoRun(NamedTuple):
    out: Path  # the run directory, absolute
    stdout: str  # what the command printed on stdout


@pytest.fixture(scope="session")
def demo_no_train(tmp_path_factory) -> DemoRun:
    """``latentcube demo --out demo-output --no-train`` run from a folder outside the repository.

    The relative ``--out`` is what ``make demo`` passes; the report's figures must resolve whatever the
    working directory. Tests that change the run directory work on a copy.
    """
    cwd = tmp_path_factory.mktemp("demo_cwd")
    proc = subprocess.run([sys.executable, "-m", "latentcube.cli", "demo", "--out", "demo-output", "--no-train"],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return DemoRun(cwd / "demo-output", proc.stdout)

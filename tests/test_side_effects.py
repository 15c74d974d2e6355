"""Library calls leave the caller's process as they found it: matplotlib backend, torch threads and
flags, random generators, environment and warning filters (issue 25)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_MODEL

SMALL = SMALL_MODEL

#: Every module that draws figures or runs a pipeline step.
MODULES = ("latentcube", "latentcube.plots", "latentcube.report", "latentcube.demo", "latentcube.evaluate.curves",
           "latentcube.evaluate.maps", "latentcube.evaluate.sweep", "latentcube.cli")


def _backend_after_import(env_backend: str | None) -> str:
    code = ("import matplotlib, matplotlib.rcsetup as r, importlib\n"
            f"for m in {MODULES!r}: importlib.import_module(m)\n"
            "raw = matplotlib.rcParams._get('backend')\n"
            "print('auto' if raw is r._auto_backend_sentinel else raw, matplotlib.get_backend())\n")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if env_backend:
        env["MPLBACKEND"] = env_backend
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split("\n")[0]


@pytest.mark.slow  # a fresh interpreter importing torch, Lightning and Dask
def test_importing_latentcube_leaves_the_matplotlib_backend_alone():
    # The user's choice stands (MPLBACKEND), and nothing chose one at import: matplotlib.use() would
    # replace the rcParams entry, which stays what the environment set.
    assert _backend_after_import("svg") == "svg svg"


def _state() -> dict:
    import matplotlib

    return {
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "precision": torch.get_float32_matmul_precision(),
        "tf32": (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("PL_", "CUBLAS", "OMP", "MKL"))},
        "filters": list(warnings.filters),
        "backend": matplotlib.rcParams._get("backend"),
        "random": random.getstate(),
        "numpy": np.random.get_state()[1].tobytes(),
        "torch_rng": torch.get_rng_state().numpy().tobytes(),
    }


@pytest.mark.slow
def test_run_training_restores_the_callers_process(tmp_path):
    from latentcube.synthetic import make_world, write_world
    from latentcube.train import DataConfig, OptimConfig, TrainConfig, TrainerConfig, run_training

    write_world(make_world(seed=1, scene_size=32, n_scenes=2, n_towers=0, scene_years=(2019,)), tmp_path / "w")
    cfg = TrainConfig(
        stage="s2", out_dir=str(tmp_path / "run"), seed=3,
        data=DataConfig(cubes=(str(tmp_path / "w" / "scene_000.zarr"), str(tmp_path / "w" / "scene_001.zarr")),
                        splits={"train": ("scene_000",), "val": ("scene_001",)}, batch_size=16,
                        sampling={"space_stride": 8}),
        model=dict(SMALL), optim=OptimConfig(lr=3e-3, warmup_steps=2),
        trainer=TrainerConfig(max_epochs=1, max_steps=2, enable_progress_bar=False, limit_val_batches=1),
    )
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    try:
        torch.set_num_threads(threads + 1)  # a count no default would pick
        torch.set_float32_matmul_precision("medium")
        before = _state()
        summary = run_training(cfg, test=False)
        after = _state()
    finally:
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
    assert Path(summary["model"]).is_file()  # it did train
    assert {k: v for k, v in after.items() if after[k] != before[k]} == {}

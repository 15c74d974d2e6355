"""Staged training with Lightning: stage 1 pretrains one autoencoder per sensor, stage 2 trains only the
fusion layers on top of the frozen stage-1 encoders and decoders (paper §III-B/C).

Models (``latentcube.nn``) know nothing of optimisers or files; the tasks here own losses, metrics,
optimisers, schedules and freezing. Checkpoints exported by :func:`save_model` are self-describing
(architecture arguments, normalisation, band order, date convention, config, package version) and load
with ``torch.load(weights_only=True)``; Lightning's ``last.ckpt`` is kept only to resume, and is read with
``weights_only=True`` too (a checkpoint is data, never code). Checkpoints, ``metrics.csv`` and model
files are written atomically, ``metrics.csv`` keeps every epoch across re-runs, and training stops at
the first non-finite loss or weight instead of saving a NaN model.

Modules, each importing only those before it: ``config`` (the settings and :class:`TrainError`), ``data``
(cubes, splits, patch datasets), ``checkpoints`` (Lightning checkpoints as data), ``metrics``
(``metrics.csv``, TensorBoard), ``tasks`` (the Lightning tasks), ``warmstart`` (``warm_start: pca``) and
``run`` (:func:`run_training`, :func:`check_data`).
"""

from __future__ import annotations

from latentcube.nn.model_file import build_model, load_model, save_model
from latentcube.train.checkpoints import CHECKPOINT_SAFE_GLOBALS, load_checkpoint
from latentcube.train.config import (
    DataConfig,
    OptimConfig,
    TrainConfig,
    TrainerConfig,
    TrainError,
    load_train_config,
    normalization_of,
    sensor_model_config,
)
from latentcube.train.data import CubeDataModule
from latentcube.train.run import check_data, run_training
from latentcube.train.tasks import (
    LINEAR_PATH_PARAMS,
    PHYSICAL_UNITS,
    AutoencoderTask,
    FusionTask,
    build_task,
    loss_module,
    model_bands,
)
from latentcube.train.warmstart import centre_emphasis, warm_start

__all__ = [
    "CHECKPOINT_SAFE_GLOBALS",
    "LINEAR_PATH_PARAMS",
    "PHYSICAL_UNITS",
    "AutoencoderTask",
    "CubeDataModule",
    "DataConfig",
    "FusionTask",
    "OptimConfig",
    "TrainConfig",
    "TrainError",
    "TrainerConfig",
    "build_model",
    "build_task",
    "centre_emphasis",
    "check_data",
    "load_checkpoint",
    "load_model",
    "load_train_config",
    "loss_module",
    "model_bands",
    "normalization_of",
    "run_training",
    "save_model",
    "sensor_model_config",
    "warm_start",
]

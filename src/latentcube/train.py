"""Staged training with Lightning: stage 1 pretrains one autoencoder per sensor, stage 2 trains only the
fusion layers on top of the frozen stage-1 encoders and decoders (paper §III-B/C).

Models (``latentcube.nn``) know nothing of optimisers or files; the tasks here own losses, metrics,
optimisers, schedules and freezing. Checkpoints exported by :func:`save_model` are self-describing
(architecture arguments, normalisation, band order, date convention, config, package version) and load
with ``torch.load(weights_only=True)``; Lightning's ``last.ckpt`` is kept only to resume, and is read with
``weights_only=True`` too (a checkpoint is data, never code). Checkpoints, ``metrics.csv`` and model
files are written atomically, ``metrics.csv`` keeps every epoch across re-runs, and training stops at
the first non-finite loss or weight instead of saving a NaN model.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import xarray as xr
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader

from latentcube.config import ConfigError, Range, check_ranges, from_dict, load_yaml, to_dict
from latentcube.constants import S1_BANDS, S2_BANDS, model_band_selection
from latentcube.cube import CubeError, open_cube, pixel_size_m, validate_cube
from latentcube.errors import LatentcubeError
from latentcube.files import atomic_torch_save, atomic_write_text
from latentcube.heap import grow_heap_in_large_steps
from latentcube.losses import (
    FusionLoss,
    FusionLossConfig,
    LossOutput,
    S1PretrainConfig,
    S1PretrainLoss,
    S2PretrainConfig,
    S2PretrainLoss,
    weights_from_config,
)
from latentcube.nn import (
    AutoencoderConfig,
    FusionConfig,
    FusionModel,
    SensorAutoencoder,
    s1_config,
    s2_config,
)
from latentcube.nn.linear_init import fusion_warm_start, pca_warm_start
from latentcube.nn.model_file import build_model, load_model, save_model  # re-exported (__all__)
from latentcube.preprocess import Normalization
from latentcube.process_state import restored_process_state
from latentcube.sampling import (
    BlockShuffleSampler,
    FusionPatchDataset,
    PatchDataset,
    SamplingConfig,
    assign_splits,
    spatial_split,
)

__all__ = [
    "AutoencoderTask",
    "CubeDataModule",
    "DataConfig",
    "FusionTask",
    "OptimConfig",
    "TrainConfig",
    "TrainError",
    "TrainerConfig",
    "build_model",
    "check_data",
    "load_checkpoint",
    "load_model",
    "load_train_config",
    "model_bands",
    "run_training",
    "save_model",
]

Stage = Literal["s1", "s2", "fusion"]


class TrainError(LatentcubeError, RuntimeError):
    """Training cannot go on: a checkpoint that is corrupt or not data only, a non-finite loss or weight."""


# ------------------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class DataConfig:
    """Which cubes, how they are split and how patches are drawn."""

    cube_dir: str | None = None
    """Directory whose ``*.zarr`` cubes are used (alternative or addition to ``cubes``)."""
    cubes: tuple[str, ...] = ()
    """Explicit cube paths."""
    plan: str | None = None
    """Site plan CSV (``cube_id``, ``split``) giving each cube's split."""
    splits: dict[str, tuple[str, ...]] | None = None
    """Explicit split lists of cube ids (file stems); used when no plan is given."""
    spatial_split: dict[str, float] | None = None
    """Instead of a plan or split lists: hold out strips of every cube, e.g. ``{val: 0.2}`` or ``{val: 0.2,
    test: 0.2}`` (shares of the extent along ``spatial_split_axis``; train gets the rest, west/north first).
    Patches never cross strips, so no pixel is in two splits. For one area of interest; with several
    cubes, cube-level splits (plan or lists) test generalisation to new places better."""
    spatial_split_axis: str = "x"
    """``x``: strips of columns (train west, then val, then test); ``y``: strips of rows (north first)."""
    batch_size: int = 64
    """Patches per optimisation step (per device)."""
    num_workers: int = 0
    """DataLoader worker processes (each keeps its own block cache)."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """Overrides of the paper's sampling scheme for the stage (``SamplingConfig`` fields)."""

    def __post_init__(self) -> None:
        check_ranges(self, batch_size=Range(1, 65536), num_workers=Range(0, 256))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then plateau reduction; defaults from the authors' public code."""

    lr: float = 1e-4
    weight_decay: float = 1.5e-4
    warmup_steps: int = 30_000
    """Linear warm-up from ``lr * warmup_start_factor`` (authors: 30,000 steps from 0.001)."""
    warmup_start_factor: float = 0.001
    plateau_factor: float = 0.35
    plateau_patience: int = 5
    min_lr: float = 1.5e-6
    grad_clip: float = 1.0
    """Gradient-norm clipping (our default; the paper does not state one)."""
    monitor: str = "val/center_mae"
    """Validation metric for the plateau schedule and best-checkpoint selection (authors: centre MAE)."""
    linear_lr_factor: float = 1.0
    """Learning-rate factor of the linear code paths (encoder ``patch_linear``, decoder ``linear``). Use
    ~0.1 with ``warm_start: pca``: the paths then start near their optimum and full-size steps only add
    noise (docs/training.md)."""

    def __post_init__(self) -> None:
        check_ranges(self, lr=Range(0, 1, lo_open=True), weight_decay=Range(0, 1), warmup_steps=Range(0),
                     warmup_start_factor=Range(0, 1, lo_open=True), plateau_factor=Range(0, 1, True, True),
                     plateau_patience=Range(0), min_lr=Range(0, 1), grad_clip=Range(0), linear_lr_factor=Range(0))


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning Trainer settings."""

    max_epochs: int = 100
    max_steps: int = -1
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    """``auto``: bf16 mixed precision on a CUDA GPU, float32 on CPU."""
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    tensorboard: bool = False
    """Also write TensorBoard logs to ``out_dir/tensorboard`` (needs ``pip install latentcube[tensorboard]``);
    ``metrics.csv`` is always written."""

    def __post_init__(self) -> None:
        check_ranges(self, max_epochs=Range(1, 1_000_000), max_steps=Range(1, also=(-1,)), num_nodes=Range(1),
                     limit_train_batches=Range(0, lo_open=True), limit_val_batches=Range(0), log_every_n_steps=Range(1))


@dataclass(frozen=True)
class TrainConfig:
    """One training stage. YAML files in ``configs/`` serialise this; unknown keys are errors."""

    stage: Stage
    out_dir: str
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the sensor preset (``AutoencoderConfig``) or of ``FusionConfig`` (fusion)."""
    loss: dict[str, Any] = field(default_factory=dict)
    """Overrides of the stage's loss config (``S1PretrainConfig``, ``S2PretrainConfig``, ``FusionLossConfig``)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoints: dict[str, str] = field(default_factory=dict)
    """Fusion only: stage-1 model files per sensor, e.g. ``{s1: runs/s1/model.pt, s2: runs/s2/model.pt}``."""
    normalization: dict[str, Any] | None = None
    """Normalisation (``Normalization.to_dict()``); default: the documented fixed bounds."""
    warm_start: Literal["pca", "none"] = "none"
    """``pca``: before the first step (not on resume), fit the linear code paths to up to
    ``warm_start_patches`` training patches (``nn.linear_init``): s1/s2 a weighted per-date PCA with the
    centre weighted as the loss weighs it (``centre_emphasis``), fusion the loss-weighted linear code of
    the sensor latents. Off by default: it wins on the reconstruction objective but gives more
    spectrum-like embeddings (docs/training.md)."""
    warm_start_patches: int = 2000

    def __post_init__(self) -> None:
        check_ranges(self, seed=Range(0, 2**32 - 1), warm_start_patches=Range(1))


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a stage YAML; keyword overrides replace top-level fields (e.g. ``out_dir``)."""
    cfg = load_yaml(TrainConfig, path)
    return replace(cfg, **overrides) if overrides else cfg


def _merge(base: Any, overrides: Mapping[str, Any], cls: type, where: str) -> Any:
    data = to_dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return from_dict(cls, data, where=where)


def sensor_model_config(stage: str, overrides: Mapping[str, Any]) -> AutoencoderConfig:
    """The preset of sensor ``stage`` with config overrides applied (strict)."""
    base = {"s1": s1_config, "s2": s2_config}[stage]()
    return _merge(base, overrides, AutoencoderConfig, f"model ({stage})")


def loss_module(cfg: TrainConfig) -> torch.nn.Module:
    if cfg.stage == "s1":
        return S1PretrainLoss(_merge(S1PretrainConfig(), cfg.loss, S1PretrainConfig, "loss"))
    if cfg.stage == "s2":
        return S2PretrainLoss(_merge(S2PretrainConfig(), cfg.loss, S2PretrainConfig, "loss"))
    return FusionLoss(_merge(FusionLossConfig(), cfg.loss, FusionLossConfig, "loss"))


def model_bands(model: SensorAutoencoder | FusionModel) -> dict[str, tuple[str, ...]]:
    """The band order each sensor of ``model`` reads: ``{"s2": (...)}``, or both sensors for fusion."""
    if isinstance(model, FusionModel):
        return {name: tuple(m.config.band_names) for name, m in model.sensors.items()}
    return {model.config.sensor: tuple(model.config.band_names)}


def normalization_of(cfg: TrainConfig) -> Normalization:
    return Normalization.from_dict(cfg.normalization) if cfg.normalization else Normalization()


# ------------------------------------------------------------------------------------ tasks


#: Parameter-name suffixes of the linear code paths (``OptimConfig.linear_lr_factor``).
LINEAR_PATH_PARAMS = ("encoder.patch_linear.weight", "decoder.linear.weight", "decoder.linear.bias")


def _configure_optim(module: L.LightningModule, params: list[torch.nn.Parameter], optim: OptimConfig):
    trainable = {id(p) for p in params}
    linear = [p for name, p in module.named_parameters() if id(p) in trainable and name.endswith(LINEAR_PATH_PARAMS)]
    linear_ids = {id(p) for p in linear}
    rest = [p for p in params if id(p) not in linear_ids]
    groups = [{"params": rest, "lr": optim.lr}]
    if linear:
        groups.append({"params": linear, "lr": optim.lr * optim.linear_lr_factor})
    opt = torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay, fused=True)
    warmup = torch.optim.lr_scheduler.LinearLR(
        opt, start_factor=optim.warmup_start_factor, end_factor=1.0, total_iters=max(optim.warmup_steps, 1)
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience, min_lr=optim.min_lr
    )
    return [opt], [
        {"scheduler": warmup, "interval": "step", "frequency": 1},
        {"scheduler": plateau, "interval": "epoch", "monitor": optim.monitor, "reduce_on_plateau": True},
    ]


class _StageTask(L.LightningModule):
    """Shared logging, seeding and optimisation for both stages."""

    def __init__(self, optim: OptimConfig, seed: int, physical_scale: Mapping[str, list[float]]) -> None:
        super().__init__()
        self.optim = optim
        self.seed = int(seed)
        # Per-band factor turning a normalised absolute error into physical units (reflectance, dB).
        self.physical_scale = {k: torch.tensor(v, dtype=torch.float32) for k, v in physical_scale.items()}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Seeding per step makes dropout a function of (seed, step), so a resumed run continues exactly
        # as an uninterrupted one: Lightning does not restore RNG states, and DataLoader iterators draw
        # from the global generator at points that differ between fresh and resumed runs.
        torch.manual_seed(self.seed * 1_000_003 + self.global_step)

    def _log_parts(self, stage: str, out: LossOutput, batch_size: int) -> None:
        self.log(f"{stage}/objective", out.total.detach(), on_step=False, on_epoch=True, batch_size=batch_size,
                 sync_dist=True, prog_bar=stage == "val")
        for name, value in out.parts.items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True,
                     prog_bar=stage == "val" and name == "center_mae")

    def _physical_center_mae(self, sensor: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t, p = target.shape[1] // 2, target.shape[-1] // 2
        err = (pred[:, t, :, p, p].float() - target[:, t, :, p, p].float()).abs() * self.physical_scale[sensor].to(pred.device)
        valid = torch.isfinite(err)
        return torch.where(valid, err, 0).sum() / valid.sum().clamp(min=1)

    def configure_optimizers(self):
        return _configure_optim(self, [p for p in self.parameters() if p.requires_grad], self.optim)

    def _step(self, batch: Mapping[str, torch.Tensor], stage: str) -> LossOutput:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train").total
        # All ranks decide together, so that under DDP no rank waits for one that stopped.
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach())), all=True):
            raise TrainError(self._non_finite(f"the training loss is {float(loss.detach())}"))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # One device sync for all tensors; the names are looked up only when something is wrong.
        params = [p for p in self.parameters() if p.requires_grad]
        if params and not bool(torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()):
            bad = [n for n, p in self.named_parameters() if p.requires_grad and not torch.isfinite(p.detach()).all()]
            shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
            raise TrainError(self._non_finite(f"{len(bad)} weight tensor(s) became non-finite ({shown})"))

    def _non_finite(self, what: str) -> str:
        return (
            f"training stopped: {what} at epoch {self.current_epoch}, step {self.global_step}; no model was saved "
            "from it. Likely cause: non-finite or extreme values (inf, 1e30) in the training cubes that no mask "
            "caught, or a learning rate too high. Fix: check the cubes with `latentcube validate` and mask or "
            "remove those values (or lower optim.lr), then train again"
        )

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)


class AutoencoderTask(_StageTask):
    """Stage 1: one sensor autoencoder trained on its own patches."""

    def __init__(self, model_config: AutoencoderConfig, loss: torch.nn.Module, optim: OptimConfig, *, seed: int = 0,
                 physical_scale: Mapping[str, list[float]] | None = None) -> None:
        super().__init__(optim, seed, physical_scale or {model_config.sensor: [1.0] * model_config.n_bands})
        self.model = SensorAutoencoder(model_config)
        self.loss = loss
        self.sensor = model_config.sensor

    def _step(self, batch: Mapping[str, torch.Tensor], stage: str) -> LossOutput:
        x, days = batch["x"], batch["days"]
        recon, _ = self.model(batch.get("x_in", x), days)  # x_in: masked input (data.sampling.mask_*), x the target
        out = self.loss(recon, x, days)
        self._log_parts(stage, out, x.shape[0])
        if stage == "test":
            self.log("test/center_mae_physical", self._physical_center_mae(self.sensor, recon, x), batch_size=x.shape[0],
                     sync_dist=True)
        return out


class FusionTask(_StageTask):
    """Stage 2: fusion layers on frozen sensor encoders/decoders (no gradients, eval mode)."""

    def __init__(self, sensors: Mapping[str, SensorAutoencoder], fusion_config: FusionConfig, loss: torch.nn.Module,
                 optim: OptimConfig, *, seed: int = 0, physical_scale: Mapping[str, list[float]] | None = None) -> None:
        super().__init__(optim, seed, physical_scale or {n: [1.0] * m.config.n_bands for n, m in sensors.items()})
        self.model = FusionModel(dict(sensors), fusion_config)
        self.model.freeze_sensor_models()
        self.loss = loss

    def configure_optimizers(self):
        return _configure_optim(self, list(self.model.fusion_parameters()), self.optim)

    def _step(self, batch: Mapping[str, torch.Tensor], stage: str) -> LossOutput:
        inputs = {name: batch[name] for name in self.model.sensor_names}
        days = batch["days"]
        out_model = self.model({n: batch.get(f"{n}_in", x) for n, x in inputs.items()}, days)  # masked input, if any
        out = self.loss(out_model.reconstructions, inputs, days)
        # Model selection in fusion uses the centre pixel (paper §III-C): the mean over sensors.
        centre = torch.stack([out.parts[f"{n}/center_mae"] for n in self.model.sensor_names]).mean()
        out.parts["center_mae"] = centre
        self._log_parts(stage, out, days.shape[0])
        if stage == "test":
            for name in self.model.sensor_names:
                self.log(f"test/{name}/center_mae_physical",
                         self._physical_center_mae(name, out_model.reconstructions[name], inputs[name]),
                         batch_size=days.shape[0], sync_dist=True)
        return out


# ------------------------------------------------------------------------------------- data


def _cube_paths(data: DataConfig, base: Path) -> list[Path]:
    paths = [Path(p) if Path(p).is_absolute() else base / p for p in data.cubes]
    if data.cube_dir:
        d = Path(data.cube_dir) if Path(data.cube_dir).is_absolute() else base / data.cube_dir
        if not d.is_dir():
            raise ConfigError(f"data.cube_dir {d} is not a directory")
        paths += sorted(d.glob("*.zarr"))
    if not paths:
        raise ConfigError("no cubes: set data.cube_dir or data.cubes in the config")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"cubes not found: {missing[:3]}")
    return paths


def _spatial_splits(cubes: Mapping[Path, xr.Dataset], fractions: Mapping[str, float], axis: str,
                    patch: int) -> tuple[dict[str, list[Path]], dict[str, list[tuple[slice, slice]]]]:
    """Every cube in every split, each split with its strip of each cube (``sampling.spatial_split``)."""
    split_paths: dict[str, list[Path]] = {}
    regions: dict[str, list[tuple[slice, slice]]] = {}
    for path, ds in cubes.items():
        try:
            strips = spatial_split(ds.sizes["y"], ds.sizes["x"], fractions, patch=patch, axis=axis)
        except ValueError as err:
            raise ValueError(f"{path.name}: {err}") from err
        for split, region in strips.items():
            split_paths.setdefault(split, []).append(path)
            regions.setdefault(split, []).append(region)
    return split_paths, regions


class CubeDataModule(L.LightningDataModule):
    """Train/val/test patch datasets of one stage, split at cube level."""

    def __init__(self, cfg: TrainConfig, normalization: Normalization, base_dir: Path | None = None) -> None:
        super().__init__()
        self.cfg, self.norm = cfg, normalization
        base = base_dir or Path.cwd()
        paths = _cube_paths(cfg.data, base)
        # Opened once (lazily) for the split, band and pixel-size checks; the datasets open their own.
        self.cubes: dict[Path, xr.Dataset] = {p: open_cube(p) for p in paths}
        stage = cfg.stage
        for path, ds in self.cubes.items():  # units, dates, grid, nodata: wrong ones would train silently
            try:
                validate_cube(ds, require_s1=stage != "s2", require_s2=stage != "s1")
            except CubeError as err:
                raise CubeError(f"training cube {path}: {err}") from err
        self.sampling = from_dict(SamplingConfig, {**to_dict(SamplingConfig.paper(stage)), **cfg.data.sampling},
                                  where="data.sampling")
        # Per split, one (rows, columns) region per cube of split_paths; None = whole cubes (cube-level splits).
        self.split_regions: dict[str, list[tuple[slice, slice]]] | None = None
        given = [name for name, v in (("plan", cfg.data.plan), ("splits", cfg.data.splits),
                                       ("spatial_split", cfg.data.spatial_split)) if v]
        if len(given) > 1:
            raise ConfigError(f"data.{' and data.'.join(given)} are both set: give one way of splitting")
        try:
            if cfg.data.plan:
                plan = Path(cfg.data.plan) if Path(cfg.data.plan).is_absolute() else base / cfg.data.plan
                self.split_paths = assign_splits(paths, plan=plan)
            elif cfg.data.splits:
                self.split_paths = assign_splits(paths, splits=cfg.data.splits)
            elif cfg.data.spatial_split:
                self.split_paths, self.split_regions = _spatial_splits(self.cubes, cfg.data.spatial_split,
                                                                       cfg.data.spatial_split_axis, self.sampling.patch)
            else:
                raise ConfigError("no split: set data.plan (a site plan CSV), data.splits {train: [...], val: [...]} "
                                  "or, for a single area, data.spatial_split {val: 0.2}")
        except ValueError as err:
            raise ConfigError(f"data: {err}") from err
        for needed in ("train", "val"):
            if not self.split_paths.get(needed):
                raise ConfigError(f"split {needed!r} has no cubes. Fix: list cubes for it in data.splits or the plan, "
                                  "or hold out part of each cube with data.spatial_split {val: 0.2}")
        self.datasets: dict[str, PatchDataset] = {}
        self.band_selection: dict[str, tuple[str, ...]] = {}  # per sensor, the model's bands (check_bands)

    def check_bands(self, bands: Mapping[str, Sequence[str]]) -> None:
        """Every cube's band order for each sensor read (``{"s2": (...), "s1": (...)}``) must be the model's.

        Raises ``CubeError`` naming the cube, the difference and the fix: a permuted or partial band list
        would otherwise fail deep inside the model, or silently train on the wrong bands.
        """
        band_dims = {"s2": "band", "s1": "band_s1"}
        selection = {}
        for path, ds in self.cubes.items():
            for sensor, expected in bands.items():
                if sensor not in ds or not expected:
                    continue  # the datasets say which cube lacks a sensor, with the fix
                try:
                    chosen = model_band_selection(ds[band_dims[sensor]].values, expected, dim=band_dims[sensor],
                                                  what=f"{sensor} bands of {path.name} vs the model")
                except ValueError as err:
                    raise CubeError(str(err)) from err
                if chosen is not None:  # all the model's bands and more: the datasets read the model's by name
                    selection[sensor] = chosen
        if selection != self.band_selection:
            self.band_selection = selection
            self.datasets.clear()  # built before the check: rebuild them on the selected bands

    def check_window(self, model: SensorAutoencoder | FusionModel) -> None:
        """The sampled patches must have the model's shape: ``data.sampling`` n_frames and patch equal to
        the model's n_dates and patch_size; raises ``ConfigError`` naming both and the fix."""
        n_dates, patch = (model.n_dates, model.patch_size) if isinstance(model, FusionModel) else (
            model.config.n_dates, model.config.patch_size)
        s = self.sampling
        if (s.n_frames, s.patch) != (n_dates, patch):
            where = ("the stage-1 checkpoints' (set both to them)" if isinstance(model, FusionModel)
                     else "the model's (set model: {n_dates: N, patch_size: P} to match, or change the sampling)")
            raise ConfigError(
                f"data.sampling draws {s.n_frames} dates of {s.patch} x {s.patch} px, but the model reads windows of "
                f"{n_dates} dates of {patch} x {patch} px. Fix: make them equal: data.sampling: {{n_frames, patch}} "
                f"and {where}."
            )

    def pixel_size_m(self) -> float | None:
        """The cubes' common pixel edge (m); warns and returns None when they differ by more than 1 %
        (the 15-pixel context would then cover different ground distances in different cubes)."""
        sizes = {p.name: pixel_size_m(ds) for p, ds in self.cubes.items()}
        known = [v for v in sizes.values() if v is not None]
        if not known:
            return None
        if max(known) > 1.01 * min(known):
            warnings.warn(f"training cubes at different pixel sizes {sizes} (m): a patch covers different ground "
                          "distances in them. Fix: resample them to one grid (10 m for Sentinel-2).", stacklevel=2)
            return None
        return float(np.median(known))

    def _transform(self, arr: np.ndarray, variable: str, bands: list[str]) -> np.ndarray:
        return self.norm.normalize_array(arr, bands, variable, axis=1)

    def dataset(self, split: str) -> PatchDataset:
        if split not in self.datasets:
            cls = FusionPatchDataset if self.cfg.stage == "fusion" else PatchDataset
            kwargs = dict(config=self.sampling, seed=self.cfg.seed + {"train": 0, "val": 1, "test": 2}[split],
                          transform=self._transform, redraw=split == "train", bands=self.band_selection)
            if cls is PatchDataset:
                kwargs["variable"] = self.cfg.stage
            if self.split_regions is not None:
                kwargs["regions"] = self.split_regions[split]
            try:
                self.datasets[split] = cls(self.split_paths[split], **kwargs)
            except CubeError as err:  # name the split: with a spatial holdout every split reads the same cubes
                raise CubeError(f"split {split!r}: {err}") from err
        return self.datasets[split]

    def _loader(self, split: str, sampler=None) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=self.cfg.data.batch_size, sampler=sampler,
                          num_workers=self.cfg.data.num_workers, persistent_workers=False,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        ds = self.dataset("train")
        return self._loader("train", BlockShuffleSampler(ds, seed=self.cfg.seed, num_replicas=world, rank=rank))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if self.split_paths.get("test") else "val")


# ------------------------------------------------------------------------------------ runner


PHYSICAL_UNITS = {"s2": "reflectance", "s1": "dB"}


def _physical_scale(norm: Normalization, sensors: Mapping[str, tuple[str, ...]]) -> dict[str, list[float]]:
    """Per band, the factor turning a normalised absolute error into physical units: (hi − lo) of the
    linear normalisation (reflectance for S2, dB for S1, where the scaling is linear in dB)."""
    tables = {"s2": norm.s2, "s1": norm.s1_db}
    return {s: [float(tables[s][b][1] - tables[s][b][0]) for b in bands] for s, bands in sensors.items()}


# ------------------------------------------------------------------------------ run files


#: Globals besides tensors and plain containers that a Lightning checkpoint of these tasks may hold, allowed
#: while loading it with ``weights_only=True``. Lightning 2.6 checkpoints of every stage need none (tested);
#: one a later Lightning adds goes here, never a general unpickler.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()


def _unsafe_global(err: Exception) -> str:
    """The "Unsupported global" line of torch's weights-only refusal (its other lines advise loading unsafely)."""
    lines = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line]
    return lines[0] if lines else type(err).__name__


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a Lightning checkpoint of ``run_training`` as data only (``torch.load(weights_only=True)``).

    A checkpoint carrying anything but tensors, plain containers and ``CHECKPOINT_SAFE_GLOBALS`` (a pickled
    object whose ``__reduce__`` would run a command) is refused before anything in it runs; a truncated or
    corrupt file is named. Both raise :class:`TrainError` with the fix.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise TrainError(
            f"checkpoint {path} holds more than weights and training state ({_unsafe_global(err)}); it was not "
            "loaded, as loading it could run code. Fix: delete it and train again from the start, or train into "
            "a new --out; resume only from checkpoints this program wrote"
        ) from err
    except Exception as err:  # torch reports a damaged zip archive, pickle or storage in many ways
        raise TrainError(
            f"checkpoint {path} is corrupt or truncated ({str(err).splitlines()[0] if str(err) else type(err).__name__}). "
            f"Fix: delete {path} to start this run again from the first epoch, or train into a new --out"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise TrainError(f"{path} is not a training checkpoint (no state_dict). Fix: delete it, or train into a "
                         "new --out")
    return ckpt


class _SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files, written atomically (a full disk or a kill leaves the previous
    checkpoint, never a truncated one) and read as data only (:func:`load_checkpoint`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by latentcube's checkpoint files")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


def _step_of(row: Mapping[str, Any]) -> float:
    try:
        return float(row.get("step", "nan"))
    except (TypeError, ValueError):
        return math.nan


class _RunMetrics(Logger):
    """``metrics.csv`` of a run: every value logged, one row per log call, kept across resumes and re-runs.

    Written by hand because Lightning's ``CSVLogger`` deletes the file a new run finds and appends in place:
    a re-run of a finished run lost the history, and a kill could truncate it. This logger starts from the
    rows already there when resuming, replaces those from the first step the run logs onward (work after
    the checkpoint, done again) and writes the whole file atomically.
    """

    def __init__(self, path: Path, *, resume: bool) -> None:
        super().__init__()
        self.path = path
        self.history = self._read(path) if resume and path.exists() else []
        self.rows: list[dict[str, Any]] = []
        self._dirty = False

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        good = [r for r in rows if not math.isnan(_step_of(r))]
        if len(good) < len(rows):
            warnings.warn(f"{path}: {len(rows) - len(good)} damaged row(s) without a step dropped", stacklevel=3)
        return good

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the run's config.yaml holds them

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        row["step"] = len(self.history) + len(self.rows) if step is None else step
        self.rows.append(row)
        self._dirty = True

    def merged(self) -> list[dict[str, Any]]:
        """The history before this run's first logged step, then this run's rows."""
        first = min((_step_of(r) for r in self.rows), default=math.inf)
        return [r for r in self.history if _step_of(r) < first] + self.rows

    def last_values(self) -> dict[str, float]:
        """Each metric's last logged value (not epoch and step), as ``trainer.callback_metrics`` holds them."""
        values: dict[str, float] = {}
        for row in self.merged():
            for k, v in row.items():
                if k in ("epoch", "step") or v in ("", None):
                    continue
                values[k] = float(v)
        return values

    @rank_zero_only
    def save(self) -> None:
        if not self._dirty:
            return
        rows = self.merged()
        keys = sorted({k for r in rows for k in r})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())
        self._dirty = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def build_task(cfg: TrainConfig, *, base_dir: Path | None = None) -> tuple[_StageTask, Normalization]:
    """The Lightning task of a config (fusion: loads the stage-1 model files)."""
    norm = normalization_of(cfg)
    base = base_dir or Path.cwd()
    if cfg.stage in ("s1", "s2"):
        mcfg = sensor_model_config(cfg.stage, cfg.model)
        task = AutoencoderTask(mcfg, loss_module(cfg), cfg.optim, seed=cfg.seed,
                               physical_scale=_physical_scale(norm, {cfg.stage: mcfg.band_names}))
        return task, norm
    sensors: dict[str, SensorAutoencoder] = {}
    for name in ("s1", "s2"):
        if name not in cfg.checkpoints:
            raise ConfigError(f"fusion needs checkpoints.{name}: the stage-1 {name} model file (model.pt)")
    for name, path in cfg.checkpoints.items():
        p = Path(path) if Path(path).is_absolute() else base / path
        model, meta = load_model(p)
        if meta["kind"] != "autoencoder":
            raise ConfigError(f"checkpoints.{name} ({p}) holds a {meta['kind']} model, not a sensor autoencoder")
        _check_sensor_bands(name, p, tuple(model.config.band_names))
        saved = Normalization.from_dict(meta["normalization"])
        if saved.to_dict() != norm.to_dict():
            raise ConfigError(f"checkpoints.{name} was trained with another normalisation; use the same for fusion")
        sensors[name] = model
    # Order matters for the fused token: S1 then S2 (then any further sensor).
    sensors = {k: sensors[k] for k in sorted(sensors, key=lambda n: (n != "s1", n != "s2", n))}
    fcfg = _merge(FusionConfig(), cfg.model, FusionConfig, "model (fusion)")
    task = FusionTask(sensors, fcfg, loss_module(cfg), cfg.optim, seed=cfg.seed,
                      physical_scale=_physical_scale(norm, {n: m.config.band_names for n, m in sensors.items()}))
    return task, norm


_SENSOR_BANDS = {"s1": S1_BANDS, "s2": S2_BANDS}


def _check_sensor_bands(name: str, path: Path, bands: tuple[str, ...]) -> None:
    """A stage-1 model file given for the wrong sensor (e.g. s1 and s2 swapped) is named with the fix,
    instead of failing later on a missing band (``KeyError: 'B02'``)."""
    expected = _SENSOR_BANDS.get(name)
    if expected is None or set(bands) <= set(expected):
        return
    other = next((k for k, v in _SENSOR_BANDS.items() if k != name and set(bands) <= set(v)), None)
    what = f"a {other} model" if other else "a model"
    raise ConfigError(
        f"checkpoints.{name} ({path}) is {what} of bands {', '.join(bands)}, not a {name} model "
        f"({', '.join(expected)}). Fix: set checkpoints.{name} to the model.pt of `latentcube train {name}`"
        + (" (the s1 and s2 files look swapped)" if other else ""))


def warm_start(task: _StageTask, data: CubeDataModule, cfg: TrainConfig) -> dict[str, float] | None:
    """Apply ``cfg.warm_start`` to a fresh task of any stage; returns the fit's summary (None when skipped).

    Patches are read at evenly spaced indices of the training split (epoch-0 frames), so the fit is
    deterministic and independent of the shuffling seed's draw order.
    """
    if cfg.warm_start == "none":
        return None
    if cfg.warm_start != "pca":
        raise ConfigError(f"warm_start must be 'pca' or 'none', got {cfg.warm_start!r}")
    if cfg.stage == "fusion":
        return _fusion_warm_start(task, data, cfg)
    model = task.model
    if model.encoder.patch_linear is None or model.decoder.linear is None:
        raise ConfigError("warm_start: pca needs the linear code paths: set model: {linear_patch: true} "
                          "(and keep linear_paths: true), or warm_start: none")
    x = _training_sample(data, cfg.warm_start_patches, ("x",))["x"]
    c = model.config
    loss_cfg = task.loss.config
    wcfg = replace(loss_cfg.weights, center_weight=1.0, time_distance="index")
    weights = weights_from_config(wcfg, c.n_dates, c.patch_size, c.patch_size)
    boost = centre_emphasis(loss_cfg, weights, x)
    summary = pca_warm_start(model, x, weights, centre_boost=boost)
    return {**summary, "centre_boost": boost}


def _training_sample(data: CubeDataModule, n: int, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Up to ``n`` training items at evenly spaced indices (epoch-0 frames), stacked per key."""
    dataset = data.dataset("train")
    index = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), max(n, 1))).round().astype(int))
    loader = DataLoader(torch.utils.data.Subset(dataset, index.tolist()), batch_size=256, shuffle=False)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for batch in loader:
        for k in keys:
            parts[k].append(batch[k])
    return {k: torch.cat(v) for k, v in parts.items()}


def _fusion_warm_start(task: _StageTask, data: CubeDataModule, cfg: TrainConfig) -> dict[str, float]:
    """``warm_start: pca`` for fusion: the loss-weighted linear fused code of the frozen sensor latents."""
    model = task.model
    names = model.sensor_names
    sample = _training_sample(data, cfg.warm_start_patches, (*names, "days"))
    loss_sensors = task.loss.config.sensors
    weights = {}
    for name in names:
        scfg = loss_sensors[name]
        x = sample[name]
        t, p = x.shape[1], x.shape[-1]
        w = weights_from_config(replace(scfg.weights, time_distance="index"), t, p, p)
        total, norm = _valid_weight_and_centre_norm(w, x)
        a = scfg.weight * scfg.mae_weight * w / max(total, 1e-12)
        if scfg.use_sam:  # SAM of the centre spectrum, to first order (see centre_emphasis)
            a[t // 2, p // 2, p // 2] += scfg.weight * scfg.sam_weight / max(norm, 1e-6)
        weights[name] = a
    x = {name: sample[name] for name in names}
    return fusion_warm_start(model, x, sample["days"].to(torch.float32), weights)


def centre_emphasis(loss_cfg: Any, weights: torch.Tensor, x: torch.Tensor) -> float:
    """Factor on the centre pixel's weight that makes the warm start's weighted PCA follow the loss.

    The loss is ``lambda_mae * sum_e w_e |err_e| / sum_e w_e`` (over valid elements e) plus, for S2,
    ``lambda_sam * angle(centre spectrum)`` with ``angle ~ |err_perp| / |x_centre|`` for small errors.
    Per unit of error on a centre element, the MAE term weighs ``lambda_mae * w_c / sum w`` and the
    SAM term ``lambda_sam / |x_centre|``; PCA weights proportional to these first-order coefficients
    give ``1 + (lambda_sam / lambda_mae) * sum w / (w_c * mean |x_centre|)``, with ``sum w`` over the
    valid elements of an average patch. The centre-weight setting multiplies it; SSIM is left out.
    """
    boost = float(loss_cfg.weights.center_weight)
    lambda_sam, lambda_mae = float(getattr(loss_cfg, "lambda_sam", 0.0)), float(getattr(loss_cfg, "lambda_mae", 1.0))
    if lambda_sam > 0 and lambda_mae > 0:
        total, norm = _valid_weight_and_centre_norm(weights, x)
        w_c = float(weights[x.shape[1] // 2, x.shape[-1] // 2, x.shape[-1] // 2])
        boost *= 1.0 + (lambda_sam / lambda_mae) * total / (w_c * max(norm, 1e-6))
    return boost


def _valid_weight_and_centre_norm(weights: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """For patches ``x`` (N, T, C, p, p) and weights (T, p, p): the sum of the weights over the valid
    elements of an average patch, and the mean norm of the complete centre spectra (centre date)."""
    total = float((weights[None, :, None] * torch.isfinite(x)).sum() / x.shape[0])
    centre = x[:, x.shape[1] // 2, :, x.shape[-1] // 2, x.shape[-1] // 2]
    return total, float(centre[torch.isfinite(centre).all(1)].norm(dim=1).mean())


def _precision(cfg: TrainerConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        return {k: v for key, value in d.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def _check_resumable(out: Path, cfg: TrainConfig) -> None:
    """A re-run resumes ``out``'s checkpoint only with the config it was started with (``trainer`` settings
    such as ``max_epochs`` may change: extending a run is what resuming is for). Anything else would
    resume different data, model or loss silently, or fail deep in Lightning on mismatched weights."""
    import yaml

    previous_file = out / "config.yaml"
    if not (out / "checkpoints" / "last.ckpt").exists() or not previous_file.exists():
        return
    saved = yaml.safe_load(previous_file.read_text(encoding="utf-8")) or {}
    try:  # through the dataclasses: a field added by a later version compares at its default
        saved = to_dict(from_dict(TrainConfig, saved, where=str(previous_file)))
    except ConfigError:
        pass  # a field since removed: compare as written
    previous, current = _flatten(saved), _flatten(to_dict(cfg))
    changed = sorted(k for k in previous.keys() | current.keys()
                     if not k.startswith(("trainer.", "out_dir")) and previous.get(k) != current.get(k))
    if changed:
        shown = "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"{out} holds a run started with another config ({shown}{'; ...' if len(changed) > 5 else ''}). "
            f"Fix: train into a new directory (--out), delete {out / 'checkpoints'} to start again, or restore the "
            "config to resume (only trainer settings, e.g. max_epochs, may change)."
        )


def check_data(cfg: TrainConfig, *, base_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """What a run of ``cfg`` would train on, without training (``latentcube train --check``).

    Runs the band and window checks of :func:`run_training` (same errors) and returns, per split,
    ``{"patches": n, "cubes": n, "rejected": candidates rejected, "strips": True when the splits are
    strips of the same cubes (data.spatial_split)}``.
    """
    data = CubeDataModule(cfg, normalization_of(cfg), base_dir=base_dir)
    model = build_task(cfg, base_dir=base_dir)[0].model
    data.check_bands(model_bands(model))
    data.check_window(model)
    summary = {}
    for split, paths in data.split_paths.items():
        ds = data.dataset(split)
        summary[split] = {"patches": len(ds), "cubes": len(paths), "rejected": ds.n_rejected,
                          "strips": data.split_regions is not None}
    return summary


def _tensorboard(out: Path, tcfg: TrainerConfig) -> list[TensorBoardLogger]:
    """TensorBoard's logger when the config asks for it (an optional dependency)."""
    if not tcfg.tensorboard:
        return []
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        raise ConfigError("trainer.tensorboard is true but TensorBoard is not installed. "
                          "Fix: pip install 'latentcube[tensorboard]', or set trainer.tensorboard: false.")
    return [TensorBoardLogger(out, name="tensorboard", version="")]


def run_training(cfg: TrainConfig, *, base_dir: Path | None = None, test: bool = True,
                 data: CubeDataModule | None = None) -> dict[str, Any]:
    """Train one stage; resume from ``out_dir/checkpoints/last.ckpt`` when present.

    Writes ``out_dir/metrics.csv`` (per-epoch loss parts of every epoch, kept across resumes and re-runs),
    TensorBoard logs with ``trainer.tensorboard``, ``model.pt`` (best validation ``optim.monitor``), ``config.yaml`` and
    ``test_metrics.json``, each atomically. Raises :class:`TrainError` for a checkpoint that is corrupt or
    holds more than data, and at the first non-finite loss or weight (nothing is saved then).
    Returns a summary dict.
    ``data``: a ``CubeDataModule`` of this ``cfg`` to train on (default: a new one), so a caller can
    go on using its indexed datasets afterwards (the demo scores on them); it must use the stage's
    normalisation.
    The caller's torch threads, TF32/determinism flags, random state and warning filters are restored on return.
    """
    with restored_process_state():
        return _run_training(cfg, base_dir=base_dir, test=test, data=data)


def _run_training(cfg: TrainConfig, *, base_dir: Path | None, test: bool, data: CubeDataModule | None) -> dict[str, Any]:
    import yaml

    grow_heap_in_large_steps()
    out = Path(cfg.out_dir)
    if not out.is_absolute() and base_dir is not None:
        out = Path(base_dir) / out
    cfg = replace(cfg, out_dir=str(out))
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    _check_resumable(out, cfg)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resume = last.exists()
    if resume:  # refuse a corrupt or hostile checkpoint now, not after indexing the data
        load_checkpoint(last)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    task, norm = build_task(cfg, base_dir=base_dir)
    if data is None:
        data = CubeDataModule(cfg, norm, base_dir=base_dir)
    elif data.norm.to_dict() != norm.to_dict() or data.cfg.stage != cfg.stage:
        raise ConfigError("run_training: the data module given was built for another stage or normalisation")
    data.check_bands(model_bands(task.model))
    data.check_window(task.model)
    pixel_size = data.pixel_size_m()
    patches = {split: len(data.dataset(split)) for split in ("train", "val")}
    rank_zero_info("data: " + ", ".join(f"{split} {n} patches from {len(data.split_paths[split])} cube(s)"
                                        for split, n in patches.items())
                   + (" (strips of the same cubes: data.spatial_split)" if data.split_regions is not None else ""))
    if not resume:  # a resumed run takes its weights from the checkpoint
        warm_start(task, data, cfg)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.optim.monitor, mode="min",
                                 save_top_k=1, enable_version_counter=False)
    # A second, unmonitored callback writes last.ckpt every epoch: Lightning 2.6's save_last refreshes
    # last.ckpt only when a new best is saved, which would resume from a stale epoch.
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    metrics_log = _RunMetrics(out / "metrics.csv", resume=resume)
    tcfg = cfg.trainer
    devices: Any = tcfg.devices if tcfg.devices == "auto" else int(tcfg.devices)
    trainer = L.Trainer(
        default_root_dir=out,
        accelerator=tcfg.accelerator,
        devices=devices,
        num_nodes=tcfg.num_nodes,
        strategy=tcfg.strategy,
        precision=_precision(tcfg),
        max_epochs=tcfg.max_epochs,
        max_steps=tcfg.max_steps,
        gradient_clip_val=cfg.optim.grad_clip or None,
        limit_train_batches=tcfg.limit_train_batches,
        limit_val_batches=tcfg.limit_val_batches,
        log_every_n_steps=tcfg.log_every_n_steps,
        logger=[metrics_log, *_tensorboard(out, tcfg)],
        plugins=[_SafeCheckpointIO()],
        callbacks=[checkpoint, latest, LearningRateMonitor(logging_interval="epoch")],
        deterministic=not torch.cuda.is_available() or "warn",
        enable_progress_bar=tcfg.enable_progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # BlockShuffleSampler shards by rank itself
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LightningDataModule.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen sensors, by design
        trainer.fit(task, datamodule=data, ckpt_path=last if resume else None, weights_only=True)
    summary: dict[str, Any] = {"out_dir": str(out), "epochs": trainer.current_epoch, "global_step": trainer.global_step,
                               "patches": patches}
    if trainer.global_rank != 0:
        return summary
    best_path = checkpoint.best_model_path or str(last)
    if best_path and Path(best_path).exists():
        task.load_state_dict(load_checkpoint(best_path)["state_dict"])
    summary["best_checkpoint"] = best_path
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    # A re-run of a finished run trains nothing and logs nothing: its model file keeps the run's metrics.
    metrics = metrics or metrics_log.last_values()
    summary["model"] = str(save_model(out / "model.pt", task.model, normalization=norm, config=cfg,
                                      metrics=metrics, pixel_size_m=pixel_size))
    if test:
        test_trainer = L.Trainer(accelerator=tcfg.accelerator, devices=1, precision=_precision(tcfg), logger=False,
                                 enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        metrics = test_trainer.test(task, datamodule=data, verbose=False)[0]
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["split"] = "test" if data.split_paths.get("test") else "val"
        metrics["units"] = {s: PHYSICAL_UNITS.get(s, "normalised") for s in task.physical_scale}
        atomic_write_text(out / "test_metrics.json", json.dumps(metrics, indent=2))
        summary["test_metrics"] = metrics
    return summary

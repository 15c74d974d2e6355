"""The patch data of one stage: the cubes a config names, their split, and the train/val/test datasets."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader

from latentcube.config import ConfigError, from_dict, to_dict
from latentcube.constants import model_band_selection
from latentcube.cube import CubeError, open_cube, pixel_size_m, validate_cube
from latentcube.nn import FusionModel, SensorAutoencoder
from latentcube.preprocess import Normalization
from latentcube.sampling import (
    BlockShuffleSampler,
    FusionPatchDataset,
    PatchDataset,
    SamplingConfig,
    init_worker,
)
from latentcube.splits import assign_splits, spatial_split
from latentcube.train.config import DataConfig, TrainConfig


def _cube_paths(data: DataConfig, base: Path) -> list[Path]:
    paths = [Path(p) if Path(p).is_absolute() else base / p for p in data.cubes]
    if data.cube_dir:
        d = Path(data.cube_dir) if Path(data.cube_dir).is_absolute() else base / data.cube_dir
        if not d.is_dir():
            raise ConfigError(f"data.cube_dir {d} is not a directory. Fix: point it at the folder holding the *.zarr "
                              "cubes (relative paths are read from the working directory)")
        found = sorted(d.glob("*.zarr"))
        if not found and not paths:
            raise ConfigError(f"data.cube_dir {d} holds no *.zarr cube. Fix: fetch or import cubes into it "
                              "(`latentcube fetch --plan plan.csv --out DIR`, `latentcube import`), or list them "
                              "in data.cubes")
        paths += found
    if not paths:
        raise ConfigError("no cubes: set data.cube_dir or data.cubes in the config")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"cubes not found: {missing[:3]}")
    return paths


def _spatial_splits(cubes: Mapping[Path, xr.Dataset], fractions: Mapping[str, float], axis: str,
                    patch: int) -> tuple[dict[str, list[Path]], dict[str, list[tuple[slice, slice]]]]:
    """Every cube in every split, each split with its strip of each cube (``splits.spatial_split``)."""
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
        workers = self.cfg.data.num_workers
        return DataLoader(self.dataset(split), batch_size=self.cfg.data.batch_size, sampler=sampler,
                          num_workers=workers, persistent_workers=False, pin_memory=torch.cuda.is_available(),
                          worker_init_fn=init_worker if workers else None)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        ds = self.dataset("train")
        return self._loader("train", BlockShuffleSampler(ds, seed=self.cfg.seed, num_replicas=world, rank=rank))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if self.split_paths.get("test") else "val")

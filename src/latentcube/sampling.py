"""Patch sampling (the paper's §III-B/C scheme) and torch datasets that read cubes lazily.

One module (~560 lines) on purpose: candidate enumeration, the block cache and the block-shuffling
sampler depend on each other's block layout, so splitting them would spread one layout over three files.

A *candidate* is a sequence of ``seq_len`` consecutive dates starting every ``time_stride`` dates, times a
``patch``×``patch`` window starting every ``space_stride`` pixels. Each sample draws ``n_frames`` of the
sequence's dates (sorted) with an explicit seeded generator; the centre date is the drawn frame
``n_frames // 2``. A sample is kept only if its centre pixel is valid on the centre date and the fraction
of valid values in the patch reaches ``min_valid_fraction``.

Reading: random 15×15×11 reads from compressed Zarr cost tens of milliseconds each (a whole chunk is
decompressed), so datasets read a *block* (one sequence × one spatial tile) at once, keep a few blocks in
a per-worker LRU cache, and :class:`BlockShuffleSampler` shuffles blocks and patches within a block so that
consecutive samples reuse the cached block. Datasets hold paths, not open files, so they pickle to
DataLoader workers.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from torch.utils.data import Dataset, Sampler

from latentcube.cube import CubeError, open_cube
from latentcube.preprocess import smooth_s1
from latentcube.timeutils import days_since, nearest_index

__all__ = [
    "BlockShuffleSampler",
    "Candidate",
    "FusionPatchDataset",
    "PatchDataset",
    "SamplingConfig",
    "assign_splits",
    "spatial_split",
    "candidate_origins",
    "draw_frames",
    "input_mask",
    "nearest_s1_index",
]


@dataclass(frozen=True)
class SamplingConfig:
    """How patches are cut from cubes (defaults: the paper's S2 scheme, §III-B)."""

    seq_len: int = 20
    """Consecutive dates per candidate sequence (paper: S1 40, S2 and fusion 20)."""
    time_stride: int = 17
    """Dates between the starts of consecutive sequences (paper: S1 40, S2 and fusion 17)."""
    space_stride: int = 9
    """Pixels between the origins of neighbouring patches (paper: S1 15, S2 and fusion 9)."""
    n_frames: int = 11
    """Dates drawn at random (without replacement, sorted) from each sequence (paper: 11)."""
    patch: int = 15
    """Patch edge in pixels (paper: 15)."""
    min_valid_fraction: float = 0.3
    """Smallest fraction of valid values in a kept patch (our default; the paper does not state one)."""
    n_tries: int = 8
    """Frame draws tried per candidate before it is rejected."""
    block_px: int = 128
    """Spatial tile (pixels) read at once; patches whose origin falls in a tile share one read."""
    cache_blocks: int = 4
    """Blocks kept in each worker's LRU cache."""
    max_gap_days: float = 6.0
    """Fusion only: largest |S1 − S2| date gap for a matched S1 acquisition (issue 4 default)."""
    s1_smoothing: int = 3
    """Frames of the centred rolling mean applied to S1 in linear power (paper §II: 3); 1 = none."""
    mask_pixels: float = 0.0
    """Training only: share of pixel-dates hidden (NaN) in the model's input while the target keeps them
    (a masked-autoencoder objective: the code must infer hidden values from their context); 0 = off."""
    mask_dates: float = 0.0
    """Training only: share of dates (not the centre date) hidden whole in the model's input; 0 = off."""

    def __post_init__(self) -> None:
        for name in ("mask_pixels", "mask_dates"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"sampling {name}={getattr(self, name)}: must be in [0, 1). Fix: e.g. {name}: 0.3")

    @classmethod
    def paper(cls, stage: str, **overrides: Any) -> SamplingConfig:
        """The paper's scheme for ``stage`` in {"s1", "s2", "fusion"}."""
        presets = {
            "s1": dict(seq_len=40, time_stride=40, space_stride=15),
            "s2": dict(seq_len=20, time_stride=17, space_stride=9),
            "fusion": dict(seq_len=20, time_stride=17, space_stride=9),
        }
        if stage not in presets:
            raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(presets)}")
        return cls(**{**presets[stage], **overrides})


@dataclass(frozen=True)
class Candidate:
    """One kept sample: cube index, sequence start, patch origin and the frames drawn at index time."""

    cube: int
    t0: int
    y0: int
    x0: int
    frames: tuple[int, ...]  # indices into the cube's date axis


def candidate_origins(n_time: int, height: int, width: int, cfg: SamplingConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequence starts and patch origins on the strided grid; every patch lies inside the cube.

    A cube shorter than ``seq_len`` contributes one sequence of all its dates if it has at least
    ``n_frames``; otherwise none.
    """
    if n_time >= cfg.seq_len:
        t0 = np.arange(0, n_time - cfg.seq_len + 1, cfg.time_stride)
    else:
        t0 = np.array([0]) if n_time >= cfg.n_frames else np.array([], dtype=int)
    y0 = np.arange(0, height - cfg.patch + 1, cfg.space_stride)
    x0 = np.arange(0, width - cfg.patch + 1, cfg.space_stride)
    return t0, y0, x0


def draw_frames(rng: np.random.Generator, t0: int, seq_len: int, n_frames: int) -> np.ndarray:
    """``n_frames`` sorted date indices drawn without replacement from ``t0 .. t0 + seq_len - 1``."""
    return np.sort(rng.choice(seq_len, size=n_frames, replace=False)) + t0


def input_mask(rng: np.random.Generator, n_frames: int, patch: int, cfg: SamplingConfig) -> np.ndarray:
    """Which input values to hide, ``(n_frames, patch, patch)`` bool (True = hidden, all bands).

    ``cfg.mask_dates`` of the dates other than the centre date are hidden whole (rounded down); then each
    remaining pixel-date is hidden with probability ``cfg.mask_pixels``.
    """
    hidden = rng.random((n_frames, patch, patch)) < cfg.mask_pixels
    others = np.delete(np.arange(n_frames), n_frames // 2)
    n_dates = int(cfg.mask_dates * others.size)
    if n_dates:
        hidden[rng.choice(others, size=n_dates, replace=False)] = True
    return hidden


def _accept(valid: np.ndarray, frames: np.ndarray, y0: int, x0: int, cfg: SamplingConfig) -> bool:
    """The paper's rule on a validity array ``(time, y, x)``: valid centre, enough valid context."""
    c = cfg.patch // 2
    centre = frames[len(frames) // 2]
    if not valid[centre, y0 + c, x0 + c]:
        return False
    window = valid[frames, y0 : y0 + cfg.patch, x0 : x0 + cfg.patch]
    return float(window.mean()) >= cfg.min_valid_fraction


def _region_span(region: tuple[slice, slice] | None, height: int, width: int, path: Path) -> tuple[tuple[int, int], ...]:
    """((row start, row stop), (column start, column stop)) of a region inside a ``height`` x ``width`` cube."""
    if region is None:
        return (0, height), (0, width)
    spans = []
    for sl, size, axis in zip(region, (height, width), ("rows", "columns"), strict=True):
        start, stop, step = sl.indices(size)
        if step != 1 or stop <= start:
            raise ValueError(f"region {region} of {path}: {axis} must be a non-empty step-1 slice inside 0..{size}")
        spans.append((start, stop))
    return tuple(spans)


def spatial_split(
    height: int, width: int, fractions: Mapping[str, float], *, patch: int = 15, axis: str = "x",
) -> dict[str, tuple[slice, slice]]:
    """Cut one cube into disjoint strips for ``train`` and the held-out splits (a spatial holdout).

    ``fractions`` maps ``"val"`` and/or ``"test"`` to the share of the cube's extent along ``axis``
    (``"x"`` = columns, strips from west to east: train, val, test; ``"y"`` = rows, north to south);
    train gets the rest. Strip edges are rounded to whole pixels. Patches are then drawn inside their
    strip (``PatchDataset(regions=...)``), so no pixel is in patches of two splits. For a cube too
    small to fit one ``patch``-wide strip per split, raises ``ValueError`` with the fix.

    Returns ``{split: (rows slice, columns slice)}`` in pixels.
    """
    unknown = sorted(set(fractions) - {"val", "test"})
    if unknown:
        raise ValueError(f"spatial split fractions for {unknown}: only 'val' and 'test' are held out (train gets the rest)")
    if not fractions or any(not 0 < float(f) < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise ValueError(f"spatial split fractions {dict(fractions)}: each must be in (0, 1) and together below 1 "
                         "(train gets the rest), e.g. {val: 0.2}")
    if axis not in ("x", "y"):
        raise ValueError(f"spatial split axis must be 'x' (columns) or 'y' (rows), got {axis!r}")
    extent = width if axis == "x" else height
    order = ["train", *(s for s in ("val", "test") if s in fractions)]
    shares = [1 - sum(fractions.values()), *(float(fractions[s]) for s in order[1:])]
    edges = np.rint(np.concatenate([[0], np.cumsum(shares)]) * extent).astype(int)
    edges[-1] = extent
    out = {}
    for split, a, b in zip(order, edges[:-1], edges[1:], strict=True):
        if b - a < patch:
            raise ValueError(f"spatial split {dict(fractions)} of a {height} x {width} cube along {axis}: the {split} "
                             f"strip is {b - a} px wide, less than one {patch}-px patch. Fix: "
                             + _split_fixes(fractions, extent, patch, split, (height, width), axis))
        strip = slice(int(a), int(b))
        out[split] = (slice(0, height), strip) if axis == "x" else (strip, slice(0, width))
    return out


def _split_fixes(fractions: Mapping[str, float], extent: int, patch: int, split: str, shape: tuple[int, int],
                 axis: str) -> str:
    """The ways out of a strip narrower than one patch, most direct first, as one phrase."""
    fixes = []
    need = math.ceil(100 * (patch + 0.5) / extent) / 100  # the smallest share whose rounded strip holds a patch
    raised = {s: max(float(f), need) for s, f in fractions.items()}
    if split != "train" and sum(raised.values()) <= 1 - need:
        fixes.append(f"raise the held-out fractions to at least {need:.2f} each (data.spatial_split: "
                     "{" + ", ".join(f"{s}: {f:.2f}" for s, f in raised.items()) + "})")
    elif split == "train" and len(fractions) * need <= 1 - need:
        fixes.append(f"lower the held-out fractions (together at most {1 - need:.2f}, each at least {need:.2f})")
    other, across = ("y", shape[0]) if axis == "x" else ("x", shape[1])
    if across > extent:
        fixes.append(f"split along the other axis (data.spatial_split_axis: {other}: {across} px instead of {extent})")
    fixes.append("use more cubes with cube-level splits (data.splits or data.plan)")
    return ", ".join(fixes[:-1]) + (", or " if len(fixes) > 1 else "") + fixes[-1] + "."


def nearest_s1_index(s2_times: Sequence[Any], s1_times: Sequence[Any], max_gap_days: float) -> np.ndarray:
    """For each S2 date, the index of the nearest S1 date within ``max_gap_days``, else −1
    (:func:`latentcube.timeutils.nearest_index`)."""
    return nearest_index(s1_times, s2_times, max_gap_days)


@dataclass
class _CubeMeta:
    path: Path
    times: np.ndarray
    height: int
    width: int
    s1_times: np.ndarray | None = None
    s1_match: np.ndarray | None = None  # per S2 date, index into time_s1 or −1


class PatchDataset(Dataset):
    """Patches of one sensor's variable (``"s2"`` or ``"s1"``) from a list of cubes.

    Each item is a dict: ``x`` float32 ``(n_frames, C, patch, patch)`` (NaN invalid, after ``transform``),
    ``days`` float32 ``(n_frames,)`` days since the first drawn frame, ``index`` int.

    Args:
        cubes: paths of cubes (Zarr/NetCDF).
        variable: ``"s2"`` or ``"s1"``.
        config: sampling scheme.
        seed: seed of every random draw (index building and per-epoch frame draws).
        transform: optional callable ``(array (T, C, h, w), variable, bands) -> array`` applied to each
            block, e.g. normalisation.
        redraw: draw new frames every epoch (the paper's temporal augmentation); ``set_epoch`` selects
            the epoch. Epoch 0 and ``redraw=False`` use the frames accepted at index time.
        regions: per cube, ``(rows, columns)`` slices (pixels) that every patch of that cube lies inside,
            or ``None`` for the whole cube (default: whole cubes). The strided origin grid starts at the
            region's corner. :func:`spatial_split` gives disjoint regions for train/val/test.
        bands: optional ``{sensor: band names}`` read from each cube (a model of fewer bands than the
            cubes hold); default: all of a cube's bands.
    """

    def __init__(
        self,
        cubes: Sequence[str | Path],
        *,
        variable: str = "s2",
        config: SamplingConfig = SamplingConfig(),
        seed: int = 0,
        transform: Any = None,
        redraw: bool = True,
        regions: Sequence[tuple[slice, slice] | None] | None = None,
        bands: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if variable not in ("s2", "s1"):
            raise ValueError(f"variable must be 's2' or 's1', got {variable!r}")
        if not cubes:
            raise ValueError("no cubes given: pass at least one cube path")
        if regions is not None and len(regions) != len(cubes):
            raise ValueError(f"{len(regions)} regions given for {len(cubes)} cubes; give one per cube (None = whole cube)")
        self.variable, self.config, self.seed = variable, config, int(seed)
        self.transform, self.redraw = transform, redraw
        self.bands = {sensor: [str(b) for b in names] for sensor, names in (bands or {}).items()}
        self.time_dim = "time" if variable == "s2" else "time_s1"
        self.epoch = 0
        self.meta: list[_CubeMeta] = []
        self.candidates: list[Candidate] = []
        self.n_rejected = 0
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._open: dict[int, xr.Dataset] = {}
        self._why_none: list[tuple[str, str]] = []  # per cube without a sample: what stopped it, and the fix
        for i, path in enumerate(cubes):
            self._index_cube(i, Path(path), None if regions is None else regions[i])
        if not self.candidates:
            raise CubeError(
                f"no {variable} patch passed the sampling rules in {len(cubes)} cube(s) "
                f"(centre valid, >= {config.min_valid_fraction:.0%} valid context): "
                + "; ".join(why for why, _ in self._why_none)
                + ". Fix: " + "; ".join(dict.fromkeys(fix for _, fix in self._why_none))  # each fix once, in order
                + " (`latentcube info CUBE` shows each cube's dates and valid fractions)."
            )

    # -- index ---------------------------------------------------------------------------------
    def _validity(self, ds: xr.Dataset) -> np.ndarray:
        var = ds[self.variable]
        return np.isfinite(var).all(var.dims[1]).values  # (time, y, x) bool, computed chunk-wise

    def _index_cube(self, i: int, path: Path, region: tuple[slice, slice] | None = None) -> None:
        # Kept for reading: reopening a cube (its S1 smoothing graph) is slow (benchmarks/RESULTS.md).
        ds = self._open[i] = self._open_cube(path)
        if self.variable not in ds:
            raise CubeError(f"{path} has no '{self.variable}' variable. Fix: fetch/import it or drop this cube.")
        meta = _CubeMeta(path, ds[self.time_dim].values, ds.sizes["y"], ds.sizes["x"])
        self._extend_meta(meta, ds)
        self.meta.append(meta)
        valid = self._validity(ds)
        cfg = self.config
        (ya, yb), (xa, xb) = _region_span(region, meta.height, meta.width, path)
        t0s, y0s, x0s = candidate_origins(len(meta.times), yb - ya, xb - xa, cfg)
        y0s, x0s = y0s + ya, x0s + xa
        seq_len = min(cfg.seq_len, len(meta.times))
        n_before = len(self.candidates)
        for t0 in t0s:
            for y0 in y0s:
                for x0 in x0s:
                    rng = np.random.default_rng([self.seed, i, int(t0), int(y0), int(x0)])
                    for _ in range(cfg.n_tries):
                        frames = draw_frames(rng, int(t0), seq_len, cfg.n_frames)
                        if _accept(valid, frames, int(y0), int(x0), cfg):
                            self.candidates.append(Candidate(i, int(t0), int(y0), int(x0), tuple(int(f) for f in frames)))
                            break
                    else:
                        self.n_rejected += 1
        if len(self.candidates) == n_before:
            self._why_none.append(self._why_no_sample(path, valid[:, ya:yb, xa:xb], len(t0s) * len(y0s) * len(x0s)))

    def _why_no_sample(self, path: Path, valid: np.ndarray, n_candidates: int) -> tuple[str, str]:
        """Why a cube (region) gave no sample (too few dates, too small, or all rejected), and its fix."""
        cfg, n_time, (h, w) = self.config, valid.shape[0], valid.shape[1:]
        if n_time < cfg.n_frames:
            return (f"{path.name} has {n_time} {self.variable} dates, fewer than the {cfg.n_frames} frames a sample "
                    "draws (data.sampling.n_frames)",
                    f"add dates, or give every stage model: {{n_dates: N}} and data.sampling: {{n_frames: N}} with "
                    f"N <= {n_time} (the fusion stage needs one window for all sensors)")
        if min(h, w) < cfg.patch:
            return (f"{path.name}: its {h} x {w} px region is smaller than one {cfg.patch}-px patch",
                    "use a larger cube, or a larger share of it for this split (data.spatial_split)")
        clear_dates = int((valid.mean(axis=(1, 2)) >= 0.5).sum())
        why = (f"{path.name}: all {n_candidates} candidate patches rejected; {valid.mean():.0%} of its "
               f"{self.variable} pixel-dates are valid ({clear_dates} of {n_time} dates >= 50 % valid)")
        seq_len = min(cfg.seq_len, n_time)
        clear = np.concatenate([[0], np.cumsum(valid.mean(axis=(1, 2)) >= 0.5)])
        best = int((clear[seq_len:] - clear[:-seq_len]).max())  # clear dates in the best seq_len-date window
        if best * 2 < cfg.n_frames:  # the centre (middle) frame of a sample then falls on a cloudy date
            return why, (f"this is too cloudy for {cfg.n_frames}-frame samples (at most {best} of any {seq_len} "
                         "consecutive dates are >= 50 % valid, and a sample's middle frame must be clear): add "
                         "clearer dates (a longer period) or other cubes; a lower data.sampling.min_valid_fraction "
                         "does not help here")
        return why, (f"lower data.sampling.min_valid_fraction (now {cfg.min_valid_fraction:g}), raise data.sampling."
                     "seq_len so that windows span more clear dates, or add cubes or dates")

    def _extend_meta(self, meta: _CubeMeta, ds: xr.Dataset) -> None:
        """Hook for subclasses that need more per-cube metadata."""

    # -- reading --------------------------------------------------------------------------------
    def block_key(self, index: int) -> tuple[int, int, int, int]:
        """The block an item is read from: (cube, sequence start, tile row, tile column)."""
        c = self.candidates[index]
        b = self.config.block_px
        return (c.cube, c.t0, c.y0 // b, c.x0 // b)

    def _open_cube(self, path: Path) -> xr.Dataset:
        ds = open_cube(path)
        for sensor, names in self.bands.items():  # only the model's bands are read (lazy selection by name)
            if sensor in ds:
                ds = ds.sel({{"s2": "band", "s1": "band_s1"}[sensor]: names})
        # Smooth only when items carry S1: for S2 alone, building the rolling-mean graph is wasted.
        if "s1" in self._item_variables().values() and "s1" in ds and self.config.s1_smoothing > 1:
            ds = smooth_s1(ds, window=self.config.s1_smoothing)  # lazy; per orbit direction when recorded
        return ds

    def _dataset(self, cube: int) -> xr.Dataset:
        if cube not in self._open:
            self._open[cube] = self._open_cube(self.meta[cube].path)
        return self._open[cube]

    def _block_bounds(self, key: tuple[int, int, int, int]) -> tuple[slice, slice, slice]:
        cube, t0, ty, tx = key
        meta, cfg = self.meta[cube], self.config
        b, halo = cfg.block_px, cfg.patch - 1
        ys = slice(ty * b, min(ty * b + b + halo, meta.height))
        xs = slice(tx * b, min(tx * b + b + halo, meta.width))
        ts = slice(t0, min(t0 + cfg.seq_len, len(meta.times)))
        return ts, ys, xs

    def _read_block(self, key: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
        ts, ys, xs = self._block_bounds(key)
        ds = self._dataset(key[0])
        da = ds[self.variable]
        arr = da.isel({self.time_dim: ts, "y": ys, "x": xs}).values.astype("float32", copy=False)
        if self.transform is not None:
            arr = self.transform(arr, self.variable, [str(b) for b in da[da.dims[1]].values])
        return {self.variable: arr}

    def _block(self, key: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        block = self._read_block(key)
        self._cache[key] = block
        while len(self._cache) > self.config.cache_blocks:
            self._cache.popitem(last=False)
        return block

    def __getstate__(self) -> dict[str, Any]:
        # Open datasets and cached blocks stay in the parent; each worker opens its own.
        state = self.__dict__.copy()
        state["_open"], state["_cache"] = {}, OrderedDict()
        return state

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose frame draws ``__getitem__`` returns (deterministic per seed)."""
        self.epoch = int(epoch)

    def frames_for(self, index: int) -> np.ndarray:
        """The frames of item ``index`` in the current epoch (redrawn, falling back to index-time frames)."""
        c = self.candidates[index]
        if not self.redraw or self.epoch == 0:
            return np.asarray(c.frames)
        cfg = self.config
        seq_len = min(cfg.seq_len, len(self.meta[c.cube].times))
        rng = np.random.default_rng([self.seed, 1_000_003, self.epoch, index])
        block = self._block(self.block_key(index))[self.variable]
        ts, ys, xs = self._block_bounds(self.block_key(index))
        valid = np.isfinite(block).all(axis=1)  # (t, y, x) of the block
        for _ in range(cfg.n_tries):
            frames = draw_frames(rng, c.t0, seq_len, cfg.n_frames)
            if _accept(valid, frames - ts.start, c.y0 - ys.start, c.x0 - xs.start, cfg):
                return frames
        return np.asarray(c.frames)

    def __len__(self) -> int:
        return len(self.candidates)

    def _cut(self, arr: np.ndarray, frames: np.ndarray, key: tuple, c: Candidate) -> np.ndarray:
        ts, ys, xs = self._block_bounds(key)
        p = self.config.patch
        return arr[frames - ts.start, :, c.y0 - ys.start : c.y0 - ys.start + p, c.x0 - xs.start : c.x0 - xs.start + p]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c = self.candidates[index]
        key = self.block_key(index)
        frames = self.frames_for(index)
        block = self._block(key)
        days = days_since(self.meta[c.cube].times[frames])  # float64; a reference is subtracted before float32
        item = {name: torch.from_numpy(np.ascontiguousarray(self._cut(block[var], frames, key, c)))
                for name, var in self._item_variables().items()}
        item["days"] = torch.from_numpy((days - days[0]).astype("float32"))
        item["index"] = torch.tensor(index)
        if self.redraw and (self.config.mask_pixels > 0 or self.config.mask_dates > 0):
            hidden = torch.from_numpy(input_mask(np.random.default_rng([self.seed, 2_000_003, self.epoch, index]),
                                                 len(frames), self.config.patch, self.config))
            for name in self._item_variables():
                item[f"{name}_in"] = item[name].masked_fill(hidden[:, None], float("nan"))
        return item

    def _item_variables(self) -> dict[str, str]:
        """Item key -> block variable cut into it."""
        return {"x": self.variable}


class FusionPatchDataset(PatchDataset):
    """S2 patches with S1 matched to the S2 dates (nearest acquisition within ``max_gap_days``, else NaN).

    Items: ``s2`` ``(n_frames, C2, p, p)``, ``s1`` ``(n_frames, C1, p, p)`` on the same dates, ``days``,
    ``index``. Acceptance rules apply to S2 (the fused embedding lives on the S2 date axis).
    """

    def __init__(self, cubes: Sequence[str | Path], **kwargs: Any) -> None:
        kwargs.setdefault("config", SamplingConfig.paper("fusion"))
        super().__init__(cubes, variable="s2", **kwargs)

    def _extend_meta(self, meta: _CubeMeta, ds: xr.Dataset) -> None:
        if "s1" not in ds:
            raise CubeError(f"{meta.path} has no 's1'; fusion needs both sensors. Fix: fetch/import S1 for it.")
        meta.s1_times = ds["time_s1"].values
        meta.s1_match = nearest_s1_index(meta.times, meta.s1_times, self.config.max_gap_days)

    def _read_block(self, key: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
        block = super()._read_block(key)
        ts, ys, xs = self._block_bounds(key)
        meta = self.meta[key[0]]
        match = meta.s1_match[ts]
        s1 = np.full((len(match), self._dataset(key[0]).sizes["band_s1"], *block["s2"].shape[2:]), np.nan, "float32")
        have = np.flatnonzero(match >= 0)
        if have.size:
            src = self._dataset(key[0])["s1"].isel(time_s1=np.unique(match[have]), y=ys, x=xs).values
            lookup = {int(j): k for k, j in enumerate(np.unique(match[have]))}
            s1[have] = src[[lookup[int(j)] for j in match[have]]]
            if self.transform is not None:
                s1 = self.transform(s1, "s1", [str(b) for b in self._dataset(key[0])["band_s1"].values])
        block["s1"] = s1
        return block

    def _item_variables(self) -> dict[str, str]:
        return {"s2": "s2", "s1": "s1"}


class BlockShuffleSampler(Sampler[int]):
    """Random order that keeps items of one block together: blocks shuffled, items shuffled inside.

    Deterministic for a (seed, epoch); call :meth:`set_epoch` each epoch (Lightning does for samplers
    that define it). With ``num_replicas > 1`` (DDP) each rank takes every ``num_replicas``-th block and
    shorter ranks are padded so that all ranks yield the same number of items.
    """

    def __init__(self, dataset: PatchDataset, *, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0
        self.num_replicas, self.rank = num_replicas, rank
        groups: dict[tuple, list[int]] = {}
        for i in range(len(dataset)):
            groups.setdefault(dataset.block_key(i), []).append(i)
        self.groups = list(groups.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def _rank_lists(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.groups))
        per_rank: list[list[int]] = [[] for _ in range(self.num_replicas)]
        for j, g in enumerate(order):
            per_rank[j % self.num_replicas].extend(self.groups[g][k] for k in rng.permutation(len(self.groups[g])))
        # Every rank must run the same number of steps or DDP's gradient all-reduce deadlocks: pad the
        # shorter ranks by cycling their own items (as torch's DistributedSampler pads).
        target = max(len(r) for r in per_rank)
        for r in per_rank:
            if r and len(r) < target:
                r.extend(r[k % len(r)] for k in range(target - len(r)))
        return per_rank

    def __iter__(self) -> Iterator[int]:
        return iter(self._rank_lists()[self.rank])

    def __len__(self) -> int:
        return len(self._rank_lists()[self.rank])


def assign_splits(
    cubes: Sequence[str | Path],
    *,
    plan: pd.DataFrame | str | Path | None = None,
    splits: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[Path]]:
    """Group cube paths by split, from a site plan (``cube_id`` → ``split``) or explicit name lists.

    A cube's id is its file stem (``site_0001_p1.zarr`` → ``site_0001_p1``). Raises ``ValueError`` when a
    cube is in two splits or in none.
    """
    paths = [Path(c) for c in cubes]
    ids = {p.stem if p.suffix in (".zarr", ".nc") else p.name: p for p in paths}
    if (plan is None) == (splits is None):
        raise ValueError("give exactly one of plan= (a site plan with cube_id and split) or splits=")
    if plan is not None:
        table = pd.read_csv(plan) if isinstance(plan, str | Path) else plan
        missing_cols = {"cube_id", "split"} - set(table.columns)
        if missing_cols:
            raise ValueError(f"site plan lacks columns {sorted(missing_cols)}; it needs cube_id and split")
        doubled = table.groupby("cube_id")["split"].nunique()
        if (doubled > 1).any():
            raise ValueError(f"cubes in two splits in the plan: {list(doubled[doubled > 1].index)[:5]}")
        lookup = dict(zip(table["cube_id"].astype(str), table["split"].astype(str), strict=True))
    else:
        lookup = {}
        for split, names in splits.items():
            for name in names:
                name = Path(name).stem if Path(name).suffix in (".zarr", ".nc") else str(name)
                if name in lookup and lookup[name] != split:
                    raise ValueError(f"cube {name!r} is in two splits: {lookup[name]!r} and {split!r}. Fix: put each "
                                     "cube in one split; to hold out part of one cube, use a spatial split instead")
                lookup[name] = split
    out: dict[str, list[Path]] = {}
    unassigned = [cid for cid in ids if cid not in lookup]
    if unassigned:
        raise ValueError(f"cubes without a split: {unassigned[:5]}. Fix: add them to the plan or the split lists.")
    for cid, path in ids.items():
        out.setdefault(lookup[cid], []).append(path)
    return out

"""Patch sampling (the paper's §III-B/C scheme) and torch datasets that read cubes lazily.

One module on purpose: candidate enumeration, the block cache and the block-shuffling sampler depend on
each other's block layout, so splitting them would spread one layout over three files. Which cubes, or
which strips of a cube, each split draws from is :mod:`latentcube.splits`.

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

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset, Sampler, get_worker_info

from latentcube.cube import CubeError, open_cube
from latentcube.preprocess import smooth_s1
from latentcube.timeutils import days_since, nearest_index

__all__ = [
    "BlockShuffleSampler",
    "init_worker",
    "Candidate",
    "FusionPatchDataset",
    "PatchDataset",
    "SamplingConfig",
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


def init_worker(_worker_id: int) -> None:
    """``DataLoader(worker_init_fn=init_worker)`` for datasets of this module with ``num_workers >= 1``.

    Workers are forked from a process that has read the cubes through Dask: the pool threads of Dask's
    threaded scheduler do not survive the fork, so a read in the worker would wait for them forever. Each
    worker therefore reads synchronously (its own process: the parallelism is the workers) and opens the
    cubes itself instead of using the parent's open datasets and cached blocks.
    """
    import dask

    dask.config.set(scheduler="synchronous")
    info = get_worker_info()
    if info is not None and isinstance(info.dataset, PatchDataset):
        info.dataset._open, info.dataset._cache = {}, OrderedDict()


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

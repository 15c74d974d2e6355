"""The plan of an embedding run: block grid, worker memory and count, the checks of cube, model and
options, and the small picklable ``_Plan`` every block task receives."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from latentcube.constants import model_band_selection
from latentcube.cube import CubeError, pixel_size_m
from latentcube.errors import LatentcubeError
from latentcube.files import file_sha256  # re-exported by latentcube.embed

log = logging.getLogger("latentcube.embed")


#: Smallest block edge: every block also reads a halo of context (7 px for 15-px patches) on each side,
#: so it reads (b + 14)^2 pixels for b^2 outputs: 3.5x at 16 px, 32x at 3 px (each read also pays a
#: block's fixed costs). 16 is the smallest edge near one patch (15) that is a power of two.
MIN_BLOCK_PX = 16
#: Default spatial block edge in pixels: the unit of parallelism, of resumption and of the Zarr chunks.
#: Memory per block grows with dates x block_px^2 (docs/embed.md), not with the cube size.
DEFAULT_BLOCK_PX = 256
#: Pixel-dates per ``encode_scene`` tile chosen by ``tile="auto"`` (memory of the spatial stage, see auto_tile).
TILE_PIXEL_DATES = 800_000

#: Peak memory of one CPU worker process, modelled as a fixed part (torch, the model, Dask, the encoder's
#: tile at ``tile="auto"``, allocator retention) plus bytes per pixel-date of the block with its halo
#: (inputs, their reads and the outputs). Fitted just above the largest worker processes measured by
#: ``bench_embed.py`` (benchmarks/RESULTS.md).
WORKER_BASE_BYTES = 1024**3
WORKER_BYTES_PER_PIXEL_DATE = 100
#: Share of the available memory the default LocalCluster plans to fill with its workers.
MEMORY_FRACTION = 0.8
#: Cores per default CPU worker (its torch threads): one 2-thread process is as fast as two 1-thread ones
#: and holds one copy of torch, the model and the heap instead of two (benchmarks/RESULTS.md).
CORES_PER_WORKER = 2

#: Training defaults used when a checkpoint records no sampling config (latentcube.sampling.SamplingConfig).
DEFAULT_MAX_GAP_DAYS = 6.0
DEFAULT_S1_SMOOTHING = 3
#: Storage types of ``embedding`` (docs/embed.md#storage-types-and-their-error).
DTYPES = ("float32", "float16", "int8")

class EmbedError(LatentcubeError, ValueError):
    """The cube, the model file or the options cannot produce an embedding cube; the message says why."""


# ------------------------------------------------------------------------------------------ blocks


def block_grid(height: int, width: int, block_px: int) -> list[tuple[int, int, slice, slice]]:
    """Blocks covering a ``height`` x ``width`` grid: ``(iy, ix, y-slice, x-slice)``, row-major.

    Blocks are ``block_px`` pixels square except along the bottom and right edges, where they are cut
    to the grid; block (iy, ix) starts at pixel (iy * block_px, ix * block_px), so blocks coincide
    with the output's Zarr chunks and parallel writers never share a chunk.
    """
    if block_px < 1:
        raise ValueError(f"block_px must be a positive number of pixels, got {block_px}")
    if height < 1 or width < 1:
        raise ValueError(f"empty grid {height} x {width}")
    return [
        (iy, ix, slice(y0, min(y0 + block_px, height)), slice(x0, min(x0 + block_px, width)))
        for iy, y0 in enumerate(range(0, height, block_px))
        for ix, x0 in enumerate(range(0, width, block_px))
    ]


def auto_tile(n_dates: int, block_px: int, halo: int = 7) -> int:
    """Spatial tile for ``encode_scene``: the encoder's spatial stage runs all dates of a tile at once on
    a (tile + 4 * halo)^2 map, so its memory grows with dates x (tile + 4 halo)^2; keep that near
    ``TILE_PIXEL_DATES`` (peak memory per tile size: benchmarks/RESULTS.md)."""
    side = int(np.sqrt(TILE_PIXEL_DATES / max(n_dates, 1))) - 4 * halo
    return int(min(max(32, side // 16 * 16), block_px + 2 * halo))


def worker_memory_estimate(n_dates: int, block_px: int, halo: int = 7) -> int:
    """Estimated peak bytes of one CPU worker embedding ``block_px`` blocks of ``n_dates`` dates
    (default models, ``tile="auto"``; see ``WORKER_BASE_BYTES``)."""
    return int(WORKER_BASE_BYTES + WORKER_BYTES_PER_PIXEL_DATE * (block_px + 2 * halo) ** 2 * n_dates)


def default_workers(cpu: int, n_blocks: int, per_worker_bytes: int, available_bytes: int) -> int:
    """Default workers on CPU: one per ``CORES_PER_WORKER`` cores and at most one per block, no more than
    fit in ``MEMORY_FRACTION`` of the available memory (at least one). ``embed_cube`` runs a single
    default worker in the calling process.

    Also sets how Dask's memory limit is shared: each worker's limit is the machine's memory over the
    workers, and a worker above 95 % of it is restarted by its nanny: too many workers would have every
    block killed and retried (CHANGELOG.md, 0.1.0).
    """
    by_memory = int(MEMORY_FRACTION * available_bytes // max(per_worker_bytes, 1))
    return max(1, min(cpu // CORES_PER_WORKER, n_blocks, by_memory))


def _warn_if_short_of_memory(per_worker: int, block_px: int, n_dates: int) -> None:
    """Warn (with the fix) when even one worker's estimated peak exceeds the memory available here."""
    import psutil  # a dependency of distributed

    available = psutil.virtual_memory().available
    if per_worker > available:
        warnings.warn(
            f"embedding {block_px}-px blocks of {n_dates} dates needs ~{per_worker / 1024**3:.1f} GiB per worker, "
            f"{available / 1024**3:.1f} GiB are available. Fix: a smaller block (--block-px {max(32, block_px // 2)}).",
            stacklevel=3,
        )


def feature_names(sensors: Sequence[str], dims: dict[str, int]) -> list[str]:
    """``fused_0..6``, ``s1_0..1``, ``s2_0..8``... for the requested embeddings in order."""
    return [f"{s}_{i}" for s in sensors for i in range(dims[s])]



# ------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs to embed one block (small and picklable: paths, not arrays)."""

    checkpoint: str
    sha256: str
    out: str
    kind: str  # "fusion" | "autoencoder"
    sensors: tuple[str, ...]  # requested embeddings, e.g. ("fused", "s1", "s2")
    inputs: tuple[str, ...]  # cube variables the model reads ("s2"; "s1"; or both)
    time_var: str  # the variable whose date axis the output follows ("s2", or "s1" for an S1 autoencoder)
    on_s2_dates: bool  # S1 matched to the S2 dates (fusion) rather than on its own axis
    dtype: str
    halo: int
    tile: int | None
    pixel_chunk: int
    device: str | None
    torch_threads: int | None
    max_gap_days: float
    s1_smoothing: int
    quality: bool = False
    quality_sensors: tuple[str, ...] = ()  # sensors whose reconstruction error is written (quality_<s>)
    n_dates: int = 11  # the model's window length (dates per embedding)
    # (sensor, the model's bands) where the cube has more bands than the model reads: selected per block
    band_selection: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _device(plan: _Plan) -> str:
    import torch

    return plan.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _check_device(device: str | None) -> None:
    """Refuse a device embed cannot run on, before any model is loaded: None (CUDA when available, else
    the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise EmbedError(f"device={device!r} is not a device embed can run on (cpu, cuda or cuda:N). Fix: --device "
                         "cpu, --device cuda for an NVIDIA GPU, or omit --device (CUDA when available, else the CPU).")
    if kind == "cuda" and not torch.cuda.is_available():
        raise EmbedError(f"device={device!r} but no CUDA device is available here. Fix: omit device to use the CPU.")


def _sampling_setting(meta: dict[str, Any], key: str, default: float) -> float:
    """A sampling option the model was trained with (recorded in the checkpoint config), else the default."""
    cfg = meta.get("config") or {}
    sampling = ((cfg.get("data") or {}).get("sampling")) or {}
    return type(default)(sampling.get(key, default))


def _resolve_sensors(kind: str, model: Any, sensors: str | Sequence[str] | None) -> tuple[str, ...]:
    if kind == "autoencoder":
        own = model.config.sensor
        wanted = (own,) if sensors is None else ((sensors,) if isinstance(sensors, str) else tuple(sensors))
        if wanted != (own,):
            raise EmbedError(
                f"an autoencoder model file gives only its own sensor's embedding ({own!r}); got sensors={list(wanted)}. "
                "Fix: omit --sensors, or use a fusion model for 'fused' and several sensors."
            )
        return wanted
    available = ("fused", *model.sensor_names)
    wanted = ("fused",) if sensors is None else ((sensors,) if isinstance(sensors, str) else tuple(sensors))
    bad = [s for s in wanted if s not in available]
    if bad or not wanted or len(set(wanted)) != len(wanted):
        raise EmbedError(f"sensors={list(wanted)}: choose distinct names among {list(available)} for this fusion model.")
    return wanted


def _check_cube(ds: xr.Dataset, kind: str, model: Any, meta: dict[str, Any],
                inputs: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Band order, S1 presence and series length, with the fix in every message. Returns the band
    selections to apply: (sensor, the model's bands) where the cube holds them all and more."""
    band_dims = {"s2": "band", "s1": "band_s1"}
    selection = []
    for sensor in inputs:
        if sensor not in ds:
            what = "a fusion model needs Sentinel-1 and Sentinel-2" if kind == "fusion" else f"this {sensor} model needs it"
            raise CubeError(f"the cube has no '{sensor}' variable: {what}. Fix: fetch or import {sensor.upper()} into the cube.")
        expected = (meta.get("band_order") or {}).get(sensor)
        if expected is None:
            raise EmbedError(f"the model file records no band order for {sensor!r}; re-export it with latentcube.nn.model_file.save_model.")
        actual = [str(b) for b in ds[band_dims[sensor]].values]
        try:
            chosen = model_band_selection(actual, expected, what=f"{sensor} bands of the cube vs the model",
                                          dim=band_dims[sensor])
        except ValueError as err:
            raise EmbedError(str(err)) from err
        if chosen is not None:  # a model of fewer bands (e.g. 4 of the 10) reads its own from a fuller cube
            log.info("%s: the model reads %s; the cube's other bands %s are not used", sensor, list(chosen),
                     [b for b in actual if b not in chosen])
            selection.append((sensor, chosen))
    trained, here = meta.get("pixel_size_m"), pixel_size_m(ds)
    if trained and here and abs(here - trained) > 0.01 * trained:
        p = model.patch_size if kind == "fusion" else model.config.patch_size
        warnings.warn(
            f"the model was trained on {trained:g} m pixels and the cube has {here:g} m pixels: its {p} x {p}-pixel "
            f"context covers {p * here:g} m instead of {p * trained:g} m, so the embeddings are not those of the "
            f"training data. Fix: resample the cube to {trained:g} m.", stacklevel=4,
        )
    time_dim = "time" if kind == "fusion" or inputs == ("s2",) else "time_s1"
    n_dates = model.n_dates if kind == "fusion" else model.config.n_dates
    if ds.sizes[time_dim] < n_dates:
        raise EmbedError(
            f"the cube has {ds.sizes[time_dim]} dates on '{time_dim}'; the encoder's windows need at least {n_dates}. "
            "Fix: embed a longer period."
        )
    return tuple(selection)



def _make_plan(ds: xr.Dataset, checkpoint: Path, model: Any, meta: dict[str, Any], *, sensors: str | Sequence[str] | None,
               out: Path, dtype: str, quality: bool, tile: int | str | None, pixel_chunk: int, device: str | None,
               block_px: int) -> tuple[_Plan, list[str], np.ndarray]:
    """(plan, feature names, output dates) for embedding ``ds`` with ``model``; checks the cube and device."""
    kind = meta["kind"]
    chosen = _resolve_sensors(kind, model, sensors)
    if kind == "fusion":
        inputs, time_var, on_s2 = tuple(model.sensor_names), "s2", True
        if set(inputs) - {"s1", "s2"}:
            raise EmbedError(f"fusion over sensors {list(inputs)}: only s1 and s2 cubes are supported.")
        dims = {"fused": model.latent_dim, **{n: m.latent_dim for n, m in model.sensors.items()}}
        halo, n_dates = model.patch_size // 2, model.n_dates
    else:
        own = model.config.sensor
        if own not in ("s1", "s2"):
            raise EmbedError(f"autoencoder for sensor {own!r}: only s1 and s2 cubes are supported.")
        inputs, time_var, on_s2 = (own,), own, False
        dims = {own: model.latent_dim}
        halo, n_dates = model.config.patch_size // 2, model.config.n_dates
    band_selection = _check_cube(ds, kind, model, meta, inputs)
    _check_device(device)
    plan = _Plan(
        checkpoint=str(checkpoint.resolve()), sha256=file_sha256(checkpoint), out=str(out.resolve()), kind=kind,
        sensors=chosen, inputs=inputs, time_var=time_var, on_s2_dates=on_s2, dtype=dtype, halo=halo,
        tile=tile, pixel_chunk=pixel_chunk, device=device, torch_threads=None,
        max_gap_days=_sampling_setting(meta, "max_gap_days", DEFAULT_MAX_GAP_DAYS),
        s1_smoothing=int(_sampling_setting(meta, "s1_smoothing", DEFAULT_S1_SMOOTHING)),
        quality=bool(quality), quality_sensors=tuple(s for s in ("s2", "s1") if s in inputs) if quality else (),
        band_selection=band_selection,
        n_dates=n_dates,
    )
    times = ds["time" if time_var == "s2" else "time_s1"].values
    if tile == "auto":
        plan = replace(plan, tile=auto_tile(len(times), block_px, halo))
    return plan, feature_names(chosen, dims), times

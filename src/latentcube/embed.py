"""Dense embedding cubes: every pixel and every date of a cube through a trained encoder, out of core.

``embed_cube(cube, checkpoint, out)`` reads a cube (docs/data-model.md) block by block, preprocesses it
exactly as training does (checkpoint normalisation, S1 three-frame smoothing in linear power, S1 matched
to the S2 dates), runs the dense-exact encoder (``encode_scene``, docs/method.md) on each block plus a
7-pixel halo of real context, and writes ``embedding`` ``(time, feature, y, x)`` to a Zarr store
(format 2). The store is created as a template first; each block then writes its own region and, last,
an atomic marker ``<out>/.blocks/<iy>_<ix>.done``. A re-run skips blocks that have a marker, so a killed
run resumes where it stopped and never counts a half-written block as done. Blocks run in parallel
through Dask (a ``distributed.LocalCluster`` by default, any scheduler address, or in-process).
See docs/embed.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time as _time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube import __version__
from latentcube.constants import DEFAULT_PIXEL_CHUNK, EMBEDDING_DIMS, model_band_selection
from latentcube.cube import CubeError, cube_crs, open_cube, pixel_size_m, set_crs, validate_cube
from latentcube.errors import LatentcubeError
from latentcube.heap import release_free_memory

__all__ = [
    "DEFAULT_BLOCK_PX",
    "EmbedError",
    "auto_tile",
    "block_grid",
    "default_workers",
    "embed_cube",
    "embed_pixels",
    "feature_names",
    "file_sha256",
    "open_embedding",
    "quantize_int8",
    "reconstruction_error",
    "worker_memory_estimate",
]

log = logging.getLogger(__name__)

#: Default spatial block edge in pixels: the unit of parallelism, of resumption and of the Zarr chunks.
#: Memory per block grows with dates x block_px^2 (docs/embed.md), not with the cube size.
DEFAULT_BLOCK_PX = 256
#: Pixel-dates per ``encode_scene`` tile chosen by ``tile="auto"`` (memory of the spatial stage, see auto_tile).
TILE_PIXEL_DATES = 800_000
#: Largest number of dates in one storage chunk (as for cubes: serves map and time-series reads).
MAX_TIME_CHUNK = 64
#: Peak memory of one CPU worker process, modelled as a fixed part (torch, the model, Dask, the encoder's
#: tile at ``tile="auto"``, allocator retention) plus bytes per pixel-date of the block with its halo
#: (inputs, their reads and the outputs). Fitted just above the measured largest processes of
#: ``bench_embed.py`` (docs/embed.md#memory): block 256 x 73 dates 1.43 GiB, block 128 1.06-1.11 GiB.
WORKER_BASE_BYTES = 1024**3
WORKER_BYTES_PER_PIXEL_DATE = 100
#: Share of the available memory the default LocalCluster plans to fill with its workers.
MEMORY_FRACTION = 0.8
#: Cores per default CPU worker (its torch threads). On 2 cores one worker of 2 threads embedded
#: 512^2 x 73 as fast as two of 1 or faster (46.9k against 46.3k pixel-dates/s back to back; 55.5k
#: against 49.4k the night before) and holds one copy of the model, the libraries and the heap instead
#: of two (1.8 against 3.1 GiB); docs/embed.md, "How many workers".
CORES_PER_WORKER = 2
#: Directory (inside the output store) holding one marker file per finished block.
MARKER_DIR = ".blocks"
#: Run signature written after the template; its presence means the template is complete.
TEMPLATE_FILE = "template.json"
#: geoemb Zarr convention (geo-embeddings/embeddings-zarr-convention v1), whose attributes we write.
GEOEMB_CONVENTION = {
    "schema_url": "https://raw.githubusercontent.com/geo-embeddings/embeddings-zarr-convention/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/geo-embeddings/embeddings-zarr-convention/blob/v1/README.md",
    "uuid": "61c12cc5-0e28-4056-999a-480cf3fb7e4c",
    "name": "geoemb:",
    "description": "Geoembeddings convention for geospatial embedding arrays with model provenance",
}
SOURCE_DATA = {
    "s1": "https://sentinel.esa.int/web/sentinel/missions/sentinel-1",
    "s2": "https://sentinel.esa.int/web/sentinel/missions/sentinel-2",
}
#: Training defaults used when a checkpoint records no sampling config (latentcube.sampling.SamplingConfig).
DEFAULT_MAX_GAP_DAYS = 6.0
DEFAULT_S1_SMOOTHING = 3
#: Storage types of ``embedding`` (docs/embed.md#storage-types-and-their-error).
DTYPES = ("float32", "float16", "int8")
#: int8 storage: the code of an invalid pixel-date (values use -127..127, symmetric around 0).
INT8_INVALID = -128
#: Target pixel-dates per decoder call of the quality layer (~15 kB each in the up-sampling path).
QUALITY_CHUNK = 2048
#: Values normalised per call while preprocessing a block (bounds its float64 temporaries to ~16 MB).
NORMALIZE_CHUNK_VALUES = 2_000_000


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
    ``TILE_PIXEL_DATES`` (measured ~1 GB peak at 30 dates and tile 128 with the default models)."""
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
    workers, and a worker above 95 % of it is restarted by its nanny. One per core on 16 GB and 8 cores
    gave 2 GB each, less than one 256-px block needed then (~2.3 GiB): every block was killed and retried.
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


def _marker(out: Path, iy: int, ix: int) -> Path:
    return out / MARKER_DIR / f"{iy}_{ix}.done"


def _write_marker(out: Path, iy: int, ix: int, info: dict[str, Any]) -> None:
    """Write the block's marker atomically: a reader sees no file or the complete file, never a part."""
    path = _marker(out, iy, ix)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, path)


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


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file (the model-file identity in embedding stores and GPP caches), read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


# --------------------------------------------------------------------------------- worker side

_MODELS: dict[tuple[str, str, str], tuple[Any, dict[str, Any]]] = {}
_CUBES: dict[str, xr.Dataset] = {}


class _InMemory:
    """A Dataset handed to workers as one graph literal (shipped once per worker), not per task."""

    def __init__(self, ds: xr.Dataset) -> None:
        self.ds = ds


def _device(plan: _Plan) -> str:
    import torch

    return plan.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _model(plan: _Plan) -> tuple[Any, dict[str, Any]]:
    """The model, loaded once per worker process and device (keyed by the file's hash)."""
    import torch

    from latentcube.heap import reuse_large_blocks
    from latentcube.nn.model_file import load_model

    reuse_large_blocks()  # in this (worker) process: ~1.3x faster dense encoding (latentcube.heap)
    if plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
    key = (plan.checkpoint, plan.sha256, _device(plan))
    if key[2].startswith("cuda"):
        # Exact float32 (no TF32 convolutions/matmuls): embeddings must not depend on the device.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if key not in _MODELS:
        model, meta = load_model(plan.checkpoint, map_location=key[2])
        _MODELS[key] = (model.to(key[2]).eval(), meta)
    return _MODELS[key]


def _cube(source: str | _InMemory) -> xr.Dataset:
    if isinstance(source, _InMemory):
        return source.ds
    if source not in _CUBES:
        _CUBES[source] = open_cube(source)
    return _CUBES[source]


def _days(times: np.ndarray) -> np.ndarray:
    """Float days since the first date (float64): only differences enter the models."""
    t = pd.DatetimeIndex(times).values.astype("datetime64[s]").astype("int64")
    return (t - t[0]) / 86400.0


def _block_inputs(ds: xr.Dataset, plan: _Plan, meta: dict[str, Any], ys: slice, xs: slice) -> dict[str, np.ndarray]:
    """Normalised model inputs ``{sensor: (T, C, h, w)}`` on the output's date axis, NaN = invalid.

    The same steps as the training datasets (latentcube.sampling): S1 smoothed over consecutive
    acquisitions in linear power (per orbit direction when recorded), matched to the S2 dates for
    fusion (nearest within ``max_gap_days``, else NaN), then the checkpoint's normalisation.
    """
    import dask

    from latentcube.preprocess import Normalization, smooth_s1
    from latentcube.sampling import nearest_s1_index

    norm = Normalization.from_dict(meta["normalization"])
    out: dict[str, np.ndarray] = {}
    # Reads run in this task: inside a distributed worker the default scheduler would submit sub-tasks.
    with dask.config.set(scheduler="synchronous"):
        if "s2" in plan.inputs:
            s2 = ds["s2"].isel(y=ys, x=xs).values.astype("float32", copy=False)
            out["s2"] = _normalize_in_place(norm, s2, [str(b) for b in ds["band"].values], "s2")
        if "s1" in plan.inputs:
            sub = ds[["s1"]].isel(y=ys, x=xs)  # smoothing runs along time only: per block == whole cube
            if plan.s1_smoothing > 1:
                sub = smooth_s1(sub, window=plan.s1_smoothing)
            s1 = sub["s1"].values.astype("float32", copy=False)
            if plan.on_s2_dates:
                match = nearest_s1_index(ds["time"].values, ds["time_s1"].values, plan.max_gap_days)
                matched = np.full((len(match), *s1.shape[1:]), np.nan, dtype="float32")
                matched[match >= 0] = s1[match[match >= 0]]
                s1 = matched
            out["s1"] = _normalize_in_place(norm, s1, [str(b) for b in ds["band_s1"].values], "s1")
    return out


def _normalize_in_place(norm: Any, values: np.ndarray, bands: list[str], sensor: str) -> np.ndarray:
    """``norm.normalize_array(values, bands, sensor, axis=1)`` for a (T, C, h, w) array, a few dates at a time
    and in place: the same numbers (element-wise), but the float64 temporaries of ``normalize_array`` stay
    ~16 MB instead of 2-3x the block's input (~1 GB at 70 dates, block 256). Writes into ``values`` only
    when it is a float32 array owning its memory (a fresh read); a view (of an in-memory cube, of a
    persisted chunk) is copied first, so the caller's data is never modified."""
    if not (values.dtype == np.float32 and values.flags.writeable and values.flags.owndata):
        values = values.astype("float32", copy=True)
    per_date = int(np.prod(values.shape[1:])) or 1
    step = max(1, NORMALIZE_CHUNK_VALUES // per_date)
    for t0 in range(0, values.shape[0], step):
        values[t0 : t0 + step] = norm.normalize_array(values[t0 : t0 + step], bands, sensor, axis=1)
    return values


# ---------------------------------------------------------------------------------- quality layer


def _fold_for_inference(module: Any) -> Any:
    """``module`` with its linear layers rewritten as equivalent, faster plain convolutions (inference only).

    * ``ConvTranspose2d`` (stride 1): a transposed convolution equals a convolution with the flipped,
      in/out-swapped kernel over the input zero-padded by ``k - 1 - padding``; PyTorch's CPU kernels
      run that 2-3x faster (measured on the decoder's shapes).
    * ``MultiscaleConv``: parallel same-padded convolutions (kernels 1, 3, 5...) concatenated and mixed by
      a 1x1 convolution are all linear, so they equal one convolution with the largest kernel whose
      weights are the mix applied to the zero-padded branch kernels: ~4x faster than the four calls and
      the concatenation.
    Results differ by float summation order only. Modules that do not fit these patterns are kept.
    """
    import torch
    from torch import nn

    from latentcube.nn import MultiscaleConv

    if isinstance(module, nn.Sequential):
        return nn.Sequential(*(_fold_for_inference(m) for m in module))
    if (isinstance(module, nn.ConvTranspose2d) and module.stride == (1, 1) and module.dilation == (1, 1)
            and module.groups == 1 and module.output_padding == (0, 0) and module.padding_mode == "zeros"
            and all(k - 1 - p >= 0 for k, p in zip(module.kernel_size, module.padding, strict=True))):
        conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                         padding=tuple(k - 1 - p for k, p in zip(module.kernel_size, module.padding, strict=True)),
                         bias=module.bias is not None).to(module.weight)
        with torch.no_grad():
            conv.weight.copy_(module.weight.flip(-1, -2).transpose(0, 1))
            if module.bias is not None:
                conv.bias.copy_(module.bias)
        return conv.eval()
    if not isinstance(module, MultiscaleConv):
        return module
    branches, mix = list(module.branches), module.mix
    plain = all(
        isinstance(b, nn.Conv2d) and b.stride == (1, 1) and b.dilation == (1, 1) and b.groups == 1
        and b.kernel_size[0] == b.kernel_size[1] and b.kernel_size[0] % 2 == 1
        and b.padding == (b.kernel_size[0] // 2,) * 2 and b.padding_mode == "zeros" and b.bias is not None
        for b in branches
    ) and isinstance(mix, nn.Conv2d) and mix.kernel_size == (1, 1) and mix.groups == 1
    if not plain or sum(b.out_channels for b in branches) != mix.in_channels:
        return module
    k = max(b.kernel_size[0] for b in branches)
    w = torch.zeros(mix.out_channels, branches[0].in_channels, k, k, dtype=mix.weight.dtype, device=mix.weight.device)
    bias = mix.bias.detach().clone() if mix.bias is not None else torch.zeros_like(w[:, 0, 0, 0])
    m = mix.weight.detach()[:, :, 0, 0]
    col = 0
    for b in branches:
        kb, c = b.kernel_size[0], b.out_channels
        p = (k - kb) // 2
        w[:, :, p : p + kb, p : p + kb] += torch.einsum("om,mikl->oikl", m[:, col : col + c], b.weight.detach())
        bias += m[:, col : col + c] @ b.bias.detach()
        col += c
    conv = nn.Conv2d(w.shape[1], w.shape[0], k, padding=k // 2).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(bias)
    return conv.eval()


class _TargetDecoder:
    """Centre pixel of one date's reconstruction from a window of latents, at 1/n of the decoder's cost.

    ``__call__(zw, dw, rows, qpos)``: window latents ``zw`` (N, n, L) and their days ``dw`` (N, n);
    targets ``rows`` (M,) (which window) and ``qpos`` (M,) (the target date's position in it) ->
    (M, C) = ``decode(zw, dw)[rows, qpos, :, r, r]`` (the centre pixel, normalised units).

    The public ``decode`` reconstructs all n dates of the 15 x 15 patch; the quality layer needs one
    date's centre pixel. This runs the decoder's transformer once per window (it mixes all n dates) and
    its convolutional up-sampling path only for the target date (n = 11x less work there, and that
    path is ~85 % of the decoder's cost). It mirrors ``SensorDecoder.forward`` step by step, so it is
    checked against the public ``decode`` when built; if the decoder's internals differ from what it
    mirrors (another architecture), it falls back to the public path (exact, 11x slower) with a warning.
    """

    def __init__(self, full: Callable[[Any, Any], Any], decoder: Any, pre: Any = None) -> None:
        self.full, self.decoder, self.pre = full, decoder, pre
        self.fast = False
        try:
            c = decoder.config
            self.n, self.r, self.centre, self.offset = c.n_dates, c.patch_size // 2, c.centre_index, c.value_offset
            self.blocks = [_fold_for_inference(getattr(decoder, f"block{i}")) for i in (1, 2, 3)]
            self.fast = self._agrees()
        except (AttributeError, TypeError, RuntimeError, ValueError):
            self.fast = False
        if not self.fast:
            warnings.warn("quality layer: the decoder does not have the structure the fast centre-pixel path mirrors; "
                          "using the public decode (same numbers, ~11x slower).", RuntimeWarning, stacklevel=2)

    def _agrees(self) -> bool:
        import torch

        p = next(self.decoder.parameters())
        gen = torch.Generator().manual_seed(0)
        n_in = self.pre.in_features if self.pre is not None else self.decoder.config.latent_dim
        zw = torch.randn(6, self.n, n_in, generator=gen).to(p)
        dw = torch.cumsum(torch.rand(6, self.n, generator=gen) * 12, 1).to(p)
        rows = torch.arange(6, device=p.device).repeat_interleave(2)
        qpos = torch.randint(0, self.n, (12,), generator=gen).to(p.device)
        ref = self._public(zw, dw, rows, qpos)
        got = self._fast(zw, dw, rows, qpos)
        return bool(torch.allclose(got, ref, rtol=1e-4, atol=1e-5))

    def _public(self, zw, dw, rows, qpos):
        return self.full(zw, dw)[rows, qpos, :, self.r, self.r]

    def _fast(self, zw, dw, rows, qpos):
        import torch

        d = self.decoder
        z = self.pre(zw) if self.pre is not None else zw
        days = dw.to(z.dtype)
        rel = days - days[:, self.centre, None]
        h = d.transformer(d.inp(z) + d.pos(d.time(rel)))[rows, qpos]  # (M, d): the target date's token
        y = d.to_map(d.ln(h))[:, :, None, None]
        for block in self.blocks:
            y = block(y)
        y = d.head(y)[:, :, self.r, self.r]
        if d.linear is not None:
            zt = z[rows, qpos]
            p = d.config.patch_size
            # Only the centre pixel's rows of the linear read-out (layout "(c h w)").
            w = d.linear.weight.view(-1, p, p, zt.shape[-1])[:, self.r, self.r]
            b = d.linear.bias.view(-1, p, p)[:, self.r, self.r]
            y = y + torch.nn.functional.linear(zt, w, b)
        return y + self.offset

    def __call__(self, zw, dw, rows, qpos):
        return self._fast(zw, dw, rows, qpos) if self.fast else self._public(zw, dw, rows, qpos)


_DECODERS: dict[tuple[str, str, str], dict[str, _TargetDecoder]] = {}


def _target_decoders(model: Any, plan: _Plan) -> dict[str, _TargetDecoder]:
    """Per quality sensor: the centre-pixel decoder of the model's embedding (fused or the sensor's own)."""
    key = (plan.checkpoint, plan.sha256, _device(plan))
    if key not in _DECODERS:
        if plan.kind == "fusion":
            _DECODERS[key] = {
                s: _TargetDecoder(lambda z, d, s=s: model.decode(z, d)[s], model.sensors[s].decoder, model.back_project[s])
                for s in plan.quality_sensors
            }
        else:
            _DECODERS[key] = {plan.quality_sensors[0]: _TargetDecoder(model.decode, model.decoder)}
    return _DECODERS[key]


def _band_spans(meta: dict[str, Any], ds: xr.Dataset, sensor: str) -> np.ndarray:
    """Physical units per normalised unit for each band: reflectance (S2) or dB (S1)."""
    from latentcube.preprocess import Normalization

    norm = Normalization.from_dict(meta["normalization"])
    table = norm.s2 if sensor == "s2" else norm.s1_db
    bands = [str(b) for b in ds["band" if sensor == "s2" else "band_s1"].values]
    return np.array([table[b][1] - table[b][0] for b in bands], dtype="float32")


def reconstruction_error(
    decoders: dict[str, Callable[..., Any]], z: Any, days: Any, targets: dict[str, Any], spans: dict[str, np.ndarray],
    n_dates: int, *, chunk: int = QUALITY_CHUNK,
) -> dict[str, np.ndarray]:
    """Per pixel-date reconstruction error of the centre pixel, in physical units.

    Args:
        decoders: sensor -> callable ``(zw, dw, rows, qpos) -> (M, C)`` as ``_TargetDecoder``.
        z: dense embeddings (T, L, h, w) (torch), *before* the invalid mask: the decoder input of
            target t is the embedding of each of the ``n_dates`` dates of t's window
            (``window_starts``), each from its own dense computation.
        days: (T,) float days (torch) of the date axis.
        targets: sensor -> normalised model input (T, C, h, w) (torch, NaN = invalid) on the same axis.
        spans: sensor -> (C,) physical units per normalised unit (band hi - lo).
        n_dates: the model's window length (11).
        chunk: targets per decoder call (memory: ~15 kB per target).

    Returns:
        sensor -> (T, h, w) float32: mean over the finite bands of |reconstruction - input| (reflectance
        for S2, dB for S1); NaN where every band of that sensor's input is missing.
    """
    import torch

    from latentcube.nn import window_starts

    n_time, n_lat, height, width = z.shape
    dev = z.device
    starts = window_starts(n_time, n_dates, dev)
    n_win = n_time - n_dates + 1
    windows = torch.arange(n_win, device=dev)[:, None] + torch.arange(n_dates, device=dev)  # (W, n)
    qpos = torch.arange(n_time, device=dev) - starts
    days = days.to(device=dev, dtype=z.dtype)
    dw_all = days[windows]  # (W, n)
    zp = z.permute(2, 3, 0, 1).reshape(height * width, n_time, n_lat)  # (P, T, L)
    n_pix = zp.shape[0]
    px_step = max(1, chunk // n_time)
    out = {}
    for sensor, decode in decoders.items():
        x = targets[sensor]
        n_band = x.shape[1]
        recon = torch.empty(n_pix, n_time, n_band, dtype=z.dtype, device=dev)
        for p0 in range(0, n_pix, px_step):
            zc = zp[p0 : p0 + px_step]  # (pc, T, L)
            pc = zc.shape[0]
            zw = zc[:, windows].reshape(pc * n_win, n_dates, n_lat)
            dw = dw_all.repeat(pc, 1)
            rows = (torch.arange(pc, device=dev)[:, None] * n_win + starts).reshape(-1)  # pixel-major, (pc * T)
            recon[p0 : p0 + pc] = decode(zw, dw, rows, qpos.repeat(pc)).reshape(pc, n_time, n_band)
        recon = recon.permute(1, 2, 0).float().cpu().numpy().reshape(n_time, n_band, height, width)
        inp = x.float().cpu().numpy()
        err = np.abs(recon - inp) * spans[sensor][None, :, None, None]
        valid = np.isfinite(err)
        count = valid.sum(axis=1)
        total = np.where(valid, err, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sensor] = np.where(count > 0, total / count, np.nan).astype("float32")
    return out


# ------------------------------------------------------------------------------------ one block


def embed_block(ds: xr.Dataset, model: Any, meta: dict[str, Any], plan: _Plan, ys: slice, xs: slice) -> np.ndarray:
    """Embeddings ``(T, F, h, w)`` float32 of the pixels ``ys`` x ``xs``, NaN where the centre is invalid.

    Reads the block plus ``plan.halo`` pixels of real context on each side (clipped at the scene edge:
    ``encode_scene`` pads the scene with NaN, so context outside the scene counts as invalid, as in
    the per-patch path), encodes, and crops the halo.
    """
    return _compute_block(ds, model, meta, plan, ys, xs)[0]


def _compute_block(ds: xr.Dataset, model: Any, meta: dict[str, Any], plan: _Plan, ys: slice,
                   xs: slice) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(embeddings (T, F, h, w), {sensor: quality (T, h, w)}) of one block; see ``embed_block``."""
    import torch

    for sensor, bands in plan.band_selection:  # the model's bands of a fuller cube (lazy: only they are read)
        ds = ds.sel({{"s2": "band", "s1": "band_s1"}[sensor]: list(bands)})

    height, width = ds.sizes["y"], ds.sizes["x"]
    r = plan.halo
    ry = slice(max(ys.start - r, 0), min(ys.stop + r, height))
    rx = slice(max(xs.start - r, 0), min(xs.stop + r, width))
    inputs = _block_inputs(ds, plan, meta, ry, rx)
    times = ds["time" if plan.time_var == "s2" or plan.on_s2_dates else "time_s1"].values
    dev = _device(plan)
    days = torch.from_numpy(_days(times).astype("float32")).to(dev)
    x = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in inputs.items()}
    oy, ox = ys.start - ry.start, xs.start - rx.start
    h, w = ys.stop - ys.start, xs.stop - xs.start
    centre = inputs[plan.time_var][:, :, oy : oy + h, ox : ox + w]
    invalid = ~np.isfinite(centre).any(axis=1)  # every band of the centre pixel missing on that date
    # Only the block's own pixels are embedded; the halo is context (no outputs computed for it).
    kw = dict(tile=plan.tile, pixel_chunk=plan.pixel_chunk, region=(slice(oy, oy + h), slice(ox, ox + w)))
    if not plan.quality:
        # The product is NaN where the centre pixel is invalid: the encoders skip those targets' windows
        # wherever a whole pixel chunk is invalid (cloudy dates). The quality layer decodes every date of
        # a window, invalid ones included, so it needs all of them.
        kw["wanted"] = torch.from_numpy(~invalid).to(dev)
    # The quality layer decodes the model's own embedding: the fused one, or the autoencoder's sensor's.
    source = "fused" if plan.kind == "fusion" else plan.sensors[0]
    to_encode = [*plan.sensors, *([source] if plan.quality and source not in plan.sensors else [])]
    dense = {}
    with torch.inference_mode():
        for name in to_encode:
            if plan.kind == "autoencoder":
                z = model.encode_scene(x[name], days, **kw)
            elif name == "fused":
                z = model.encode_scene(x, days, **kw)
            else:  # a fusion model's own sensor encoder, on the same (matched) inputs
                z = model.sensors[name].encode_scene(x[name], days, **kw)
            dense[name] = z
        quality = {}
        if plan.quality:
            n_dates = model.n_dates if plan.kind == "fusion" else model.config.n_dates
            spans = {s: _band_spans(meta, ds, s) for s in plan.quality_sensors}
            targets = {s: x[s][:, :, oy : oy + h, ox : ox + w] for s in plan.quality_sensors}
            # Unmasked embeddings: a window's invalid dates still carry the model's embedding from context,
            # exactly what the per-patch forward feeds its decoder (the stored cube has NaN there).
            quality = reconstruction_error(_target_decoders(model, plan), dense[source].float(), days, targets, spans,
                                           n_dates)
        emb = np.concatenate([dense[name].float().cpu().numpy() for name in plan.sensors], axis=1)
    emb[np.broadcast_to(invalid[:, None], emb.shape)] = np.nan
    return emb.astype("float32", copy=False), quality


def quantize_int8(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and per pixel-date scales of embeddings ``(T, F, h, w)`` (NaN = invalid).

    ``scale = max_f |e| / 127`` (float32, (T, h, w)) and ``q = round(e / scale)`` in -127..127, so
    ``q * scale`` is within ``scale / 2`` of ``e`` (plus float32 rounding of the product, < 1e-5 scale).
    Invalid pixel-dates get ``q = INT8_INVALID`` (-128) and scale NaN; an all-zero embedding gets
    scale 0 and q 0 (decoded exactly).
    """
    e = emb.astype("float64")
    invalid = ~np.isfinite(e).all(axis=1)
    with np.errstate(invalid="ignore"):
        scale = (np.nanmax(np.abs(np.where(invalid[:, None], 0.0, e)), axis=1) / 127.0).astype("float32")
    safe = np.where(scale > 0, scale, 1.0).astype("float64")[:, None]  # divide by the *stored* float32 scale
    q = np.clip(np.rint(np.where(invalid[:, None], 0.0, e) / safe), -127, 127).astype("int8")
    q[np.broadcast_to(invalid[:, None], q.shape)] = INT8_INVALID
    scale[invalid] = np.nan
    return q, scale


def _run_block(plan: _Plan, source: str | _InMemory, iy: int, ix: int, ys: slice, xs: slice) -> tuple[int, int]:
    """Embed one block, write its Zarr region, then (last) its marker. Runs on a Dask worker."""
    _embed_and_write(plan, source, iy, ix, ys, xs)
    release_free_memory()  # the block's arrays are freed now (latentcube.heap)
    return iy, ix


def _embed_and_write(plan: _Plan, source: str | _InMemory, iy: int, ix: int, ys: slice, xs: slice) -> None:
    t0 = _time.perf_counter()
    model, meta = _model(plan)
    ds = _cube(source)
    emb, quality = _compute_block(ds, model, meta, plan, ys, xs)
    # The encoders' freed working memory goes back to the system before the write allocates its own.
    release_free_memory()
    n_time, n_feat = emb.shape[:2]
    region = {"time": slice(0, n_time), "feature": slice(0, n_feat), "y": ys, "x": xs}
    grid = ("time", "y", "x")
    if plan.dtype == "int8":
        q, scale = quantize_int8(emb)
        variables = {"embedding": (EMBEDDING_DIMS, q), "embedding_scale": (grid, scale)}
    else:
        variables = {"embedding": (EMBEDDING_DIMS, emb.astype(plan.dtype, copy=False))}
    variables.update({f"quality_{s}": (grid, v) for s, v in quality.items()})
    block = xr.Dataset(variables)
    with warnings.catch_warnings():
        # zarr notes the marker directory as a foreign object in the group: expected, harmless.
        warnings.filterwarnings("ignore", message=r".*\.blocks is not recognized.*")
        # consolidated=False: region writes change no metadata; concurrent writers must not race on .zmetadata.
        block.to_zarr(plan.out, region=region, mode="r+", zarr_format=2, consolidated=False)
    _write_marker(Path(plan.out), iy, ix, {"y": [ys.start, ys.stop], "x": [xs.start, xs.stop], "sha256": plan.sha256,
                                            "seconds": round(_time.perf_counter() - t0, 3)})


# --------------------------------------------------------------------------------- driver side


def _description(ds: xr.Dataset, plan: _Plan, dims: int, times: np.ndarray, crs: Any) -> dict[str, Any]:
    """geoemb convention attributes (pixel embeddings), extended with the time axis."""
    x, y = ds["x"].values, ds["y"].values
    dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
    t = pd.DatetimeIndex(times)
    return {
        "zarr_conventions": [GEOEMB_CONVENTION],
        "geoemb:type": "pixel",
        "geoemb:dimensions": dims,
        "geoemb:model": f"latentcube {plan.kind} model, sha256:{plan.sha256}",
        "geoemb:source_data": [SOURCE_DATA[s] for s in ("s1", "s2") if s in plan.inputs],
        "geoemb:data_type": plan.dtype,
        "geoemb:gsd": abs(dx),
        "geoemb:build_version": __version__,
        "proj:code": crs.to_string(),
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [dx, 0.0, float(x[0] - dx / 2), 0.0, dy, float(y[0] - dy / 2)],
        "spatial:shape": [int(ds.sizes["y"]), int(ds.sizes["x"])],
        "spatial:registration": "pixel",
        # Our extension: one embedding per pixel *and date*; the convention has no time axis yet.
        "latentcube:time": {
            "dimension": "time",
            "dimension_order": list(EMBEDDING_DIMS),
            "axis": "Sentinel-1 acquisitions" if plan.time_var == "s1" and not plan.on_s2_dates
            else "Sentinel-2 acquisitions",
            "n_dates": len(t),
            "first": str(t.min()) if len(t) else None,
            "last": str(t.max()) if len(t) else None,
            "window": (f"{plan.n_dates} consecutive dates t-{plan.n_dates // 2}..t+{plan.n_dates - 1 - plan.n_dates // 2}"
                       ", shifted inside the series (docs/method.md)"),
            "invalid": "NaN where every input band of the centre pixel is missing on that date",
        },
    }


def _signature(plan: _Plan, shape: tuple[int, ...], block_px: int, source: str) -> dict[str, Any]:
    """What must match for a re-run to resume into an existing store."""
    keep = ("sha256", "kind", "sensors", "time_var", "on_s2_dates", "dtype", "max_gap_days", "s1_smoothing", "quality")
    return {**{k: v for k, v in asdict(plan).items() if k in keep}, "sensors": list(plan.sensors),
            "shape": list(shape), "block_px": block_px, "cube": source}


def _create_template(out: Path, ds: xr.Dataset, plan: _Plan, names: list[str], times: np.ndarray, block_px: int,
                     meta: dict[str, Any], signature: dict[str, Any]) -> None:
    """Write the empty store (metadata and coordinates; chunks stay unwritten = NaN) and, last, the signature."""
    import dask.array as da

    n_time, n_feat = len(times), len(names)
    height, width = ds.sizes["y"], ds.sizes["x"]
    chunks = (min(n_time, MAX_TIME_CHUNK), n_feat, min(block_px, height), min(block_px, width))
    grid_chunks = (chunks[0], *chunks[2:])
    int8 = plan.dtype == "int8"
    fill = INT8_INVALID if int8 else np.nan
    grid = ("time", "y", "x")

    def empty(shape: tuple[int, ...], dtype: str, value: float, chunking: tuple[int, ...]):
        return da.full(shape, value, dtype=dtype, chunks=chunking)

    variables = {"embedding": (EMBEDDING_DIMS, empty((n_time, n_feat, height, width), plan.dtype, fill, chunks))}
    encoding = {"embedding": {"chunks": chunks, "dtype": plan.dtype, "_FillValue": fill}}
    extra = (["embedding_scale"] if int8 else []) + [f"quality_{s}" for s in plan.quality_sensors]
    for name in extra:
        variables[name] = (grid, empty((n_time, height, width), "float32", np.nan, grid_chunks))
        encoding[name] = {"chunks": grid_chunks, "dtype": "float32", "_FillValue": np.nan}
    tmpl = xr.Dataset(
        variables,
        coords={"time": np.asarray(times, dtype="datetime64[ns]"), "feature": names, "y": ds["y"].values,
                "x": ds["x"].values},
    )
    crs = cube_crs(ds)
    tmpl = set_crs(tmpl, crs)
    tmpl["embedding"].attrs.update({
        "long_name": f"latentcube {'/'.join(plan.sensors)} embedding per pixel and date",
        "units": "1",
        "grid_mapping": "spatial_ref",
    })
    if int8:
        tmpl["embedding"].attrs.update({
            "long_name": f"latentcube {'/'.join(plan.sensors)} embedding per pixel and date, int8 codes",
            "scale_variable": "embedding_scale",
            "decoding": "embedding * embedding_scale (latentcube.embed.open_embedding); -128 = invalid",
        })
        tmpl["embedding_scale"].attrs.update({
            "long_name": "int8 scale per pixel and date: max over features of |embedding| / 127",
            "units": "1",
            "error_bound": "|decoded - float32 embedding| <= embedding_scale / 2 per value",
            "grid_mapping": "spatial_ref",
        })
    physical = {"s2": ("1", "reflectance"), "s1": ("dB", "backscatter in dB")}
    axis_note = {"s1": "the S1 acquisition matched to this S2 date (smoothed), as the model saw it"
                 if plan.on_s2_dates else "the smoothed S1 acquisition of this date"}
    for s in plan.quality_sensors:
        units, what = physical[s]
        tmpl[f"quality_{s}"].attrs.update({
            "long_name": f"{s.upper()} reconstruction error of the centre pixel: mean absolute error over bands ({what})",
            "units": units,
            "description": (
                f"|decoder({'fused' if plan.kind == 'fusion' else s} embeddings of the {plan.n_dates} dates of this date's window) - "
                f"input| at the centre pixel and this date, mean over the finite {s.upper()} bands, in {what} "
                f"(input: {axis_note.get(s, 'the S2 reflectance of this date')}). NaN where that input is missing. "
                "docs/embed.md#quality-layer"),
            "grid_mapping": "spatial_ref",
        })
    tmpl.attrs.update(_description(ds, plan, n_feat, times, crs))
    tmpl.attrs.update({
        "latentcube_version": __version__,
        "conventions": "latentcube embedding cube v1 (docs/embed.md)",
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
        "checkpoint": plan.checkpoint,
        "checkpoint_sha256": plan.sha256,
        "model_kind": plan.kind,
        "model_config": json.dumps(meta.get("model_args"), default=str),
        "training_config": json.dumps(meta.get("config"), default=str),
        "checkpoint_version": str(meta.get("latentcube_version")),
        "normalization": json.dumps(meta["normalization"]),
        "band_order": json.dumps(meta["band_order"]),
        "feature_names": json.dumps(names),
        "sensors": json.dumps(list(plan.sensors)),
        "preprocessing": json.dumps({
            "s1_smoothing_frames": plan.s1_smoothing if "s1" in plan.inputs else None,
            "s1_max_gap_days": plan.max_gap_days if plan.on_s2_dates else None,
            "halo_px": plan.halo,
        }),
        "quality": json.dumps(list(plan.quality_sensors)),
        "block_px": block_px,
        "source_cube": signature["cube"],
    })
    if out.exists():
        shutil.rmtree(out)
    tmpl.to_zarr(out, mode="w", compute=False, zarr_format=2, consolidated=True, encoding=encoding)
    (out / MARKER_DIR).mkdir(exist_ok=True)
    tmp = out / MARKER_DIR / f".{TEMPLATE_FILE}.tmp"
    tmp.write_text(json.dumps(signature, indent=1), encoding="utf-8")
    os.replace(tmp, out / MARKER_DIR / TEMPLATE_FILE)


def _is_embedding_store(out: Path) -> bool:
    """True for a store this module created (possibly incomplete): only those may be deleted."""
    try:
        attrs = json.loads((out / ".zattrs").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return str(attrs.get("conventions", "")).startswith("latentcube embedding cube")


def open_embedding(path: str | Path) -> xr.DataArray:
    """The embeddings of a store written by :func:`embed_cube`, as float32, whatever the storage type.

    Returns ``embedding`` ``(time, feature, y, x)`` float32, lazy (Dask), with the store's coordinates
    (CRS in ``spatial_ref``) and the variable's attributes; NaN where invalid. float32 stores are
    returned as stored, float16 ones cast (exactly) to float32, and int8 ones decoded as
    ``code x embedding_scale`` (error <= scale / 2 against the float32 embedding). Other variables
    (``quality_s2``...) are in ``xr.open_zarr(path)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such embedding store: {path}. Fix: pass the --out of `latentcube embed`.")
    ds = xr.open_zarr(path, decode_coords="all")
    if "embedding" not in ds:
        raise EmbedError(f"{path} has no 'embedding' variable: it is not an embedding store (variables: {list(ds.data_vars)}).")
    emb = ds["embedding"]
    attrs = dict(emb.attrs)
    if "embedding_scale" in ds:
        # CF decoding has already turned the int8 codes into float32 with NaN for INT8_INVALID (_FillValue).
        out = emb.astype("float32") * ds["embedding_scale"].astype("float32")
        for key in ("scale_variable", "decoding"):
            attrs.pop(key, None)
        attrs["long_name"] = str(attrs.get("long_name", "")).replace(", int8 codes", "")
        attrs["stored_as"] = "int8 x embedding_scale"
    else:
        out = emb.astype("float32")
    out = out.transpose(*EMBEDDING_DIMS).astype("float32")
    out.name = "embedding"
    out.attrs = attrs
    return out


def embedding_summary(path: str | Path) -> dict[str, Any]:
    """Facts about an embedding store for ``latentcube info``: model, features, dates, blocks written,
    valid fraction per date (NaN = invalid centre pixel or a block not yet written) and value range."""
    path = Path(path)
    emb = open_embedding(path)
    attrs = xr.open_zarr(path).attrs
    times = pd.DatetimeIndex(emb["time"].values)
    valid = np.isfinite(emb).all("feature").mean(("y", "x")).values if len(times) else np.zeros(0)
    block_px = int(attrs.get("block_px", 0) or 0)
    n_blocks = len(block_grid(emb.sizes["y"], emb.sizes["x"], block_px)) if block_px > 0 else None
    step = max(1, int(np.ceil((emb.size / 200_000) ** 0.25)))
    sample = emb.isel({d: slice(None, None, step) for d in emb.dims}).values.ravel()
    sample = sample[np.isfinite(sample)]
    info: dict[str, Any] = {
        "model": f"{attrs.get('model_kind', '?')} ({attrs.get('checkpoint', '?')})",
        "features": [str(f) for f in emb["feature"].values],
        "dates": len(times),
        "first": str(times.min().date()) if len(times) else None,
        "last": str(times.max().date()) if len(times) else None,
        "axis": attrs.get("latentcube:time", {}).get("axis"),
        "stored_as": emb.attrs.get("stored_as", str(xr.open_zarr(path)["embedding"].dtype)),
        "valid_fraction_mean": float(valid.mean()) if valid.size else 0.0,
        "dates_valid_ge_50pct": int((valid >= 0.5).sum()),
        "value_p1_p50_p99": [float(v) for v in np.percentile(sample, [1, 50, 99])] if sample.size else None,
    }
    if n_blocks is not None:
        done = len(list((path / MARKER_DIR).glob("*.done"))) if (path / MARKER_DIR).is_dir() else 0
        info["blocks_written"] = f"{done} of {n_blocks}" + ("" if done >= n_blocks else
                                                             " (incomplete: re-run the same embed command to finish)")
    return info


def _prepare_store(out: Path, ds: xr.Dataset, plan: _Plan, names: list[str], times: np.ndarray, block_px: int,
                   meta: dict[str, Any], signature: dict[str, Any], overwrite: bool) -> None:
    sig_path = out / MARKER_DIR / TEMPLATE_FILE
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not _is_embedding_store(out)):
            # Never delete what we did not write (e.g. the input cube passed as the output by mistake).
            raise EmbedError(f"{out} exists and is not a latentcube embedding store. Fix: choose another output path.")
        if sig_path.exists() and not overwrite:
            existing = json.loads(sig_path.read_text(encoding="utf-8"))
            if existing == signature:
                return  # resume
            diff = sorted(k for k in set(existing) | set(signature) if existing.get(k) != signature.get(k))
            raise EmbedError(
                f"{out} holds an embedding run with other settings ({', '.join(diff)} differ), so it cannot be "
                "resumed. Fix: choose another output path, or pass overwrite=True (--overwrite) to start again."
            )
    # No signature = the template was never completed (or overwrite): start from scratch.
    _create_template(out, ds, plan, names, times, block_px, meta, signature)


def _client(scheduler: Any, n_workers: int, threads: int, processes: bool):
    """(client, cluster-or-None): a LocalCluster we own, or a client of the given scheduler."""
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        return scheduler, None, False
    if scheduler is None:
        import dask

        # Distributed's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in worker processes to hand freed memory
        # back to the OS. An explicit trim threshold also freezes glibc's mmap threshold at 128 KiB, so
        # every encoder intermediate is a fresh mmap with page faults on first touch: measured 2x slower
        # than in-process on 2 cores (docs/embed.md). The worker's memory is bounded by the block anyway;
        # keep the nanny's thread-count variables and leave the trim threshold to the worker's
        # reuse_large_blocks(). MALLOC_ARENA_MAX=1: blocks run on a worker *thread*, whose own glibc arena
        # cannot keep tensors over 64 MB and trims the rest away; with one arena they come from the heap
        # that reuse_large_blocks() keeps (2 workers, 256^2 x 73: 29.3k -> 31-37k pixel-dates/s, 2.9 -> 2.5
        # GiB). Each worker runs one task thread, so a single arena costs no lock contention.
        environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        environ["MALLOC_ARENA_MAX"] = 1
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=processes,
                                   dashboard_address=None)
        return Client(cluster), cluster, True
    return Client(scheduler), None, True


def embed_cube(
    cube: str | Path | xr.Dataset,
    checkpoint: str | Path,
    out: str | Path,
    *,
    block_px: int = DEFAULT_BLOCK_PX,
    sensors: str | Sequence[str] | None = None,
    dtype: str = "float32",
    quality: bool = False,
    scheduler: Any = None,
    n_workers: int | None = None,
    progress: bool = True,
    device: str | None = None,
    processes: bool = True,
    threads_per_worker: int | None = None,
    tile: int | str | None = "auto",
    pixel_chunk: int = DEFAULT_PIXEL_CHUNK,
    overwrite: bool = False,
    on_block: Callable[[int, int], None] | None = None,
) -> Path:
    """Embed every pixel and date of ``cube`` with the model file ``checkpoint`` into the Zarr ``out``.

    Args:
        cube: a cube path (Zarr/NetCDF, opened lazily) or an ``xarray.Dataset`` in the data model.
        checkpoint: a model file from training (``model.pt``, :func:`latentcube.nn.model_file.save_model`).
            Kind ``fusion`` gives the 7-d fused embedding on the S2 dates; kind ``autoencoder`` gives
            that sensor's own embedding (S2: 9-d on the S2 dates; S1: 2-d on the S1 dates).
        out: output Zarr store (format 2). Re-running with the same arguments resumes: blocks with a
            marker in ``out/.blocks`` are skipped.
        block_px: block edge in pixels; also the storage chunk edge. Memory per worker grows with
            ``dates x (block_px + 14)^2`` (inputs, outputs), not with the cube (docs/embed.md#memory).
        sensors: embeddings to write, concatenated along ``feature`` (``fused_0..6``, ``s1_0..1``,
            ``s2_0..8``). Default: ``"fused"`` for a fusion model, the model's sensor for an autoencoder;
            a fusion model also gives ``("fused", "s1", "s2")``.
        dtype: ``"float32"`` (default), ``"float16"`` (half the storage; relative rounding error
            <= 2^-11 = 4.9e-4 of each value) or ``"int8"`` (a quarter, plus a float32 ``embedding_scale``
            per pixel-date = max |e| / 127 over the features; absolute error <= scale / 2 per value).
            Read any of them as float32 with :func:`open_embedding`.
        quality: also write ``quality_s2`` / ``quality_s1`` ``(time, y, x)``: the decoders' reconstruction
            error of the centre pixel at each date (mean absolute error over bands; reflectance for S2,
            dB for S1; NaN where that sensor's input is missing), for masking unreliable embeddings.
            Off by default: it costs ~10x the embedding itself on CPU (docs/embed.md#quality-layer).
        scheduler: ``None`` = a new ``distributed.LocalCluster`` (closed at the end), or this process when
            the default is a single worker (a GPU, fewer than 4 cores, little memory) or only one block
            is left to compute (a cluster would add a process and its start-up: 75 s against 57 s for
            the demo's 128 x 128 x 74 scene); a scheduler address ``"tcp://host:8786"`` or a
            ``distributed.Client``; ``"synchronous"`` = in this process, one block after another.
        n_workers: LocalCluster workers (default: 1 with a GPU, else one per ``CORES_PER_WORKER`` (2) CPU
            cores, at most one per block and no more than :func:`worker_memory_estimate` lets fit in 80 %
            of the available memory, see :func:`default_workers`). Each worker uses
            ``cpu_count // n_workers`` torch threads. Pass it to force a cluster of that size.
        progress: show a progress bar (tqdm) over blocks.
        device: ``"cuda"``/``"cpu"``; default: CUDA when the worker has it.
        processes: LocalCluster with worker processes (default) or threads.
        threads_per_worker: torch threads per worker (default: ``cpu_count // n_workers`` on a LocalCluster,
            torch's default elsewhere; in this process it sets this process's torch threads, and with
            ``scheduler="synchronous"`` the caller's setting is kept).
        tile, pixel_chunk: passed to ``encode_scene`` (bound its memory; results do not depend on them).
            ``tile="auto"`` (:func:`auto_tile`) keeps the encoder's spatial stage near ``TILE_PIXEL_DATES``
            pixel-dates (measured ~1 GB peak for the default models at 70 dates, block 256).
        overwrite: delete an existing ``out`` and start again (otherwise a compatible store is resumed
            and an incompatible one is an error).
        on_block: called in this process as ``on_block(iy, ix)`` after each block computed by this
            run is written and marked (progress reporting, tests).

    Returns:
        ``out`` as a ``Path``. Raises :class:`EmbedError`/:class:`latentcube.cube.CubeError` with the fix
        for a missing cube or model file, a band-order mismatch, a fusion model without S1 in the cube,
        or fewer dates than the encoder's window.
    """
    from latentcube.nn.model_file import load_model

    if dtype not in DTYPES:
        raise EmbedError(f"dtype={dtype!r}: use 'float32' (exact), 'float16' (relative error <= 4.9e-4) or 'int8' "
                         "(per-pixel scale, error <= scale / 2).")
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"no such model file: {checkpoint}. Fix: pass the model.pt written by training.")
    if isinstance(cube, xr.Dataset):
        ds, source, source_name = cube, _InMemory(cube), "<in-memory Dataset>"
    else:
        ds = open_cube(cube)
        source = source_name = str(Path(cube).resolve())
    # The data model first (units, dates, grid, nodata): a cube of digital numbers, dB or unsorted dates
    # would embed without an error into meaningless numbers. Which sensors must be present, _check_cube says.
    validate_cube(ds, require_s2=False)
    if ds.sizes["y"] < 2 or ds.sizes["x"] < 2:
        raise CubeError(f"the cube is {ds.sizes['y']} x {ds.sizes['x']} px: the embedding's grid needs at least 2 "
                        "pixels along y and x. Fix: embed a larger area (patches see 7 pixels around each pixel).")
    model, meta = load_model(checkpoint)
    out = Path(out)
    plan, names, times = _make_plan(ds, checkpoint, model, meta, sensors=sensors, out=out, dtype=dtype, quality=quality,
                                    tile=tile, pixel_chunk=pixel_chunk, device=device, block_px=block_px)
    blocks = block_grid(ds.sizes["y"], ds.sizes["x"], block_px)
    cpu = os.cpu_count() or 1
    signature = _signature(plan, (len(times), len(names), ds.sizes["y"], ds.sizes["x"]), block_px, source_name)
    _prepare_store(out, ds, plan, names, times, block_px, meta, signature, overwrite)

    todo = [b for b in blocks if not _marker(out, b[0], b[1]).exists()]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(blocks), initial=len(blocks) - len(todo), unit="block", desc=f"embed {out.name}")

    def done(iy: int, ix: int) -> None:
        if bar is not None:
            bar.update(1)
        if on_block is not None:
            on_block(iy, ix)

    per_worker = worker_memory_estimate(len(times), block_px, plan.halo)
    if todo and scheduler in (None, "synchronous"):
        _warn_if_short_of_memory(per_worker, block_px, len(times))
    in_process = scheduler == "synchronous" or (scheduler is None and len(todo) == 1)
    if scheduler is None and n_workers is None and len(todo) > 1:
        n_workers = _default_worker_count(plan, cpu, len(todo), per_worker)
        # A one-worker cluster computes nothing this process cannot, and adds a process holding its own
        # model and libraries (plus the cluster's start-up: 75 s against 57 s for the demo's scene).
        in_process = n_workers == 1
    if in_process and scheduler is None and threads_per_worker:
        plan = replace(plan, torch_threads=threads_per_worker)
    try:
        if not todo:
            pass
        elif in_process:
            for iy, ix, ys, xs in todo:
                _run_block(plan, source, iy, ix, ys, xs)
                done(iy, ix)
        else:
            _run_distributed(plan, source, todo, scheduler, n_workers, processes, cpu, done, threads_per_worker)
    finally:
        if bar is not None:
            bar.close()
    return out


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
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise EmbedError("device='cuda' but no CUDA device is available here. Fix: omit device to use the CPU.")
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


def embed_pixels(cube: str | Path | xr.Dataset, checkpoint: str | Path, ys: slice, xs: slice, *,
                 sensors: str | Sequence[str] | None = None, device: str | None = None) -> xr.DataArray:
    """Embeddings ``(time, feature, y, x)`` float32 of the pixels ``ys`` x ``xs`` only, in this process.

    The values :func:`embed_cube` writes for those pixels (same preprocessing, context from the cube
    around them, NaN where the centre pixel is invalid), without a store and without computing any
    other pixel's embedding: for a flux-tower footprint or a few sample pixels this is far cheaper than
    embedding a crop. ``ys``/``xs`` are step-1 slices of the cube's rows/columns; ``sensors`` and
    ``device`` as in :func:`embed_cube`.
    """
    from latentcube.nn.autoencoder import region_bounds  # torch: imported only when embedding
    from latentcube.nn.model_file import load_model

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"no such model file: {checkpoint}. Fix: pass the model.pt written by training.")
    ds = cube if isinstance(cube, xr.Dataset) else open_cube(cube)
    height, width = ds.sizes["y"], ds.sizes["x"]
    try:
        y0, y1, x0, x1 = region_bounds((ys, xs), height, width)
    except ValueError as err:
        raise EmbedError(f"rows {ys} / columns {xs}: use non-empty step-1 slices inside the {height} x {width} "
                         "cube.") from err
    model, meta = load_model(checkpoint)
    # The data model on the part read (the region and its context), not the whole cube: sites of a large
    # cube are embedded one by one.
    halo = (model.patch_size if meta["kind"] == "fusion" else model.config.patch_size) // 2
    validate_cube(ds.isel(y=slice(max(y0 - halo, 0), y1 + halo), x=slice(max(x0 - halo, 0), x1 + halo)),
                  require_s2=False)
    plan, names, times = _make_plan(ds, checkpoint, model, meta, sensors=sensors, out=Path("."), dtype="float32",
                                    quality=False, tile="auto", pixel_chunk=DEFAULT_PIXEL_CHUNK, device=device,
                                    block_px=max(y1 - y0, x1 - x0))
    model, meta = _model(plan)
    emb = embed_block(ds, model, meta, plan, slice(y0, y1), slice(x0, x1))
    return xr.DataArray(emb, dims=EMBEDDING_DIMS, name="embedding",
                        coords={"time": times, "feature": names, "y": ds["y"].values[y0:y1], "x": ds["x"].values[x0:x1]})


def _default_worker_count(plan: _Plan, cpu: int, n_blocks: int, per_worker: int) -> int:
    """Workers of the default LocalCluster: 1 with a GPU, else :func:`default_workers` for this machine."""
    import psutil  # a dependency of distributed

    if _device(plan).startswith("cuda"):
        return 1
    return default_workers(cpu, n_blocks, per_worker, psutil.virtual_memory().available)


def _run_distributed(plan: _Plan, source: str | _InMemory, todo: list, scheduler: Any, n_workers: int | None,
                     processes: bool, cpu: int, done: Callable[[int, int], None], threads: int | None) -> None:
    import dask
    from dask.base import tokenize
    from distributed import as_completed

    own_cluster = scheduler is None
    if own_cluster:
        n_workers = n_workers or 1
        # One torch thread pool per worker, together filling the cores without oversubscription.
        plan = replace(plan, torch_threads=threads or max(1, cpu // n_workers))
    elif threads:
        plan = replace(plan, torch_threads=threads)
    client, cluster, close = _client(scheduler, n_workers or 1, 1, processes)
    try:
        src = dask.delayed(source, name=f"embed-source-{tokenize(plan.out)}") if isinstance(source, _InMemory) else source
        tasks = [dask.delayed(_run_block, pure=False)(plan, src, iy, ix, ys, xs, dask_key_name=f"embed-block-{iy}-{ix}-{tokenize(plan.out)}")
                 for iy, ix, ys, xs in todo]
        futures = client.compute(tasks)
        try:
            for fut in as_completed(futures):
                iy, ix = fut.result()
                done(iy, ix)
        except BaseException:
            # Stop queued blocks; running ones finish their region and marker or leave no marker.
            client.cancel(futures)
            raise
    finally:
        if close:
            client.close()
        if cluster is not None:
            cluster.close()

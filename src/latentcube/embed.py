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
from latentcube.constants import EMBEDDING_DIMS, check_band_order
from latentcube.cube import CubeError, cube_crs, open_cube, set_crs

__all__ = ["DEFAULT_BLOCK_PX", "EmbedError", "auto_tile", "block_grid", "embed_cube", "feature_names"]

#: Default spatial block edge in pixels: the unit of parallelism, of resumption and of the Zarr chunks.
#: Memory per block grows with dates x block_px^2 (docs/embed.md), not with the cube size.
DEFAULT_BLOCK_PX = 256
#: Pixel-dates per ``encode_scene`` tile chosen by ``tile="auto"`` (memory of the spatial stage, see auto_tile).
TILE_PIXEL_DATES = 800_000
#: Largest number of dates in one storage chunk (as for cubes: serves map and time-series reads).
MAX_TIME_CHUNK = 64
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


class EmbedError(ValueError):
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


def _sha256(path: Path) -> str:
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


def _check_cube(ds: xr.Dataset, kind: str, model: Any, meta: dict[str, Any], inputs: tuple[str, ...]) -> None:
    """Band order, S1 presence and series length, with the fix in every message."""
    band_dims = {"s2": "band", "s1": "band_s1"}
    for sensor in inputs:
        if sensor not in ds:
            what = "a fusion model needs Sentinel-1 and Sentinel-2" if kind == "fusion" else f"this {sensor} model needs it"
            raise CubeError(f"the cube has no '{sensor}' variable: {what}. Fix: fetch or import {sensor.upper()} into the cube.")
        expected = (meta.get("band_order") or {}).get(sensor)
        if expected is None:
            raise EmbedError(f"the model file records no band order for {sensor!r}; re-export it with latentcube.train.save_model.")
        actual = [str(b) for b in ds[band_dims[sensor]].values]
        try:
            check_band_order(actual, expected, what=f"{sensor} bands of the cube vs the model")
        except ValueError as err:
            raise EmbedError(f"{err}. Fix: ds = ds.sel({band_dims[sensor]}={list(expected)}) (all the model's bands are needed).") from err
    time_dim = "time" if kind == "fusion" or inputs == ("s2",) else "time_s1"
    n_dates = model.n_dates if kind == "fusion" else model.config.n_dates
    if ds.sizes[time_dim] < n_dates:
        raise EmbedError(
            f"the cube has {ds.sizes[time_dim]} dates on '{time_dim}'; the encoder's windows need at least {n_dates}. "
            "Fix: embed a longer period."
        )


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

    from latentcube.train import load_model

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
            out["s2"] = norm.normalize_array(s2, [str(b) for b in ds["band"].values], "s2", axis=1)
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
            out["s1"] = norm.normalize_array(s1, [str(b) for b in ds["band_s1"].values], "s1", axis=1)
    return out


def embed_block(ds: xr.Dataset, model: Any, meta: dict[str, Any], plan: _Plan, ys: slice, xs: slice) -> np.ndarray:
    """Embeddings ``(T, F, h, w)`` float32 of the pixels ``ys`` x ``xs``, NaN where the centre is invalid.

    Reads the block plus ``plan.halo`` pixels of real context on each side (clipped at the scene edge:
    ``encode_scene`` pads the scene with NaN, so context outside the scene counts as invalid, as in
    the per-patch path), encodes, and crops the halo.
    """
    import torch

    height, width = ds.sizes["y"], ds.sizes["x"]
    r = plan.halo
    ry = slice(max(ys.start - r, 0), min(ys.stop + r, height))
    rx = slice(max(xs.start - r, 0), min(xs.stop + r, width))
    inputs = _block_inputs(ds, plan, meta, ry, rx)
    times = ds["time" if plan.time_var == "s2" or plan.on_s2_dates else "time_s1"].values
    dev = _device(plan)
    days = torch.from_numpy(_days(times).astype("float32")).to(dev)
    x = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) for k, v in inputs.items()}
    kw = dict(tile=plan.tile, pixel_chunk=plan.pixel_chunk)
    parts = []
    with torch.inference_mode():
        for name in plan.sensors:
            if plan.kind == "autoencoder":
                z = model.encode_scene(x[name], days, **kw)
            elif name == "fused":
                z = model.encode_scene(x, days, **kw)
            else:  # a fusion model's own sensor encoder, on the same (matched) inputs
                z = model.sensors[name].encode_scene(x[name], days, **kw)
            parts.append(z.float().cpu().numpy())
    oy, ox = ys.start - ry.start, xs.start - rx.start
    h, w = ys.stop - ys.start, xs.stop - xs.start
    emb = np.concatenate(parts, axis=1)[:, :, oy : oy + h, ox : ox + w]
    centre = inputs[plan.time_var][:, :, oy : oy + h, ox : ox + w]
    invalid = ~np.isfinite(centre).any(axis=1)  # every band of the centre pixel missing on that date
    emb[np.broadcast_to(invalid[:, None], emb.shape)] = np.nan
    return emb.astype("float32", copy=False)


def _run_block(plan: _Plan, source: str | _InMemory, iy: int, ix: int, ys: slice, xs: slice) -> tuple[int, int]:
    """Embed one block, write its Zarr region, then (last) its marker. Runs on a Dask worker."""
    t0 = _time.perf_counter()
    model, meta = _model(plan)
    ds = _cube(source)
    emb = embed_block(ds, model, meta, plan, ys, xs)
    n_time, n_feat = emb.shape[:2]
    region = {"time": slice(0, n_time), "feature": slice(0, n_feat), "y": ys, "x": xs}
    block = xr.Dataset({"embedding": (EMBEDDING_DIMS, emb.astype(plan.dtype, copy=False))})
    with warnings.catch_warnings():
        # zarr notes the marker directory as a foreign object in the group: expected, harmless.
        warnings.filterwarnings("ignore", message=r".*\.blocks is not recognized.*")
        # consolidated=False: region writes change no metadata; concurrent writers must not race on .zmetadata.
        block.to_zarr(plan.out, region=region, mode="r+", zarr_format=2, consolidated=False)
    _write_marker(Path(plan.out), iy, ix, {"y": [ys.start, ys.stop], "x": [xs.start, xs.stop], "sha256": plan.sha256,
                                            "seconds": round(_time.perf_counter() - t0, 3)})
    return iy, ix


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
            "window": "11 consecutive dates t-5..t+5, shifted inside the series (docs/method.md)",
            "invalid": "NaN where every input band of the centre pixel is missing on that date",
        },
    }


def _signature(plan: _Plan, shape: tuple[int, ...], block_px: int, source: str) -> dict[str, Any]:
    """What must match for a re-run to resume into an existing store."""
    keep = ("sha256", "kind", "sensors", "time_var", "on_s2_dates", "dtype", "max_gap_days", "s1_smoothing")
    return {**{k: v for k, v in asdict(plan).items() if k in keep}, "sensors": list(plan.sensors),
            "shape": list(shape), "block_px": block_px, "cube": source}


def _create_template(out: Path, ds: xr.Dataset, plan: _Plan, names: list[str], times: np.ndarray, block_px: int,
                     meta: dict[str, Any], signature: dict[str, Any]) -> None:
    """Write the empty store (metadata and coordinates; chunks stay unwritten = NaN) and, last, the signature."""
    import dask.array as da

    n_time, n_feat = len(times), len(names)
    height, width = ds.sizes["y"], ds.sizes["x"]
    chunks = (min(n_time, MAX_TIME_CHUNK), n_feat, min(block_px, height), min(block_px, width))
    data = da.full((n_time, n_feat, height, width), np.nan, dtype=plan.dtype, chunks=chunks)
    tmpl = xr.Dataset(
        {"embedding": (EMBEDDING_DIMS, data)},
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
        "block_px": block_px,
        "source_cube": signature["cube"],
    })
    if out.exists():
        shutil.rmtree(out)
    tmpl.to_zarr(out, mode="w", compute=False, zarr_format=2, consolidated=True,
                 encoding={"embedding": {"chunks": chunks, "dtype": plan.dtype, "_FillValue": np.nan}})
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
    scheduler: Any = None,
    n_workers: int | None = None,
    progress: bool = True,
    device: str | None = None,
    processes: bool = True,
    threads_per_worker: int | None = None,
    tile: int | str | None = "auto",
    pixel_chunk: int = 256,
    overwrite: bool = False,
    on_block: Callable[[int, int], None] | None = None,
) -> Path:
    """Embed every pixel and date of ``cube`` with the model file ``checkpoint`` into the Zarr ``out``.

    Args:
        cube: a cube path (Zarr/NetCDF, opened lazily) or an ``xarray.Dataset`` in the data model.
        checkpoint: a model file from training (``model.pt``, :func:`latentcube.train.save_model`).
            Kind ``fusion`` gives the 7-d fused embedding on the S2 dates; kind ``autoencoder`` gives
            that sensor's own embedding (S2: 9-d on the S2 dates; S1: 2-d on the S1 dates).
        out: output Zarr store (format 2). Re-running with the same arguments resumes: blocks with a
            marker in ``out/.blocks`` are skipped.
        block_px: block edge in pixels; also the storage chunk edge. Memory per worker grows with
            ``dates x (block_px + 14)^2`` (inputs, outputs), not with the cube (docs/embed.md#memory).
        sensors: embeddings to write, concatenated along ``feature`` (``fused_0..6``, ``s1_0..1``,
            ``s2_0..8``). Default: ``"fused"`` for a fusion model, the model's sensor for an autoencoder;
            a fusion model also gives ``("fused", "s1", "s2")``.
        dtype: ``"float32"`` (default) or ``"float16"`` (half the storage; relative rounding error
            <= 2^-11 = 4.9e-4 of each value).
        scheduler: ``None`` = a new ``distributed.LocalCluster`` (closed at the end); a scheduler address
            ``"tcp://host:8786"`` or a ``distributed.Client``; ``"synchronous"`` = in this process, one
            block after another (debugging).
        n_workers: LocalCluster workers (default: 1 with a GPU, else one per CPU core, at most one per
            block). Each worker uses ``cpu_count // n_workers`` torch threads.
        progress: show a progress bar (tqdm) over blocks.
        device: ``"cuda"``/``"cpu"``; default: CUDA when the worker has it.
        processes: LocalCluster with worker processes (default) or threads.
        threads_per_worker: torch threads per worker (default: ``cpu_count // n_workers`` on a LocalCluster,
            torch's default elsewhere; with ``scheduler="synchronous"`` the caller's setting is kept).
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
    from latentcube.train import load_model

    if dtype not in ("float32", "float16"):
        raise EmbedError(f"dtype={dtype!r}: use 'float32' or 'float16' (int8 is not implemented yet).")
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"no such model file: {checkpoint}. Fix: pass the model.pt written by training.")
    if isinstance(cube, xr.Dataset):
        ds, source, source_name = cube, _InMemory(cube), "<in-memory Dataset>"
    else:
        ds = open_cube(cube)
        source = source_name = str(Path(cube).resolve())
    model, meta = load_model(checkpoint)
    kind = meta["kind"]
    chosen = _resolve_sensors(kind, model, sensors)
    if kind == "fusion":
        inputs, time_var, on_s2 = tuple(model.sensor_names), "s2", True
        if set(inputs) - {"s1", "s2"}:
            raise EmbedError(f"fusion over sensors {list(inputs)}: only s1 and s2 cubes are supported.")
        dims = {"fused": model.latent_dim, **{n: m.latent_dim for n, m in model.sensors.items()}}
        halo = model.patch_size // 2
    else:
        own = model.config.sensor
        if own not in ("s1", "s2"):
            raise EmbedError(f"autoencoder for sensor {own!r}: only s1 and s2 cubes are supported.")
        inputs, time_var, on_s2 = (own,), own, False
        dims = {own: model.latent_dim}
        halo = model.config.patch_size // 2
    _check_cube(ds, kind, model, meta, inputs)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise EmbedError("device='cuda' but no CUDA device is available here. Fix: omit device to use the CPU.")

    cpu = os.cpu_count() or 1
    blocks = block_grid(ds.sizes["y"], ds.sizes["x"], block_px)
    out = Path(out)
    plan = _Plan(
        checkpoint=str(checkpoint.resolve()), sha256=_sha256(checkpoint), out=str(out.resolve()), kind=kind,
        sensors=chosen, inputs=inputs, time_var=time_var, on_s2_dates=on_s2, dtype=dtype, halo=halo,
        tile=tile, pixel_chunk=pixel_chunk, device=device, torch_threads=None,
        max_gap_days=_sampling_setting(meta, "max_gap_days", DEFAULT_MAX_GAP_DAYS),
        s1_smoothing=int(_sampling_setting(meta, "s1_smoothing", DEFAULT_S1_SMOOTHING)),
    )
    times = ds["time" if time_var == "s2" else "time_s1"].values
    if tile == "auto":
        plan = replace(plan, tile=auto_tile(len(times), block_px, halo))
    names = feature_names(chosen, dims)
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

    try:
        if not todo:
            pass
        elif scheduler == "synchronous":
            for iy, ix, ys, xs in todo:
                _run_block(plan, source, iy, ix, ys, xs)
                done(iy, ix)
        else:
            _run_distributed(plan, source, todo, scheduler, n_workers, processes, cpu, done, threads_per_worker)
    finally:
        if bar is not None:
            bar.close()
    return out


def _run_distributed(plan: _Plan, source: str | _InMemory, todo: list, scheduler: Any, n_workers: int | None,
                     processes: bool, cpu: int, done: Callable[[int, int], None], threads: int | None) -> None:
    import dask
    from dask.base import tokenize
    from distributed import as_completed

    own_cluster = scheduler is None
    if own_cluster:
        if n_workers is None:
            import torch

            gpu = plan.device == "cuda" or (plan.device is None and torch.cuda.is_available())
            n_workers = 1 if gpu else max(1, min(cpu, len(todo)))
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

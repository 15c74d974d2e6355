"""One block on a worker: its model and cube (cached per worker process), its inputs preprocessed as
training does, the dense encoders, and the write of its region and marker."""

from __future__ import annotations

import contextlib
import time as _time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from latentcube.constants import EMBEDDING_DIMS
from latentcube.cube import open_cube
from latentcube.embed import _store
from latentcube.embed._plan import _device, _Plan
from latentcube.embed._quality import _band_spans, _centre_decoders, reconstruction_error
from latentcube.heap import heap_settings_restored, release_free_memory, reuse_large_blocks
from latentcube.process_state import restored_process_state
from latentcube.stores import write_zarr
from latentcube.timeutils import days_since, nearest_index

#: Values normalised per call while preprocessing a block (bounds its float64 temporaries to ~16 MB).
NORMALIZE_CHUNK_VALUES = 2_000_000

# --------------------------------------------------------------------------------- worker side

# One model and one cube per process, kept between the blocks a worker runs; a new run's key replaces
# them, and ``call_scope`` empties them when a call that used this process returns.
_MODELS: dict[tuple[str, str, str], tuple[Any, dict[str, Any]]] = {}
_CUBES: dict[str, xr.Dataset] = {}


class _InMemory:
    """A Dataset handed to workers as one graph literal (shipped once per worker), not per task."""

    def __init__(self, ds: xr.Dataset) -> None:
        self.ds = ds


@contextlib.contextmanager
def call_scope() -> Iterator[None]:
    """Run an embedding call in this process and leave it as found: torch's threads and TF32 flags
    (``latentcube.process_state``), the malloc settings (``latentcube.heap``) and the caches of models and
    cubes are those of before on exit. Worker processes of a cluster keep them for their next block."""
    try:
        with restored_process_state(), heap_settings_restored():
            yield
    finally:
        _MODELS.clear()
        _CUBES.clear()


def _model(plan: _Plan) -> tuple[Any, dict[str, Any]]:
    """The model, loaded once per worker process and device (keyed by the file's hash)."""
    import torch

    from latentcube.nn.model_file import load_model

    reuse_large_blocks()  # tensors reuse heap memory, not page-faulted mmaps (latentcube.heap); call_scope undoes it
    if plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
    key = (plan.checkpoint, plan.sha256, _device(plan))
    if key[2].startswith("cuda"):
        # Exact float32 (no TF32 convolutions/matmuls): embeddings must not depend on the device.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if key not in _MODELS:
        _MODELS.clear()  # bounded: the previous run's model is not kept beside this one
        model, meta = load_model(plan.checkpoint, map_location=key[2])
        _MODELS[key] = (model.to(key[2]).eval(), meta)
    return _MODELS[key]


def _cube(source: str | _InMemory) -> xr.Dataset:
    if isinstance(source, _InMemory):
        return source.ds
    if source not in _CUBES:
        _CUBES.clear()
        _CUBES[source] = open_cube(source)
    return _CUBES[source]


def _block_inputs(ds: xr.Dataset, plan: _Plan, meta: dict[str, Any], ys: slice, xs: slice) -> dict[str, np.ndarray]:
    """Normalised model inputs ``{sensor: (T, C, h, w)}`` on the output's date axis, NaN = invalid.

    The same steps as the training datasets (latentcube.sampling): S1 smoothed over consecutive
    acquisitions in linear power (per orbit direction when recorded), matched to the S2 dates for
    fusion (nearest within ``max_gap_days``, else NaN), then the checkpoint's normalisation.
    """
    import dask

    from latentcube.preprocess import Normalization, smooth_s1

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
                match = nearest_index(ds["time_s1"].values, ds["time"].values, plan.max_gap_days)
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
    days = torch.from_numpy(days_since(times, origin=times[0]).astype("float32")).to(dev)  # differences only
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
            quality = reconstruction_error(_centre_decoders(model, plan), dense[source].float(), days, targets, spans,
                                           n_dates)
        emb = np.concatenate([dense[name].float().cpu().numpy() for name in plan.sensors], axis=1)
    emb[np.broadcast_to(invalid[:, None], emb.shape)] = np.nan
    return emb.astype("float32", copy=False), quality



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
        q, scale = _store.quantize_int8(emb)
        variables = {"embedding": (EMBEDDING_DIMS, q), "embedding_scale": (grid, scale)}
    else:
        variables = {"embedding": (EMBEDDING_DIMS, emb.astype(plan.dtype, copy=False))}
    variables.update({f"quality_{s}": (grid, v) for s, v in quality.items()})
    block = xr.Dataset(variables)
    with warnings.catch_warnings():
        # zarr notes the marker directory as a foreign object in the group: expected, harmless.
        warnings.filterwarnings("ignore", message=r".*\.blocks is not recognized.*")
        # The store's own Zarr format (a run resumed into a format-2 store stays v2); the consolidated
        # metadata is left alone: region writes change none, and concurrent writers must not race on it.
        write_zarr(block, plan.out, region=region, mode="r+")
    chunks = _store._written_chunks(Path(plan.out), list(block.data_vars), ys, xs)
    _store._write_marker(Path(plan.out), iy, ix, {"y": [ys.start, ys.stop], "x": [xs.start, xs.stop], "sha256": plan.sha256,
                                                   "chunks": chunks,
                                                   "seconds": round(_time.perf_counter() - t0, 3)})

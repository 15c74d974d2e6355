"""``embed_cube`` (a whole cube into a resumable store) and ``embed_pixels`` (a few pixels, in memory)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import xarray as xr

from latentcube.constants import DEFAULT_PIXEL_CHUNK, EMBEDDING_DIMS
from latentcube.cube import CubeError, open_cube, validate_cube
from latentcube.embed._compute import _InMemory, _model, _run_block, call_scope, embed_block
from latentcube.embed._plan import (
    DEFAULT_BLOCK_PX,
    DTYPES,
    MIN_BLOCK_PX,
    EmbedError,
    _check_device,
    _make_plan,
    _warn_if_short_of_memory,
    block_grid,
    worker_memory_estimate,
)
from latentcube.embed._schedule import _default_worker_count, _run_distributed
from latentcube.embed._store import _marker, _prepare_store, _signature, check_blocks
from latentcube.files import OutputLock


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
    allow_missing_s1: bool = False,
) -> Path:
    """Embed every pixel and date of ``cube`` with the model file ``checkpoint`` into the Zarr ``out``.

    Args:
        cube: a cube path (Zarr/NetCDF, opened lazily) or an ``xarray.Dataset`` in the data model.
        checkpoint: a model file from training (``model.pt``, :func:`latentcube.nn.model_file.save_model`).
            Kind ``fusion`` gives the 7-d fused embedding on the S2 dates; kind ``autoencoder`` gives
            that sensor's own embedding (S2: 9-d on the S2 dates; S1: 2-d on the S1 dates).
        out: output Zarr store (Zarr v3, one shard of 8-date chunks per block: docs/embed.md). Re-running
            with the same arguments resumes: blocks with a marker in ``out/.blocks`` are skipped (a store
            written in Zarr format 2 before is finished in format 2).
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
            is left to compute (a cluster would only add a process and its start-up, benchmarks/RESULTS.md);
            a scheduler address ``"tcp://host:8786"`` or a
            ``distributed.Client``; ``"synchronous"`` = in this process, one block after another.
        n_workers: LocalCluster workers (default: 1 with a GPU, else one per ``CORES_PER_WORKER`` (2) CPU
            cores, at most one per block and no more than :func:`worker_memory_estimate` lets fit in 80 %
            of the available memory, see :func:`default_workers`). Each worker uses
            ``cpu_count // n_workers`` torch threads. Pass it to force a cluster of that size.
        progress: show a progress bar (tqdm) over blocks.
        device: ``"cuda"``/``"cpu"``; default: CUDA when the worker has it.
        processes: LocalCluster with worker processes (default) or threads.
        threads_per_worker: torch threads per worker (default: ``cpu_count // n_workers`` on a LocalCluster,
            torch's default elsewhere; blocks run in this process use it for the call and the caller's
            setting is back on return; with ``scheduler="synchronous"`` the caller's setting is used).
        tile, pixel_chunk: passed to ``encode_scene`` (bound its memory; results do not depend on them).
            ``tile="auto"`` (:func:`auto_tile`) keeps the encoder's spatial stage near ``TILE_PIXEL_DATES``
            pixel-dates (peak memory per tile: benchmarks/RESULTS.md).
        overwrite: delete an existing ``out`` and start again (otherwise a compatible store is resumed
            and an incompatible one is an error).
        on_block: called in this process as ``on_block(iy, ix)`` after each block computed by this
            run is written and marked (progress reporting, tests).
        allow_missing_s1: embed with a fusion model although S1 covers none of the S2 dates or pixels
            (its embeddings are then made with S1 absent); by default that is an error, and a coverage
            under half is a warning (:func:`latentcube.cube_checks.check_s1_coverage`).

    Returns:
        ``out`` as a ``Path``; its STAC Item is written beside it, ``<out>.stac.json``
        (:func:`latentcube.stac_item.write_stac_item`). Raises :class:`EmbedError`/:class:`latentcube.cube.CubeError` with the fix
        for a missing cube or model file, a band-order mismatch, a fusion model without S1 in the cube
        (or S1 that covers none of it), fewer dates than the encoder's window, a block under
        ``MIN_BLOCK_PX`` or an unknown device; :class:`latentcube.files.OutputInUseError` while another
        live run writes ``out``.
    """
    from latentcube.nn.model_file import load_model

    _check_device(device)
    if block_px < MIN_BLOCK_PX:
        raise EmbedError(
            f"block_px={block_px} is below the minimum {MIN_BLOCK_PX}: each block also reads a 7-pixel halo of "
            f"context on every side, so a {block_px}-px block reads {(block_px + 14) ** 2 / block_px ** 2:.0f}x the "
            f"pixels it embeds and runs many times slower. Fix: --block-px {DEFAULT_BLOCK_PX} (the default), or at "
            f"least {MIN_BLOCK_PX}.")
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
    if plan.kind == "fusion" and "s1" in plan.inputs:  # S1 on another grid or other dates would embed as absent
        from latentcube.cube_checks import check_s1_coverage

        check_s1_coverage(ds, max_gap_days=plan.max_gap_days, allow_missing=allow_missing_s1, what="the fusion model")
    blocks = block_grid(ds.sizes["y"], ds.sizes["x"], block_px)
    cpu = os.cpu_count() or 1
    signature = _signature(plan, (len(times), len(names), ds.sizes["y"], ds.sizes["x"]), block_px, source_name)
    # One writer per store: a second run (or an --overwrite) while this one is alive is refused, naming it;
    # the lock sits beside the store, so deleting the store cannot delete it.
    with OutputLock(out, "embedding store"):
        _prepare_store(out, ds, plan, names, times, block_px, meta, signature, overwrite)

        todo, broken = check_blocks(out, blocks)
        if broken:
            for iy, ix in broken:  # unmarked until recomputed: a kill meanwhile leaves them to do
                _marker(out, iy, ix).unlink(missing_ok=True)
            (iy, ix), files = next(iter(sorted(broken.items())))
            warnings.warn(f"{len(broken)} finished block(s) of {out} lost chunk files after they were written (block "
                          f"{iy}_{ix}: {', '.join(files[:3])}): they are computed again.", stacklevel=2)
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
            # model and libraries, plus the cluster's start-up (benchmarks/RESULTS.md).
            in_process = n_workers == 1
        if in_process and scheduler is None and threads_per_worker:
            plan = replace(plan, torch_threads=threads_per_worker)
        try:
            # Threads, TF32, malloc settings and caches of blocks run in this process (in-process, or a
            # LocalCluster of threads) are undone on return: the caller's process is left as found.
            with call_scope():
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
        from latentcube.stac_item import write_stac_item  # every block written: describe the store beside it

        write_stac_item(out)
    return out



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

    _check_device(device)
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
    with call_scope():
        model, meta = _model(plan)
        emb = embed_block(ds, model, meta, plan, slice(y0, y1), slice(x0, x1))
    return xr.DataArray(emb, dims=EMBEDDING_DIMS, name="embedding",
                        coords={"time": times, "feature": names, "y": ds["y"].values[y0:y1], "x": ds["x"].values[x0:x1]})

"""The embedding store format: Zarr template and metadata, block markers, int8 codes, and the reader."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube import __version__
from latentcube.constants import EMBEDDING_DIMS
from latentcube.cube import cube_crs, set_crs
from latentcube.embed._plan import EmbedError, _Plan, block_grid
from latentcube.stores import array_layout, block_encoding, root_attrs, write_zarr

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

#: int8 storage: the code of an invalid pixel-date (values use -127..127, symmetric around 0).
INT8_INVALID = -128


def _marker(out: Path, iy: int, ix: int) -> Path:
    return out / MARKER_DIR / f"{iy}_{ix}.done"


def _write_marker(out: Path, iy: int, ix: int, info: dict[str, Any]) -> None:
    """Write the block's marker atomically: a reader sees no file or the complete file, never a part."""
    path = _marker(out, iy, ix)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, path)


def _written_chunks(out: Path, names: list[str], ys: slice, xs: slice) -> dict[str, list[str]]:
    """Chunk files of each variable inside the block ``ys`` x ``xs`` that exist now (Zarr writes no chunk
    that is all fill, so a block's list is what a later check may expect, not every chunk of the region)."""
    found = {}
    for name in names:
        layout = array_layout(out, name)  # either Zarr format: keys "0.0.1.1" (v2) or "c/0/0/1/1" (v3)
        span = {"y": ys, "x": xs}
        ranges = [range(span[d].start // c, -(-span[d].stop // c)) if d in span else range(-(-n // c))
                  for d, c, n in zip(layout.dims or (), layout.chunks, layout.shape, strict=True)]
        keys = (layout.key(idx) for idx in itertools.product(*ranges))
        found[name] = [k for k in keys if (out / name / k).exists()]
    return found


def check_blocks(out: Path, blocks: list[tuple[int, int, slice, slice]]) -> tuple[list, dict[tuple[int, int], list[str]]]:
    """(blocks to compute, {(iy, ix): missing files} of marked blocks whose chunk files went missing).

    A marker records the chunk files its block wrote; one listing per variable tells whether they are
    all still there (a deleted chunk reads as fill, NaN, and would otherwise stay so)."""
    listings: dict[str, set[str]] = {}
    todo, broken = [], {}
    for block in blocks:
        path = _marker(out, block[0], block[1])
        if not path.exists():
            todo.append(block)
            continue
        try:
            chunks = json.loads(path.read_text(encoding="utf-8")).get("chunks") or {}
        except (OSError, ValueError):
            todo.append(block)
            broken[block[:2]] = [str(path.relative_to(out))]
            continue
        missing = []
        for name, keys in chunks.items():
            if name not in listings:
                listings[name] = set(os.listdir(out / name)) if (out / name).is_dir() else set()
            missing += [f"{name}/{k}" for k in keys if k not in listings[name] and not (out / name / k).exists()]
        if missing:
            todo.append(block)
            broken[block[:2]] = missing
    return todo, broken


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

    # One block = one chunk file (a shard of 8-date inner chunks in Zarr v3), written by that block only.
    variables = {"embedding": (EMBEDDING_DIMS, empty((n_time, n_feat, height, width), plan.dtype, fill, chunks))}
    encoding = {"embedding": {**block_encoding(chunks), "dtype": plan.dtype, "_FillValue": fill}}
    extra = (["embedding_scale"] if int8 else []) + [f"quality_{s}" for s in plan.quality_sensors]
    for name in extra:
        variables[name] = (grid, empty((n_time, height, width), "float32", np.nan, grid_chunks))
        encoding[name] = {**block_encoding(grid_chunks), "dtype": "float32", "_FillValue": np.nan}
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
    write_zarr(tmpl, out, mode="w", compute=False, encoding=encoding)  # latentcube.stores.ZARR_FORMAT
    (out / MARKER_DIR).mkdir(exist_ok=True)
    tmp = out / MARKER_DIR / f".{TEMPLATE_FILE}.tmp"
    tmp.write_text(json.dumps(signature, indent=1), encoding="utf-8")
    os.replace(tmp, out / MARKER_DIR / TEMPLATE_FILE)


def _is_embedding_store(out: Path) -> bool:
    """True for a store this module created (possibly incomplete): only those may be deleted."""
    return str(root_attrs(out).get("conventions", "")).startswith("latentcube embedding cube")


class EmbeddingCubeError(EmbedError):
    """An embedding cube, variable or date that cannot be used as asked (reading, maps, export, gap
    filling); the message says why and how to fix it."""


def open_embedding(
    emb: str | Path | xr.Dataset | xr.DataArray, *, chunks: dict[str, int] | None = None, as_dataset: bool = False
) -> xr.DataArray | xr.Dataset:
    """The embeddings of a store written by :func:`embed_cube` (or of a Dataset/DataArray holding one) as float.

    The one reader of embedding stores (gap filling, probes, maps, export use it). Returns ``embedding``
    ``(time, feature, y, x)``, lazy (Dask; a store is read in ``chunks`` as ``xarray.open_zarr`` reads,
    default the storage chunks), with the store's coordinates (CRS in ``spatial_ref``) and the variable's attributes; NaN where
    invalid. A store's float32 embedding is returned as stored, float16 cast (exactly) to float32, and int8
    decoded as ``code x embedding_scale`` (error <= scale / 2 against the float32 embedding); an
    in-memory float embedding keeps its type. ``as_dataset=True`` returns the whole Dataset with that
    ``embedding`` (``embedding_scale`` dropped) and the other variables (``quality_s2``, ``filled``...).
    Raises ``FileNotFoundError`` for a missing path and :class:`EmbeddingCubeError` for no ``embedding``
    variable or other dimensions.
    """
    if isinstance(emb, xr.DataArray):
        ds, what = emb.to_dataset(name="embedding"), "the DataArray"
    elif isinstance(emb, xr.Dataset):
        ds, what = emb, "the Dataset"
    else:
        path = Path(emb)
        if not path.exists():
            raise FileNotFoundError(f"no such embedding store: {path}. Fix: pass the --out of `latentcube embed`.")
        try:
            ds = xr.open_zarr(path, decode_coords="all", chunks=chunks or {})
        except Exception as err:
            raise EmbeddingCubeError(f"cannot read {path} as a Zarr embedding store: {err}. Fix: pass the --out of "
                                     "`latentcube embed`.") from err
        what = str(path)
        for name in ds.data_vars:  # decode_coords moves grid_mapping to encoding; keep it visible
            gm = ds[name].encoding.get("grid_mapping")
            if gm and "grid_mapping" not in ds[name].attrs:
                ds[name].attrs["grid_mapping"] = gm
    if "embedding" not in ds.data_vars:
        raise EmbeddingCubeError(
            f"not an embedding store: {what} has no 'embedding' variable (it has {sorted(map(str, ds.data_vars))}). "
            "Fix: pass the output of `latentcube embed` (a cube of S2 reflectance is embedded first)."
        )
    emb_var = ds["embedding"]
    if set(emb_var.dims) != set(EMBEDDING_DIMS):
        raise EmbeddingCubeError(f"'embedding' of {what} has dimensions {emb_var.dims}; expected {EMBEDDING_DIMS}. "
                                 "Fix: pass the output of `latentcube embed`.")
    attrs = dict(emb_var.attrs)
    if "embedding_scale" in ds:
        # CF decoding has already turned the int8 codes into float32 with NaN for INT8_INVALID (_FillValue).
        out = emb_var.astype("float32") * ds["embedding_scale"].astype("float32")
        for key in ("scale_variable", "decoding"):
            attrs.pop(key, None)
        attrs["long_name"] = str(attrs.get("long_name", "")).replace(", int8 codes", "")
        attrs["stored_as"] = "int8 x embedding_scale"
        ds = ds.drop_vars("embedding_scale")
    elif not np.issubdtype(emb_var.dtype, np.floating):
        raise EmbeddingCubeError(f"'embedding' of {what} is {emb_var.dtype} without an 'embedding_scale' to decode it. "
                                 "Fix: pass the store as `latentcube embed` wrote it.")
    else:
        out = emb_var
    if not isinstance(emb, (xr.Dataset, xr.DataArray)) or out.dtype == np.float16:
        out = out.astype("float32")
    out = out.transpose(*EMBEDDING_DIMS)
    out.name = "embedding"
    out.attrs = attrs
    return ds.assign(embedding=out) if as_dataset else out


def dates_with_data(emb: xr.DataArray) -> np.ndarray:
    """Per date of an embedding ``(time, feature, y, x)``: whether any pixel has an embedding (a pixel-date is
    valid in every feature or in none, so the first feature tells)."""
    return emb.isel(feature=0).notnull().any(("y", "x")).values


def dates_without_valid_pixel(path: str | Path) -> list[str]:
    """The store's dates (``YYYY-MM-DD``) on which no pixel has an embedding: every S2 acquisition of the cube is a
    date of the store, and one under cloud (or nodata) everywhere stays all NaN."""
    emb = open_embedding(path)
    any_valid = dates_with_data(emb)
    return [str(pd.Timestamp(t).date()) for t, ok in zip(emb["time"].values, any_valid, strict=True) if not ok]


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
        # Every S2 acquisition of the cube is a date of the store; one under cloud everywhere is all NaN.
        "dates_without_valid_pixel": [str(t.date()) for t, v in zip(times, valid, strict=True) if not v > 0],
        "value_p1_p50_p99": [float(v) for v in np.percentile(sample, [1, 50, 99])] if sample.size else None,
    }
    if n_blocks is not None:
        todo, broken = check_blocks(path, block_grid(emb.sizes["y"], emb.sizes["x"], block_px))
        done = n_blocks - len(todo)
        info["blocks_written"] = f"{done} of {n_blocks}" + ("" if done >= n_blocks else
                                                             " (incomplete: re-run the same embed command to finish)")
        if broken:  # said in blocks_written too: the table of `latentcube info` shows that row
            info["missing_chunks"] = "; ".join(
                f"block {iy}_{ix}: {', '.join(files[:3])}{' ...' if len(files) > 3 else ''}"
                for (iy, ix), files in sorted(broken.items())
            )
            info["blocks_written"] = (f"{done} of {n_blocks} (incomplete: {len(broken)} finished block(s) lost chunk "
                                      f"files after they were written ({info['missing_chunks']}), read as NaN; re-run "
                                      "the same embed command to compute them again)")
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

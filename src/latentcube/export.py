"""Export of embedding cubes to GeoTIFF: one multi-band file per date, readable by GDAL / QGIS.

``export_geotiff(emb, out_dir)`` writes ``<prefix>_<YYYY-MM-DD>.tif`` for every (or every requested)
date: bands = the features of the variable (band descriptions = feature names), float32, nodata NaN,
the cube's CRS and the affine transform of its pixel grid (origin = first pixel centre minus half a
pixel), tiled and DEFLATE-compressed. Written with rasterio (direct control over band descriptions,
tags and creation options; rioxarray's ``to_raster`` would do the same through one more layer).
See docs/products.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube import __version__
from latentcube.cube import cube_crs
from latentcube.gapfill import EmbeddingCubeError, as_embedding, match_dates

__all__ = ["export_geotiff", "grid_transform"]

DTYPES = ("float32", "float64")
#: Dataset attributes copied into every file's GDAL metadata (provenance for users of the single files).
_TAGS = ("geoemb:model", "geoemb:type", "checkpoint_sha256", "model_kind", "source_cube", "latentcube_version",
         "latentcube:gapfill")


def grid_transform(x: np.ndarray, y: np.ndarray):
    """The ``affine.Affine`` of a regular grid given its pixel-centre coordinates (metres).

    Origin = first centre minus half a pixel in each axis (``y`` usually decreasing: a negative ``dy``
    gives the usual north-up transform). Raises :class:`EmbeddingCubeError` for fewer than two pixels per axis
    or an irregular spacing.
    """
    from affine import Affine

    x, y = np.asarray(x, "float64"), np.asarray(y, "float64")
    if len(x) < 2 or len(y) < 2:
        raise EmbeddingCubeError(f"a GeoTIFF needs at least 2 x 2 pixels to know the pixel size; grid is {len(y)} x {len(x)}.")
    dx, dy = x[1] - x[0], y[1] - y[0]
    for name, c, d in (("x", x, dx), ("y", y, dy)):
        if d == 0 or not np.allclose(np.diff(c), d, rtol=1e-6, atol=1e-6 * abs(d)):
            raise EmbeddingCubeError(f"irregular pixel spacing along {name}: a GeoTIFF needs a regular grid. Fix: resample.")
    return Affine(dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2)


def _file_names(times: np.ndarray, prefix: str) -> list[str]:
    """``<prefix>_<YYYY-MM-DD>.tif``; with two acquisitions on one day, the time of day is added to all."""
    idx = pd.DatetimeIndex(times)
    days = [t.strftime("%Y-%m-%d") for t in idx]
    if len(set(days)) < len(days):
        days = [t.strftime("%Y-%m-%dT%H%M%S") for t in idx]
    return [f"{prefix}_{d}.tif" for d in days]


def export_geotiff(
    emb: str | Path | xr.Dataset,
    out_dir: str | Path,
    *,
    variable: str = "embedding",
    dates: Sequence[Any] | None = None,
    dtype: str = "float32",
    prefix: str | None = None,
    compress: str = "deflate",
    progress: bool = True,
) -> list[Path]:
    """Write one GeoTIFF per date of ``variable`` and return their paths (in date order).

    Args:
        emb: embedding cube (Zarr path or Dataset; a gap-filled cube works too).
        out_dir: output folder (created).
        variable: a ``(time, feature, y, x)`` variable (bands = features) or a ``(time, y, x)`` one (one
            band), e.g. ``embedding``, ``quality_s2`` or ``filled``.
        dates: ``YYYY-MM-DD`` dates to export (matched by calendar day; an absent date is an error naming
            the nearest); default all.
        dtype: ``float32`` (default) or ``float64``. NaN is the nodata value.
        prefix: file-name prefix (default: ``variable``).
        compress: GDAL compression (``deflate``, ``lzw``, ``zstd``, ``none``); floating-point predictor.
        progress: progress bar over dates.

    Each file carries the CRS (WKT), the transform from :func:`grid_transform`, band descriptions = feature
    names, and tags: the date, the variable and the cube's provenance attributes (``:`` in their names
    written as ``_``, e.g. ``geoemb_model``).
    """
    import rasterio
    from rasterio.crs import CRS as RioCRS

    if dtype not in DTYPES:
        raise EmbeddingCubeError(f"dtype={dtype!r}: GeoTIFF export writes {' or '.join(DTYPES)} (NaN = nodata).")
    if isinstance(emb, xr.Dataset) and variable not in emb.data_vars:
        raise EmbeddingCubeError(f"no {variable!r} variable in the cube (has {sorted(map(str, emb.data_vars))}).")
    ds = as_embedding(emb) if variable == "embedding" else _with_variable(emb, variable)
    da = ds[variable]
    if da.dims == ("time", "y", "x"):
        da = da.expand_dims(feature=[variable], axis=1)
    elif da.dims != ("time", "feature", "y", "x"):
        raise EmbeddingCubeError(f"{variable!r} has dimensions {da.dims}; export needs (time, feature, y, x) or (time, y, x).")
    transform = grid_transform(da["x"].values, da["y"].values)
    crs = RioCRS.from_wkt(cube_crs(ds).to_wkt())
    idx = list(range(da.sizes["time"])) if dates is None else match_dates(da["time"].values, dates)
    names = _file_names(da["time"].values, prefix or variable)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_bands, height, width = da.sizes["feature"], da.sizes["y"], da.sizes["x"]
    profile: dict[str, Any] = {
        "driver": "GTiff", "dtype": dtype, "count": n_bands, "height": height, "width": width, "crs": crs,
        "transform": transform, "nodata": float("nan"), "BIGTIFF": "IF_SAFER",
    }
    if compress and compress.lower() != "none":
        profile.update(compress=compress, predictor=3)  # predictor 3: floating-point differencing
    if height >= 256 and width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    features = [str(f) for f in da["feature"].values]
    # GDAL reads "key:sub=value" as a key "key" with value "sub=value": write "geoemb_model" etc.
    common = {k.replace(":", "_"): (v if isinstance(v, str) else json.dumps(v)) for k, v in ds.attrs.items() if k in _TAGS}
    iterator: Any = idx
    if progress and len(idx) > 1:
        from tqdm.auto import tqdm

        iterator = tqdm(idx, desc=f"export {variable}", unit="date")
    paths = []
    for t in iterator:
        data = np.asarray(da.isel(time=t).values, dtype=dtype)  # (F, H, W): one date in memory
        path = out_dir / names[t]
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            for b, name in enumerate(features, start=1):
                dst.set_band_description(b, name)
            dst.update_tags(**common, date=str(pd.Timestamp(da["time"].values[t])), variable=variable,
                            exported_by=f"latentcube {__version__}")
        paths.append(path)
    return paths


def _with_variable(emb: str | Path | xr.Dataset, variable: str) -> xr.Dataset:
    """The cube opened as an embedding cube, checked to contain ``variable``."""
    ds = as_embedding(emb)
    if variable not in ds.data_vars:
        raise EmbeddingCubeError(f"no {variable!r} variable in {emb if not isinstance(emb, xr.Dataset) else 'the cube'} "
                           f"(has {sorted(map(str, ds.data_vars))}).")
    return ds

"""Export of embedding cubes to GeoTIFF: one multi-band file per date, readable by GDAL / QGIS.

``export_geotiff(emb, out_dir)`` writes ``<prefix>_<YYYY-MM-DD>.tif`` for every (or every requested)
date or window: bands = the features of the variable (band descriptions = feature names), float32,
nodata NaN, the cube's CRS and the affine transform of its pixel grid (origin = first pixel centre minus
half a pixel), tiled and DEFLATE-compressed. ``cog=True`` writes cloud-optimised GeoTIFFs (GDAL's COG
driver: tiles, overviews averaged over valid pixels, header first, so QGIS and HTTP range readers read
only what they show). An int8 store is written as int8 by default: per file and band a GDAL scale and
offset (value = code x scale + offset; codes -127..127 span the band's range on that date) and nodata
-128. Written with rasterio (direct control over band descriptions, tags and creation options;
rioxarray's ``to_raster`` would do the same through one more layer). See docs/products.md.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube import __version__
from latentcube.cube import cube_crs
from latentcube.embed import dates_with_data
from latentcube.gapfill import EmbeddingCubeError, as_embedding, match_dates

__all__ = ["ExportedFiles", "NoValidPixelWarning", "export_geotiff", "grid_transform", "overview_levels",
           "quantize_bands"]

DTYPES = ("float32", "float64", "int8")
#: int8 export: the code of nodata (NaN); valid codes use -127..127.
INT8_NODATA = -128
#: COG overviews halve the grid until its shorter side would fall under this many pixels (at least one level).
MIN_OVERVIEW_PX = 8
#: Dataset attributes copied into every file's GDAL metadata (provenance for users of the single files).
_TAGS = ("geoemb:model", "geoemb:type", "checkpoint_sha256", "model_kind", "source_cube", "latentcube_version",
         "latentcube:gapfill")


class NoValidPixelWarning(UserWarning):
    """Some exported files hold no valid pixel (all nodata); they are written all the same."""


class ExportedFiles(list):
    """The paths :func:`export_geotiff` wrote (a list, in date order), and ``empty``: those of them that hold no
    valid pixel (every value nodata), with ``empty_dates`` their dates; ``empty_message`` says so in words
    (None when every file holds data)."""

    def __init__(self, paths: Sequence[Path] = (), empty: Sequence[Path] = (), empty_dates: Sequence[str] = (),
                 *, gap_filled: bool = False):
        super().__init__(paths)
        self.empty, self.empty_dates, self.gap_filled = list(empty), list(empty_dates), gap_filled

    @property
    def empty_message(self) -> str | None:
        if not self.empty:
            return None
        first = ", ".join(self.empty_dates[:3]) + (f" and {len(self.empty) - 3} more" if len(self.empty) > 3 else "")
        why = ("gap filling does not extrapolate, so a date before a pixel's first or after its last clear "
               "observation stays empty" if self.gap_filled else "no pixel had a clear observation on those dates")
        return (f"{len(self.empty)} of {len(self)} files hold no valid pixel (all nodata): {first}. They are written "
                f"all the same (a complete series); {why}. To leave them out, pass only the other dates "
                "(--dates / dates=[...])")


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
    dtype: str | None = None,
    prefix: str | None = None,
    compress: str = "deflate",
    progress: bool = True,
    cog: bool = False,
) -> ExportedFiles:
    """Write one GeoTIFF per date (or window) of ``variable`` and return their paths (in date order).

    Files that hold no valid pixel (e.g. dates of a gap-filled cube outside every pixel's clear
    observations) are written too, and named: a :class:`NoValidPixelWarning` and the returned
    :class:`ExportedFiles`' ``empty`` / ``empty_dates`` / ``empty_message``.

    Args:
        emb: embedding cube (Zarr path or Dataset; a gap-filled cube works too).
        out_dir: output folder (created).
        variable: a ``(time, feature, y, x)`` variable (bands = features) or a ``(time, y, x)`` one (one
            band), e.g. ``embedding``, ``quality_s2`` or ``filled``.
        dates: ``YYYY-MM-DD`` dates to export (matched by calendar day; an absent date is an error naming
            the nearest); default all.
        dtype: ``float32``, ``float64`` (NaN = nodata) or ``int8`` (codes with a GDAL scale and offset per
            band and file, nodata -128; error <= scale / 2 against the store's values). Default: ``int8``
            for an int8 store's ``embedding``, else ``float32``.
        prefix: file-name prefix (default: ``variable``).
        compress: GDAL compression (``deflate``, ``lzw``, ``zstd``, ``none``); floating-point predictor.
        progress: progress bar over dates.
        cog: write cloud-optimised GeoTIFFs (GDAL ``COG`` driver) with overviews (average of the valid
            pixels, halving until the shorter side is under ``MIN_OVERVIEW_PX``).

    Each file carries the CRS (WKT), the transform from :func:`grid_transform`, band descriptions = feature
    names, and tags: the date, the variable and the cube's provenance attributes (``:`` in their names
    written as ``_``, e.g. ``geoemb_model``); a window store's files also carry ``window``,
    ``window_start`` and ``window_end``.
    """
    import rasterio
    from rasterio.crs import CRS as RioCRS

    if dtype is not None and dtype not in DTYPES:
        raise EmbeddingCubeError(f"dtype={dtype!r}: GeoTIFF export writes {', '.join(DTYPES)} (NaN = nodata; int8: "
                                 f"{INT8_NODATA}).")
    if isinstance(emb, xr.Dataset) and variable not in emb.data_vars:
        raise EmbeddingCubeError(f"no {variable!r} variable in the cube (has {sorted(map(str, emb.data_vars))}).")
    ds = as_embedding(emb) if variable == "embedding" else _with_variable(emb, variable)
    da = ds[variable]
    if dtype is None:
        dtype = "int8" if str(da.attrs.get("stored_as", "")).startswith("int8") else "float32"
    if da.dims == ("time", "y", "x"):
        da = da.expand_dims(feature=[variable], axis=1)
    elif da.dims != ("time", "feature", "y", "x"):
        raise EmbeddingCubeError(f"{variable!r} has dimensions {da.dims}; export needs (time, feature, y, x) or (time, y, x).")
    transform = grid_transform(da["x"].values, da["y"].values)
    crs = RioCRS.from_wkt(cube_crs(ds).to_wkt())
    idx = list(range(da.sizes["time"])) if dates is None else match_dates(da["time"].values, dates,
                                                                         usable=lambda: dates_with_data(da))
    names = _file_names(da["time"].values, prefix or variable)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_bands, height, width = da.sizes["feature"], da.sizes["y"], da.sizes["x"]
    int8 = dtype == "int8"
    profile: dict[str, Any] = {
        "driver": "COG" if cog else "GTiff", "dtype": dtype, "count": n_bands, "height": height, "width": width,
        "crs": crs, "transform": transform, "nodata": INT8_NODATA if int8 else float("nan"), "BIGTIFF": "IF_SAFER",
    }
    if compress and compress.lower() != "none":
        # COG: PREDICTOR=YES picks 3 (floating point) or 2 (integers); GTiff: 3 for floats, 2 for int8.
        profile.update(compress=compress, predictor="YES" if cog else (2 if int8 else 3))
    if cog:
        profile.update(overview_resampling="AVERAGE", overview_count=overview_levels(height, width))
    elif height >= 256 and width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    features = [str(f) for f in da["feature"].values]
    # GDAL reads "key:sub=value" as a key "key" with value "sub=value": write "geoemb_model" etc.
    common = {k.replace(":", "_"): (v if isinstance(v, str) else json.dumps(v)) for k, v in ds.attrs.items() if k in _TAGS}
    iterator: Any = idx
    if progress and len(idx) > 1:
        from tqdm.auto import tqdm

        iterator = tqdm(idx, desc=f"export {variable}", unit="date")
    paths, empty, empty_days = [], [], []
    days = [n.removeprefix(f"{prefix or variable}_").removesuffix(".tif") for n in names]  # YYYY-MM-DD[THHMMSS]
    for t in iterator:
        values = np.asarray(da.isel(time=t).values, dtype="float64" if int8 else dtype)  # (F, H, W): one date
        path = out_dir / names[t]
        if not np.isfinite(values).any():  # written all the same, and named after the loop
            empty.append(path)
            empty_days.append(days[t])
        with rasterio.open(path, "w", **profile) as dst:
            if int8:
                data, scales, offsets = quantize_bands(values)
                dst.scales, dst.offsets = tuple(scales), tuple(offsets)
            else:
                data = values
            dst.write(data)
            for b, name in enumerate(features, start=1):
                dst.set_band_description(b, name)
            dst.update_tags(**common, **_window_tags(da, t), date=str(pd.Timestamp(da["time"].values[t])),
                            variable=variable, exported_by=f"latentcube {__version__}",
                            **({"int8_decoding": f"value = code x scale + offset per band; {INT8_NODATA} = nodata; "
                                "error <= scale / 2"} if int8 else {}))
        paths.append(path)
    result = ExportedFiles(paths, empty, empty_days, gap_filled="latentcube:gapfill" in ds.attrs)
    if result.empty_message:
        warnings.warn(result.empty_message + ".", NoValidPixelWarning, stacklevel=2)
    return result


def overview_levels(height: int, width: int) -> int:
    """COG overview levels: halve until the shorter side would be under ``MIN_OVERVIEW_PX`` (at least one)."""
    levels, side = 0, min(height, width)
    while side / 2 ** (levels + 1) >= MIN_OVERVIEW_PX and levels < 16:
        levels += 1
    return max(levels, 1)


def quantize_bands(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 codes ``(F, H, W)`` and per-band GDAL ``scale``, ``offset`` of float ``values`` (NaN = nodata).

    Per band: ``offset`` = mid-range and ``scale`` = range / 254 of its finite values, ``code =
    round((v - offset) / scale)`` in -127..127, so ``code x scale + offset`` is within ``scale / 2`` of
    ``v``; NaN -> ``INT8_NODATA``. A constant band gets scale 1 and codes 0; an all-NaN band scale 1, offset 0.
    """
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bands
        lo = np.nanmin(np.where(finite, values, np.nan), axis=(1, 2))
        hi = np.nanmax(np.where(finite, values, np.nan), axis=(1, 2))
    empty = ~np.isfinite(lo)
    lo, hi = np.where(empty, 0.0, lo), np.where(empty, 0.0, hi)
    offset = (hi + lo) / 2
    scale = np.where(hi > lo, (hi - lo) / 254.0, 1.0)
    codes = np.rint((np.where(finite, values, 0.0) - offset[:, None, None]) / scale[:, None, None])
    codes = np.clip(codes, -127, 127).astype("int8")
    codes[~finite] = INT8_NODATA
    return codes, scale, offset


def _window_tags(da: xr.DataArray, t: int) -> dict[str, str]:
    """``window``, ``window_start``, ``window_end`` of a window store's time step (none otherwise)."""
    if "window" not in da.coords:
        return {}
    return {"window": str(da["window"].values[t]),
            "window_start": str(pd.Timestamp(da["window_start"].values[t]).date()),
            "window_end": str(pd.Timestamp(da["window_end"].values[t]).date())}


def _with_variable(emb: str | Path | xr.Dataset, variable: str) -> xr.Dataset:
    """The cube opened as an embedding cube, checked to contain ``variable``."""
    ds = as_embedding(emb)
    if variable not in ds.data_vars:
        raise EmbeddingCubeError(f"no {variable!r} variable in {emb if not isinstance(emb, xr.Dataset) else 'the cube'} "
                           f"(has {sorted(map(str, ds.data_vars))}).")
    return ds

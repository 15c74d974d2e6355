"""The cube data model: one ``xarray.Dataset`` per area, its validation and its Zarr/NetCDF I/O.

Convention (docs/data-model.md):

* ``s2``: float32 ``(time, band, y, x)``, surface reflectance 0-1, NaN where invalid; bands a subset of
  :data:`latentcube.constants.S2_BANDS` in that order (models need all ten).
* ``s1``: float32 ``(time_s1, band_s1, y, x)``, backscatter in linear power (gamma0 or sigma0), NaN invalid.
* ``y``/``x``: pixel-centre coordinates in metres of a projected CRS, regular spacing, recorded CF-style in
  a scalar ``spatial_ref`` coordinate (read by rioxarray and odc-geo) that every spatial variable names
  in its ``grid_mapping`` attribute.
* optional ``s2_scl`` ``(time, y, x)`` uint8 scene classes, ``landcover`` ``(y, x)``, other ``(y, x)`` layers.
* attrs: ``latentcube_version``, ``source`` (provenance) and free-form provenance keys.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS

from latentcube import __version__
from latentcube.constants import S1_BANDS, S1_DIMS, S2_BANDS, S2_DIMS
from latentcube.errors import LatentcubeError

__all__ = [
    "S1_PHYSICAL_RANGE",
    "S2_PHYSICAL_RANGE",
    "CubeError",
    "cube_crs",
    "impossible_values",
    "is_cube_store",
    "cube_summary",
    "new_cube",
    "open_cube",
    "pixel_size_m",
    "save_cube",
    "set_crs",
    "validate_cube",
]

#: S2 surface reflectance a sensor can report: L2A bottom-of-atmosphere reflectance of any natural surface
#: (fresh snow, bright cloud tops ~1.0-1.6) stays below 2.0, and atmospheric-correction undershoot of dark
#: water stays above -0.5 (the L2A DN offset reaches -0.1). Outside: fill values (65535 -> 6.55, 1e30),
#: saturation or corruption, never a measurement. Values equal to a bound are kept.
S2_PHYSICAL_RANGE: tuple[float, float] = (-0.5, 2.0)

#: S1 backscatter in linear power a sensor can report: 0 up to 10^4 (+40 dB), above the brightest point
#: targets (corner reflectors, ships, urban double bounce reach ~+30 dB in a 10 m pixel). Negative power
#: is impossible; exactly 0 (and the dB of it) is NaN after normalisation anyway.
S1_PHYSICAL_RANGE: tuple[float, float] = (0.0, 1.0e4)



def impossible_values(values: np.ndarray, sensor: str) -> np.ndarray:
    """Boolean mask of the values of ``values`` (S2 reflectance or S1 linear power) no sensor can measure:
    infinite or outside :data:`S2_PHYSICAL_RANGE` / :data:`S1_PHYSICAL_RANGE`. NaN (clouds, nodata) is not
    impossible, just missing."""
    lo, hi = S2_PHYSICAL_RANGE if sensor == "s2" else S1_PHYSICAL_RANGE
    with np.errstate(invalid="ignore"):
        return (values < lo) | (values > hi)  # NaN compares False; +-inf falls outside


#: Values sampled per variable for the cheap range checks of :func:`validate_cube`.
_SAMPLE_TARGET = 2_000_000


class CubeError(LatentcubeError, ValueError):
    """A cube does not follow the data model; the message names the problem and the fix."""


# --------------------------------------------------------------------------------------------- CRS


def set_crs(ds: xr.Dataset, crs: Any) -> xr.Dataset:
    """Return ``ds`` with a CF ``spatial_ref`` coordinate describing ``crs`` and its affine transform.

    ``crs`` is anything :meth:`pyproj.CRS.from_user_input` accepts (``"EPSG:32631"``, an int, WKT).
    The ``GeoTransform`` attribute (GDAL order) is derived from the ``x``/``y`` pixel centres so that
    rioxarray, GDAL and odc-geo agree on pixel edges.
    """
    crs = CRS.from_user_input(crs)
    attrs = dict(crs.to_cf())
    attrs["spatial_ref"] = crs.to_wkt()  # the key GDAL and rioxarray read first
    if "x" in ds.coords and "y" in ds.coords and ds.sizes.get("x", 0) > 1 and ds.sizes.get("y", 0) > 1:
        x, y = ds["x"].values, ds["y"].values
        dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
        attrs["GeoTransform"] = f"{x[0] - dx / 2} {dx} 0.0 {y[0] - dy / 2} 0.0 {dy}"
    ds = ds.assign_coords(spatial_ref=xr.DataArray(np.int32(0), attrs=attrs))
    for name, var in ds.data_vars.items():
        if "x" in var.dims and "y" in var.dims:
            ds[name].attrs["grid_mapping"] = "spatial_ref"
    return ds


def cube_crs(ds: xr.Dataset) -> CRS:
    """The cube's CRS from its ``spatial_ref`` coordinate; :class:`CubeError` if it has none."""
    if "spatial_ref" not in ds.variables:
        raise CubeError(
            "missing CRS: the cube has no 'spatial_ref' coordinate. "
            "Fix: latentcube.cube.set_crs(ds, 'EPSG:<code>') (or ds.rio.write_crs(...))."
        )
    attrs = ds["spatial_ref"].attrs
    wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
    try:
        return CRS.from_wkt(wkt) if wkt else CRS.from_cf(attrs)
    except Exception as err:  # pyproj raises several types for unreadable CRS
        raise CubeError(
            f"unreadable CRS in 'spatial_ref' ({err}). Fix: set it again with latentcube.cube.set_crs."
        ) from err


# ----------------------------------------------------------------------------------- construction


def new_cube(
    *,
    s2: np.ndarray,
    time: Sequence[Any],
    y: np.ndarray,
    x: np.ndarray,
    crs: Any,
    bands: Sequence[str] = S2_BANDS,
    s1: np.ndarray | None = None,
    time_s1: Sequence[Any] | None = None,
    bands_s1: Sequence[str] = S1_BANDS,
    s2_scl: np.ndarray | None = None,
    layers: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Build a cube from NumPy (or Dask) arrays in the data model's layout.

    Args:
        s2: reflectance 0-1, shape ``(time, band, y, x)``, NaN invalid; cast to float32.
        time, time_s1: acquisition times (anything ``pandas.to_datetime`` reads; UTC, stored naive).
        y, x: pixel-centre coordinates in metres of ``crs``.
        crs: a projected CRS (``"EPSG:32632"``...).
        s1: linear backscatter ``(time_s1, band_s1, y, x)``; requires ``time_s1``.
        s2_scl: scene classes ``(time, y, x)``, stored as uint8.
        layers: extra per-pixel ``(y, x)`` layers such as ``landcover``.
        attrs: provenance attributes merged into the dataset attrs.
    """
    coords = {
        "time": pd.to_datetime(list(time)).values.astype("datetime64[ns]"),
        "band": list(bands),
        "y": np.asarray(y, dtype="float64"),
        "x": np.asarray(x, dtype="float64"),
    }
    data_vars: dict[str, Any] = {"s2": (S2_DIMS, s2.astype("float32", copy=False))}
    if s1 is not None:
        if time_s1 is None:
            raise CubeError("s1 given without time_s1. Fix: pass the S1 acquisition times as time_s1=.")
        coords["time_s1"] = pd.to_datetime(list(time_s1)).values.astype("datetime64[ns]")
        coords["band_s1"] = list(bands_s1)
        data_vars["s1"] = (S1_DIMS, s1.astype("float32", copy=False))
    if s2_scl is not None:
        data_vars["s2_scl"] = (("time", "y", "x"), s2_scl.astype("uint8", copy=False))
    for name, layer in (layers or {}).items():
        data_vars[name] = (("y", "x"), layer)
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs.update(
        {
            "latentcube_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "conventions": "latentcube cube v1 (docs/data-model.md)",
        }
    )
    ds.attrs.update(dict(attrs or {}))
    ds["s2"].attrs.update({"long_name": "Sentinel-2 L2A surface reflectance", "units": "1"})
    if "s1" in ds:
        ds["s1"].attrs.update({"long_name": "Sentinel-1 backscatter, linear power", "units": "1"})
    return set_crs(ds, crs)


# ------------------------------------------------------------------------------------- validation


#: Spatial storage chunks per axis that the validation sample of a lazy (Dask) cube reads: a stride over
#: every chunk would read the whole cube (a tile-year of S2 is ~350 GB); evenly spaced chunk windows keep
#: validating it to a few GB.
SAMPLE_CHUNKS_PER_AXIS = 4


def _chunk_windows(da: xr.DataArray) -> xr.DataArray:
    """``da`` restricted to at most ``SAMPLE_CHUNKS_PER_AXIS`` evenly spaced storage chunks along y and x
    when it is Dask-backed with more; unchanged otherwise (in memory, a stride costs nothing)."""
    chunks = da.chunks  # of the data only (DataArray.chunksizes also checks coordinates, e.g. orbit_state)
    if chunks is None:
        return da
    picks = {}
    for dim in ("y", "x"):
        sizes = chunks[da.dims.index(dim)] if dim in da.dims else ()
        if len(sizes) <= SAMPLE_CHUNKS_PER_AXIS:
            continue
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        chosen = np.unique(np.linspace(0, len(sizes) - 1, SAMPLE_CHUNKS_PER_AXIS).round().astype(int))
        picks[dim] = np.concatenate([np.arange(starts[i], starts[i] + sizes[i]) for i in chosen])
    return da.isel(picks) if picks else da


def _sample(da: xr.DataArray, target: int = _SAMPLE_TARGET) -> np.ndarray:
    """A strided subsample of ``da``'s values (of a few chunk windows on lazy arrays), flattened to float64."""
    da = _chunk_windows(da)
    step = max(1, int(np.ceil((da.size / max(target, 1)) ** (1 / max(da.ndim, 1)))))
    sub = da.isel({d: slice(None, None, step) for d in da.dims})
    return np.asarray(_read(sub), dtype="float64").ravel()


def _read(da: xr.DataArray) -> np.ndarray:
    """``da.values``, with a decode failure of a corrupt chunk turned into a :class:`CubeError` with the fix
    (the codecs' own messages, e.g. "error during blosc decompression: -1", name no file)."""
    try:
        return np.asarray(da.values)
    except LatentcubeError:
        raise
    except Exception as err:  # every codec raises its own type
        raise CubeError(
            f"cannot read '{da.name}': a chunk file does not decode ({type(err).__name__}: {err}). Fix: "
            "`latentcube validate --full CUBE` names the chunk file; re-create the cube or restore that file."
        ) from err


#: Share of sampled pixel-dates with every band exactly 0 above which a cube is refused (below: a warning).
ZERO_PIXEL_ERROR_FRACTION = 0.005


def _check_zero_pixels(da: xr.DataArray, name: str) -> None:
    """Pixel-dates whose every band is exactly 0 are nodata in disguise (no real reflectance or backscatter
    is 0 in all bands): they would train as real dark pixels. Refuse a cube with many, warn on a few."""
    da = _chunk_windows(da)
    band_dim = da.dims[1]
    other = [d for d in da.dims if d != band_dim]
    step = max(1, int(np.ceil((da.size / da.sizes[band_dim] / (_SAMPLE_TARGET // 10)) ** (1 / len(other)))))
    sub = _read(da.isel({d: slice(None, None, step) for d in other}))
    zero = (sub == 0).all(axis=1)
    n = int(zero.sum())
    if not n:
        return
    share = n / zero.size
    fix = (f"Fix: mask the nodata value as NaN, e.g. ds['{name}'] = ds['{name}'].where((ds['{name}'] != 0)"
           f".any('{band_dim}')) (importers do this with --{name}-nodata 0).")
    if share >= ZERO_PIXEL_ERROR_FRACTION:
        raise CubeError(f"{share:.1%} of the sampled {name} pixel-dates are 0 in every band: nodata stored as 0, "
                        f"not NaN. {fix}")
    import warnings

    warnings.warn(f"{n} sampled {name} pixel-dates ({share:.2%}) are 0 in every band, probably nodata. {fix}",
                  stacklevel=3)


#: Largest S2 L2A digital number (uint16): values far above it are fill values, not unscaled reflectance.
_MAX_DN = 65535.0
#: Values above 2 with a median in this range are the uint16 fill scaled to reflectance (65535 x 1e-4 =
#: 6.5535, 6.4535 with the -0.1 offset), not digital numbers (those have a median of hundreds to thousands).
_FILL_SCALED = (6.0, 7.0)


def _share_impossible(sample: np.ndarray, sensor: str) -> str:
    bad = impossible_values(sample, sensor)
    return f"{np.count_nonzero(bad):,} ({np.mean(bad):.2%})"


def _check_impossible(sample: np.ndarray, sensor: str) -> None:
    """Warn about sampled values no sensor can measure. Every read masks them (Normalization), so they
    do not stop a run, but they mean a fill value was not masked or the data is corrupt."""
    n = int(np.count_nonzero(impossible_values(sample, sensor)))
    if not n:
        return
    import warnings

    lo, hi = S2_PHYSICAL_RANGE if sensor == "s2" else S1_PHYSICAL_RANGE
    warnings.warn(
        f"{_share_impossible(sample, sensor)} of the sampled {sensor} values are infinite or outside the "
        f"physical range [{lo:g}, {hi:g}]; embed and train read their pixel-dates as NaN (like clouds). "
        f"Fix: mask the fill value on import (--{sensor}-nodata VALUE) or re-create the cube.",
        stacklevel=4,
    )


def _check_dims(ds: xr.Dataset, name: str, expected: tuple[str, ...]) -> None:
    dims = tuple(ds[name].dims)
    if dims == expected:
        return
    if set(dims) == set(expected):
        raise CubeError(
            f"'{name}' has dimensions {dims} in the wrong order. "
            f"Fix: ds['{name}'] = ds['{name}'].transpose{expected}."
        )
    renames = {d: e for d, e in zip(dims, expected, strict=False) if d != e and d not in expected}
    hint = f" e.g. ds = ds.rename({renames})" if renames and len(dims) == len(expected) else ""
    raise CubeError(
        f"'{name}' has dimensions {dims}; the data model needs {expected}. Fix: rename or transpose "
        f"the dimensions{hint} (importers: `latentcube import` handles 't'/'timestamp')."
    )


def _check_times(ds: xr.Dataset, dim: str) -> None:
    if dim not in ds.coords:
        raise CubeError(f"dimension '{dim}' has no coordinate. Fix: assign acquisition datetimes to '{dim}'.")
    values = ds[dim].values
    if not np.issubdtype(values.dtype, np.datetime64):
        raise CubeError(
            f"coordinate '{dim}' is {values.dtype}, not datetime64. Fix: ds['{dim}'] = pd.to_datetime(...)."
        )
    if np.isnat(values).any():
        raise CubeError(f"coordinate '{dim}' has missing (NaT) dates. Fix: drop those acquisitions.")
    index = pd.DatetimeIndex(values)
    if index.has_duplicates:
        dups = sorted({str(t)[:19] for t in index[index.duplicated()]})[:3]
        raise CubeError(
            f"duplicate dates in '{dim}': {dups}. Fix: merge them, e.g. ds.groupby('{dim}').mean() "
            "(same-day tiles: mosaic before building the cube)."
        )
    if not index.is_monotonic_increasing:
        raise CubeError(f"dates in '{dim}' are not sorted. Fix: ds = ds.sortby('{dim}').")


def _check_grid(ds: xr.Dataset) -> None:
    for dim in ("y", "x"):
        if dim not in ds.coords:
            raise CubeError(f"no '{dim}' coordinate. Fix: assign pixel-centre coordinates in metres.")
        coord = np.asarray(ds[dim].values, dtype="float64")
        bad = ~np.isfinite(coord)
        if bad.any():
            raise CubeError(
                f"coordinate '{dim}' has {int(bad.sum())} NaN or infinite value(s) (first at index "
                f"{int(np.argmax(bad))} of {coord.size}): every pixel needs its centre in metres. Fix: rebuild "
                f"'{dim}' from the grid's origin and pixel size, e.g. ds = ds.assign_coords({dim}=x0 + step * "
                f"np.arange(ds.sizes['{dim}'])), or re-import the files."
            )
        if coord.size < 2:
            continue
        steps = np.diff(coord)
        if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-6 * max(1.0, abs(steps[0]))) or steps[0] == 0:
            raise CubeError(
                f"irregular pixel spacing along '{dim}' (steps from {steps.min():g} to {steps.max():g} m). "
                "Fix: resample onto a regular grid (e.g. odc.geo xr_reproject or rioxarray reproject)."
            )
        # North-up like GeoTIFFs and STAC loads. The encoders' convolutions are not mirror-invariant, so a
        # flipped cube would give (slightly) different embeddings from the same ground.
        wrong = steps[0] > 0 if dim == "y" else steps[0] < 0
        if wrong:
            order, flip = ("south to north", "y") if dim == "y" else ("east to west", "x")
            raise CubeError(
                f"'{dim}' {'increases' if dim == 'y' else 'decreases'} (the {'rows' if dim == 'y' else 'columns'} run "
                f"{order}); the data model is north-up (y decreasing, x increasing), as the models were trained. "
                f"Fix: ds = ds.isel({flip}=slice(None, None, -1)) (`latentcube import` does this itself)."
            )
    crs = cube_crs(ds)
    if not crs.is_projected:
        raise CubeError(
            f"CRS {crs.name!r} is not projected; y/x must be metres. "
            "Fix: reproject to the local UTM zone, e.g. ds.rio.reproject(ds.rio.estimate_utm_crs())."
        )


def validate_cube(ds: xr.Dataset, *, require_s1: bool = False, require_s2: bool = True) -> xr.Dataset:
    """Check ``ds`` against the data model and return it unchanged; raise :class:`CubeError` otherwise.

    ``require_s2=False`` accepts a cube without ``s2`` (what an S1-only step reads); everything present is
    still checked.

    Range checks (DN vs reflectance, dB vs linear, nodata as 0) read a strided subsample of at most
    ``SAMPLE_CHUNKS_PER_AXIS``² spatial storage chunks, so validating a large lazy cube reads a small part of
    it; only a cube whose subsample has no valid S2 value is read in full.
    """
    if not isinstance(ds, xr.Dataset):
        raise CubeError(f"expected an xarray.Dataset, got {type(ds).__name__}. Fix: open it with open_cube().")
    if "s2" not in ds and "embedding" in ds:
        raise CubeError(
            "this is an embedding store (the output of `latentcube embed`), not an input cube: it has "
            f"variables {sorted(ds.data_vars)}. Fix: pass the S1/S2 cube it was made from; `latentcube info` "
            "describes embedding stores."
        )
    if "s2" not in ds:
        if require_s2 or "s1" not in ds:
            raise CubeError(
                f"missing 's2': the cube has variables {sorted(ds.data_vars)} but no Sentinel-2 reflectance. "
                "Fix: add s2 (time, band, y, x) or import your files with `latentcube import`."
            )
        _check_grid(ds)
    else:
        _check_s2(ds)
    _check_s1(ds, require_s1)
    if "s2_scl" in ds and tuple(ds["s2_scl"].dims) != ("time", "y", "x"):
        raise CubeError(f"'s2_scl' has dimensions {ds['s2_scl'].dims}; expected ('time', 'y', 'x').")
    return ds


def _check_s2(ds: xr.Dataset) -> None:
    _check_dims(ds, "s2", S2_DIMS)
    s2 = ds["s2"]
    bands = [str(b) for b in ds["band"].values] if "band" in ds.coords else []
    unknown = [b for b in bands if b not in S2_BANDS]
    if not bands or unknown:
        raise CubeError(
            f"S2 band names {unknown or 'missing'} are not Sentinel-2 L2A bands {list(S2_BANDS)}. "
            "Fix: label the 'band' coordinate with these names (importers take a band mapping)."
        )
    if bands != [b for b in S2_BANDS if b in bands]:
        raise CubeError(
            f"S2 bands {bands} are duplicated or out of the canonical order. "
            f"Fix: ds = ds.sel(band={[b for b in S2_BANDS if b in bands]})."
        )
    if s2.dtype != np.float32:
        raise CubeError(f"'s2' is {s2.dtype}, the data model stores float32. Fix: ds['s2'] = ds['s2'].astype('float32').")
    _check_times(ds, "time")
    _check_grid(ds)

    sample = _sample(s2)
    valid = sample[np.isfinite(sample)]
    if valid.size == 0 and not bool(_read(np.isfinite(s2).any())):
        raise CubeError(
            "no valid S2 observation: every s2 value is NaN. Fix: check the cloud mask, the nodata value "
            "and the date range."
        )
    if valid.size:
        p99 = float(np.percentile(valid, 99))
        big = valid[valid > S2_PHYSICAL_RANGE[1]]
        # Digital numbers of real reflectance stay far below 60000 (bright snow ~20000); above it are fill values
        # (65535, or 6.5535 once scaled by 1e-4) and absurd magnitudes (1e30).
        fill = big.size and (_FILL_SCALED[0] < np.median(big) < _FILL_SCALED[1] or np.median(big) > _MAX_DN)
        if p99 > S2_PHYSICAL_RANGE[1] and fill:
            values, counts = np.unique(big, return_counts=True)
            raise CubeError(
                f"s2 holds impossible reflectances (99th percentile {p99:.3g}, most often {values[counts.argmax()]:.6g}; "
                f"{_share_impossible(sample, 's2')} of the sampled values are infinite or outside the physical range "
                f"{list(S2_PHYSICAL_RANGE)}): a fill value stored as data, not digital numbers. Fix: mask it as NaN "
                "on import (--s2-nodata with the value the file stores, e.g. 65535 for 6.5535), or "
                "ds['s2'] = ds['s2'].where(abs(ds['s2']) <= 2)."
            )
        if p99 > S2_PHYSICAL_RANGE[1]:
            raise CubeError(
                f"s2 looks like unscaled digital numbers (99th percentile {p99:.0f}), not reflectance 0-1. "
                "Fix: divide by 10000 (after adding the -1000 offset for processing baseline >= 04.00)."
            )
        _check_zero_pixels(s2, "s2")
        if float(np.percentile(valid, 1)) < -0.2:
            raise CubeError(
                "s2 has many reflectances below -0.2. Fix: mask nodata/saturated pixels as NaN and check the "
                "baseline-04.00 offset (reflectance = (DN - 1000) / 10000)."
            )
    _check_impossible(sample, "s2")  # after the checks that name a better fix (digital numbers, offset)


def _check_s1(ds: xr.Dataset, require_s1: bool) -> None:
    if "s1" in ds:
        _check_dims(ds, "s1", S1_DIMS)
        _check_times(ds, "time_s1")
        bands_s1 = [str(b) for b in ds["band_s1"].values] if "band_s1" in ds.coords else []
        if not bands_s1 or any(b not in S1_BANDS for b in bands_s1) or bands_s1 != [b for b in S1_BANDS if b in bands_s1]:
            raise CubeError(
                f"S1 bands {bands_s1} must be a subset of {list(S1_BANDS)} in that order. "
                "Fix: label the 'band_s1' coordinate, e.g. ds.assign_coords(band_s1=['VV', 'VH'])."
            )
        if ds["s1"].dtype != np.float32:
            raise CubeError(f"'s1' is {ds['s1'].dtype}, the data model stores float32. Fix: .astype('float32').")
        s1_all = s1 = _sample(ds["s1"])
        s1 = s1[np.isfinite(s1)]
        if s1.size and (np.mean(s1 < 0) > 0.01 or np.median(s1) < 0):
            raise CubeError(
                f"s1 looks like decibels (median {np.median(s1):.1f}, {np.mean(s1 < 0):.0%} negative); the data "
                "model stores linear power. Fix: ds['s1'] = 10 ** (ds['s1'] / 10)."
            )
        if s1.size:
            _check_zero_pixels(ds["s1"], "s1")
        _check_impossible(s1_all, "s1")
    elif require_s1:
        raise CubeError("missing 's1': this step needs Sentinel-1. Fix: fetch or import S1 (VV, VH) into the cube.")


# --------------------------------------------------------------------------------------------- I/O


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (path.is_dir() and any((path / m).exists() for m in (".zgroup", "zarr.json")))


_NOT_A_CUBE_FIX = ("Fix: pass a cube written by latentcube (`latentcube import`, `fetch` or `synth` make one: a *.zarr "
                   "folder or a *.nc file), or import your own files with `latentcube import`.")

#: First bytes of the files xarray reads as NetCDF: NetCDF-3 classic/64-bit/CDF-5 and HDF5 (NetCDF-4).
_NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")


def _check_is_store(path: Path) -> None:
    """A clear error for a path that cannot be a cube (an ordinary folder, an empty or foreign file),
    before xarray's generic advice to install IO backends."""
    if path.is_dir():
        if any((path / m).exists() for m in (".zgroup", "zarr.json")):
            return
        entries = sorted(p.name for p in path.iterdir())
        if not entries:
            raise CubeError(f"{path} is an empty folder, not a cube. {_NOT_A_CUBE_FIX}")
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise CubeError(f"{path} is a folder but not a Zarr cube (no .zgroup or zarr.json; it holds {shown}). "
                        f"{_NOT_A_CUBE_FIX}")
    size = path.stat().st_size
    if size == 0:
        raise CubeError(f"{path} is an empty file (0 bytes), not a cube: an interrupted write? {_NOT_A_CUBE_FIX}")
    with path.open("rb") as fh:
        head = fh.read(8)
    if not any(head.startswith(m) for m in _NETCDF_MAGIC):
        raise CubeError(f"{path} is not a NetCDF file (it starts with {head[:4]!r}), so not a cube. {_NOT_A_CUBE_FIX}")


def _root_attrs(store: Path) -> dict[str, Any]:
    import json

    try:
        if (store / ".zmetadata").is_file():
            return json.loads((store / ".zmetadata").read_text(encoding="utf-8"))["metadata"].get(".zattrs", {})
        if (store / ".zattrs").is_file():
            return json.loads((store / ".zattrs").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError):
        pass
    return {}


def _check_store_chunks(store: Path) -> None:
    """Refuse a store with empty, truncated or (in cubes that record writing every chunk) missing chunk
    files before anything is decompressed: they would read as NaN silently or crash the interpreter."""
    from latentcube.chunks import chunk_problems

    complete = bool(_root_attrs(store).get(ALL_CHUNKS_ATTR))
    problems = chunk_problems(store)
    missing = [p for p in problems if p.kind == "missing"]
    broken = [p for p in problems if p.kind != "missing"]
    fix = ("Fix: re-create the cube (re-run the `latentcube import`, `fetch` or `synth` that made it, with "
           "--overwrite) or restore the file from a backup; the values of that chunk are lost.")
    if broken:
        p = broken[0]
        more = f" ({len(broken) - 1} more bad chunk files)" if len(broken) > 1 else ""
        raise CubeError(f"corrupt cube {store}: variable '{p.variable}', chunk file {p.path} {p.detail}{more}. {fix}")
    if missing and complete:
        p = missing[0]
        n_var = sum(q.variable == p.variable for q in missing)
        more = f" ({len(missing) - 1} more missing chunk files)" if len(missing) > 1 else ""
        raise CubeError(f"incomplete cube {store}: variable '{p.variable}', chunk file {p.path} is missing "
                        f"({n_var} chunk file(s) of '{p.variable}' missing{more}); its values would read as NaN. {fix}")
    data = [p for p in missing if p.variable in ("s2", "s1", "s2_scl")]
    if data:
        import warnings

        warnings.warn(
            f"{store}: {len(data)} chunk files of {sorted({p.variable for p in data})} are absent (first: {data[0].path}); "
            "they read as NaN. This cube does not record that every chunk was written (older writers skip "
            "all-NaN chunks), so they may be cloud-only chunks. Fix: if they should hold data, re-create the "
            "cube; saving it again with latentcube records complete chunks.",
            stacklevel=3,
        )


def open_cube(path: str | Path, *, chunks: Mapping[str, int] | str | None = None, validate: bool = False,
              check_chunks: bool = True) -> xr.Dataset:
    """Open a cube lazily (Dask) from Zarr (directory or ``*.zarr``) or NetCDF (``*.nc``).

    ``chunks`` defaults to the on-disk chunking. With ``validate=True`` the result is checked with
    :func:`validate_cube`. ``check_chunks`` refuses a Zarr store with missing, empty or truncated chunk
    files before anything is decompressed (a listing and one 16-byte read per chunk file); a worker
    reopening a store its parent process checked may pass False.
    """
    path = Path(path)
    if not path.exists():
        raise CubeError(f"no such cube: {path}. Fix: check the path (cubes are *.zarr directories or *.nc files).")
    _check_is_store(path)
    if path.is_dir() and check_chunks:
        _check_store_chunks(path)
    chunks = {} if chunks is None else chunks
    try:
        if _is_zarr(path):
            ds = xr.open_zarr(path, chunks=chunks, decode_coords="all")
        else:
            ds = xr.open_dataset(path, chunks=chunks, decode_coords="all")
    except Exception as err:
        raise CubeError(f"cannot read {path} as Zarr or NetCDF: {err}") from err
    ds.attrs.pop(ALL_CHUNKS_ATTR, None)  # a fact about this store, not the data: a copy written elsewhere sets its own
    # decode_coords moves grid_mapping to encoding; restore the attribute for downstream writers.
    for name in ds.data_vars:
        gm = ds[name].encoding.get("grid_mapping")
        if gm and "grid_mapping" not in ds[name].attrs:
            ds[name].attrs["grid_mapping"] = gm
    return validate_cube(ds) if validate else ds


def _storage_chunks(ds: xr.Dataset, name: str, spatial: int = 256, temporal: int = 64) -> tuple[int, ...]:
    """Chunks that serve both map reads (one date) and time-series reads (one pixel) reasonably."""
    sizes = []
    for dim in ds[name].dims:
        n = ds.sizes[dim]
        if dim in ("y", "x"):
            sizes.append(min(n, spatial))
        elif dim in ("time", "time_s1"):
            sizes.append(min(n, temporal))
        else:
            sizes.append(n)
    return tuple(sizes)


def is_cube_store(path: str | Path) -> bool:
    """Whether ``path`` is a latentcube output (a cube or an embedding store: Zarr or NetCDF whose
    attributes record ``latentcube_version``), i.e. something ``--overwrite`` may replace."""
    path = Path(path)
    try:
        if path.is_dir():
            for meta in (".zmetadata", ".zattrs"):
                if (path / meta).is_file():
                    text = (path / meta).read_text(encoding="utf-8")
                    return '"latentcube_version"' in text
            return False
        if path.is_file() and path.stat().st_size > 0:
            with xr.open_dataset(path) as ds:
                return "latentcube_version" in ds.attrs
    except Exception:  # unreadable: not something we wrote, so never ours to delete
        return False
    return False


#: Root attribute of cubes written by :func:`save_cube`: every chunk file was written (empty ones too),
#: so a chunk file that is missing later was lost, not skipped.
ALL_CHUNKS_ATTR = "latentcube_all_chunks_written"


def save_cube(ds: xr.Dataset, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write a cube to Zarr (``*.zarr`` or any other name) or NetCDF (``*.nc``); returns the path.

    An existing latentcube cube at ``path`` is replaced only with ``overwrite`` (the default, for library
    use; the CLI's default is to refuse); anything else at ``path`` (a folder of other files, another
    file) is never touched: :class:`~latentcube.files.OutputExistsError`. The cube is written under a
    temporary name beside ``path`` and renamed into place when complete, so a failed write leaves any old
    cube as it was.

    Attributes record the package version. Encodings inherited from the source files are dropped so
    that storage chunks follow :func:`_storage_chunks`. Zarr stores get every chunk file, all-NaN ones
    too, so that :func:`open_cube` can tell a lost chunk file from a skipped one.
    """
    from latentcube.files import atomic_path, check_output_path

    path = Path(path)
    replace = check_output_path(path, overwrite=overwrite, is_ours=is_cube_store, what="cube")
    out = ds.copy()
    out.attrs["latentcube_version"] = __version__
    for name in out.variables:
        out[name].encoding = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".nc", ".nc4", ".netcdf"):
        encoding = {
            name: {"zlib": True, "complevel": 4, "chunksizes": _storage_chunks(out, name)}
            for name in out.data_vars
            if out[name].ndim >= 2
        }
        with atomic_path(path) as tmp:
            out.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
        return path
    out.attrs[ALL_CHUNKS_ATTR] = 1
    encoding = {name: {"chunks": _storage_chunks(out, name)} for name in out.data_vars if out[name].ndim >= 2}
    # Align dask chunks with storage chunks so each task writes whole Zarr chunks (memory stays bounded).
    for name in out.data_vars:
        if out[name].chunks is not None and out[name].ndim >= 2:
            out[name] = out[name].chunk(dict(zip(out[name].dims, _storage_chunks(out, name), strict=True)))
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        # Zarr v2 format: string coordinates (band names) have no stable v3 dtype yet, and GDAL and older
        # readers still expect v2 with consolidated metadata.
        out.to_zarr(tmp, mode="w-", encoding=encoding, consolidated=True, zarr_format=2, write_empty_chunks=True)
        if replace or path.exists():  # an old cube (or an empty folder) moves aside until the new one is in place
            aside = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, aside)
            os.replace(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------- summary


def pixel_size_m(ds: xr.Dataset) -> float | None:
    """Pixel edge in CRS units (metres for the projected CRSs of the data model): the mean of the x and y
    spacings; None for a grid of one pixel along an axis."""
    if ds.sizes.get("x", 0) < 2 or ds.sizes.get("y", 0) < 2:
        return None
    return float((abs(ds.x[1] - ds.x[0]) + abs(ds.y[1] - ds.y[0])) / 2)


def cube_summary(ds: xr.Dataset) -> dict[str, Any]:
    """Facts about a cube for ``latentcube info``: sizes, dates, valid fractions, CRS, value ranges."""
    info: dict[str, Any] = {"dims": dict(ds.sizes), "variables": sorted(ds.data_vars)}
    try:
        crs = cube_crs(ds)
        info["crs"] = crs.to_string()
    except CubeError as err:
        info["crs"] = f"invalid ({err})"
    if "x" in ds.coords and ds.sizes.get("x", 0) > 1:
        info["pixel_size_m"] = (float(abs(ds.x[1] - ds.x[0])), float(abs(ds.y[1] - ds.y[0])))
        info["bounds"] = tuple(float(v) for v in (ds.x.min(), ds.y.min(), ds.x.max(), ds.y.max()))
    for var, tdim in (("s2", "time"), ("s1", "time_s1")):
        if var not in ds:
            continue
        times = pd.DatetimeIndex(ds[tdim].values)
        da = ds[var]
        valid_per_date = np.isfinite(da).all(da.dims[1]).mean(("y", "x")).values
        sample = _sample(da)
        sample = sample[np.isfinite(sample)]
        info[var] = {
            "dates": len(times),
            "first": str(times.min().date()) if len(times) else None,
            "last": str(times.max().date()) if len(times) else None,
            "bands": [str(b) for b in da[da.dims[1]].values],
            "valid_fraction_mean": float(np.mean(valid_per_date)) if len(times) else 0.0,
            "dates_valid_ge_50pct": int(np.sum(valid_per_date >= 0.5)),
            "value_p1_p50_p99": [float(v) for v in np.percentile(sample, [1, 50, 99])] if sample.size else None,
        }
    info["attrs"] = {k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float)}
    return info

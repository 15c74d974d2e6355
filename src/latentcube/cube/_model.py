"""The cube data model's building blocks: physical value ranges, the CRS record and :func:`new_cube`."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS

from latentcube import __version__
from latentcube.constants import S1_BANDS, S1_DIMS, S2_BANDS, S2_DIMS
from latentcube.errors import LatentcubeError

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


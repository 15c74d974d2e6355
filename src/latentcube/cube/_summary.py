"""Facts about a cube for ``latentcube info``: pixel size, dates, valid fractions, CRS, value ranges."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.constants import S1_BANDS, S2_BANDS, missing_bands_fix
from latentcube.cube._model import CubeError, cube_crs
from latentcube.cube._sample import _sample


def pixel_size_m(ds: xr.Dataset) -> float | None:
    """Pixel edge in CRS units (metres for the projected CRSs of the data model): the mean of the x and y
    spacings; None for a grid of one pixel along an axis."""
    if ds.sizes.get("x", 0) < 2 or ds.sizes.get("y", 0) < 2:
        return None
    return float((abs(ds.x[1] - ds.x[0]) + abs(ds.y[1] - ds.y[0])) / 2)


def default_model_bands_note(sensor: str, bands: list[str]) -> str | None:
    """What a cube of ``bands`` for ``sensor`` (s2, s1) lacks for the default model of that sensor (the one the
    shipped configs train), with the fix; None when it holds all the model's bands."""
    expected = {"s2": S2_BANDS, "s1": S1_BANDS}[sensor]
    fix = missing_bands_fix(bands, expected)
    if fix is None:
        return None
    return f"the default {sensor} model (the shipped configs) expects {len(expected)} bands; {fix}"


def cube_summary(ds: xr.Dataset) -> dict[str, Any]:
    """Facts about a cube for ``latentcube info``: sizes, dates, valid fractions, CRS, value ranges, and
    ``model_bands`` per sensor when the cube lacks some of the default model's bands. ``bounds`` is
    (xmin, ymin, xmax, ymax) of the pixel edges in the cube's CRS (the x/y coordinates are pixel centres)."""
    info: dict[str, Any] = {"dims": dict(ds.sizes), "variables": sorted(ds.data_vars)}
    try:
        crs = cube_crs(ds)
        info["crs"] = crs.to_string()
    except CubeError as err:
        info["crs"] = f"invalid ({err})"
    if "x" in ds.coords and ds.sizes.get("x", 0) > 1:
        info["pixel_size_m"] = (float(abs(ds.x[1] - ds.x[0])), float(abs(ds.y[1] - ds.y[0])))
        # Pixel edges, as GIS tools, GeoTIFFs and the STAC item give them (x/y are the pixel centres).
        hx, hy = info["pixel_size_m"][0] / 2, info["pixel_size_m"][1] / 2
        info["bounds"] = (float(ds.x.min()) - hx, float(ds.y.min()) - hy, float(ds.x.max()) + hx, float(ds.y.max()) + hy)
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
        note = default_model_bands_note(var, info[var]["bands"])
        if note:
            info[var]["model_bands"] = note
    info["attrs"] = {k: v for k, v in ds.attrs.items() if isinstance(v, str | int | float)}
    return info

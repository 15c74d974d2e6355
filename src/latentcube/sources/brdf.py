"""Nadir BRDF-adjusted reflectance (NBAR) through the optional ``sen2nbar`` package (``latentcube[nbar]``).

The paper (§II Data) applies "a nadir BRDF correction using view geometry parameters and the sen2nbar
Python library". sen2nbar computes, per granule, the c-factor of Roy et al. (2008, 2016)

    c = BRDF(sun zenith, view zenith = 0, relative azimuth) / BRDF(sun zenith, view zenith, relative azimuth)

on the 5 km sun/view angle grid of the granule metadata (``MTD_TL.xml``, the ``granule-metadata`` asset
of Planetary Computer items), and NBAR = c x reflectance. Its ``nbar_stac``/``nbar_stackstac`` entry
points take a DN DataArray ``(time, band, y, x)`` whose ``id`` coordinate names the items, re-search the
STAC API, shift the baseline-04.00 offset, then multiply by ``c_factor_from_item(item, epsg)``
linearly interpolated (with extrapolation) onto the array's ``y``/``x``.

latentcube's cubes are already reflectance with the offset removed and tiles mosaicked per solar day,
so this adapter uses sen2nbar's per-item building block ``sen2nbar.c_factor.c_factor_from_item(item,
to_epsg) -> DataArray (band, y, x)`` directly, reproduces ``nbar_stac``'s interpolation (linear,
extrapolated), averages the c-factors of the tiles mosaicked into one date, and multiplies lazily
(Dask) block by block. Since c is a ratio, applying it to reflectance equals applying it to DN.

sen2nbar has no coefficients for B8A; B8A uses the B08 c-factor (865 vs 833 nm, same NIR plateau).

This adapter is tested against that documented contract with a fake ``sen2nbar`` module (sen2nbar is
not installed in CI and needs network access to read the angle XML).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pystac
import xarray as xr

from latentcube.cube import CubeError, cube_crs
from latentcube.errors import LatentcubeError

__all__ = ["NBAR_BAND_FALLBACK", "NbarUnavailableError", "apply_nbar", "c_factor_for_date"]

#: Bands without sen2nbar coefficients and the band whose c-factor they borrow.
NBAR_BAND_FALLBACK: dict[str, str] = {"B8A": "B08"}

#: Asset holding the granule metadata XML with the sun/view angle grids (Planetary Computer key).
ANGLE_ASSET = "granule-metadata"


class NbarUnavailableError(LatentcubeError, RuntimeError):
    """NBAR cannot be computed (extra not installed, angle metadata missing); the message says why."""


def _c_factor_fn() -> Callable[[pystac.Item, str], xr.DataArray]:
    try:
        from sen2nbar.c_factor import c_factor_from_item
    except ImportError as err:
        raise NbarUnavailableError(
            "NBAR needs the optional sen2nbar package, which is not installed. "
            "Fix: pip install 'latentcube[nbar]' (or pip install sen2nbar), or fetch without nbar=True."
        ) from err
    return c_factor_from_item


def _check_angles(item: pystac.Item) -> None:
    if ANGLE_ASSET not in item.assets:
        raise NbarUnavailableError(
            f"item {item.id} has no '{ANGLE_ASSET}' asset, so its sun/view angles are unknown and NBAR "
            "cannot be computed. Fix: use Planetary Computer sentinel-2-l2a items (they link MTD_TL.xml), "
            "or fetch without nbar=True."
        )


def _with_epsg(item: pystac.Item) -> pystac.Item:
    """sen2nbar reads ``proj:epsg``; projection extension v2 items carry ``proj:code`` instead."""
    if "proj:epsg" in item.properties or "proj:code" not in item.properties:
        return item
    code = str(item.properties["proj:code"])
    if not code.upper().startswith("EPSG:"):
        return item
    item = item.clone()
    item.properties["proj:epsg"] = int(code.split(":")[1])
    return item


def c_factor_for_date(
    items: Sequence[pystac.Item],
    *,
    y: np.ndarray,
    x: np.ndarray,
    epsg: int,
    bands: Sequence[str],
    c_factor_from_item: Callable[[pystac.Item, str], xr.DataArray] | None = None,
) -> xr.DataArray:
    """Mean c-factor of the tiles of one date on the cube grid: float32 ``(band, y, x)``, dimensionless.

    Raises :class:`NbarUnavailableError` if an item lacks the ``granule-metadata`` angle asset.
    """
    fn = c_factor_from_item or _c_factor_fn()
    per_item = []
    for item in items:
        _check_angles(item)
        c = fn(_with_epsg(item), f"epsg:{int(epsg)}")
        # As sen2nbar.nbar.nbar_stac: linear interpolation onto the output grid, extrapolated at the edges.
        c = c.interp(y=y, x=x, method="linear", kwargs={"fill_value": "extrapolate"})
        per_item.append(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN columns -> NaN, handled below
        mean = xr.concat(per_item, dim="item").mean("item", skipna=True)
    have = [str(b) for b in mean["band"].values]
    layers = []
    for band in bands:
        src = band if band in have else NBAR_BAND_FALLBACK.get(band)
        if src not in have:
            raise NbarUnavailableError(
                f"sen2nbar returned no c-factor for band {band} (it has {have}). Fix: drop the band or extend "
                "latentcube.sources.brdf.NBAR_BAND_FALLBACK."
            )
        layer = mean.sel(band=src)
        # Outside every granule's angle grid the c-factor is NaN; use the date's median there rather than
        # turning valid reflectance into NaN (c varies by a few percent across a 5 km grid).
        med = float(np.nanmedian(layer.values)) if np.isfinite(layer.values).any() else 1.0
        layers.append(layer.fillna(med).drop_vars("band"))
    return xr.concat(layers, dim="band").assign_coords(band=list(bands)).astype("float32")


def _group_by_date(
    ds: xr.Dataset, items: Sequence[pystac.Item] | Mapping[Any, Sequence[pystac.Item]]
) -> list[list[pystac.Item]]:
    """Items for each cube date: by solar day at the cube's centre longitude (as the mosaicking did)."""
    times = pd.DatetimeIndex(ds["time"].values)
    if isinstance(items, Mapping):
        lookup = {pd.Timestamp(k).normalize(): list(v) for k, v in items.items()}
        keys = times.normalize()
    else:
        from pyproj import Transformer

        crs = cube_crs(ds)
        xc, yc = float(ds["x"].mean()), float(ds["y"].mean())
        lon, _ = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xc, yc)
        shift = pd.Timedelta(hours=lon / 15.0)
        lookup = {}
        for item in items:
            t = pd.Timestamp(item.datetime)
            t = t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t
            lookup.setdefault((t + shift).normalize(), []).append(item)
        keys = (times + shift).normalize()
    groups = []
    for t, key in zip(times, keys, strict=True):
        found = lookup.get(key)
        if not found:
            raise NbarUnavailableError(
                f"no STAC item for cube date {t.date()}; NBAR needs the items the cube was built from. "
                "Fix: pass the same items (or a {date: [items]} mapping) to apply_nbar."
            )
        groups.append(found)
    return groups


def apply_nbar(
    ds: xr.Dataset,
    items: Sequence[pystac.Item] | Mapping[Any, Sequence[pystac.Item]],
    *,
    c_factor_from_item: Callable[[pystac.Item, str], xr.DataArray] | None = None,
) -> xr.Dataset:
    """Return ``ds`` with ``s2`` replaced by NBAR (c-factor x reflectance), float32, lazy if ``s2`` is.

    Args:
        ds: cube with ``s2`` reflectance (time, band, y, x) in a projected EPSG CRS.
        items: the S2 L2A items the cube was built from (signed, with the ``granule-metadata`` asset), or a
            mapping {date: [items]}. Items are matched to dates by solar day.
        c_factor_from_item: override for ``sen2nbar.c_factor.c_factor_from_item`` (same signature).

    Raises:
        NbarUnavailableError: sen2nbar not installed, angle metadata missing, or a date without items.
    """
    fn = c_factor_from_item or _c_factor_fn()
    epsg = cube_crs(ds).to_epsg()
    if epsg is None:
        raise CubeError("NBAR needs a cube CRS with an EPSG code (e.g. UTM). Fix: reproject the cube to UTM.")
    if ds.attrs.get("nbar"):
        raise CubeError("this cube is already NBAR-corrected (attrs['nbar'] = 1); applying it twice is wrong.")
    bands = [str(b) for b in ds["band"].values]
    y, x = ds["y"].values, ds["x"].values
    groups = _group_by_date(ds, items)
    for group in groups:  # fail before any work, not in the middle of a lazy compute
        for item in group:
            _check_angles(item)

    def one(group: list[pystac.Item]) -> np.ndarray:
        return c_factor_for_date(group, y=y, x=x, epsg=epsg, bands=bands, c_factor_from_item=fn).values

    if ds["s2"].chunks:
        # Lazy: each date's c-factor (angle XML read + interpolation, ~band*y*x floats) is computed when
        # its chunks are, so a year-long cube never holds all c-factors in memory at once.
        import dask
        import dask.array as dsa

        shape = (len(bands), y.size, x.size)
        per_date = [dsa.from_delayed(dask.delayed(one)(g), shape=shape, dtype="float32") for g in groups]
        c = xr.DataArray(dsa.stack(per_date), dims=("time", "band", "y", "x"))
        c = c.chunk({d: ch for d, ch in zip(ds["s2"].dims, ds["s2"].chunks, strict=True)})
    else:
        c = xr.DataArray(np.stack([one(g) for g in groups]), dims=("time", "band", "y", "x"))
    c = c.assign_coords(time=ds["time"].values, band=bands, y=y, x=x)
    out = ds.copy()
    out["s2"] = (ds["s2"] * c.transpose(*ds["s2"].dims)).astype("float32")
    out["s2"].attrs = dict(ds["s2"].attrs, long_name="Sentinel-2 L2A nadir BRDF-adjusted reflectance (NBAR)")
    out.attrs["nbar"] = 1
    out.attrs["nbar_method"] = "sen2nbar c-factor (Roy et al. 2016), B8A uses B08"
    return out

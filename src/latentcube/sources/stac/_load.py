"""odc-stac loads: S2 DN to reflectance per processing baseline, same-day mosaics, S1 RTC per orbit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from latentcube.constants import S1_BANDS, S2_BOA_OFFSET_PB04, S2_QUANTIFICATION
from latentcube.sources.stac._search import S1_COLLECTION, S2_COLLECTION, _center_lon, _item_time

#: The package's logger: users configure "latentcube.sources.stac", not its private modules.
log = logging.getLogger("latentcube.sources.stac")

#: PC's sentinel-1-rtc assets declare nodata -32768 (float32 gamma0, linear power).
_S1_NODATA = -32768.0
_S1_ASSETS = {"VV": "vv", "VH": "vh"}

#: PC sentinel-2-l2a items carry no raster:bands, so odc-stac would not know the dtype or nodata;
#: declare them (uint16 DN with 0 = nodata, SCL uint8 with 0 = no_data). A "*" entry is only a fallback
#: where an item states its own raster metadata.
_STAC_CFG: dict[str, Any] = {
    S2_COLLECTION: {
        "assets": {
            "*": {"data_type": "uint16", "nodata": 0},
            "SCL": {"data_type": "uint8", "nodata": 0},
        }
    },
    S1_COLLECTION: {"assets": {"*": {"data_type": "float32", "nodata": _S1_NODATA}}},
}


# ------------------------------------------------------------------------------------ S2 details


def _baseline(item: pystac.Item) -> float | None:
    raw = item.properties.get("s2:processing_baseline")
    if raw is None:
        return None
    try:
        return float(str(raw))
    except ValueError:
        return None


def boa_offset(item: pystac.Item) -> float:
    """DN offset to add before dividing by 10000 for one Sentinel-2 L2A item.

    -1000 for processing baseline >= 04.00 (``s2:processing_baseline``, the Planetary Computer property),
    0 before; 0 when the provider already removed it (``earthsearch:boa_offset_applied: true``). Items
    without a baseline fall back to the acquisition date (baseline 04.00 went live on 25 Jan 2022).
    """
    props = item.properties
    if props.get("earthsearch:boa_offset_applied") is True:
        return 0.0
    pb = _baseline(item)
    if pb is None:
        # ESA switched every new acquisition to baseline 04.00 on 2022-01-25.
        late = _item_time(item) >= pd.Timestamp("2022-01-25")
        log.warning("item %s has no s2:processing_baseline; assuming %s from its date", item.id, "04.00+" if late else "<04.00")
        return S2_BOA_OFFSET_PB04 if late else 0.0
    return S2_BOA_OFFSET_PB04 if pb >= 4.0 else 0.0


def dedupe_s2_items(items: Sequence[pystac.Item]) -> list[pystac.Item]:
    """Keep one item per (MGRS tile, acquisition time): the highest processing baseline.

    Catalogues hold reprocessed copies of the same granule (e.g. baseline 02.xx and its 05.00
    reprocessing); mosaicking both would mix two calibrations in one date.
    """
    best: dict[tuple[Any, str], pystac.Item] = {}
    for item in items:
        tile = item.properties.get("s2:mgrs_tile") or item.properties.get("mgrs:utm_zone") or item.id
        key = (tile, _item_time(item).strftime("%Y%m%dT%H%M%S"))
        cur = best.get(key)
        if cur is None or ((_baseline(item) or 0.0), item.id) > ((_baseline(cur) or 0.0), cur.id):
            best[key] = item
    return sorted(best.values(), key=lambda it: (_item_time(it), it.id))


def _solar_date(times: Any, lon: float) -> np.ndarray:
    """Local solar date (as odc-stac's groupby='solar_day') of UTC times at longitude ``lon``."""
    t = pd.DatetimeIndex(np.atleast_1d(times)) + pd.Timedelta(hours=lon / 15.0)
    return t.normalize().values


def _load_s2_group(
    items: list[pystac.Item],
    offset: float,
    *,
    gbox: GeoBox,
    bands: Sequence[str],
    extra_bands: Sequence[str],
    chunks: Mapping[str, int],
) -> xr.Dataset:
    """Load items sharing one BOA offset: reflectance (time, band, y, x), extra bands, SCL (time, y, x)."""
    import odc.stac

    names = [*bands, *extra_bands, "SCL"]
    resampling = {b: "bilinear" for b in (*bands, *extra_bands)}
    resampling["SCL"] = "nearest"  # classes must not be interpolated
    raw = odc.stac.load(
        items,
        bands=names,
        geobox=gbox,
        groupby="solar_day",
        resampling=resampling,
        chunks=dict(chunks),
        stac_cfg=_STAC_CFG,
        fail_on_error=True,
    )

    def refl(names_: Sequence[str], dim: str) -> xr.DataArray:
        dn = xr.concat([raw[b] for b in names_], dim=dim).assign_coords({dim: list(names_)})
        # DN 0 is nodata in L2A; the offset is added before scaling (ESA L2A PSD, baseline 04.00).
        scale = (dn.astype("float32") + np.float32(offset)) / np.float32(S2_QUANTIFICATION)
        return scale.where(dn > 0).astype("float32").transpose("time", dim, "y", "x")

    out = xr.Dataset({"s2": refl(bands, "band"), "s2_scl": raw["SCL"].astype("uint8")})
    if extra_bands:
        out["s2_extra"] = refl(extra_bands, "band_extra")
    return out.drop_vars("spatial_ref", errors="ignore")


def _fuse_days(parts: list[xr.Dataset], lon: float) -> xr.Dataset:
    """Combine per-offset loads; where two share a solar day, fill the first's nodata from the next.

    ``parts`` is ordered by priority (newest processing first), like odc-stac's own fuser.
    """
    if len(parts) == 1:
        return parts[0]
    keyed = []
    for p in parts:
        keyed.append(p.assign_coords(_day=("time", _solar_date(p["time"].values, lon))))
    days = sorted({d for p in keyed for d in p["_day"].values})
    slices = []
    for day in days:
        out = None
        for p in keyed:
            sel = p.isel(time=np.flatnonzero(p["_day"].values == day))
            if sel.sizes["time"] == 0:
                continue
            if out is None:
                out = sel
                continue
            sel = sel.assign_coords(time=out["time"].values)
            have = np.isfinite(out["s2"]).all("band")
            merged = {"s2": out["s2"].where(have, sel["s2"]), "s2_scl": out["s2_scl"].where(have, sel["s2_scl"])}
            if "s2_extra" in out:
                merged["s2_extra"] = out["s2_extra"].where(have, sel["s2_extra"])
            out = out.assign({k: v.astype(out[k].dtype) for k, v in merged.items()})
        slices.append(out)
    return xr.concat(slices, dim="time").drop_vars("_day").sortby("time")


def _load_s2(
    items: list[pystac.Item],
    *,
    gbox: GeoBox,
    bands: Sequence[str],
    extra_bands: Sequence[str],
    chunks: Mapping[str, int],
) -> xr.Dataset:
    by_offset: dict[float, list[pystac.Item]] = {}
    for item in items:
        by_offset.setdefault(boa_offset(item), []).append(item)
    # Priority for same-day overlaps: offset -1000 means baseline >= 04.00, the newer processing.
    parts = [
        _load_s2_group(its, off, gbox=gbox, bands=bands, extra_bands=extra_bands, chunks=chunks)
        for off, its in sorted(by_offset.items())
    ]
    return _fuse_days(parts, _center_lon(gbox))


# ------------------------------------------------------------------------------------ S1 details


def _s1_key(lon: float) -> Callable[..., tuple[Any, str, int]]:
    def key(item: pystac.Item, *_: Any) -> tuple[Any, str, int]:
        day = _solar_date([_item_time(item)], lon)[0]
        state = str(item.properties.get("sat:orbit_state", "unknown")).lower()
        return (pd.Timestamp(day).date(), state, int(item.properties.get("sat:relative_orbit", -1) or -1))

    return key


def _load_s1(items: list[pystac.Item], *, gbox: GeoBox, chunks: Mapping[str, int]) -> xr.DataArray:
    """S1 RTC gamma0 (time_s1, band_s1, y, x) float32 linear, NaN invalid, with orbit coordinates.

    Tiles are mosaicked per (solar day, orbit state, relative orbit): an ascending and a descending pass
    on the same day stay two observations, since their geometry (and backscatter) differ.
    """
    import odc.stac

    lon = _center_lon(gbox)
    key = _s1_key(lon)
    raw = odc.stac.load(
        items,
        bands=[_S1_ASSETS[b] for b in S1_BANDS],
        geobox=gbox,
        groupby=key,
        resampling="bilinear",
        chunks=dict(chunks),
        stac_cfg=_STAC_CFG,
        fail_on_error=True,
    )
    # odc-stac emits one time slice per group, groups sorted by key: rebuild that order for the orbit
    # coordinates.
    groups = sorted({key(it) for it in items})
    if len(groups) != raw.sizes["time"]:  # pragma: no cover - guards against an odc-stac behaviour change
        raise RuntimeError(f"odc-stac returned {raw.sizes['time']} S1 groups, expected {len(groups)}")
    da = xr.concat([raw[_S1_ASSETS[b]] for b in S1_BANDS], dim="band_s1").assign_coords(band_s1=list(S1_BANDS))
    # RTC nodata is -32768; gamma0 <= 0 is not a valid linear power either (border fill, shadow).
    da = da.where((da != _S1_NODATA) & np.isfinite(da) & (da > 0)).astype("float32")
    da = da.assign_coords(
        orbit_state=("time", [g[1] for g in groups]),
        relative_orbit=("time", np.array([g[2] for g in groups], dtype="int32")),
    )
    da = da.sortby("time").rename(time="time_s1").transpose("time_s1", "band_s1", "y", "x")
    return da.drop_vars("spatial_ref", errors="ignore")

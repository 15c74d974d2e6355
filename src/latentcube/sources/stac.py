"""Fetch Sentinel-2 L2A + Sentinel-1 RTC cubes from a STAC API (Microsoft Planetary Computer by default).

The paper (§II Data) builds each training cube from Sentinel-2 L2A (ten 10/20 m bands, every acquisition
of a 12-month period) and the spatially and temporally aligned Sentinel-1 RTC gamma0 from Planetary
Computer. :func:`fetch_cube` does exactly that for one area:

1. search ``sentinel-2-l2a`` and ``sentinel-1-rtc`` with pystac-client (bbox, ``start/end``, optional
   ``eo:cloud_cover < max`` query), sign the items with :func:`planetary_computer.sign`;
2. load them lazily (Dask) with :func:`odc.stac.load` onto one UTM grid aligned to the pixel size
   (10 m): 20 m bands bilinear, SCL nearest, same-day tiles mosaicked (``groupby="solar_day"``);
3. convert digital numbers to reflectance per item *before* mosaicking, so the processing-baseline
   04.00 offset (-1000 DN, 25 Jan 2022 on) is never applied to a tile that does not have it:
   ``reflectance = (DN + offset) / 10000``, DN 0 -> NaN;
4. optionally mask clouds (:mod:`latentcube.sources.masks`) and apply the NBAR correction
   (:mod:`latentcube.sources.brdf`);
5. return a Dataset in the cube data model (:mod:`latentcube.cube`).

:func:`fetch_sites` runs :func:`fetch_cube` for every row of a site plan and writes one Zarr cube per
row, resumable: a cube counts as done only once it was written completely.

Nothing here touches the network at import time; tests pass a fake catalog or a list of local items.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox
from odc.geo.geom import box as geo_box
from pyproj import CRS, Transformer

from latentcube import __version__
from latentcube.constants import (
    S1_BANDS,
    S2_BANDS,
    S2_BOA_OFFSET_PB04,
    S2_QUANTIFICATION,
    S2_WAVELENGTH_NM,
)
from latentcube.cube import CubeError, open_cube, save_cube, set_crs
from latentcube.sources.masks import CloudMask, SCLMask, apply_mask

__all__ = [
    "COMPLETE_MARKER",
    "DEFAULT_CHUNKS",
    "PC_STAC_URL",
    "S1_COLLECTION",
    "S2_COLLECTION",
    "boa_offset",
    "cube_is_complete",
    "dedupe_s2_items",
    "fetch_cube",
    "fetch_sites",
    "make_geobox",
    "read_plan",
    "search_items",
    "utm_crs",
]

log = logging.getLogger(__name__)

#: Planetary Computer STAC API (items need signing with planetary_computer.sign to be readable).
PC_STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
S2_COLLECTION = "sentinel-2-l2a"
S1_COLLECTION = "sentinel-1-rtc"

#: Dask chunks at load time: one date per chunk so a date can be dropped without reading others.
DEFAULT_CHUNKS: dict[str, int] = {"time": 1, "x": 512, "y": 512}

#: Name of the file written last into a finished cube directory by :func:`fetch_sites`.
COMPLETE_MARKER = ".latentcube_complete"

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

Catalog = Any  # pystac_client.Client, anything with .search(**kw), a URL, or a list of pystac.Item
Signer = Callable[[pystac.Item], pystac.Item]


# ------------------------------------------------------------------------------------------ grid


def utm_crs(lon: float, lat: float) -> CRS:
    """WGS 84 / UTM CRS of the standard 6-degree zone holding (lon, lat) (EPSG 326zz north, 327zz south).

    The Norway/Svalbard zone exceptions of MGRS are not applied: any UTM zone is a valid metre grid, and
    odc-stac reprojects tiles from a neighbouring zone.
    """
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise ValueError(f"lon/lat ({lon}, {lat}) out of range. Fix: give degrees, lon in [-180, 180], lat in [-90, 90].")
    zone = min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _check_bbox(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    try:
        w, s, e, n = (float(v) for v in bbox)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"bad bbox {bbox!r}: expected 4 numbers (west, south, east, north) in degrees."
        ) from err
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ValueError(
            f"bad bbox {tuple(bbox)}: need west < east in [-180, 180] and south < north in [-90, 90] "
            "(order: west, south, east, north, in degrees lon/lat)."
        )
    return w, s, e, n


def make_geobox(
    *,
    bbox: Sequence[float] | None = None,
    center: Sequence[float] | None = None,
    edge_m: float | None = None,
    crs: Any = None,
    resolution: float = 10.0,
) -> GeoBox:
    """The output pixel grid: a north-up GeoBox in metres whose pixel edges are multiples of ``resolution``.

    Args:
        bbox: (west, south, east, north) in degrees; the grid covers it, snapped outwards.
        center: (lon, lat) in degrees, with ``edge_m``: a square of ``round(edge_m / resolution)`` pixels
            centred (to within half a pixel) on it.
        edge_m: square edge length in metres (``center`` mode).
        crs: output CRS (anything pyproj reads); default the UTM zone of the area's centre.
        resolution: pixel size in metres (10 m: the paper's native S2 resolution).
    """
    if (bbox is None) == (center is None):
        raise ValueError("give exactly one of bbox=(west, south, east, north) or center=(lon, lat) with edge_m=.")
    if not resolution or resolution <= 0:
        raise ValueError(f"resolution must be > 0 metres, got {resolution}.")
    res = float(resolution)
    if center is not None:
        if edge_m is None or not edge_m > 0:
            raise ValueError(f"center= needs edge_m= > 0 (square edge in metres), got {edge_m}.")
        lon, lat = (float(v) for v in center)
        out_crs = CRS.from_user_input(crs) if crs is not None else utm_crs(lon, lat)
        if not out_crs.is_projected:
            raise ValueError(f"crs {out_crs.name!r} is not projected. Fix: use a metre CRS such as UTM, or leave crs=None.")
        cx, cy = Transformer.from_crs("EPSG:4326", out_crs, always_xy=True).transform(lon, lat)
        n = max(1, int(round(float(edge_m) / res)))
        x0 = round((cx - n * res / 2) / res) * res
        y1 = round((cy + n * res / 2) / res) * res
        ny = nx = n
    else:
        w, s, e, n_ = _check_bbox(bbox)  # type: ignore[arg-type]
        out_crs = CRS.from_user_input(crs) if crs is not None else utm_crs((w + e) / 2, (s + n_) / 2)
        if not out_crs.is_projected:
            raise ValueError(f"crs {out_crs.name!r} is not projected. Fix: use a metre CRS such as UTM, or leave crs=None.")
        bb = geo_box(w, s, e, n_, "EPSG:4326").to_crs(out_crs).boundingbox
        x0 = math.floor(bb.left / res) * res
        y1 = math.ceil(bb.top / res) * res
        nx = max(1, int(math.ceil(bb.right / res) - math.floor(bb.left / res)))
        ny = max(1, int(math.ceil(bb.top / res) - math.floor(bb.bottom / res)))
    from affine import Affine

    return GeoBox((ny, nx), Affine(res, 0.0, float(x0), 0.0, -res, float(y1)), out_crs.to_wkt())


def _lonlat_bbox(gbox: GeoBox) -> list[float]:
    bb = gbox.extent.to_crs("EPSG:4326").boundingbox
    return [round(v, 7) for v in (bb.left, bb.bottom, bb.right, bb.top)]


def _center_lon(gbox: GeoBox) -> float:
    ((lon, _),) = gbox.extent.centroid.to_crs("EPSG:4326").points
    return float(lon)


# ----------------------------------------------------------------------------------------- dates


def _as_timestamp(value: Any, what: str) -> tuple[pd.Timestamp, bool]:
    """(UTC-naive timestamp, date_only) of a date-like value."""
    date_only = isinstance(value, _dt.date) and not isinstance(value, _dt.datetime)
    if isinstance(value, str):
        date_only = len(value.strip()) <= 10
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as err:
        raise ValueError(f"cannot read {what}={value!r} as a date. Fix: use ISO format, e.g. '2020-01-31'.") from err
    if ts is pd.NaT:
        raise ValueError(f"{what} is missing (NaT). Fix: give an ISO date such as '2020-01-31'.")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if isinstance(value, pd.Timestamp | _dt.datetime) and ts == ts.normalize():
        date_only = True
    return ts, date_only


def _datetime_range(start: Any, end: Any) -> tuple[str, pd.Timestamp, pd.Timestamp]:
    """STAC ``start/end`` string (both ends inclusive, like the STAC API) and the inclusive UTC bounds."""
    t0, d0 = _as_timestamp(start, "start")
    t1, d1 = _as_timestamp(end, "end")
    if t0 >= t1:
        raise ValueError(f"start {t0.date() if d0 else t0} must be before end {t1.date() if d1 else t1}.")
    s0 = t0.strftime("%Y-%m-%d") if d0 else t0.strftime("%Y-%m-%dT%H:%M:%SZ")
    s1 = t1.strftime("%Y-%m-%d") if d1 else t1.strftime("%Y-%m-%dT%H:%M:%SZ")
    hi = t1 + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1) if d1 else t1
    return f"{s0}/{s1}", t0, hi


# ---------------------------------------------------------------------------------------- search


def _item_time(item: pystac.Item) -> pd.Timestamp:
    dt = item.datetime or pystac.utils.str_to_datetime(item.properties["start_datetime"])
    ts = pd.Timestamp(dt)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def _filter_local(
    items: Iterable[pystac.Item],
    *,
    collections: Sequence[str],
    bbox: Sequence[float],
    t0: pd.Timestamp,
    t1: pd.Timestamp,
    query: Mapping[str, Mapping[str, Any]] | None,
) -> list[pystac.Item]:
    """Apply the search semantics (collection, bbox overlap, datetime, ``lt``/``lte``/``gt``/``gte``/``eq``
    property queries) to a local list of items, so offline use behaves like the API."""
    ops = {"lt": np.less, "lte": np.less_equal, "gt": np.greater, "gte": np.greater_equal, "eq": np.equal}
    w, s, e, n = bbox
    out = []
    for item in items:
        if item.collection_id not in collections:
            continue
        ib = item.bbox
        if ib is not None and (ib[0] > e or ib[2] < w or ib[1] > n or ib[3] < s):
            continue
        if not (t0 <= _item_time(item) <= t1):
            continue
        ok = True
        for key, conds in (query or {}).items():
            value = item.properties.get(key)
            for op, ref in conds.items():
                if op not in ops:
                    raise ValueError(f"unsupported query operator {op!r} for local items; use one of {sorted(ops)}.")
                if value is None or not ops[op](value, ref):
                    ok = False
        if ok:
            out.append(item)
    return out


def search_items(
    catalog: Catalog,
    *,
    collections: Sequence[str],
    bbox: Sequence[float],
    datetime: str,
    query: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[pystac.Item]:
    """Items of ``collections`` intersecting ``bbox`` (lon/lat) within ``datetime`` ("start/end").

    ``catalog`` is a :class:`pystac_client.Client` (or any object with the same ``search(**kw)`` method
    returning something with ``.items()``), a STAC API URL, ``None`` for Planetary Computer, or a list of
    :class:`pystac.Item` filtered locally with the same semantics (offline use, tests).
    """
    t_range = datetime.split("/")
    if catalog is None or isinstance(catalog, str):
        import pystac_client  # imported here: only the online path needs it

        catalog = pystac_client.Client.open(catalog or PC_STAC_URL)
    if isinstance(catalog, pystac.ItemCollection | list | tuple):
        _, t0, t1 = _datetime_range(*t_range)
        return _filter_local(catalog, collections=collections, bbox=bbox, t0=t0, t1=t1, query=query)
    if not hasattr(catalog, "search"):
        raise TypeError(
            f"catalog must be a pystac_client.Client, an object with .search(), a URL or a list of pystac.Item; "
            f"got {type(catalog).__name__}."
        )
    kwargs: dict[str, Any] = {"collections": list(collections), "bbox": list(bbox), "datetime": datetime}
    if query:
        kwargs["query"] = {k: dict(v) for k, v in query.items()}
    result = catalog.search(**kwargs)
    if hasattr(result, "items"):
        return list(result.items())
    if hasattr(result, "item_collection"):
        return list(result.item_collection())
    return list(result)


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


# ----------------------------------------------------------------------------------------- fetch


def _resolve_signer(sign: bool | Signer | None) -> Signer | None:
    if sign is True:
        import planetary_computer

        return planetary_computer.sign
    if sign in (False, None):
        return None
    if callable(sign):
        return sign
    raise TypeError(f"sign must be True, False or a callable Item -> Item, got {sign!r}.")


def _resolve_mask(mask: CloudMask | str | None) -> CloudMask | None:
    if mask is None or mask == "none":
        return None
    if mask == "scl":
        return SCLMask()
    if isinstance(mask, str):
        raise ValueError(f"unknown mask {mask!r}: use 'scl', 'none', None or a CloudMask such as ModelMask(...).")
    return mask


def fetch_cube(
    *,
    bbox: Sequence[float] | None = None,
    center: Sequence[float] | None = None,
    edge_m: float | None = None,
    start: Any,
    end: Any,
    crs: Any = None,
    resolution: float = 10.0,
    s2_bands: Sequence[str] = S2_BANDS,
    include_s1: bool = True,
    max_cloud_cover: float | None = None,
    mask: CloudMask | str | None = "scl",
    min_valid_fraction: float = 0.0,
    nbar: bool = False,
    chunks: Mapping[str, int] | None = None,
    catalog: Catalog = None,
    sign: bool | Signer | None = True,
    progress: bool = True,
) -> xr.Dataset:
    """Search, sign and lazily load one S2 L2A (+ S1 RTC) cube in the latentcube data model.

    Args:
        bbox: (west, south, east, north) in degrees; or ``center`` (lon, lat) with ``edge_m`` (metres).
        start, end: acquisition dates, both inclusive (STAC ``start/end`` semantics), e.g. "2020-01-01".
        crs: output CRS; default the UTM zone of the area's centre. resolution: pixel size in metres.
        s2_bands: subset of :data:`~latentcube.constants.S2_BANDS`, kept in canonical order.
        include_s1: also load Sentinel-1 RTC VV/VH gamma0 (linear) on the same grid.
        max_cloud_cover: scene cloud cover limit in percent, sent as ``query={"eo:cloud_cover": {"lt": ...}}``.
        mask: ``"scl"`` (default, :class:`~latentcube.sources.masks.SCLMask`), None/"none", or any
            :class:`~latentcube.sources.masks.CloudMask` (e.g. ``ModelMask``); masked S2 pixels become NaN.
        min_valid_fraction: drop dates whose fraction of valid (observed, unmasked) pixels is below it (0-1).
        nbar: apply the sen2nbar c-factor (needs ``pip install latentcube[nbar]``).
        chunks: Dask chunks at load (default :data:`DEFAULT_CHUNKS`).
        catalog: ``None`` (Planetary Computer), a URL, a ``pystac_client.Client``/object with ``.search``,
            or a list of :class:`pystac.Item` (offline).
        sign: ``True`` = :func:`planetary_computer.sign` each item; a callable Item -> Item; ``False`` = none.
            PC SAS tokens expire after a while: compute/save the cube soon after fetching.
        progress: log search results at INFO level and print a one-line summary.

    Returns:
        A lazy Dataset: ``s2`` (time, band, y, x) float32 reflectance, ``s2_scl`` (time, y, x) uint8,
        ``s1`` (time_s1, band_s1, y, x) float32 with ``orbit_state``/``relative_orbit`` on ``time_s1``,
        a ``spatial_ref`` CRS coordinate and provenance attributes.

    Raises:
        CubeError: no S2 (or, with include_s1, no S1) items match; ValueError: bad bbox/dates/bands.
    """
    bands = [str(b) for b in s2_bands]
    unknown = [b for b in bands if b not in S2_BANDS]
    if not bands or unknown:
        raise ValueError(f"unknown S2 bands {unknown or '(none given)'}; choose from {list(S2_BANDS)}.")
    bands = [b for b in S2_BANDS if b in bands]  # canonical order (the data model requires it)
    if not 0.0 <= float(min_valid_fraction) <= 1.0:
        raise ValueError(f"min_valid_fraction must be within [0, 1], got {min_valid_fraction}.")
    if max_cloud_cover is not None and not 0 < float(max_cloud_cover) <= 100:
        raise ValueError(f"max_cloud_cover is a percentage in (0, 100], got {max_cloud_cover}.")
    dt_range, _, _ = _datetime_range(start, end)
    gbox = make_geobox(bbox=bbox, center=center, edge_m=edge_m, crs=crs, resolution=resolution)
    search_bbox = list(_check_bbox(bbox)) if bbox is not None else _lonlat_bbox(gbox)
    chunks = dict(chunks or DEFAULT_CHUNKS)
    signer = _resolve_signer(sign)
    cloud_mask = _resolve_mask(mask)
    extra = [b for b in getattr(cloud_mask, "required_bands", ()) if b not in bands]
    unknown_extra = [b for b in extra if b not in S2_WAVELENGTH_NM and b not in ("B01", "B09")]
    if unknown_extra:
        raise ValueError(f"mask needs bands {unknown_extra} that Sentinel-2 L2A does not have.")

    query = {"eo:cloud_cover": {"lt": float(max_cloud_cover)}} if max_cloud_cover is not None else None
    s2_items = search_items(catalog, collections=[S2_COLLECTION], bbox=search_bbox, datetime=dt_range, query=query)
    where = f"bbox {[round(v, 5) for v in search_bbox]} between {dt_range.replace('/', ' and ')}"
    if not s2_items:
        cc = f" with eo:cloud_cover < {max_cloud_cover}" if max_cloud_cover is not None else ""
        raise CubeError(
            f"no Sentinel-2 items found in '{S2_COLLECTION}' for {where}{cc}; widen the dates or raise "
            "max_cloud_cover (and check the bbox is lon/lat: west, south, east, north)."
        )
    n_found = len(s2_items)
    s2_items = dedupe_s2_items(s2_items)
    if signer is not None:
        s2_items = [signer(it) for it in s2_items]
    log.info("found %d Sentinel-2 items (%d after removing reprocessed duplicates) for %s", n_found, len(s2_items), where)

    s1_items: list[pystac.Item] = []
    if include_s1:
        found = search_items(catalog, collections=[S1_COLLECTION], bbox=search_bbox, datetime=dt_range)
        s1_items = [it for it in found if all(a in it.assets for a in _S1_ASSETS.values())]
        if not s1_items:
            raise CubeError(
                f"no Sentinel-1 RTC items with VV and VH found in '{S1_COLLECTION}' for {where} "
                f"({len(found)} without both polarisations); widen the dates or pass include_s1=False."
            )
        if signer is not None:
            s1_items = [signer(it) for it in s1_items]
        log.info("found %d Sentinel-1 RTC items for %s", len(s1_items), where)

    if not isinstance(catalog, list | tuple | pystac.ItemCollection):
        import odc.stac

        # Remote COGs: GDAL's cloud settings (no directory listing, HTTP retries, merged range reads).
        odc.stac.configure_rio(cloud_defaults=True)
    ds = _load_s2(s2_items, gbox=gbox, bands=bands, extra_bands=extra, chunks=chunks)
    ds = ds.assign_coords(time=ds["time"].values.astype("datetime64[ns]"))
    if include_s1:
        s1 = _load_s1(s1_items, gbox=gbox, chunks=chunks)
        s1 = s1.assign_coords(time_s1=s1["time_s1"].values.astype("datetime64[ns]"))
        ds = ds.assign(s1=s1)
    if "band" in ds["s2"].dims and chunks:
        ds["s2"] = ds["s2"].chunk({"band": -1})
    if "s1" in ds and chunks:
        ds["s1"] = ds["s1"].chunk({"band_s1": -1})

    ds = set_crs(ds, gbox.crs.to_wkt())  # masks and NBAR read the CRS
    if cloud_mask is not None:
        ds = apply_mask(ds, cloud_mask, min_valid_fraction=min_valid_fraction)
    elif min_valid_fraction > 0:
        ds = apply_mask(ds, None, min_valid_fraction=min_valid_fraction)
    ds = ds.drop_vars(["s2_extra", "band_extra"], errors="ignore")
    if nbar:
        from latentcube.sources.brdf import apply_nbar

        ds = apply_nbar(ds, s2_items)

    ds.attrs.update(
        {
            "latentcube_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "conventions": "latentcube cube v1 (docs/data-model.md)",
            "source": "stac",
            "stac_api": catalog if isinstance(catalog, str) else (PC_STAC_URL if catalog is None else type(catalog).__name__),
            "stac_collections": json.dumps([S2_COLLECTION, *([S1_COLLECTION] if include_s1 else [])]),
            "stac_query": json.dumps({"bbox": search_bbox, "datetime": dt_range, "query": query}),
            "stac_s2_items": len(s2_items),
            "stac_s2_item_ids": json.dumps(sorted(it.id for it in s2_items)),
            "stac_s1_items": len(s1_items),
            "stac_s1_item_ids": json.dumps(sorted(it.id for it in s1_items)),
            "s2_reflectance": "(DN + offset) / 10000; offset -1000 for processing baseline >= 04.00, applied per item",
            "s2_resampling": "10 m grid; 20 m bands bilinear, SCL nearest; same solar day mosaicked",
            "cloud_mask": repr(cloud_mask) if cloud_mask is not None else "none",
            "nbar": int(bool(nbar)),
        }
    )
    ds["s2"].attrs.update({"long_name": "Sentinel-2 L2A surface reflectance", "units": "1"})
    ds["s2_scl"].attrs.update({"long_name": "Sentinel-2 L2A scene classification (SCL)", "flag_values": list(range(12))})
    if "s1" in ds:
        ds["s1"].attrs.update({"long_name": "Sentinel-1 RTC gamma0, linear power", "units": "1"})
    ds = set_crs(ds, gbox.crs.to_wkt())
    if progress:
        s1_msg = f", {ds.sizes.get('time_s1', 0)} S1 dates" if include_s1 else ""
        log.info("cube %s px, %d S2 dates%s (lazy)", f"{ds.sizes['y']}x{ds.sizes['x']}", ds.sizes["time"], s1_msg)
    return ds


# ----------------------------------------------------------------------------------------- sites

_PLAN_REQUIRED = ("cube_id", "lon", "lat", "edge_m", "start", "end")


def read_plan(plan: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A site plan as a DataFrame (columns ``cube_id, site_id, lon, lat, edge_m, start, end, split,
    landcover``; the first six are required) from a DataFrame, a ``.csv`` or a ``.geojson`` file
    (Point features; lon/lat taken from the geometry when not in the properties)."""
    if isinstance(plan, pd.DataFrame):
        df = plan.copy()
    else:
        path = Path(plan)
        if not path.exists():
            raise FileNotFoundError(f"site plan {path} not found. Fix: write one with `latentcube plan`.")
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path, dtype={"cube_id": str, "site_id": str})
        elif path.suffix.lower() in (".geojson", ".json"):
            data = json.loads(path.read_text())
            rows = []
            for feat in data.get("features", []):
                row = dict(feat.get("properties") or {})
                geom = feat.get("geometry") or {}
                if geom.get("type") == "Point":
                    row.setdefault("lon", geom["coordinates"][0])
                    row.setdefault("lat", geom["coordinates"][1])
                rows.append(row)
            df = pd.DataFrame(rows)
        else:
            raise ValueError(f"unsupported site plan format {path.suffix!r}: use .csv or .geojson.")
    missing = [c for c in _PLAN_REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"site plan lacks columns {missing}; it has {list(df.columns)}. Required: {list(_PLAN_REQUIRED)}.")
    df["cube_id"] = df["cube_id"].astype(str)
    dups = df["cube_id"][df["cube_id"].duplicated()].unique().tolist()
    if dups:
        raise ValueError(f"duplicate cube_id values in the site plan: {dups[:5]}. Fix: make cube_id unique.")
    bad = [c for c in df["cube_id"] if not c or any(ch in c for ch in "/\\") or c.startswith(".")]
    if bad:
        raise ValueError(f"cube_id values {bad[:5]} cannot be file names. Fix: use letters, digits, '-' and '_'.")
    return df.reset_index(drop=True)


def cube_is_complete(path: str | Path) -> bool:
    """True when ``path`` is a cube that :func:`fetch_sites` finished (its completion marker exists)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def fetch_sites(
    plan: pd.DataFrame | str | Path,
    out_dir: str | Path,
    *,
    skip_existing: bool = True,
    progress: bool = True,
    on_error: Literal["raise", "skip"] = "raise",
    fetch: Callable[..., xr.Dataset] | None = None,
    **fetch_kwargs: Any,
) -> list[Path]:
    """Fetch one cube per plan row into ``out_dir/<cube_id>.zarr``; returns the paths of finished cubes.

    Resumable: each cube is written to ``out_dir/.<cube_id>.zarr.partial``, re-opened and validated, marked
    complete (``.latentcube_complete``, written last) and renamed into place; with ``skip_existing`` a
    re-run skips cubes with the marker and redoes anything else (an interrupted or foreign directory).

    Args:
        plan: DataFrame or .csv/.geojson path (see :func:`read_plan`).
        fetch: the loader, default :func:`fetch_cube` (called with center=(lon, lat), edge_m, start, end).
        on_error: "raise" stops at the first failing site; "skip" logs it and goes on.
        **fetch_kwargs: passed to the loader (catalog, max_cloud_cover, mask, nbar, ...).
    """
    df = read_plan(plan)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loader = fetch or fetch_cube
    done: list[Path] = []
    from tqdm.auto import tqdm

    bar = tqdm(df.to_dict("records"), desc="fetch cubes", unit="cube", disable=not progress)
    for row in bar:
        cid = row["cube_id"]
        final = out / f"{cid}.zarr"
        bar.set_postfix_str(cid)
        tmp = out / f".{cid}.zarr.partial"
        if skip_existing and cube_is_complete(final):
            if tmp.exists():  # leftover of an earlier crash after this cube was finished
                shutil.rmtree(tmp, ignore_errors=True)
            done.append(final)
            continue
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            ds = loader(
                center=(float(row["lon"]), float(row["lat"])),
                edge_m=float(row["edge_m"]),
                start=row["start"],
                end=row["end"],
                progress=False,
                **fetch_kwargs,
            )
            for key in ("cube_id", "site_id", "split", "landcover"):
                if key in row and not (isinstance(row[key], float) and math.isnan(row[key])):
                    ds.attrs[key] = str(row[key])
            save_cube(ds, tmp)
            open_cube(tmp, validate=True)  # a cube that does not read back valid is not finished
            (tmp / COMPLETE_MARKER).write_text(
                json.dumps({"cube_id": cid, "latentcube_version": __version__,
                            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
            )
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except Exception as err:
            if on_error == "raise":
                raise
            log.error("cube %s failed (%s: %s); skipped", cid, type(err).__name__, err)
            continue
        done.append(final)
    return done

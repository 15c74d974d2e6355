"""Where and when: an area's UTM pixel grid, its date range, and the STAC item search (API or local)."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pystac
from odc.geo.geobox import GeoBox
from odc.geo.geom import box as geo_box
from pyproj import CRS, Transformer

from latentcube.errors import LatentcubeError

#: Planetary Computer STAC API (items need signing with planetary_computer.sign to be readable).
PC_STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
S2_COLLECTION = "sentinel-2-l2a"
S1_COLLECTION = "sentinel-1-rtc"

Catalog = Any  # pystac_client.Client, anything with .search(**kw), a URL, or a list of pystac.Item


# ------------------------------------------------------------------------------------------ grid


class StacError(LatentcubeError, ConnectionError):
    """The STAC API could not be reached or answered with an error; the message names the URL and the fix."""


def _unreachable(url: str, err: Exception) -> StacError:
    cause = str(err).splitlines()[0] if str(err) else type(err).__name__
    return StacError(f"cannot search the STAC API at {url} ({type(err).__name__}: {cause[:300]}). Fix: check the "
                     "network connection (and a proxy: HTTPS_PROXY) and run the same command again; with --plan, "
                     "finished cubes are kept and the fetch resumes.")


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
    online = catalog is None or isinstance(catalog, str)
    url = (catalog or PC_STAC_URL) if online else getattr(catalog, "self_href", None) or "the catalog"
    if online:
        import pystac_client  # imported here: only the online path needs it

        try:
            catalog = pystac_client.Client.open(catalog or PC_STAC_URL)
        except (pystac_client.exceptions.APIError, OSError) as err:  # requests' errors are OSErrors
            raise _unreachable(str(url), err) from err
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
    try:
        result = catalog.search(**kwargs)
        if hasattr(result, "items"):
            return list(result.items())
        if hasattr(result, "item_collection"):
            return list(result.item_collection())
        return list(result)
    except OSError as err:  # the connection broke during the search (requests' errors are OSErrors)
        raise _unreachable(str(url), err) from err
    except Exception as err:
        if type(err).__module__.startswith("pystac_client"):  # APIError: the service answered with an error
            raise _unreachable(str(url), err) from err
        raise

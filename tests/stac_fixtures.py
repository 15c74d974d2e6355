"""Tiny local Sentinel-2 L2A / Sentinel-1 RTC STAC items for offline tests of latentcube.sources.stac.

Items imitate Planetary Computer's conventions: collections ``sentinel-2-l2a`` / ``sentinel-1-rtc``,
asset keys ``B02``..``B12``, ``SCL``, ``granule-metadata``, ``vv``, ``vh``; properties
``s2:processing_baseline``, ``s2:mgrs_tile``, ``eo:cloud_cover``, ``sat:orbit_state``,
``sat:relative_orbit``; item-level ``proj:epsg`` with per-asset ``proj:shape``/``proj:transform``; no
``raster:bands`` on S2 (as on PC), ``raster:bands`` nodata -32768 on S1.

Grid: EPSG:32632, 200 m x 200 m with its top-left corner at (500000, 5000200): 20 x 20 px at 10 m,
10 x 10 px at 20 m.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pystac
import rasterio
from pyproj import Transformer
from rasterio.transform import from_origin

EPSG = 32632
X0, Y1 = 500000.0, 5000200.0
EDGE = 200.0
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
PROJ_EXT = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"

#: Uniform DN per band used unless a test overrides it (distinct, so band order is checkable).
DN_DEFAULT = {
    "B02": 1100, "B03": 1200, "B04": 1300, "B05": 1500, "B06": 1600,
    "B07": 1700, "B08": 1800, "B8A": 1850, "B11": 2100, "B12": 2200,
}
BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
#: Extra 60 m bands (written at 20 m here; only their grid matters) for model masks.
BANDS_60M = ("B01", "B09")

_to_lonlat = Transformer.from_crs(EPSG, 4326, always_xy=True)


def center_lonlat() -> tuple[float, float]:
    """(lon, lat) of the fixture tile's centre."""
    return _to_lonlat.transform(X0 + EDGE / 2, Y1 - EDGE / 2)


def _footprint() -> tuple[dict, list[float]]:
    xs = [X0, X0 + EDGE, X0 + EDGE, X0, X0]
    ys = [Y1, Y1, Y1 - EDGE, Y1 - EDGE, Y1]
    lon, lat = _to_lonlat.transform(xs, ys)
    ring = [[float(a), float(b)] for a, b in zip(lon, lat, strict=True)]
    return {"type": "Polygon", "coordinates": [ring]}, [min(lon), min(lat), max(lon), max(lat)]


def write_tif(path: Path, array: np.ndarray, res: float, nodata: float | None) -> dict:
    """Write a single-band tiled GeoTIFF on the fixture grid at ``res`` m; return its asset dict."""
    array = np.asarray(array)
    profile = {
        "driver": "GTiff", "height": array.shape[0], "width": array.shape[1], "count": 1,
        "dtype": array.dtype.name, "crs": f"EPSG:{EPSG}", "transform": from_origin(X0, Y1, res, res),
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
    return {
        "href": str(path), "type": COG, "roles": ["data"], "gsd": res,
        "proj:shape": list(array.shape), "proj:transform": [res, 0.0, X0, 0.0, -res, Y1],
    }


def s2_item(
    folder: Path,
    item_id: str,
    datetime: str,
    baseline: str,
    *,
    dn: dict[str, np.ndarray | int] | None = None,
    scl: np.ndarray | None = None,
    cloud_cover: float = 10.0,
    tile: str = "32TMR",
    valid_cols_20m: slice | None = None,
    extra_bands: bool = False,
    angles: bool = True,
) -> pystac.Item:
    """An S2 L2A item with one GeoTIFF per band.

    ``dn`` overrides per-band values (scalar or array at the band's resolution); ``valid_cols_20m``
    limits data to those 20 m columns (the rest DN 0 / SCL 0: outside the swath), for mosaic tests.
    """
    folder = Path(folder) / item_id
    folder.mkdir(parents=True, exist_ok=True)
    dn = {**DN_DEFAULT, **(dn or {})}
    if extra_bands:
        dn.setdefault("B01", 1000)
        dn.setdefault("B09", 1000)
    assets = {}
    valid10 = np.ones((20, 20), bool)
    valid20 = np.ones((10, 10), bool)
    if valid_cols_20m is not None:
        valid20[:] = False
        valid20[:, valid_cols_20m] = True
        valid10 = np.repeat(np.repeat(valid20, 2, 0), 2, 1)
    for band, value in dn.items():
        res = 10.0 if band in BANDS_10M else 20.0
        shape = (20, 20) if res == 10.0 else (10, 10)
        arr = np.broadcast_to(np.asarray(value, dtype="uint16"), shape).copy()
        arr[~(valid10 if res == 10.0 else valid20)] = 0
        assets[band] = write_tif(folder / f"{band}.tif", arr, res, 0)
    scl_arr = np.full((10, 10), 4, "uint8") if scl is None else np.asarray(scl, "uint8").copy()
    scl_arr[~valid20] = 0
    assets["SCL"] = write_tif(folder / "SCL.tif", scl_arr, 20.0, 0)
    if angles:
        assets["granule-metadata"] = {"href": str(folder / "MTD_TL.xml"), "type": "application/xml", "roles": ["metadata"]}
    geom, bbox = _footprint()
    return pystac.Item.from_dict(
        {
            "type": "Feature", "stac_version": "1.0.0", "stac_extensions": [PROJ_EXT], "id": item_id,
            "collection": "sentinel-2-l2a", "geometry": geom, "bbox": bbox, "links": [],
            "properties": {
                "datetime": datetime, "platform": "Sentinel-2A", "proj:epsg": EPSG,
                "s2:processing_baseline": baseline, "s2:mgrs_tile": tile, "eo:cloud_cover": cloud_cover,
            },
            "assets": assets,
        }
    )


def s1_item(folder: Path, item_id: str, datetime: str, orbit_state: str, relative_orbit: int,
            vv: float | np.ndarray, vh: float | np.ndarray) -> pystac.Item:
    """An S1 RTC item with float32 ``vv``/``vh`` gamma0 (linear) at 10 m, nodata -32768."""
    folder = Path(folder) / item_id
    folder.mkdir(parents=True, exist_ok=True)
    assets = {}
    for name, value in (("vv", vv), ("vh", vh)):
        arr = np.broadcast_to(np.asarray(value, "float32"), (20, 20)).copy()
        asset = write_tif(folder / f"{name}.tif", arr, 10.0, -32768.0)
        asset["raster:bands"] = [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10}]
        assets[name] = asset
    geom, bbox = _footprint()
    return pystac.Item.from_dict(
        {
            "type": "Feature", "stac_version": "1.0.0", "stac_extensions": [PROJ_EXT], "id": item_id,
            "collection": "sentinel-1-rtc", "geometry": geom, "bbox": bbox, "links": [],
            "properties": {
                "datetime": datetime, "platform": "SENTINEL-1A", "proj:epsg": EPSG,
                "sat:orbit_state": orbit_state, "sat:relative_orbit": relative_orbit,
                "sar:polarizations": ["VV", "VH"], "sar:instrument_mode": "IW",
            },
            "assets": assets,
        }
    )


class FakeSearch:
    def __init__(self, items: list[pystac.Item]):
        self._items = items

    def items(self):
        return iter(self._items)


class FakeClient:
    """Stands in for pystac_client.Client: records every search(**kwargs), returns items by collection."""

    def __init__(self, items: list[pystac.Item]):
        self.items = list(items)
        self.calls: list[dict] = []

    def search(self, **kwargs):
        self.calls.append(kwargs)
        cols = kwargs.get("collections") or []
        return FakeSearch([it for it in self.items if it.collection_id in cols])

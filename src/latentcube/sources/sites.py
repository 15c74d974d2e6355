"""Training-site planner: the paper's stratified, spatially separated draw of cube locations (§II).

The paper draws 250 locations over Central/Western Europe from the ESA CCI land-cover map with the
Table I mix (needle-leaved forest 20 %, broadleaved forest 20 %, grassland 20 %, urban 5 %, others
without water 35 %), keeps cube centres at least 50 km apart, extracts two 12-month cubes per location
from periods at least one year apart within 2017-2024, and splits by cube 75/17/8 % into
train/validation/test so that no sample crosses splits (we keep both cubes of a site in one split,
which is stricter).

Choices made here where the paper is silent (documented so they can be changed):

* Periods are calendar years (1 Jan - 31 Dec). Start years ``y1 < y2`` with ``y2 >= y1 + 2`` leave at
  least one full year between the end of the first period and the start of the second.
* Candidate pixels are a uniform random sample of raster pixels (at most ``max_candidates``) so that a
  continental 300 m raster is never enumerated; a pixel's class is the class of the site.
* Sites are placed greedily: at each step the stratum furthest behind its target proposes its next
  random candidate, accepted when it is at least ``min_separation_km`` (great-circle, haversine on a
  sphere of radius 6371.0088 km) from every accepted site.
* Splits are assigned per site (largest-remainder counts on a seeded shuffle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS, Transformer

from latentcube.constants import LANDCOVER_CLASSES
from latentcube.errors import LatentcubeError

__all__ = [
    "ESA_CCI_CLASSES",
    "EARTH_RADIUS_KM",
    "PLAN_COLUMNS",
    "SiteError",
    "TABLE_I",
    "haversine_km",
    "plan_sites",
    "read_plan",
    "write_plan",
]

#: Mean Earth radius (IUGG), km.
EARTH_RADIUS_KM = 6371.0088

#: Paper Table I: target share of locations per stratum. ``others`` = every class not named, except
#: those in ``EXCLUDED_CLASSES``.
TABLE_I: dict[str, float] = {
    "needleleaf_forest": 0.20,
    "broadleaf_forest": 0.20,
    "grassland": 0.20,
    "urban": 0.05,
    "others": 0.35,
}

#: Never sampled: water ("others without water"), permanent snow/ice (no vegetation signal; our choice)
#: and no data.
EXCLUDED_CLASSES: tuple[str, ...] = ("water", "snow_ice", "no_data")

#: ESA CCI land cover (LCCS legend, ESA CCI-LC Product User Guide v2.0, Table 2; same codes in the
#: C3S 2016+ maps) -> our class names (``latentcube.constants.LANDCOVER_CLASSES`` plus "other",
#: "snow_ice", "no_data"). Mixed-leaf, mosaic, shrub, sparse, lichen and flooded classes are "other".
ESA_CCI_CLASSES: dict[int, str] = {
    0: "no_data",
    10: "cropland", 11: "cropland", 12: "cropland", 20: "cropland", 30: "cropland",
    40: "other",  # mosaic natural vegetation (>50 %) / cropland
    50: "broadleaf_forest", 60: "broadleaf_forest", 61: "broadleaf_forest", 62: "broadleaf_forest",
    70: "needleleaf_forest", 71: "needleleaf_forest", 72: "needleleaf_forest",
    80: "needleleaf_forest", 81: "needleleaf_forest", 82: "needleleaf_forest",
    90: "other",  # mixed leaf type
    100: "other", 110: "other", 120: "other", 121: "other", 122: "other",
    130: "grassland",
    140: "other", 150: "other", 151: "other", 152: "other", 153: "other",
    160: "other", 170: "other", 180: "other",
    190: "urban",
    200: "bare_soil", 201: "bare_soil", 202: "bare_soil",
    210: "water",
    220: "snow_ice",
}

#: Codes of the synthetic world / cube ``landcover`` layers.
LATENTCUBE_CLASSES: dict[int, str] = dict(LANDCOVER_CLASSES)

#: Columns of a plan, one row per cube.
PLAN_COLUMNS: tuple[str, ...] = (
    "cube_id", "site_id", "lon", "lat", "edge_m", "start", "end", "period", "split", "landcover", "stratum",
)

SPLITS: tuple[str, ...] = ("train", "val", "test")


class SiteError(LatentcubeError, ValueError):
    """A site plan cannot be made or read as asked; the message names the problem and the fix."""


def haversine_km(lon1: Any, lat1: Any, lon2: Any, lat2: Any) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (NumPy broadcasting)."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(v, dtype="float64")) for v in (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


# ------------------------------------------------------------------------------------------ input


def _load_landcover(landcover: Any, bbox: Sequence[float] | None, variable: str | None) -> xr.DataArray:
    if isinstance(landcover, xr.Dataset):
        names = [n for n, v in landcover.data_vars.items() if v.ndim == 2]
        variable = variable or ("lccs_class" if "lccs_class" in landcover else "landcover" if "landcover" in landcover else None)
        if variable is None and len(names) == 1:
            variable = names[0]
        if variable not in landcover:
            raise SiteError(f"which land-cover variable? 2-D variables: {names}. Fix: pass variable='<name>'.")
        return landcover[variable]
    if isinstance(landcover, xr.DataArray):
        return landcover
    path = Path(landcover)
    if not path.exists():
        raise SiteError(f"no such land-cover file: {path}. Fix: check the path (GeoTIFF or NetCDF, e.g. ESA CCI).")
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio
        from rasterio.windows import Window, from_bounds

        with rasterio.open(path) as src:
            crs = CRS.from_user_input(src.crs.to_wkt()) if src.crs else None
            window = Window(0, 0, src.width, src.height)
            if bbox is not None and crs is not None and crs.is_geographic:
                window = from_bounds(*bbox, transform=src.transform).round_offsets().round_lengths()
                window = window.intersection(Window(0, 0, src.width, src.height))
            data = src.read(1, window=window)
            t = src.window_transform(window)
        x = t.c + t.a * (np.arange(data.shape[1]) + 0.5)
        y = t.f + t.e * (np.arange(data.shape[0]) + 0.5)
        da = xr.DataArray(data, dims=("y", "x"), coords={"y": y, "x": x})
        da.attrs["crs_wkt"] = crs.to_wkt() if crs else ""
        return da
    ds = xr.open_dataset(path, mask_and_scale=False)
    da = _load_landcover(ds, None, variable)
    if da.ndim == 3 and "time" in da.dims:  # ESA CCI NetCDF: lccs_class (time=1, lat, lon)
        da = da.isel(time=0)
    gm = da.attrs.get("grid_mapping")
    if gm and gm in ds.variables:
        da.attrs["crs_wkt"] = ds[gm].attrs.get("crs_wkt") or ds[gm].attrs.get("spatial_ref", "")
    return da


def _xy_names(da: xr.DataArray) -> tuple[str, str]:
    for xn, yn in (("lon", "lat"), ("longitude", "latitude"), ("x", "y")):
        if xn in da.dims and yn in da.dims:
            return xn, yn
    raise SiteError(f"land cover needs lon/lat or x/y dimensions, got {da.dims}.")


def _crs_of(da: xr.DataArray, xn: str) -> CRS:
    wkt = da.attrs.get("crs_wkt")
    if wkt:
        return CRS.from_user_input(wkt)
    if "spatial_ref" in da.coords:
        attrs = da["spatial_ref"].attrs
        return CRS.from_user_input(attrs.get("crs_wkt") or attrs.get("spatial_ref"))
    if xn in ("lon", "longitude"):
        return CRS.from_epsg(4326)
    x = np.asarray(da[xn].values)
    y = np.asarray(da[_xy_names(da)[1]].values)
    if np.abs(x).max() <= 180 and np.abs(y).max() <= 90:
        return CRS.from_epsg(4326)  # degree-valued x/y without CRS: lon/lat
    raise SiteError("land cover has projected-looking coordinates but no CRS. Fix: attach one (rio.write_crs).")


def _class_names(codes: np.ndarray, class_map: str | Mapping[int, str]) -> np.ndarray:
    if isinstance(class_map, str):
        table = {"esa_cci": ESA_CCI_CLASSES, "latentcube": LATENTCUBE_CLASSES}.get(class_map)
        if table is None:
            raise SiteError(f"unknown class_map {class_map!r}. Fix: 'esa_cci', 'latentcube' or a dict code -> name.")
    else:
        table = dict(class_map)
    names = np.full(codes.shape, "no_data", dtype=object)
    for code, name in table.items():
        names[codes == code] = name
    return names


# ------------------------------------------------------------------------------------------- plan


def _largest_remainder(n: int, weights: Sequence[float]) -> list[int]:
    w = np.asarray(weights, dtype="float64")
    raw = n * w / w.sum()
    base = np.floor(raw).astype(int)
    order = np.argsort(-(raw - base), kind="stable")
    base[order[: n - base.sum()]] += 1
    return base.tolist()


def plan_sites(
    landcover: Any,
    *,
    bbox: Sequence[float] | None = None,
    n: int = 250,
    proportions: Mapping[str, float] = TABLE_I,
    class_map: str | Mapping[int, str] = "esa_cci",
    variable: str | None = None,
    min_separation_km: float = 50.0,
    years: tuple[int, int] = (2017, 2024),
    periods_per_site: int = 2,
    splits: Sequence[float] = (0.75, 0.17, 0.08),
    edge_m: float = 2560.0,
    seed: int | np.random.Generator = 0,
    max_candidates: int = 2_000_000,
) -> pd.DataFrame:
    """Draw ``n`` training sites and their cubes.

    Args:
        landcover: ``(y, x)``/``(lat, lon)`` class raster: an ``xarray.DataArray``/``Dataset`` or a path
            (GeoTIFF, NetCDF such as ESA CCI ``lccs_class``). lon/lat or projected (CRS from
            ``spatial_ref``/``crs_wkt``; degree-valued coordinates without CRS are taken as lon/lat).
        bbox: (west, south, east, north) in degrees; only pixels inside are candidates.
        n: number of sites (each gives ``periods_per_site`` cubes).
        proportions: share per stratum; keys are class names or ``"others"`` (every class not named,
            except water, snow/ice and no data). Default: the paper's Table I.
        class_map: ``"esa_cci"`` (:data:`ESA_CCI_CLASSES`), ``"latentcube"`` (codes 1..7) or a dict.
        min_separation_km: minimum great-circle distance between site centres.
        years: first and last calendar year the cube periods may cover (inclusive).
        periods_per_site: 1 or 2 calendar-year periods; two are at least one year apart.
        splits: train/val/test shares of sites (both cubes of a site stay in one split).
        edge_m: cube edge length in metres, recorded for ``latentcube fetch``. Default 2560 m = 256 px at
            10 m: our choice (the cube size, like the paper's bounding-box values, is missing from our
            copy of the paper text), so pass ``bbox`` explicitly for Central/Western Europe.
        seed: int or ``numpy.random.Generator``; the same seed gives the same plan.
        max_candidates: at most this many random pixels are examined.

    Returns:
        One row per cube with :data:`PLAN_COLUMNS`; ``start``/``end`` are Timestamps (inclusive days).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if n < 1:
        raise SiteError(f"n={n}; need at least one site.")
    if not np.isclose(sum(proportions.values()), 1.0, atol=1e-6):
        raise SiteError(f"proportions sum to {sum(proportions.values()):.3f}, not 1. Fix: {dict(proportions)}.")
    if len(splits) != 3 or not np.isclose(sum(splits), 1.0, atol=1e-6) or min(splits) < 0:
        raise SiteError(f"splits={tuple(splits)} must be three non-negative shares (train, val, test) summing to 1.")
    y0, y1 = int(years[0]), int(years[1])
    pairs = [(a,) for a in range(y0, y1 + 1)] if periods_per_site == 1 else [
        (a, b) for a in range(y0, y1 + 1) for b in range(a + 2, y1 + 1)
    ]
    if periods_per_site not in (1, 2) or not pairs:
        raise SiteError(
            f"no two calendar years in {y0}-{y1} are one year apart (periods_per_site={periods_per_site}). "
            "Fix: widen years to span at least 3 years, or use periods_per_site=1."
        )

    da = _load_landcover(landcover, bbox, variable)
    xn, yn = _xy_names(da)
    da = da.transpose(yn, xn)
    crs = _crs_of(da, xn)
    if bbox is not None and crs.is_geographic:
        # crop before sampling so that candidates (and max_candidates) are all inside the box, and a
        # GeoTIFF window read and a full NetCDF read give the same pixels, hence the same plan
        w, s, e, nn = bbox
        xv, yv = np.asarray(da[xn].values), np.asarray(da[yn].values)
        da = da.isel({xn: np.flatnonzero((xv >= w) & (xv <= e)), yn: np.flatnonzero((yv >= s) & (yv <= nn))})
        if da.size == 0:
            raise SiteError(f"bbox {tuple(bbox)} (west, south, east, north, degrees) holds no land-cover pixel.")
    ny, nx = da.shape
    k = min(max_candidates, ny * nx)
    flat = rng.choice(ny * nx, size=k, replace=False) if k < ny * nx else rng.permutation(ny * nx)
    rows, cols = np.divmod(flat, nx)
    xs, ys = np.asarray(da[xn].values)[cols], np.asarray(da[yn].values)[rows]
    if crs.is_geographic:
        lon, lat = xs.astype("float64"), ys.astype("float64")
    else:
        lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(xs, ys)
    codes = np.asarray(da.values)[rows, cols]
    names = _class_names(codes, class_map)
    inside = np.ones(k, bool)
    if bbox is not None:
        w, s, e, nn = bbox
        inside = (lon >= w) & (lon <= e) & (lat >= s) & (lat <= nn)

    named = [c for c in proportions if c != "others"]
    strata = np.full(k, None, dtype=object)
    for c in named:
        strata[names == c] = c
    if "others" in proportions:
        other = ~np.isin(names, named + list(EXCLUDED_CLASSES))
        strata[other] = "others"
    strata[~inside] = None

    keys = list(proportions)
    targets = dict(zip(keys, _largest_remainder(n, [proportions[c] for c in keys]), strict=True))
    pools = {c: np.flatnonzero(strata == c) for c in keys}  # already in random order (flat is shuffled)
    cursor = dict.fromkeys(keys, 0)
    placed = dict.fromkeys(keys, 0)
    acc_lon = np.empty(n)
    acc_lat = np.empty(n)
    acc_idx: list[int] = []
    acc_stratum: list[str] = []
    active = [c for c in keys if targets[c] > 0]
    while active:
        # the stratum furthest behind its target proposes next, so no class takes the best space first
        c = min(active, key=lambda s: (placed[s] / targets[s], keys.index(s)))
        pool = pools[c]
        accepted = False
        while cursor[c] < pool.size:
            # test a batch of candidates against the accepted sites at once
            batch = pool[cursor[c] : cursor[c] + 256]
            m = len(acc_idx)
            if m:
                d = haversine_km(lon[batch][:, None], lat[batch][:, None], acc_lon[None, :m], acc_lat[None, :m])
                ok = np.flatnonzero((d >= min_separation_km).all(axis=1))
            else:
                ok = np.arange(batch.size)
            if ok.size:
                j = batch[ok[0]]
                cursor[c] += int(ok[0]) + 1
                acc_lon[m], acc_lat[m] = lon[j], lat[j]
                acc_idx.append(int(j))
                acc_stratum.append(c)
                placed[c] += 1
                accepted = True
                break
            cursor[c] += batch.size
        if not accepted:
            short = {s: f"{placed[s]}/{targets[s]}" for s in keys}
            raise SiteError(
                f"could place only {len(acc_idx)} of {n} sites with min_separation_km={min_separation_km:g}: "
                f"stratum {c!r} ran out of candidates (placed/target per stratum: {short}; "
                f"{pool.size} candidate pixels of {c!r} examined). Fix: lower min_separation_km, enlarge the "
                "bbox/raster, lower n, or change proportions."
            )
        if placed[c] >= targets[c]:
            active.remove(c)

    n_sites = len(acc_idx)
    order = rng.permutation(n_sites)
    counts = _largest_remainder(n_sites, list(splits))
    split_of = np.empty(n_sites, dtype=object)
    split_of[order] = np.repeat(SPLITS, counts)
    chosen = rng.integers(len(pairs), size=n_sites)
    out = []
    for i, j in enumerate(acc_idx):
        site_id = f"S{i:04d}"
        for p, year in enumerate(pairs[chosen[i]], start=1):
            out.append({
                "cube_id": f"{site_id}_{year}", "site_id": site_id, "lon": float(acc_lon[i]), "lat": float(acc_lat[i]),
                "edge_m": float(edge_m), "start": pd.Timestamp(f"{year}-01-01"), "end": pd.Timestamp(f"{year}-12-31"),
                "period": p, "split": split_of[i], "landcover": str(names[j]), "stratum": acc_stratum[i],
            })
    df = pd.DataFrame(out, columns=list(PLAN_COLUMNS))
    df.attrs.update({"min_separation_km": float(min_separation_km), "years": f"{y0}-{y1}", "crs": "EPSG:4326"})
    return df


# ------------------------------------------------------------------------------------------- I/O


def write_plan(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a plan as CSV (``.csv``) or GeoJSON (``.geojson``/``.json``, one Point feature per cube)."""
    path = Path(path)
    missing = [c for c in PLAN_COLUMNS if c not in df.columns and c != "stratum"]
    if missing:
        raise SiteError(f"plan lacks columns {missing}. Fix: make it with plan_sites().")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    for c in ("start", "end"):
        out[c] = pd.to_datetime(out[c]).dt.strftime("%Y-%m-%d")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        out.to_csv(path, index=False, float_format="%.10g")
    elif suffix in (".geojson", ".json"):
        features = [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [float(r["lon"]), float(r["lat"])]},
                "properties": {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()},
            }
            for r in out.to_dict("records")
        ]
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))
    else:
        raise SiteError(f"unknown plan format {path.suffix!r}. Fix: use .csv or .geojson.")
    return path


def read_plan(path: str | Path) -> pd.DataFrame:
    """Read a plan written by :func:`write_plan` (CSV or GeoJSON); ``start``/``end`` become Timestamps."""
    path = Path(path)
    if not path.exists():
        raise SiteError(f"no such plan: {path}. Fix: make one with `latentcube plan`.")
    if path.suffix.lower() == ".csv":
        df = pd.read_csv(path, dtype={"cube_id": str, "site_id": str, "split": str, "landcover": str})
    elif path.suffix.lower() in (".geojson", ".json"):
        fc = json.loads(path.read_text())
        df = pd.DataFrame([f["properties"] for f in fc.get("features", [])])
    else:
        raise SiteError(f"unknown plan format {path.suffix!r}. Fix: use .csv or .geojson.")
    required = ["cube_id", "lon", "lat", "edge_m", "start", "end"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SiteError(f"{path}: plan lacks columns {missing} (has {list(df.columns)}).")
    for c in ("start", "end"):
        df[c] = pd.to_datetime(df[c])
    return df[[c for c in PLAN_COLUMNS if c in df.columns] + [c for c in df.columns if c not in PLAN_COLUMNS]]

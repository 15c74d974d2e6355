"""Point sampling of embedding cubes: the embedding (or its series) at points and polygon means, as a table.

``sample_embeddings(emb, points, out)`` reads points or polygons from GeoJSON or CSV (no extra
dependency), GeoParquet, a shapefile or a GeoDataFrame (``pip install 'latentcube[vector]'``: geopandas), in any CRS,
reprojects them to the store's CRS (pyproj), and takes from an embedding store (``latentcube embed``,
``gapfill`` or ``aggregate``) the pixel that contains each point, or the mean over the pixels whose
centres lie inside each polygon (rasterio's ``geometry_mask``). Only the storage chunks that hold a point
are read: points are grouped by chunk and picked with xarray's vectorised ``isel`` on the lazy (Dask)
store, so 100,000 points over a large store read a few chunks, not the store.

The table has one row per feature and date (``long``) or one row per feature with a column per feature
and date (``wide``): the input's attribute columns, ``point`` (row number in the input), ``time`` (and
``window``, ``window_start``, ``window_end`` for a window store), the embedding features, the store's
per-pixel layers (``valid_count``, ``filled``, ``quality_*``), ``n_pixels`` (1 for a point), ``n_valid``
(pixels with a valid embedding on that date) and ``store_x``/``store_y`` (the point, or the mean of the
polygon's pixel centres, in the store's CRS). Written as GeoParquet (geometry as given, in the input's
CRS) or CSV. See docs/use.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.cube import cube_crs
from latentcube.embed import EmbeddingCubeError, open_embedding
from latentcube.files import OutputLock, atomic_path, check_output_path
from latentcube.gapfill import match_dates

__all__ = ["OUTSIDE_RULES", "Points", "SampleError", "read_points", "sample_embeddings"]

#: What happens to points (or polygons) outside the store.
OUTSIDE_RULES = ("error", "drop", "nan")
FORMATS = ("long", "wide")
#: Points picked per batch (bounds the memory of one pick: dates x features x points x 4 B).
BATCH_POINTS = 20_000
_LON, _LAT = ("lon", "longitude", "lng"), ("lat", "latitude")
_VECTOR_HINT = "Fix: pip install 'latentcube[vector]' (geopandas), or convert the file to GeoJSON or CSV"


class SampleError(EmbeddingCubeError):
    """Points, options or an output that cannot be sampled; the message says why and how to fix it."""


@dataclass
class Points:
    """Geometries (GeoJSON-like dicts, Point or (Multi)Polygon), their attribute table and their CRS."""

    geometries: list[dict[str, Any]]
    attributes: pd.DataFrame
    crs: Any  # pyproj.CRS


# ------------------------------------------------------------------------------------ reading


def _crs(value: Any, where: str) -> Any:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(value)
    except CRSError as err:
        raise SampleError(f"{where}: {value!r} is not a CRS ({err}). Fix: pass e.g. --crs EPSG:32632.") from err


def _geopandas(path: Path) -> Any:
    try:
        import geopandas
    except ImportError as err:
        raise SampleError(f"reading {path.name} needs geopandas, which is not installed. {_VECTOR_HINT}.") from err
    return geopandas


def _from_csv(path: Path, crs: Any) -> Points:
    df = pd.read_csv(path)
    lower = {str(c).lower(): c for c in df.columns}
    lon = next((lower[c] for c in _LON if c in lower), None)
    lat = next((lower[c] for c in _LAT if c in lower), None)
    if lon is not None and lat is not None:
        xcol, ycol, ccrs = lon, lat, crs if crs is not None else "EPSG:4326"
    elif "x" in lower and "y" in lower:
        xcol, ycol = lower["x"], lower["y"]
        if crs is None:
            raise SampleError(f"{path.name} has x/y columns but no CRS. Fix: pass --crs (e.g. --crs EPSG:32632), or "
                              "give lon/lat columns in degrees (EPSG:4326).")
        ccrs = crs
    else:
        raise SampleError(f"{path.name} has no coordinate columns (it has {[str(c) for c in df.columns]}). Fix: add lon "
                          "and lat columns (degrees, EPSG:4326), or x and y columns with --crs.")
    xs, ys = (pd.to_numeric(df[c], errors="coerce").to_numpy("float64") for c in (xcol, ycol))
    bad = ~(np.isfinite(xs) & np.isfinite(ys))
    if bad.any():
        raise SampleError(f"{path.name}: {int(bad.sum())} row(s) without numeric {xcol}/{ycol} (first: row "
                          f"{int(np.flatnonzero(bad)[0])}). Fix: remove or complete them.")
    geoms = [{"type": "Point", "coordinates": [float(a), float(b)]} for a, b in zip(xs, ys, strict=True)]
    return Points(geoms, df, _crs(ccrs, path.name))


def _from_features(collection: dict[str, Any], crs: Any, name: str) -> Points:
    feats = collection.get("features") if collection.get("type") == "FeatureCollection" else [collection]
    if not isinstance(feats, list):
        raise SampleError(f"{name} is not a GeoJSON FeatureCollection. Fix: pass GeoJSON, GeoParquet, CSV or a shapefile.")
    geoms, props = [], []
    for i, f in enumerate(feats):
        g = f.get("geometry") if f.get("type") == "Feature" else f
        if not g or g.get("type") not in ("Point", "Polygon", "MultiPolygon"):
            kind = (g or {}).get("type", "no geometry")
            raise SampleError(f"{name}: feature {i} has {kind}; sample takes Point, Polygon and MultiPolygon. Fix: "
                              "remove it or convert it.")
        geoms.append(g)
        props.append(f.get("properties") or {})
    return Points(geoms, pd.DataFrame(props, index=range(len(geoms))), crs)


def _geojson_crs(collection: dict[str, Any], crs: Any, name: str) -> Any:
    """A GeoJSON's CRS: the legacy ``crs`` member, else ``crs`` given, else WGS84 lon/lat (RFC 7946)."""
    member = ((collection.get("crs") or {}).get("properties") or {}).get("name")
    if member is not None:
        found = _crs(member, name)
        if crs is not None and _crs(crs, "--crs") != found:
            raise SampleError(f"{name} declares {found.to_string()} but --crs says {crs}. Fix: drop --crs.")
        return found
    return _crs(crs if crs is not None else "EPSG:4326", name)


def read_points(path: str | Path, *, crs: Any = None) -> Points:
    """Points or polygons of a GeoJSON, CSV, GeoParquet or shapefile (by suffix) with their attributes and CRS.

    CSV: ``lon``/``lat`` columns (also ``longitude``/``latitude``; EPSG:4326 unless ``crs``) or ``x``/``y``
    with ``crs``. GeoJSON: its legacy ``crs`` member, else ``crs``, else EPSG:4326 (RFC 7946). GeoParquet and
    shapefiles (geopandas) carry their CRS; ``crs`` is used when they do not. Raises
    :class:`SampleError` for missing columns, a missing CRS, other geometry types or a missing geopandas.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such points file: {path}. Fix: pass a GeoJSON, CSV, GeoParquet or shapefile.")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _from_csv(path, crs)
    if suffix in (".geojson", ".json"):
        try:
            collection = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise SampleError(f"{path.name} is not valid JSON ({err}). Fix: pass a GeoJSON FeatureCollection.") from err
        return _from_features(collection, _geojson_crs(collection, crs, path.name), path.name)
    if suffix in (".parquet", ".geoparquet", ".pq", ".shp", ".gpkg", ".zip"):
        gpd = _geopandas(path)
        gdf = gpd.read_parquet(path) if suffix in (".parquet", ".geoparquet", ".pq") else gpd.read_file(path)
        if gdf.crs is None and crs is None:
            raise SampleError(f"{path.name} has no CRS (a shapefile without .prj?). Fix: pass --crs, e.g. --crs EPSG:32632.")
        return _from_geodataframe(gdf, gdf.crs if gdf.crs is not None else crs, path.name)
    raise SampleError(f"{path.name}: unknown points format {suffix!r}. Fix: pass .geojson, .csv, .parquet or .shp.")


def _from_geodataframe(gdf: Any, crs: Any, name: str) -> Points:
    """A GeoDataFrame's geometries (through GeoJSON, as for files) and attribute columns, in ``crs``."""
    collection = json.loads(gdf.to_json(drop_id=True, to_wgs84=False))
    return _from_features(collection, _crs(crs, name), name)


def _geo_object(obj: Any) -> Any:
    """``obj`` as a GeoDataFrame when it is a geopandas GeoDataFrame or GeoSeries, else None."""
    if not type(obj).__module__.startswith("geopandas"):
        return None  # geopandas not imported for other inputs (an optional dependency)
    import geopandas

    if isinstance(obj, geopandas.GeoSeries):
        return geopandas.GeoDataFrame(geometry=obj.reset_index(drop=True))
    return obj if isinstance(obj, geopandas.GeoDataFrame) else None


def _points_of(points: Any, crs: Any) -> Points:
    """:class:`Points` from what ``sample_embeddings`` takes: Points, a file path, a GeoDataFrame or GeoSeries."""
    if isinstance(points, Points):
        return points
    if isinstance(points, str | PathLike):
        return read_points(points, crs=crs)
    gdf = _geo_object(points)
    if gdf is None:
        raise SampleError(f"points is a {type(points).__name__}. Fix: pass a file path "
                          "(GeoJSON, CSV, GeoParquet or shapefile), a geopandas GeoDataFrame or GeoSeries, or "
                          "latentcube.sample_points.Points.")
    if gdf.crs is None:
        if crs is None:
            raise SampleError("the GeoDataFrame has no CRS. Fix: set it, e.g. gdf = gdf.set_crs('EPSG:4326') for "
                              "lon/lat degrees or gdf.set_crs('EPSG:32631') for UTM metres, or pass crs=.")
        return _from_geodataframe(gdf, crs, "the GeoDataFrame")
    if crs is not None and _crs(crs, "crs") != _crs(gdf.crs, "the GeoDataFrame"):
        raise SampleError(f"the GeoDataFrame is in {gdf.crs.to_string()} but crs={crs!r}. Fix: drop crs= (the "
                          "GeoDataFrame's CRS is used), or reproject it with gdf.to_crs(...).")
    return _from_geodataframe(gdf, gdf.crs, "the GeoDataFrame")


# ------------------------------------------------------------------------------------ geometry


def _reproject(geoms: list[dict[str, Any]], src: Any, dst: Any) -> list[dict[str, Any]]:
    """Every vertex through pyproj (lon/lat order for geographic CRSs: always_xy)."""
    from pyproj import Transformer

    if src == dst:
        return geoms
    tr = Transformer.from_crs(src, dst, always_xy=True)

    def walk(c: Any) -> Any:
        arr = np.asarray(c, dtype="float64")
        if arr.ndim == 1:
            return list(tr.transform(arr[0], arr[1]))
        if arr.ndim == 2:
            x, y = tr.transform(arr[:, 0], arr[:, 1])
            return np.column_stack([x, y]).tolist()
        return [walk(p) for p in c]

    out: list[dict[str, Any]] = []
    points = [i for i, g in enumerate(geoms) if g["type"] == "Point"]
    if points:  # one pyproj call for all points (100,000 single calls take seconds)
        xy = np.array([geoms[i]["coordinates"][:2] for i in points], "float64")
        px, py = tr.transform(xy[:, 0], xy[:, 1])
        moved = dict(zip(points, zip(px.tolist(), py.tolist(), strict=True), strict=True))
    for i, g in enumerate(geoms):
        if g["type"] == "Point":
            out.append({"type": "Point", "coordinates": list(moved[i])})
        elif g["type"] == "Polygon":
            out.append({"type": "Polygon", "coordinates": [walk(r) for r in g["coordinates"]]})
        else:
            out.append({"type": "MultiPolygon", "coordinates": [[walk(r) for r in p] for p in g["coordinates"]]})
    return out


def _grid(da: xr.DataArray) -> tuple[float, float, float, float]:
    """(x of the left edge, pixel width, y of the top edge, pixel height (negative north-up))."""
    x, y = da["x"].values.astype("float64"), da["y"].values.astype("float64")
    if len(x) < 2 or len(y) < 2:
        raise SampleError(f"the store's grid is {len(y)} x {len(x)} pixels: sampling needs at least 2 x 2 to know the "
                          "pixel size.")
    dx, dy = x[1] - x[0], y[1] - y[0]
    return x[0] - dx / 2, dx, y[0] - dy / 2, dy


def _vertices(g: dict[str, Any]) -> np.ndarray:
    rings = g["coordinates"] if g["type"] == "Polygon" else [r for p in g["coordinates"] for r in p]
    return np.concatenate([np.asarray(r, "float64").reshape(-1, 2) for r in rings])


# ------------------------------------------------------------------------------------ sampling


def _chunk_order(rows: np.ndarray, cols: np.ndarray, da: xr.DataArray) -> np.ndarray:
    """Point order grouped by storage chunk, so that a batch touches few chunks."""
    cy = max(da.chunksizes["y"]) if da.chunks else da.sizes["y"]
    cx = max(da.chunksizes["x"]) if da.chunks else da.sizes["x"]
    return np.lexsort((cols, rows // cy * (da.sizes["x"] // cx + 1) + cols // cx))


def _mean_finite(a: np.ndarray) -> np.ndarray:
    """Mean over the last axis of the finite values; NaN where there are none (no empty-slice warning)."""
    ok = np.isfinite(a)
    count = ok.sum(-1)
    total = np.where(ok, a, 0.0).sum(-1, dtype="float64")
    return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype("float32")


def _pick(var: xr.DataArray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``var`` at the (row, col) pixels: vectorised ``isel`` on the lazy array (Dask reads only their chunks)."""
    sel = var.isel(y=xr.DataArray(rows, dims="point"), x=xr.DataArray(cols, dims="point"))
    return np.asarray(sel.transpose("point", ...).values)


def sample_embeddings(
    emb: str | Path | xr.Dataset,
    points: str | Path | Points | Any,
    out: str | Path | None = None,
    *,
    series: bool = False,
    dates: Sequence[Any] | None = None,
    fmt: str = "long",
    crs: Any = None,
    outside: str = "error",
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """The embedding at points (the pixel that holds each) and polygons (mean over the pixels whose centres lie inside).

    Args:
        emb: an embedding store (``latentcube embed``, ``gapfill`` or ``aggregate``) or Dataset.
        points: a file (:func:`read_points`), a geopandas ``GeoDataFrame`` or ``GeoSeries`` of points and/or
            polygons (in its CRS, which it must have: ``gdf.set_crs(...)``), or :class:`Points`.
        out: ``.parquet`` (GeoParquet, needs geopandas) or ``.csv``; ``None`` only returns the table.
        series: every date of the store (the per-date, gap-filled or window series).
        dates: ``YYYY-MM-DD`` dates to take (matched by calendar day); with neither, a one-date store's date.
        fmt: ``long`` (a row per feature and date) or ``wide`` (a row per feature, ``<column>_<YYYY-MM-DD>``).
        crs: the points' CRS when the file (or GeoDataFrame) has none (CSV x/y, GeoJSON in projected coordinates).
        outside: points outside the store: ``error`` (naming how many and the bounds), ``drop`` or ``nan``.
        overwrite: replace an existing output table (one this verb wrote: same suffix).
        progress: a progress bar over point batches and polygons.

    Returns:
        The table as a ``pandas.DataFrame`` (without the geometry column).
    """
    if fmt not in FORMATS:
        raise SampleError(f"format {fmt!r}. Fix: use one of {list(FORMATS)}.")
    if outside not in OUTSIDE_RULES:
        raise SampleError(f"outside={outside!r}. Fix: use one of {list(OUTSIDE_RULES)}.")
    if out is not None and Path(out).suffix.lower() not in (".parquet", ".csv"):
        raise SampleError(f"--out {out}: the table is written as .parquet (GeoParquet) or .csv. Fix: end the name with one.")
    if out is not None and Path(out).suffix.lower() == ".parquet":
        _geopandas(Path(out))  # fail before reading anything
    if out is not None and isinstance(points, str | PathLike) and Path(out).resolve() == Path(points).resolve():
        raise SampleError(f"--out {out} is the points file. Fix: choose another output path.")
    pts = _points_of(points, crs)
    ds = open_embedding(emb, as_dataset=True)
    da = ds["embedding"]
    store_crs = cube_crs(ds)
    times = da["time"].values
    if series and dates:
        raise SampleError("both series and dates given. Fix: pass --series (every date) or --date (some dates).")
    if series:
        tidx = list(range(len(times)))
    elif dates:
        tidx = match_dates(times, dates, what="the embedding store")
    elif len(times) == 1:
        tidx = [0]
    else:
        raise SampleError(f"the store has {len(times)} dates and none was chosen. Fix: pass --date YYYY-MM-DD (repeatable), "
                          "or --series for every date.")
    da = da.isel(time=tidx)
    layers = {str(n): v.isel(time=tidx) for n, v in ds.data_vars.items()
              if n != "embedding" and v.dims == ("time", "y", "x")}
    geoms = _reproject(pts.geometries, pts.crs, store_crs)
    x0, dx, y0, dy = _grid(da)
    height, width = da.sizes["y"], da.sizes["x"]
    n, n_t, n_f = len(geoms), len(tidx), da.sizes["feature"]
    values = np.full((n, n_t, n_f), np.nan, "float32")
    extra = {k: np.full((n, n_t), np.nan, "float32") for k in layers}
    n_pixels = np.zeros(n, "int64")
    n_valid = np.zeros((n, n_t), "int64")
    sx, sy = np.full(n, np.nan), np.full(n, np.nan)

    is_point = np.array([g["type"] == "Point" for g in geoms], bool)
    inside = np.ones(n, bool)
    rows = cols = np.zeros(0, "int64")
    pi = np.flatnonzero(is_point)
    if pi.size:
        xy = np.array([geoms[i]["coordinates"][:2] for i in pi], "float64")
        sx[pi], sy[pi] = xy[:, 0], xy[:, 1]
        cols = np.floor((xy[:, 0] - x0) / dx).astype("int64")
        rows = np.floor((xy[:, 1] - y0) / dy).astype("int64")
        ok = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height) & np.isfinite(xy).all(1)
        inside[pi] = ok
    boxes = {}
    for i in np.flatnonzero(~is_point):
        v = _vertices(geoms[i])
        c = np.floor((v[:, 0] - x0) / dx).astype("int64")
        r = np.floor((v[:, 1] - y0) / dy).astype("int64")
        r0, r1, c0, c1 = max(r.min(), 0), min(r.max(), height - 1), max(c.min(), 0), min(c.max(), width - 1)
        inside[i] = r0 <= r1 and c0 <= c1
        boxes[i] = (r0, r1, c0, c1)
    if (~inside).any() and outside == "error":
        left, right = sorted((x0, x0 + dx * width))
        low, high = sorted((y0, y0 + dy * height))
        first = int(np.flatnonzero(~inside)[0])
        at = f" at x {sx[first]:.10g}, y {sy[first]:.10g}" if is_point[first] else ""  # in the store's CRS, beside its extent
        raise SampleError(
            f"{int((~inside).sum())} of {n} points/polygons lie outside the store (pixel edges x {left:.10g} .. "
            f"{right:.10g}, y {low:.10g} .. {high:.10g} in {store_crs.to_string()}; first: input row {first}, counting from 0{at}). Fix: check the "
            "points' CRS (--crs), or pass --outside drop (leave them out) or --outside nan (keep them as NaN).")

    polys = [int(i) for i in np.flatnonzero(~is_point) if inside[i]]
    keep = inside[pi]
    bar = None
    if progress and (int(keep.sum()) > BATCH_POINTS or len(polys) > 20):
        from tqdm.auto import tqdm

        bar = tqdm(total=int(keep.sum()) + len(polys), desc="sample", unit="point")
    got = _Samples(values, extra, n_pixels, n_valid, sx, sy)
    _sample_points(got, da, layers, pi[keep], rows[keep], cols[keep], bar)
    grid = (x0, dx, y0, dy)
    for i in polys:
        _sample_polygon(got, da, layers, i, geoms[i], boxes[i], grid)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    chosen = np.flatnonzero(inside) if outside == "drop" else np.arange(n)
    table, geometry = _table(pts, da, layers, chosen, values, extra, n_pixels, n_valid, sx, sy, fmt)
    if out is not None:
        _write(table, geometry, pts.crs, Path(out), overwrite=overwrite)
    return table


@dataclass
class _Samples:
    """What is taken per geometry: values (n, T, F), layers {name: (n, T)}, pixel counts, store coordinates."""

    values: np.ndarray
    extra: dict[str, np.ndarray]
    n_pixels: np.ndarray
    n_valid: np.ndarray
    sx: np.ndarray
    sy: np.ndarray


def _sample_points(got: _Samples, da: xr.DataArray, layers: dict[str, xr.DataArray], index: np.ndarray,
                   rows: np.ndarray, cols: np.ndarray, bar: Any) -> None:
    """The pixels ``(rows, cols)`` of the geometries ``index``: grouped by storage chunk, in batches of one
    vectorised isel each (a batch reads the chunks of its points only)."""
    if not index.size:
        return
    order = _chunk_order(rows, cols, da)
    for a in range(0, len(order), BATCH_POINTS):
        k = order[a : a + BATCH_POINTS]
        batch = index[k]
        got.values[batch] = _pick(da, rows[k], cols[k])  # (points, time, feature)
        for name, var in layers.items():
            got.extra[name][batch] = _pick(var, rows[k], cols[k])
        got.n_pixels[batch] = 1
        got.n_valid[batch] = np.isfinite(got.values[batch]).all(-1)
        if bar is not None:
            bar.update(len(batch))


def _sample_polygon(got: _Samples, da: xr.DataArray, layers: dict[str, xr.DataArray], i: int, geom: dict[str, Any],
                    box: tuple[int, int, int, int], grid: tuple[float, float, float, float]) -> None:
    """Geometry ``i``'s mean over the pixels whose centres lie inside it: its bounding box read once, masked."""
    from affine import Affine
    from rasterio.features import geometry_mask

    (r0, r1, c0, c1), (x0, dx, y0, dy) = box, grid
    tr = Affine(dx, 0.0, x0 + c0 * dx, 0.0, dy, y0 + r0 * dy)
    shape = (r1 - r0 + 1, c1 - c0 + 1)
    mask = geometry_mask([geom], out_shape=shape, transform=tr, invert=True)
    if not mask.any():  # smaller than a pixel, between centres: the pixels it touches
        mask = geometry_mask([geom], out_shape=shape, transform=tr, invert=True, all_touched=True)
    window = {"y": slice(r0, r1 + 1), "x": slice(c0, c1 + 1)}
    block = np.asarray(da.isel(window).values, "float32")[..., mask]  # (T, F, pixels)
    valid = np.isfinite(block).all(1)  # (T, pixels)
    got.n_pixels[i], got.n_valid[i] = int(mask.sum()), valid.sum(1)
    got.values[i] = _mean_finite(np.where(valid[:, None], block, np.nan))
    for name, var in layers.items():
        got.extra[name][i] = _mean_finite(np.asarray(var.isel(window).values, "float32")[..., mask])
    rr, cc = np.nonzero(mask)
    got.sx[i], got.sy[i] = x0 + (c0 + cc + 0.5).mean() * dx, y0 + (r0 + rr + 0.5).mean() * dy


def _table(pts: Points, da: xr.DataArray, layers: dict[str, xr.DataArray], chosen: np.ndarray, values: np.ndarray,
           extra: dict[str, np.ndarray], n_pixels: np.ndarray, n_valid: np.ndarray, sx: np.ndarray, sy: np.ndarray,
           fmt: str) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    features = [str(f) for f in da["feature"].values]
    times = pd.DatetimeIndex(da["time"].values)
    along = [c for c in ("window", "window_start", "window_end") if c in da.coords and da[c].dims == ("time",)]
    attrs = pts.attributes.iloc[chosen].reset_index(drop=True)
    own = ["point", "time", *along, *features, *layers, "n_pixels", "n_valid", "store_x", "store_y"]
    clash = sorted(set(map(str, attrs.columns)) & set(own))
    if clash:
        raise SampleError(f"the points file has column(s) {clash}, which the output table uses. Fix: rename them.")
    n_t = len(times)
    base = pd.DataFrame({"point": chosen.astype("int64")}).join(attrs)
    if fmt == "long":
        rep = np.repeat(np.arange(len(chosen)), n_t)
        t = np.tile(np.arange(n_t), len(chosen))
        table = base.iloc[rep].reset_index(drop=True)
        table["time"] = times.values[t]
        for c in along:
            table[c] = np.asarray(da[c].values)[t]
        vals = values[chosen].reshape(-1, len(features))
        for j, f in enumerate(features):
            table[f] = vals[:, j]
        for name in layers:
            table[name] = extra[name][chosen].reshape(-1)
        table["n_pixels"] = n_pixels[chosen][rep]
        table["n_valid"] = n_valid[chosen].reshape(-1)
        table["store_x"], table["store_y"] = sx[chosen][rep], sy[chosen][rep]
        geometry = [pts.geometries[i] for i in chosen[rep]]
    else:
        days = [d.strftime("%Y-%m-%d") for d in times]
        if len(set(days)) < len(days):
            days = [d.strftime("%Y-%m-%dT%H%M%S") for d in times]
        cols: dict[str, Any] = {}
        for k, d in enumerate(days):
            for j, f in enumerate(features):
                cols[f"{f}_{d}"] = values[chosen, k, j]
            for name in layers:
                cols[f"{name}_{d}"] = extra[name][chosen, k]
            cols[f"n_valid_{d}"] = n_valid[chosen, k]
        table = pd.concat([base, pd.DataFrame(cols)], axis=1)
        table["n_pixels"] = n_pixels[chosen]
        table["store_x"], table["store_y"] = sx[chosen], sy[chosen]
        geometry = [pts.geometries[i] for i in chosen]
    return table, geometry


def _is_our_table(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".parquet", ".csv")


def _write(table: pd.DataFrame, geometry: list[dict[str, Any]], crs: Any, out: Path, *, overwrite: bool) -> None:
    with OutputLock(out, "sample table"):
        check_output_path(out, overwrite=overwrite, is_ours=_is_our_table, what="sample table")
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:  # a killed run never leaves half a table under the final name
            if out.suffix.lower() == ".csv":
                table.to_csv(tmp, index=False)
            else:
                gpd = _geopandas(out)
                from shapely.geometry import shape  # geopandas' own geometry library

                gdf = gpd.GeoDataFrame(table, geometry=[shape(g) for g in geometry], crs=crs)
                gdf.to_parquet(tmp, index=False)

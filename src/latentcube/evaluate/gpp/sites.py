"""Site tables, FLUXNET files, footprint embeddings and each site's daily inputs and GPP target."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.cube import open_cube
from latentcube.embed import file_sha256, open_embedding
from latentcube.evaluate.gpp.config import CACHE_VERSION, LANDCOVER_TO_VEG, GPPConfig, GPPError
from latentcube.evaluate.gpp.series import crop_window, footprint_weights, site_mean, to_daily
from latentcube.stores import write_zarr


def embed_site(cube: xr.Dataset, row: int, col: int, checkpoint: str | Path, *, radius_px: int, cache: str | Path | None = None,
               sensors: Sequence[str] = ("fused",), device: str | None = None, sha256: str | None = None) -> xr.DataArray:
    """Per-date embeddings ``(time, feature, y, x)`` of the footprint pixels only (tower ± ``radius_px``).

    Embeds only the footprint pixels with :func:`latentcube.embed.embed_pixels` (in-process; the cube
    around them is the encoder's context), so they equal the whole-cube embedding's. With ``cache`` (a Zarr
    path) the result is stored there and re-used when the checkpoint (SHA-256), position and sensors
    match.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise GPPError(f"no such model file: {checkpoint}. Fix: pass the fusion model.pt written by training.")
    sha = sha256 or file_sha256(checkpoint)
    key = {"version": CACHE_VERSION, "checkpoint_sha256": sha, "row": int(row), "col": int(col),
           "radius_px": int(radius_px), "sensors": list(sensors), "n_time": int(cube.sizes["time"])}
    if cache is not None:
        cache = Path(cache)
        if (cache / "gpp_site.json").exists():
            try:
                if json.loads((cache / "gpp_site.json").read_text()) == key:
                    return open_embedding(cache).load()
            except (OSError, ValueError):
                pass
    from latentcube.embed import embed_pixels  # imports torch/Lightning: only when something must be embedded

    fy, fx, _, _ = crop_window(row, col, radius_px, cube.sizes["y"], cube.sizes["x"], halo=0)  # checks the footprint
    # Only the footprint's pixels are embedded (the cube around them is context): 49 pixels for a radius
    # of 3 instead of the 441 of a crop with its 7-pixel halo.
    emb = embed_pixels(cube, checkpoint, fy, fx, sensors=tuple(sensors), device=device)
    emb = emb.drop_vars([c for c in emb.coords if c not in ("time", "feature", "y", "x")])
    if cache is not None:
        if cache.exists():
            shutil.rmtree(cache)
        write_zarr(emb.to_dataset(name="embedding"), cache, mode="w")
        (cache / "gpp_site.json").write_text(json.dumps(key))
    return emb



# ---------------------------------------------------------------------------------------- sites


def read_sites(sites: str | Path | pd.DataFrame, cubes: str | Path | None = None) -> pd.DataFrame:
    """The site table: one row per (site, cube) with ``site_id, cube, cube_path, row, col, veg_type``.

    Accepts the synthetic world's ``towers.csv`` layout (site_id, cube, row, col, veg_type; x/y instead
    of row/col also works) and a site plan of :mod:`latentcube.sources.sites` (cube_id, site_id, lon,
    lat, landcover; the tower pixel is the one containing lon/lat, the type comes from ``veg_type`` or
    the plan's land-cover name). Several rows of one site (e.g. two plan periods) are concatenated in time.
    ``cubes`` is the folder holding ``<cube>.zarr`` (or ``.nc``); a cube value may also be a path.
    """
    if isinstance(sites, pd.DataFrame):
        df, where = sites.copy(), "the site table"
    else:
        path = Path(sites)
        if not path.exists():
            raise GPPError(f"no such site table: {path}. Fix: pass towers.csv (site_id, cube, row, col, veg_type) or a site plan.")
        where = str(path)
        if path.suffix.lower() in (".geojson", ".json"):
            from latentcube.sources.sites import read_plan

            df = read_plan(path)
        else:
            df = pd.read_csv(path, dtype={"site_id": str, "cube": str, "cube_id": str})
    if "cube" not in df.columns and "cube_id" in df.columns:
        df = df.rename(columns={"cube_id": "cube"})
    missing = [c for c in ("site_id", "cube") if c not in df.columns]
    if missing:
        raise GPPError(f"{where} lacks columns {missing} (has {list(df.columns)}). Fix: a table with site_id, cube, "
                       "row, col, veg_type (the synthetic world's towers.csv) or a site plan with cube_id, site_id, lon, lat.")
    if "veg_type" not in df.columns:
        if "landcover_name" in df.columns or "landcover" in df.columns:
            lc = df["landcover_name"] if "landcover_name" in df.columns else df["landcover"]
            df["veg_type"] = [LANDCOVER_TO_VEG.get(str(v), str(v)) for v in lc]
        else:
            df["veg_type"] = "unknown"
    base = Path(cubes) if cubes is not None else None
    paths, rows, cols = [], [], []
    for r in df.itertuples(index=False):
        p = _cube_path(str(r.cube), base)
        paths.append(str(p))
        if {"row", "col"} <= set(df.columns) and pd.notna(r.row) and pd.notna(r.col):
            rows.append(int(r.row))
            cols.append(int(r.col))
            continue
        ds = open_cube(p)
        if {"x", "y"} <= set(df.columns) and pd.notna(r.x) and pd.notna(r.y):
            x, y = float(r.x), float(r.y)
        elif {"lon", "lat"} <= set(df.columns):
            from pyproj import Transformer

            from latentcube.cube import cube_crs

            x, y = Transformer.from_crs("EPSG:4326", cube_crs(ds), always_xy=True).transform(float(r.lon), float(r.lat))
        else:
            raise GPPError(f"{where}: site {r.site_id} has no row/col, x/y or lon/lat. Fix: add the tower position.")
        xs, ys = ds["x"].values, ds["y"].values
        c, rr = int(np.argmin(np.abs(xs - x))), int(np.argmin(np.abs(ys - y)))
        dx, dy = abs(float(xs[1] - xs[0])), abs(float(ys[1] - ys[0]))
        if abs(xs[c] - x) > dx / 2 + 1e-6 or abs(ys[rr] - y) > dy / 2 + 1e-6:
            raise GPPError(_outside_message(str(r.site_id), str(r.cube), ds, x, y, dx, dy))
        rows.append(rr)
        cols.append(c)
    out = pd.DataFrame({"site_id": df["site_id"].astype(str).to_numpy(), "cube": df["cube"].astype(str).to_numpy(),
                        "cube_path": paths, "row": rows, "col": cols, "veg_type": df["veg_type"].astype(str).to_numpy()})
    if out.empty:
        raise GPPError(f"{where} lists no sites.")
    return out


def _outside_message(site_id: str, cube: str, ds: xr.Dataset, x: float, y: float, dx: float, dy: float) -> str:
    """A tower outside its cube: the point in the cube's CRS and in lon/lat, and the cube's bounds (pixel edges)."""
    from pyproj import CRS, Transformer

    from latentcube.cube import cube_crs

    xs, ys = ds["x"].values, ds["y"].values
    x0, x1, y0, y1 = xs.min() - dx / 2, xs.max() + dx / 2, ys.min() - dy / 2, ys.max() + dy / 2
    crs = cube_crs(ds)
    try:
        epsg = CRS.from_user_input(crs).to_epsg()
        name = f"EPSG:{epsg}" if epsg else CRS.from_user_input(crs).name
    except Exception:  # noqa: BLE001 - the name is only a help here
        name = "the cube's CRS"
    try:
        to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        lon, lat = to_ll.transform(x, y)
        lon0, lat0 = to_ll.transform(x0, y0)
        lon1, lat1 = to_ll.transform(x1, y1)
        ll = (f" = lon {lon:.5f}, lat {lat:.5f}" if np.isfinite([lon, lat]).all() else "",
              f" (lon {lon0:.5f} .. {lon1:.5f}, lat {lat0:.5f} .. {lat1:.5f})" if np.isfinite([lon0, lat0, lon1, lat1]).all() else "")
    except Exception:  # noqa: BLE001 - lon/lat is only a help here
        ll = ("", "")
    return (f"site {site_id} at x {x:.1f}, y {y:.1f} ({name}){ll[0]} lies outside cube {cube}, which spans "
            f"x {x0:.1f} .. {x1:.1f}, y {y0:.1f} .. {y1:.1f}{ll[1]}. Fix: check the position (lon/lat swapped? "
            "x/y in another CRS than the cube's?) or the site's cube column.")


def _cube_path(cube: str, base: Path | None) -> Path:
    cands = [Path(cube)] if base is None else [base / cube, base / f"{cube}.zarr", base / f"{cube}.nc", Path(cube)]
    for c in cands:
        if c.exists():
            return c
    raise GPPError(f"cube {cube!r} not found (looked for {[str(c) for c in cands]}). Fix: pass --cubes, the folder with <cube>.zarr.")


def _fluxnet_file(fluxnet: str | Path | Mapping[str, str | Path], site_id: str) -> Path:
    if isinstance(fluxnet, Mapping):
        if site_id not in fluxnet:
            raise GPPError(f"no FLUXNET file given for site {site_id}. Fix: add it to the fluxnet mapping.")
        return Path(fluxnet[site_id])
    folder = Path(fluxnet)
    if not folder.is_dir():
        raise GPPError(f"no such FLUXNET folder: {folder}. Fix: pass the folder with FLX_<SITE>_*.csv files.")
    found = [f for pattern in (f"FLX_{site_id}_*", f"*{site_id}*") for f in sorted(folder.glob(pattern))
             if f.suffix.lower() in (".csv", ".parquet", ".pq")]
    if not found:
        raise GPPError(f"no FLUXNET file for site {site_id} in {folder} (expected FLX_{site_id}_*.csv or .parquet).")
    rank = {"_DD_": 0, "_HH_": 1, "_HR_": 2}  # daily files first: no sub-daily aggregation needed
    return sorted(dict.fromkeys(found), key=lambda p: min([v for k, v in rank.items() if k in p.name] or [3]))[0]


# ------------------------------------------------------------------------------------ site data


@dataclass
class SiteData:
    """One site's daily inputs per method and its daily GPP target (NaN = missing or filtered)."""

    site_id: str
    veg_type: str
    days: pd.DatetimeIndex
    gpp: np.ndarray  # (n_days,) float64, g C m-2 d-1, NaN where missing/filtered
    features: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (n_days, F) float32, NaN gaps
    feature_names: dict[str, list[str]] = field(default_factory=dict)
    n_dates: int = 0
    groups: dict[str, list[int]] = field(default_factory=dict)  # method -> feature count of each input (one validity flag each)


def _series_from_cube(ds: xr.Dataset, emb: xr.DataArray, row: int, col: int, cfg: GPPConfig, w: np.ndarray
                      ) -> dict[str, tuple[Any, np.ndarray, list[str]]]:
    """Site-mean series on acquisition dates per method: method -> (times, values (T, F), names)."""
    from latentcube.preprocess import linear_to_db

    r = cfg.radius_px
    ys, xs = slice(row - r, row + r + 1), slice(col - r, col + r + 1)
    out: dict[str, tuple[Any, np.ndarray, list[str]]] = {}
    e = emb.transpose("time", "feature", "y", "x").values
    names = [str(f) for f in emb["feature"].values]
    out["embedding"] = (emb["time"].values, site_mean(e, w, cfg.min_valid_fraction), names)
    # (c) annual: each pixel's mean over its calendar year (what yearly products give), then the site mean.
    years = pd.DatetimeIndex(emb["time"].values).year.to_numpy()
    ann_t, ann_v = [], []
    for y in np.unique(years):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixel-years stay NaN
            pix = np.nanmean(e[years == y], axis=0)
        ann_t.append(np.datetime64(f"{y}-01-01"))
        ann_v.append(site_mean(pix, w, cfg.min_valid_fraction))
    out["annual_embedding"] = (np.asarray(ann_t), np.asarray(ann_v), [f"annual_{n}" for n in names])
    s2 = ds["s2"].isel(y=ys, x=xs).transpose("time", "band", "y", "x").values.astype("float64")
    bands = [str(b) for b in ds["band"].values]
    out["s2"] = (ds["time"].values, site_mean(s2, w, cfg.min_valid_fraction), bands)
    nir, red = s2[:, bands.index("B08")], s2[:, bands.index("B04")]
    with np.errstate(invalid="ignore", divide="ignore"):
        nd = (nir - red) / (nir + red)
    out["ndvi"] = (ds["time"].values, site_mean(nd, w, cfg.min_valid_fraction)[:, None], ["NDVI"])
    if "s1" in ds:
        s1 = ds["s1"].isel(y=ys, x=xs).transpose("time_s1", "band_s1", "y", "x").values.astype("float64")
        # mean in linear power (speckle averages there), then dB
        out["s1"] = (ds["time_s1"].values, linear_to_db(site_mean(s1, w, cfg.min_valid_fraction)),
                     [f"{b}_dB" for b in ds["band_s1"].values])
    return out


def read_site_flux(fluxnet: str | Path | Mapping[str, str | Path], site_id: str, cfg: GPPConfig) -> pd.DataFrame:
    """The site's daily tower table (:func:`latentcube.sources.fluxnet.read_fluxnet` with ``cfg.flux_columns``;
    the drivers of ``cfg.meteo`` must be in the file), with the paper's day filter applied to ``gpp``."""
    from latentcube.sources.fluxnet import filter_fluxnet, read_fluxnet

    flux = read_fluxnet(_fluxnet_file(fluxnet, site_id), columns=cfg.flux_columns, require=cfg.meteo)
    n_values = int(flux["gpp"].notna().sum())
    out = filter_fluxnet(flux, min_qc_fraction=cfg.min_qc_fraction, min_gpp=cfg.min_gpp, drop=False)
    out.attrs = {**flux.attrs, "n_gpp_values": n_values}  # days with a GPP value before the filter (for messages)
    return out


def cube_days(cube_paths: Sequence[str | Path]) -> pd.DatetimeIndex:
    """Every calendar day from the first to the last S2 date of the cubes (the days a site's series covers)."""
    first, last = None, None
    for p in cube_paths:
        t = pd.DatetimeIndex(open_cube(p)["time"].values).normalize()
        first = t.min() if first is None else min(first, t.min())
        last = t.max() if last is None else max(last, t.max())
    return pd.date_range(first, last, freq="D", name="date")


def _span(index: pd.DatetimeIndex) -> str:
    return f"{index[0].date()} .. {index[-1].date()}" if len(index) else "no day"


def check_gpp_days(site_id: str, flux: pd.DataFrame, days: pd.DatetimeIndex, cfg: GPPConfig) -> None:
    """Raise a :class:`GPPError` saying which cause applies when no day of ``days`` (the cube period) has a
    GPP value that passed the filter in ``flux`` (:func:`read_site_flux`'s table)."""
    ok = flux["gpp"].notna()
    inside = ok & flux.index.isin(days)
    if inside.any():
        return
    period = _span(days)
    n_days = len(flux)
    n_values = int(flux.attrs.get("n_gpp_values", ok.sum()))
    n_qc = int((flux["nee_qc_fraction"] >= cfg.min_qc_fraction).sum())
    source = Path(str(flux.attrs.get("source", "its FLUXNET file"))).name
    qc_col = flux.attrs.get("qc_column", "the NEE QC column")
    fixes = []
    if n_values == 0:
        fixes.append("the file has no GPP value: map the GPP column (--flux-columns gpp=<column>; Python: "
                     "GPPConfig(flux_columns='gpp=<column>'))")
    elif not ok.any():
        fixes.append(f"no day reaches the QC threshold: check that {qc_col} is the right column (--flux-columns "
                     "nee_qc=<column>; sub-daily files need complete days of flags 0/1) or lower the threshold (Python: "
                     "GPPConfig(min_qc_fraction=...))")
    if not flux.index.isin(days).any():
        fixes.append(f"the file ({_span(flux.index)}) does not overlap the cube period ({period}): use the tower's "
                     "file of the cube's years, or a cube of the file's years")
    elif ok.any():
        fixes.append(f"the days that pass ({_span(flux.index[ok])}) lie outside the cube period ({period}): use the "
                     "tower's file of the cube's years, or a cube of those years")
    raise GPPError(
        f"site {site_id}: no GPP day passes the filter within the cube period {period}. The FLUXNET file {source} "
        f"covers {_span(flux.index)} ({n_days} days, {n_values} with a GPP value); {n_qc} days reach the QC threshold "
        f"(>= {cfg.min_qc_fraction:g} of the day measured or good gap-fill by {qc_col}), {int(ok.sum())} pass the filter "
        f"(QC and GPP >= {cfg.min_gpp:g}), {int(inside.sum())} of them inside the cube period. Fix: "
        + "; ".join(f"({i}) {f}" if len(fixes) > 1 else f for i, f in enumerate(fixes, 1)) + "."
    )


def cache_name(cube_path: str | Path, row: int, col: int, radius_px: int) -> str:
    """Folder name of a site's cached footprint embeddings: the cube's file stem (``area`` for
    ``../area/area.zarr``) with a short hash of its resolved path, so cubes named alike in different folders
    get their own cache and a path in the site table never leads out of the cache folder."""
    p = Path(cube_path)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", p.stem if p.suffix.lower() in (".zarr", ".nc") else p.name) or "cube"
    digest = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:8]
    return f"{stem}-{digest}_r{row}c{col}_R{radius_px}.zarr"


def load_site_data(site_rows: pd.DataFrame, *, checkpoint: str | Path, fluxnet: str | Path | Mapping[str, str | Path],
                   cfg: GPPConfig, cache_dir: str | Path | None = None, sha256: str | None = None,
                   flux: pd.DataFrame | None = None) -> SiteData:
    """Daily per-method inputs and filtered daily GPP of one site (all rows of ``site_rows`` = its cubes).
    ``flux``: the site's :func:`read_site_flux` table when already read."""
    site_id = str(site_rows["site_id"].iloc[0])
    w = footprint_weights(cfg.radius_px, cfg.weights, cfg.sigma_px)
    parts: dict[str, list[tuple[Any, np.ndarray]]] = {}
    names: dict[str, list[str]] = {}
    first, last, n_dates = None, None, 0
    for r in site_rows.itertuples(index=False):
        ds = open_cube(r.cube_path)
        if "s2" not in ds:
            raise GPPError(f"cube {r.cube_path} has no 's2' variable. Fix: a cube with Sentinel-2 (and S1 for fusion models).")
        cache = Path(cache_dir) / cache_name(r.cube_path, int(r.row), int(r.col), cfg.radius_px) if cache_dir is not None else None
        emb = embed_site(ds, int(r.row), int(r.col), checkpoint, radius_px=cfg.radius_px, cache=cache,
                         sensors=cfg.sensors, device=cfg.device, sha256=sha256)
        series = _series_from_cube(ds, emb, int(r.row), int(r.col), cfg, w)
        for k, (t, v, n) in series.items():
            parts.setdefault(k, []).append((t, v))
            names[k] = n
        t2 = pd.DatetimeIndex(ds["time"].values).normalize()
        n_dates += len(t2)
        first = t2.min() if first is None else min(first, t2.min())
        last = t2.max() if last is None else max(last, t2.max())
    days = pd.date_range(first, last, freq="D", name="date")

    def cat(k: str) -> tuple[np.ndarray, np.ndarray]:
        t = np.concatenate([np.asarray(p[0]) for p in parts[k]])
        v = np.concatenate([p[1] for p in parts[k]])
        o = np.argsort(t, kind="stable")
        return t[o], v[o]

    feats: dict[str, np.ndarray] = {}
    t, v = cat("embedding")
    feats["embedding"] = to_daily(t, v, days, cfg.max_gap_days)
    t, v = cat("ndvi")
    feats["ndvi"] = to_daily(t, v, days, cfg.max_gap_days)
    t, v = cat("s2")
    b = [to_daily(t, v, days, cfg.max_gap_days)]
    bnames = list(names["s2"])
    if "s1" in parts:
        t1, v1 = cat("s1")
        b.append(to_daily(t1, v1, days, cfg.max_gap_days))
        bnames += names["s1"]
    feats["bands"] = np.concatenate(b, axis=1)
    names["bands"] = bnames
    t, v = cat("annual_embedding")  # constant within each calendar year: no interpolation across years
    year_of = {pd.Timestamp(x).year: i for i, x in enumerate(t)}
    idx = np.array([year_of.get(y, -1) for y in days.year])
    ann = np.where((idx >= 0)[:, None], v[np.clip(idx, 0, None)], np.nan)
    feats["annual_embedding"] = ann.astype("float32")

    if flux is None:
        flux = read_site_flux(fluxnet, site_id, cfg)
    check_gpp_days(site_id, flux, days, cfg)
    gpp = flux["gpp"].reindex(days).to_numpy(dtype="float64")
    names = {k: names[k] for k in ("embedding", "annual_embedding", "ndvi", "bands")}
    groups = {k: [f.shape[1]] for k, f in feats.items()}
    if cfg.meteo:
        # Daily tower drivers on the same days (NaN where the file has none); each input keeps its own
        # validity flag beside them (groups), so a day without S2 still has its weather.
        met = flux[list(cfg.meteo)].reindex(days).to_numpy(dtype="float32")
        feats["meteo"], names["meteo"], groups["meteo"] = met, [m.upper() for m in cfg.meteo], [met.shape[1]]
        for base in ("embedding", "bands", "ndvi"):
            feats[f"{base}_meteo"] = np.concatenate([feats[base], met], axis=1)
            names[f"{base}_meteo"] = names[base] + names["meteo"]
            groups[f"{base}_meteo"] = [feats[base].shape[1], met.shape[1]]
    return SiteData(site_id, str(site_rows["veg_type"].iloc[0]), days, gpp, feats, names, n_dates, groups)



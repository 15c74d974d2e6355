"""Daily GPP at flux towers from embedding series: the paper's downstream test (§IV-C) with baselines.

Pipeline (docs/gpp.md)::

    site cube --crop (tower ± radius + 7 px halo)--> embed_cube --> embeddings of the footprint pixels
      --site mean (NaN-aware, optional footprint weights)--> series on the S2 dates
      --linear interpolation to daily (max-gap rule)--> daily features
      --90-day windows, stride 10--> Transformer regressor (sequence to sequence: every day of a window)
      --overlapping predictions averaged per day--> daily GPP --> RMSE, R², NRMSE per site / type / all

Every method is scored on the same days: per-date embeddings, (a) raw S1+S2 bands, (b) NDVI only,
(c) annual embeddings (per pixel and calendar year), (d) day-of-year climatology; protocols: year split
and leave-one-site-out. :func:`evaluate_gpp` runs all of it and writes the report section.
"""

from __future__ import annotations

import json
import os
import shutil
import time as _time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.cube import open_cube
from latentcube.embed import file_sha256
from latentcube.errors import LatentcubeError

__all__ = [
    "BASELINE_METHODS",
    "GPPConfig",
    "GPPError",
    "METHODS",
    "SiteData",
    "crop_window",
    "doy_climatology",
    "doy_index",
    "embed_site",
    "evaluate_gpp",
    "fit_regressor",
    "footprint_weights",
    "load_site_data",
    "make_windows",
    "metrics",
    "nrmse",
    "predict_daily",
    "r2",
    "read_sites",
    "rmse",
    "site_mean",
    "to_daily",
    "window_starts",
]

#: Methods in report order: the per-date embeddings first, then the baselines (a)-(d).
METHODS: tuple[str, ...] = ("embedding", "bands", "ndvi", "annual_embedding", "climatology")
BASELINE_METHODS: tuple[str, ...] = METHODS[1:]
METHOD_LABELS: dict[str, str] = {
    "embedding": "per-date embeddings",
    "bands": "(a) raw S1+S2 bands",
    "ndvi": "(b) NDVI only",
    "annual_embedding": "(c) annual embedding",
    "climatology": "(d) day-of-year climatology",
}
PROTOCOLS: tuple[str, ...] = ("year", "loso")
PROTOCOL_LABELS = {"year": "year split", "loso": "leave-one-site-out"}
#: Encoder halo in pixels (15 x 15 patches): the crop must carry this much real context around the
#: footprint so that its embeddings equal the whole-cube embeddings.
DEFAULT_HALO_PX = 7
#: Site-plan land-cover names (latentcube.sources.sites) -> IGBP vegetation type used in the tables.
LANDCOVER_TO_VEG = {"needleleaf_forest": "ENF", "broadleaf_forest": "DBF", "grassland": "GRA", "cropland": "CRO"}
CACHE_VERSION = 1


class GPPError(LatentcubeError, ValueError):
    """The GPP evaluation cannot run as asked; the message says what is wrong and how to fix it."""


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class GPPConfig:
    """Settings of the GPP evaluation (defaults: the paper's protocol, a CPU-sized regressor)."""

    radius_px: int = 3
    """Footprint half-width in pixels: the site mean covers (2r+1)^2 pixels (3 -> 7 x 7 px = 70 m at 10 m;
    why in docs/gpp.md)."""
    weights: str = "uniform"
    """Footprint weights over the (2r+1)^2 pixels: ``"uniform"`` or ``"gaussian"`` (isotropic, ``sigma_px``)."""
    sigma_px: float | None = None
    """Gaussian footprint SD in pixels (default radius/2)."""
    min_valid_fraction: float = 0.5
    """A date's site mean is NaN when the valid pixels carry less than this fraction of the weight."""
    sensors: tuple[str, ...] = ("fused",)
    """Embeddings of a fusion model fed to the regressor (``fused``; ``s1``/``s2`` for per-sensor ones)."""
    max_gap_days: int = 60
    """Linear interpolation to daily only across gaps of at most this many days between valid dates;
    days inside longer gaps (and before the first / after the last valid date) stay NaN."""
    window_days: int = 90
    """Input window length in days (paper: 90)."""
    stride_days: int = 10
    """Step between training window starts in days (paper: 10)."""
    eval_stride_days: int = 1
    """Step between the windows whose predictions are averaged per day at evaluation. 1 = a window starts
    on every day, so each day is predicted at every position of the window (and of the 10-day token),
    which removes the token-phase saw-tooth that windows aligned to the token length leave."""
    sweep_windows: tuple[int, ...] = ()
    """Extra window lengths (e.g. 60, 75, 90, 105, 120 as in the paper) scored on the year split with the
    per-date embeddings; empty = no sweep."""
    train_years: tuple[int, ...] = (2017, 2018, 2019)
    """Year split: calendar years whose GPP days train (paper: 2017-2019)."""
    test_years: tuple[int, ...] = (2020,)
    """Year split: calendar years whose GPP days are scored (paper: 2020)."""
    protocols: tuple[str, ...] = PROTOCOLS
    """``"year"`` and/or ``"loso"`` (leave-one-site-out over all years)."""
    methods: tuple[str, ...] = METHODS
    """Subset of :data:`METHODS`; ``embedding`` is always run."""
    min_qc_fraction: float = 0.7
    """FLUXNET day filter (paper): NEE_VUT_REF_QC >= 0.7 ..."""
    min_gpp: float = 0.0
    """... and GPP >= 0 (g C m-2 d-1); other days are not trained on and not scored."""
    climatology_smooth_days: int = 15
    """Width of the circular moving average smoothing the day-of-year climatology (days)."""
    climatology_by: str = "veg_type"
    """Climatology groups: ``"veg_type"`` (mean over training sites of the same type; all sites when the
    type has none) or ``"all"``."""
    patch_days: int = 10
    """Days per Transformer token: the linear input layer maps patch_days x features to one token and the
    head gives patch_days daily values. Daily inputs are interpolated between S2 dates (valid dates are
    ~15 days apart on average with clouds), so daily tokens would mostly repeat interpolated values;
    10-day tokens make training ~10x cheaper. Must divide the window lengths."""
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 4
    ffn_dim: int = 64
    dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 40
    patience: int = 5
    """Early stopping: stop after this many epochs without a better validation MAE; keep the best."""
    es_fraction: float = 0.2
    """Share of the training (site, year) pairs held out as the early-stopping validation part."""
    min_target_days: int = 5
    """A window joins a fit (or early-stopping) set when it has at least this many target days there."""
    doy_features: bool = False
    """Also give every regressor sin/cos of the day of year (off in the paper's setup; a diagnostic that
    shows what the satellite inputs add beyond the season)."""
    seed: int = 0
    device: str | None = None
    """``"cuda"``/``"cpu"``; default CUDA when available."""
    n_jobs: int | None = None
    """Regressor fits run in parallel in this many processes (one torch thread each); default: the CPU
    count (at most 4) on CPU, 1 with a GPU. 1 = in this process."""

    def __post_init__(self) -> None:
        if self.radius_px < 0:
            raise GPPError(f"radius_px={self.radius_px}: use a radius >= 0 pixels (0 = the tower pixel).")
        if self.weights not in ("uniform", "gaussian"):
            raise GPPError(f"weights={self.weights!r}: use 'uniform' or 'gaussian'.")
        if not 0 < self.min_valid_fraction <= 1:
            raise GPPError(f"min_valid_fraction={self.min_valid_fraction}: use a value in (0, 1].")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise GPPError(f"unknown methods {bad}. Fix: choose from {list(METHODS)}.")
        badp = [p for p in self.protocols if p not in PROTOCOLS]
        if badp or not self.protocols:
            raise GPPError(f"protocols={list(self.protocols)}: choose from {list(PROTOCOLS)}.")
        for w in (self.window_days, *self.sweep_windows):
            if w < self.patch_days or w % self.patch_days:
                raise GPPError(f"window length {w} d is not a multiple of patch_days={self.patch_days}. "
                               "Fix: use e.g. 60, 70, ..., 120 with patch_days 10 (or patch_days=1 or 5).")
        if self.stride_days < 1 or self.eval_stride_days < 1 or self.max_gap_days < 1:
            raise GPPError("stride_days, eval_stride_days and max_gap_days must be >= 1 day.")
        if set(self.train_years) & set(self.test_years):
            raise GPPError(f"train_years {self.train_years} and test_years {self.test_years} overlap.")
        if self.climatology_by not in ("veg_type", "all"):
            raise GPPError(f"climatology_by={self.climatology_by!r}: use 'veg_type' or 'all'.")
        if self.d_model % self.n_heads:
            raise GPPError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPPConfig:
        """Inverse of ``asdict``; unknown keys are an error (lists become tuples)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise GPPError(f"unknown GPPConfig keys {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ----------------------------------------------------------------------------- footprint and mean


def footprint_weights(radius_px: int, kind: str = "uniform", sigma_px: float | None = None) -> np.ndarray:
    """``(2r+1, 2r+1)`` float64 weights summing to 1 over the footprint box centred on the tower pixel.

    ``uniform``: equal weights. ``gaussian``: exp(-d²/(2σ²)) with d the distance to the tower pixel in
    pixels (σ default r/2; r = 0 gives the single pixel).
    """
    n = 2 * radius_px + 1
    if kind == "uniform":
        w = np.ones((n, n))
    elif kind == "gaussian":
        sigma = sigma_px if sigma_px is not None else max(radius_px / 2.0, 0.5)
        if sigma <= 0:
            raise GPPError(f"sigma_px={sigma_px}: use a positive footprint SD in pixels.")
        d = np.arange(n) - radius_px
        w = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma**2))
    else:
        raise GPPError(f"footprint weights {kind!r}: use 'uniform' or 'gaussian'.")
    return w / w.sum()


def site_mean(values: np.ndarray, weights: np.ndarray | None = None, min_valid_fraction: float = 0.5) -> np.ndarray:
    """Weighted NaN-aware mean over the last two (y, x) axes of ``values`` ``(..., h, w)``.

    Each output element is ``sum(w v) / sum(w)`` over its finite pixels, NaN when those pixels carry
    less than ``min_valid_fraction`` of the total weight (a mostly clouded footprint is not a site value).
    """
    v = np.asarray(values, dtype="float64")
    w = np.ones(v.shape[-2:]) if weights is None else np.asarray(weights, dtype="float64")
    if w.shape != v.shape[-2:]:
        raise GPPError(f"weights {w.shape} do not match the footprint {v.shape[-2:]}.")
    valid = np.isfinite(v)
    wv = np.where(valid, w, 0.0)
    den = wv.sum(axis=(-2, -1))
    num = np.where(valid, v * w, 0.0).sum(axis=(-2, -1))
    ok = (den > 0) & (den >= min_valid_fraction * w.sum() - 1e-12)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, num / np.where(den > 0, den, 1.0), np.nan)


def crop_window(row: int, col: int, radius_px: int, height: int, width: int, halo: int = DEFAULT_HALO_PX
                ) -> tuple[slice, slice, slice, slice]:
    """(crop y, crop x, inner y, inner x): the crop = footprint + ``halo`` px of context (clipped at the
    cube edge, as the whole-cube embedding clips), inner = the footprint's position inside the crop."""
    if not (0 <= row < height and 0 <= col < width):
        raise GPPError(f"tower pixel (row {row}, col {col}) is outside the {height} x {width} cube.")
    if row - radius_px < 0 or col - radius_px < 0 or row + radius_px >= height or col + radius_px >= width:
        raise GPPError(f"the footprint (row {row}, col {col}) ± {radius_px} px leaves the {height} x {width} cube. "
                       "Fix: a smaller radius_px or a larger cube around the tower.")
    y0, y1 = max(row - radius_px - halo, 0), min(row + radius_px + 1 + halo, height)
    x0, x1 = max(col - radius_px - halo, 0), min(col + radius_px + 1 + halo, width)
    iy = slice(row - radius_px - y0, row + radius_px + 1 - y0)
    ix = slice(col - radius_px - x0, col + radius_px + 1 - x0)
    return slice(y0, y1), slice(x0, x1), iy, ix


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
                    return xr.open_zarr(cache)["embedding"].load()
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
        emb.to_dataset(name="embedding").to_zarr(cache, mode="w", zarr_format=2, consolidated=True)
        (cache / "gpp_site.json").write_text(json.dumps(key))
    return emb


# ------------------------------------------------------------------------------------ daily series


def to_daily(times: Sequence[Any], values: np.ndarray, days: pd.DatetimeIndex, max_gap_days: float) -> np.ndarray:
    """Linear interpolation of an irregular series onto ``days`` (float32 ``(len(days), F)``).

    ``times`` are acquisition times (the calendar day counts; same-day values are averaged), ``values``
    ``(T,)`` or ``(T, F)`` with NaN = invalid, interpolated per feature between valid days. A day between
    two valid days more than ``max_gap_days`` apart is NaN, as is every day before the first or after the
    last valid day (no extrapolation); observed days keep their value.
    """
    v = np.asarray(values, dtype="float64")
    if v.ndim == 1:
        v = v[:, None]
    t = pd.DatetimeIndex(times).normalize()
    if len(t) != len(v):
        raise GPPError(f"{len(t)} times for {len(v)} values.")
    df = pd.DataFrame(v, index=t).groupby(level=0).mean()  # NaN-aware per-day mean
    obs = (df.index.values.astype("datetime64[D]").astype("int64")).astype("float64")
    target = pd.DatetimeIndex(days).values.astype("datetime64[D]").astype("int64").astype("float64")
    out = np.full((len(target), v.shape[1]), np.nan)
    for j in range(v.shape[1]):
        ok = np.isfinite(df.iloc[:, j].to_numpy())
        xp, fp = obs[ok], df.iloc[:, j].to_numpy()[ok]
        if len(xp) == 0:
            continue
        val = np.interp(target, xp, fp, left=np.nan, right=np.nan)
        k = np.searchsorted(xp, target, side="right")  # xp[k-1] <= day < xp[k]
        inside = (k > 0) & (k < len(xp))
        gap = np.full(len(target), np.inf)
        gap[inside] = xp[k[inside]] - xp[k[inside] - 1]
        exact = (k > 0) & (xp[np.clip(k - 1, 0, len(xp) - 1)] == target)
        val[(gap > max_gap_days) & ~exact] = np.nan
        out[:, j] = val
    return out.astype("float32")


def window_starts(n_days: int, length: int, stride: int) -> np.ndarray:
    """Start indices of ``length``-day windows every ``stride`` days over ``n_days`` days, plus one window
    aligned to the end when the stride leaves the last days uncovered (so every day gets a prediction).
    Empty when the series is shorter than one window."""
    if length < 1 or stride < 1:
        raise GPPError(f"window length {length} and stride {stride} must be >= 1 day.")
    if n_days < length:
        return np.zeros(0, dtype="int64")
    starts = list(range(0, n_days - length + 1, stride))
    if starts[-1] + length < n_days:
        starts.append(n_days - length)
    return np.asarray(starts, dtype="int64")


def make_windows(x: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Stack windows ``x[s : s + length]`` for every start: ``(n, length, *x.shape[1:])``."""
    idx = np.asarray(starts)[:, None] + np.arange(length)[None, :]
    return np.asarray(x)[idx]


def doy_index(dates: Sequence[Any]) -> np.ndarray:
    """Day of year 0..364 on a 365-day calendar: 29 February shares 28 February's slot and later days of
    a leap year shift back by one, so a date maps to the same season in every year."""
    d = pd.DatetimeIndex(dates)
    doy = d.day_of_year.to_numpy()
    return (doy - ((d.is_leap_year) & (doy > 59)).astype(int) - 1).astype("int64")


def doy_climatology(dates: Sequence[Any], gpp: np.ndarray, smooth_days: int = 15) -> np.ndarray:
    """Mean GPP per day of year (365 values, :func:`doy_index`), smoothed by a circular moving average
    of ``smooth_days`` days (window sums of values / window counts, so days with fewer observations
    weigh less). NaN observations are ignored; a slot whose window has no observation is NaN."""
    from scipy.ndimage import uniform_filter1d

    g = np.asarray(gpp, dtype="float64")
    idx = doy_index(dates)
    ok = np.isfinite(g)
    sums = np.bincount(idx[ok], weights=g[ok], minlength=365)
    counts = np.bincount(idx[ok], minlength=365).astype("float64")
    if smooth_days > 1:
        # scipy's uniform filter with mode="wrap" is the circular moving average (Dec 31 next to Jan 1).
        sums = uniform_filter1d(sums, smooth_days, mode="wrap") * smooth_days
        counts = uniform_filter1d(counts, smooth_days, mode="wrap") * smooth_days
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 1e-9, sums / np.where(counts > 1e-9, counts, 1.0), np.nan)


# ------------------------------------------------------------------------------------------ metrics


def _pair(obs: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    o, p = np.asarray(obs, dtype="float64").ravel(), np.asarray(pred, dtype="float64").ravel()
    if o.shape != p.shape:
        raise GPPError(f"{o.size} observations for {p.size} predictions.")
    ok = np.isfinite(o) & np.isfinite(p)
    return o[ok], p[ok]


def rmse(obs: Any, pred: Any) -> float:
    """Root mean squared error over pairs where both are finite (units of the data; NaN when none)."""
    o, p = _pair(obs, pred)
    return float(np.sqrt(np.mean((p - o) ** 2))) if o.size else float("nan")


def r2(obs: Any, pred: Any) -> float:
    """Coefficient of determination 1 − SS_res/SS_tot (as sklearn.metrics.r2_score), finite pairs only."""
    o, p = _pair(obs, pred)
    if o.size < 2:
        return float("nan")
    ss_tot = float(np.sum((o - o.mean()) ** 2))
    return float(1.0 - np.sum((o - p) ** 2) / ss_tot) if ss_tot > 0 else float("nan")


def nrmse(obs: Any, pred: Any) -> float:
    """RMSE / (max − min of the observations) over the same finite pairs (dimensionless).

    Range normalisation (docs/gpp.md): the normalisation of the paper's reported values (0.09 with
    RMSE 3-4 g C m⁻² d⁻¹); each group (site, vegetation type, all) uses its own observed range.
    """
    o, p = _pair(obs, pred)
    if o.size < 2 or o.max() == o.min():
        return float("nan")
    return float(np.sqrt(np.mean((p - o) ** 2)) / (o.max() - o.min()))


def metrics(obs: Any, pred: Any) -> dict[str, float]:
    """``{"rmse", "r2", "nrmse", "n"}`` over the pairs where both values are finite."""
    o, p = _pair(obs, pred)
    return {"rmse": rmse(o, p), "r2": r2(o, p), "nrmse": nrmse(o, p), "n": int(o.size)}


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
            raise GPPError(f"site {r.site_id} ({x:.1f}, {y:.1f}) lies outside cube {r.cube}. Fix: check the position or the cube.")
        rows.append(rr)
        cols.append(c)
    out = pd.DataFrame({"site_id": df["site_id"].astype(str).to_numpy(), "cube": df["cube"].astype(str).to_numpy(),
                        "cube_path": paths, "row": rows, "col": cols, "veg_type": df["veg_type"].astype(str).to_numpy()})
    if out.empty:
        raise GPPError(f"{where} lists no sites.")
    return out


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
    found = sorted(folder.glob(f"FLX_{site_id}_*.csv")) + sorted(folder.glob(f"*{site_id}*.csv"))
    if not found:
        raise GPPError(f"no FLUXNET file for site {site_id} in {folder} (expected FLX_{site_id}_*.csv).")
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


def load_site_data(site_rows: pd.DataFrame, *, checkpoint: str | Path, fluxnet: str | Path | Mapping[str, str | Path],
                   cfg: GPPConfig, cache_dir: str | Path | None = None, sha256: str | None = None) -> SiteData:
    """Daily per-method inputs and filtered daily GPP of one site (all rows of ``site_rows`` = its cubes)."""
    from latentcube.sources.fluxnet import filter_fluxnet, read_fluxnet

    site_id = str(site_rows["site_id"].iloc[0])
    w = footprint_weights(cfg.radius_px, cfg.weights, cfg.sigma_px)
    parts: dict[str, list[tuple[Any, np.ndarray]]] = {}
    names: dict[str, list[str]] = {}
    first, last, n_dates = None, None, 0
    for r in site_rows.itertuples(index=False):
        ds = open_cube(r.cube_path)
        if "s2" not in ds:
            raise GPPError(f"cube {r.cube_path} has no 's2' variable. Fix: a cube with Sentinel-2 (and S1 for fusion models).")
        cache = Path(cache_dir) / f"{r.cube}_r{r.row}c{r.col}_R{cfg.radius_px}.zarr" if cache_dir is not None else None
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

    flux = read_fluxnet(_fluxnet_file(fluxnet, site_id))
    flux = filter_fluxnet(flux, min_qc_fraction=cfg.min_qc_fraction, min_gpp=cfg.min_gpp, drop=False)
    gpp = flux["gpp"].reindex(days).to_numpy(dtype="float64")
    if not np.isfinite(gpp).any():
        raise GPPError(f"site {site_id}: no GPP day passes the filter within the cube period {days[0].date()}-{days[-1].date()}. "
                       "Fix: check the FLUXNET file's years and QC.")
    return SiteData(site_id, str(site_rows["veg_type"].iloc[0]), days, gpp, feats,
                    {k: names[k] for k in ("embedding", "annual_embedding", "ndvi", "bands")}, n_dates)


# ------------------------------------------------------------------------------------- regressor


def _device(cfg: GPPConfig) -> str:
    import torch

    return cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _regressor(n_features: int, window_days: int, cfg: GPPConfig):
    """Linear input layer (patch_days x features -> d_model) + learned positions, ``n_layers`` Transformer
    encoder blocks, a linear regression head giving patch_days daily values per token."""
    import torch
    from torch import nn

    class GPPTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = cfg.patch_days
            self.inp = nn.Linear(n_features * cfg.patch_days, cfg.d_model)
            self.pos = nn.Parameter(torch.randn(1, window_days // cfg.patch_days, cfg.d_model) * 0.02)
            layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.ffn_dim, cfg.dropout, batch_first=True,
                                               norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(cfg.d_model)
            self.head = nn.Linear(cfg.d_model, cfg.patch_days)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, F) -> (B, L)
            b, n, f = x.shape
            z = self.inp(x.reshape(b, n // self.p, self.p * f)) + self.pos
            return self.head(self.norm(self.encoder(z))).reshape(b, n)

    return GPPTransformer()


@dataclass
class _Prepared:
    """Standardised model inputs of every site for one method and one fit set."""

    x: dict[str, np.ndarray]  # site -> (n_days, F + 1) float32: standardised features, NaN -> 0, + valid flag
    mean: np.ndarray
    std: np.ndarray


def _prepare(data: Mapping[str, SiteData], method: str, fit_days: Mapping[str, np.ndarray], doy: bool = False) -> _Prepared:
    """Standardise with the fit days' statistics; NaN input days become 0 (the fit mean) and the extra last
    column says which days had all features (1) or not (0), so a gap is never a value in disguise.
    ``doy`` appends sin/cos of the day of year (a diagnostic: what the inputs add beyond the season)."""
    stack = np.concatenate([data[s].features[method][m] for s, m in fit_days.items() if m.any()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    x = {}
    for s, d in data.items():
        f = d.features[method]
        valid = np.isfinite(f).all(axis=1, keepdims=True)
        z = np.where(np.isfinite(f), (f - mean) / std, 0.0)
        cols = [z, valid]
        if doy:
            a = 2 * np.pi * doy_index(d.days)[:, None] / 365.0
            cols += [np.sin(a), np.cos(a)]
        x[s] = np.concatenate(cols, axis=1).astype("float32")
    return _Prepared(x, mean, std)


def _window_set(x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], length: int,
                stride: int, min_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of every site with targets kept only on the masked days (others NaN); windows with fewer
    than ``min_days`` target days are dropped."""
    xs, ys = [], []
    for s, m in masks.items():
        if not m.any():
            continue
        starts = window_starts(len(m), length, stride)
        if len(starts) == 0:
            continue
        t = np.where(m, y[s], np.nan)
        tw = make_windows(t, starts, length)
        keep = np.isfinite(tw).sum(axis=1) >= min_days
        xs.append(make_windows(x[s], starts[keep], length))
        ys.append(tw[keep])
    if not xs:
        return np.zeros((0, length, 1), "float32"), np.zeros((0, length), "float32")
    return np.concatenate(xs).astype("float32"), np.concatenate(ys).astype("float32")


def fit_regressor(x_fit: np.ndarray, y_fit: np.ndarray, x_es: np.ndarray, y_es: np.ndarray, cfg: GPPConfig,
                  window_days: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Train the Transformer regressor with MAE on the finite targets of ``y_fit`` ``(N, L)``; early stop
    on the MAE of ``y_es`` (restores the best epoch). Inputs ``(N, L, F)`` float32 without NaN.

    Returns (model in eval mode on its device, info with epochs, best early-stopping MAE in g C m⁻² d⁻¹,
    target scale and seconds). Seeded (``cfg.seed``): the same data and config give the same model.
    """
    import torch

    t0 = _time.perf_counter()
    if len(x_fit) == 0:
        raise GPPError("no training window has enough target days. Fix: more sites/years, or a lower min_target_days.")
    length = window_days or x_fit.shape[1]
    dev = _device(cfg)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = _regressor(x_fit.shape[2], length, cfg).to(dev)
    scale = float(np.nanstd(y_fit)) or 1.0  # targets in units of their SD: one learning rate fits all sites
    xf = torch.from_numpy(np.array(x_fit, dtype="float32")).to(dev)  # a copy: joblib may pass read-only memmaps
    yf = torch.from_numpy(y_fit / scale).to(dev)
    xe = torch.from_numpy(np.array(x_es, dtype="float32")).to(dev) if len(x_es) else None
    ye = torch.from_numpy(y_es / scale).to(dev) if len(x_es) else None
    # fused: one kernel over all 55 parameter tensors; the default per-tensor loop was ~25 % of a CPU step
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)

    def masked_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(target)
        return (pred[ok] - target[ok]).abs().mean()

    best, best_state, best_epoch, bad, epoch = float("inf"), None, 0, 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        order = torch.randperm(len(xf), generator=gen).to(dev)
        for i in range(0, len(order), cfg.batch_size):
            b = order[i : i + cfg.batch_size]
            loss = masked_mae(model(xf[b]), yf[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if xe is None:
            continue
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xe[i : i + 256]) for i in range(0, len(xe), 256)])
            ok = torch.isfinite(ye)
            val = float((pred[ok] - ye[ok]).abs().mean()) * scale
        if val < best - 1e-6:
            best, best_epoch, bad = val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    model.target_scale = scale
    return model, {"epochs": epoch, "best_epoch": best_epoch, "es_mae": best if np.isfinite(best) else None,
                   "target_scale": scale, "n_fit_windows": len(x_fit), "n_es_windows": len(x_es),
                   "seconds": _time.perf_counter() - t0}


def predict_daily(model: Any, x: np.ndarray, length: int, stride: int) -> np.ndarray:
    """Daily predictions ``(n_days,)`` of one site: every window (stride + end-aligned) predicts all its
    days, and each day's value is the mean over the windows covering it (NaN if the site is too short)."""
    import torch

    starts = window_starts(len(x), length, stride)
    out = np.full(len(x), np.nan)
    if len(starts) == 0:
        return out
    dev = next(model.parameters()).device
    xw = torch.from_numpy(make_windows(x, starts, length).astype("float32")).to(dev)
    with torch.no_grad():
        pred = torch.cat([model(xw[i : i + 256]) for i in range(0, len(xw), 256)]).cpu().numpy().astype("float64")
    pred *= getattr(model, "target_scale", 1.0)
    sums, counts = np.zeros(len(x)), np.zeros(len(x))
    for s, p in zip(starts, pred, strict=True):
        sums[s : s + length] += p
        counts[s : s + length] += 1
    ok = counts > 0
    out[ok] = sums[ok] / counts[ok]
    return out


# ------------------------------------------------------------------------------------- protocols


def _folds(data: Mapping[str, SiteData], protocol: str, cfg: GPPConfig) -> list[tuple[str, dict, dict]]:
    """(fold name, fit-day masks, test-day masks) per fold; masks are boolean per site and day."""
    folds = []
    if protocol == "year":
        fit = {s: np.isin(d.days.year, cfg.train_years) for s, d in data.items()}
        test = {s: np.isin(d.days.year, cfg.test_years) for s, d in data.items()}
        if not any(m.any() for m in test.values()):
            raise GPPError(f"no site has days in the test years {cfg.test_years}. Fix: set test_years (--test-years).")
        if not any(m.any() for m in fit.values()):
            raise GPPError(f"no site has days in the training years {cfg.train_years}. Fix: set train_years (--train-years).")
        folds.append(("year", fit, test))
    else:
        if len(data) < 2:
            raise GPPError("leave-one-site-out needs at least 2 sites. Fix: more sites or protocols=('year',).")
        for held in data:
            fit = {s: np.full(len(d.days), s != held) for s, d in data.items()}
            test = {s: np.full(len(d.days), s == held) for s, d in data.items()}
            folds.append((held, fit, test))
    return folds


def _split_es(data: Mapping[str, SiteData], fit: Mapping[str, np.ndarray], cfg: GPPConfig, salt: int
              ) -> tuple[dict, dict]:
    """Hold out ``es_fraction`` of the fit (site, year) pairs (at least one) for early stopping: whole
    site-years, so the validation days are not neighbours of training days."""
    pairs = [(s, y) for s, d in data.items() for y in np.unique(d.days.year[fit[s]])
             if np.isfinite(d.gpp[fit[s] & (d.days.year == y)]).any()]
    rng = np.random.default_rng([cfg.seed, salt])
    n = max(1, int(round(cfg.es_fraction * len(pairs)))) if len(pairs) > 1 else 0
    held = {pairs[i] for i in rng.choice(len(pairs), n, replace=False)} if n else set()
    es = {s: fit[s] & np.isin(d.days.year, [y for (ss, y) in held if ss == s]) for s, d in data.items()}
    fit2 = {s: fit[s] & ~es[s] for s in data}
    return fit2, es


def _climatology_predict(data: Mapping[str, SiteData], fit: Mapping[str, np.ndarray], target: str, cfg: GPPConfig) -> np.ndarray:
    group = [s for s in data if fit[s].any()]
    if cfg.climatology_by == "veg_type":
        same = [s for s in group if data[s].veg_type == data[target].veg_type]
        group = same or group
    dates = np.concatenate([data[s].days[fit[s]].values for s in group])
    gpp = np.concatenate([data[s].gpp[fit[s]] for s in group])
    clim = doy_climatology(dates, gpp, cfg.climatology_smooth_days)
    return clim[doy_index(data[target].days)]


def _fit_predict(job: dict[str, Any]) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """One (fold, method) job: fit on its windows, predict the daily GPP of its test sites. Module-level so
    that a process pool can run it (inputs are plain arrays)."""
    if job.get("threads"):
        import torch

        torch.set_num_threads(job["threads"])  # one thread per worker process: the workers fill the cores
    model, info = fit_regressor(job["xf"], job["yf"], job["xe"], job["ye"], job["cfg"], job["window"])
    preds = {s: predict_daily(model, x, job["window"], job["cfg"].eval_stride_days) for s, x in job["x_test"].items()}
    return job["key"], preds, info


def _protocol_jobs(data: Mapping[str, SiteData], protocol: str, cfg: GPPConfig, methods: Sequence[str], window: int
                   ) -> tuple[dict[str, dict[str, np.ndarray]], list[dict[str, Any]], dict[str, tuple[str, dict]]]:
    """(predictions method -> site -> (n_days,) with the climatology already filled in, one regressor job per
    (fold, method), and each job's (method, test-day masks)). Keys are ``"<fold>/<method>"``."""
    preds = {m: {s: np.full(len(d.days), np.nan) for s, d in data.items()} for m in methods}
    y = {s: d.gpp for s, d in data.items()}
    jobs, tests = [], {}
    for k, (fold, fit, test) in enumerate(_folds(data, protocol, cfg)):
        fit2, es = _split_es(data, fit, cfg, salt=k)
        for method in methods:
            if method == "climatology":
                for s in data:
                    if test[s].any():
                        p = _climatology_predict(data, fit, s, cfg)
                        preds[method][s][test[s]] = p[test[s]]
                continue
            prep = _prepare(data, method, fit, cfg.doy_features)
            xf, yf = _window_set(prep.x, y, fit2, window, cfg.stride_days, cfg.min_target_days)
            xe, ye = _window_set(prep.x, y, es, window, cfg.stride_days, cfg.min_target_days)
            key = f"{fold}/{method}"
            tests[key] = (method, test)
            jobs.append({"key": key, "xf": xf, "yf": yf, "xe": xe, "ye": ye, "cfg": cfg, "window": window,
                         "x_test": {s: prep.x[s] for s in data if test[s].any()}})
    return preds, jobs, tests


def _run_protocols(data: Mapping[str, SiteData], runs: Mapping[str, tuple[str, int, Sequence[str]]], cfg: GPPConfig,
                   log: Callable[[str], None], pool: Any = None
                   ) -> dict[str, tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]]:
    """Daily predictions (method -> site -> (n_days,), NaN outside the test days) and fit info of every run
    ``name -> (protocol, window days, methods)``.

    Every (run, fold, method) regressor is an independent job; ``pool`` (a ``joblib.Parallel``) runs all of
    them in one batch of parallel processes (so no worker idles at the end of a short protocol), otherwise
    they run here one after another."""
    out, tests, jobs = {}, {}, []
    for name, (protocol, window, methods) in runs.items():
        preds, run_jobs, run_tests = _protocol_jobs(data, protocol, cfg, methods, window)
        out[name] = (preds, {})
        for job in run_jobs:
            jobs.append({**job, "run": name, "threads": 1 if pool else None})
            tests[(name, job["key"])] = run_tests[job["key"]]
    if pool is not None:
        from joblib import delayed

        results = pool(delayed(_fit_predict)(j) for j in jobs)
    else:
        results = map(_fit_predict, jobs)
    for job, (key, p, fi) in zip(jobs, results, strict=True):
        name = job["run"]
        method, test = tests[(name, key)]
        preds, info = out[name]
        info[key] = fi
        log(f"  {name} {key}: {fi['epochs']} epochs (best {fi['best_epoch']}), {fi['seconds']:.1f} s")
        for s, v in p.items():
            preds[method][s][test[s]] = v[test[s]]
    return out


def _score(data: Mapping[str, SiteData], preds: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Metrics per method: overall (pooled site-days), per vegetation type (pooled), per site. Only days
    where every method has a prediction and GPP passed the filter are scored (the same days for all)."""
    common = {s: np.isfinite(d.gpp) & np.all([np.isfinite(preds[m][s]) for m in preds], axis=0) for s, d in data.items()}
    out: dict[str, Any] = {}
    for m, ps in preds.items():
        obs = {s: data[s].gpp[common[s]] for s in data}
        prd = {s: ps[s][common[s]] for s in data}
        res = {"overall": metrics(np.concatenate(list(obs.values())), np.concatenate(list(prd.values()))),
               "by_veg_type": {}, "by_site": {}}
        for v in sorted({d.veg_type for d in data.values()}):
            ss = [s for s in data if data[s].veg_type == v]
            res["by_veg_type"][v] = metrics(np.concatenate([obs[s] for s in ss]), np.concatenate([prd[s] for s in ss]))
        for s in data:
            res["by_site"][s] = metrics(obs[s], prd[s])
        out[m] = res
    return out


# ------------------------------------------------------------------------------------------ figures


def _plot_series(data: Mapping[str, SiteData], preds: Mapping[str, Mapping[str, np.ndarray]], scores: Mapping[str, Any],
                 protocol: str, path: Path) -> Path:
    """Observed vs predicted daily GPP per site (the paper's Fig. 7) on the scored days' period."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = list(data)
    fig, axes = plt.subplots(len(sites), 1, figsize=(11, 2.1 * len(sites)), squeeze=False)
    styles = {"embedding": dict(color="tab:blue", lw=1.3), "ndvi": dict(color="tab:green", lw=0.9, alpha=0.8),
              "climatology": dict(color="tab:red", lw=0.9, ls="--")}
    for ax, s in zip(axes[:, 0], sites, strict=True):
        d = data[s]
        have = np.isfinite(preds["embedding"][s])
        if not have.any():
            continue
        lo, hi = np.flatnonzero(have)[[0, -1]]
        t = d.days[lo : hi + 1]
        ax.plot(t, d.gpp[lo : hi + 1], ".", ms=2.5, color="0.35", label="observed (QC-filtered)")
        for m, st in styles.items():
            if m in preds:
                nr = scores[m]["by_site"][s]["nrmse"]
                ax.plot(t, preds[m][s][lo : hi + 1], label=f"{METHOD_LABELS[m]} (NRMSE {nr:.3f})", **st)
        ax.set_title(f"{s} ({d.veg_type})", fontsize=9, loc="left")
        ax.set_ylabel("GPP (g C m⁻² d⁻¹)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="upper left", ncol=4, frameon=False)
    fig.suptitle(f"Daily GPP, observed vs predicted ({PROTOCOL_LABELS[protocol]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_bars(results: Mapping[str, Any], methods: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protos = list(results)
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(protos)
    for i, p in enumerate(protos):
        vals = [results[p]["scores"][m]["overall"]["nrmse"] for m in methods]
        ax.bar(np.arange(len(methods)) + i * width, vals, width, label=PROTOCOL_LABELS[p])
    ax.set_xticks(np.arange(len(methods)) + width * (len(protos) - 1) / 2)
    ax.set_xticklabels([METHOD_LABELS[m] for m in methods], rotation=15, fontsize=7)
    ax.set_ylabel("NRMSE (RMSE / range)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ entry point


def _fmt(v: Any, nd: int = 3) -> Any:
    return round(float(v), nd) if v is not None and np.isfinite(v) else None


def evaluate_gpp(
    sites: str | Path | pd.DataFrame,
    out_dir: str | Path,
    *,
    checkpoint: str | Path,
    cubes: str | Path | None,
    fluxnet: str | Path | Mapping[str, str | Path],
    config: GPPConfig = GPPConfig(),
    write_report_section: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Predict daily GPP at flux sites from per-date embeddings and compare with the baselines.

    Args:
        sites: site table (``towers.csv``: site_id, cube, row, col, veg_type) or a site plan, or a DataFrame
            (:func:`read_sites`).
        out_dir: the run directory (``OUT``): files go to ``OUT/evaluation/gpp/`` (``metrics.json``,
            ``per_site.csv``, ``predictions.csv``, PNG figures, ``cache/`` with the per-site embeddings)
            and the report section to ``OUT/sections/060_gpp.json``.
        checkpoint: fusion (or autoencoder) model file, ``runs/fusion/model.pt``.
        cubes: folder with the site cubes ``<cube>.zarr`` (None when the table holds paths).
        fluxnet: folder with ``FLX_<SITE>_*.csv`` files (DD, HH or HR; read by
            :func:`latentcube.sources.fluxnet.read_fluxnet`) or a mapping site_id -> file.
        config: :class:`GPPConfig`.
        write_report_section: also write the report section.
        log: progress messages (e.g. ``print``); default silent.

    Returns:
        The content of ``metrics.json``: per protocol and method the overall / per-type / per-site
        RMSE (g C m⁻² d⁻¹), R² and NRMSE (RMSE / observed range), plus timings and the config.
    """
    t_start = _time.perf_counter()
    say = log or (lambda _m: None)
    cfg = config
    methods = ["embedding", *[m for m in METHODS[1:] if m in cfg.methods]]
    out_dir = Path(out_dir)
    folder = out_dir / "evaluation" / "gpp"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise GPPError(f"no such model file: {checkpoint}. Fix: pass --checkpoint runs/fusion/model.pt.")
    table = read_sites(sites, cubes)
    sha = file_sha256(checkpoint)
    timings: dict[str, float] = {}

    t0 = _time.perf_counter()
    data: dict[str, SiteData] = {}
    for site_id, rows in table.groupby("site_id", sort=False):
        t1 = _time.perf_counter()
        data[str(site_id)] = load_site_data(rows, checkpoint=checkpoint, fluxnet=fluxnet, cfg=cfg,
                                            cache_dir=folder / "cache", sha256=sha)
        say(f"  site {site_id}: {len(data[str(site_id)].days)} days, {_time.perf_counter() - t1:.1f} s")
    timings["site_series"] = _time.perf_counter() - t0

    results: dict[str, Any] = {}
    sweep: dict[str, Any] = {}
    n_jobs = cfg.n_jobs or (1 if _device(cfg).startswith("cuda") else min(os.cpu_count() or 1, 4))
    pool = None
    if n_jobs > 1:
        from joblib import Parallel

        # joblib's loky processes (spawned, not forked: forking a process whose torch thread pools ran can
        # deadlock; unlike multiprocessing's spawn, loky needs no __main__ guard in the user's script).
        pool = Parallel(n_jobs=n_jobs, backend="loky")
    t0 = _time.perf_counter()
    runs = {protocol: (protocol, cfg.window_days, methods) for protocol in cfg.protocols}
    runs.update({f"sweep {w} d": ("year", w, ["embedding"]) for w in cfg.sweep_windows})
    done = _run_protocols(data, runs, cfg, say, pool)
    for protocol in cfg.protocols:
        preds, info = done[protocol]
        results[protocol] = {"preds": preds, "scores": _score(data, preds), "training": info}
    for w in cfg.sweep_windows:
        sweep[str(w)] = _score(data, done[f"sweep {w} d"][0])["embedding"]["overall"]
    timings["protocols" + (" and sweep" if cfg.sweep_windows else "")] = _time.perf_counter() - t0

    t0 = _time.perf_counter()
    figures = []
    for protocol, res in results.items():
        figures.append((_plot_series(data, res["preds"], res["scores"], protocol, folder / f"gpp_series_{protocol}.png"),
                        f"Observed (dots) and predicted daily GPP per site, {PROTOCOL_LABELS[protocol]} (the paper's Fig. 7)."))
    figures.insert(0, (_plot_bars(results, methods, folder / "gpp_nrmse.png"),
                       "Overall NRMSE per method and protocol (lower is better)."))
    timings["figures"] = _time.perf_counter() - t0

    rows, pred_rows = [], []
    for protocol, res in results.items():
        for m in methods:
            for s, d in data.items():
                sc = res["scores"][m]["by_site"][s]
                rows.append({"protocol": protocol, "method": m, "site_id": s, "veg_type": d.veg_type, **sc})
        frame = []
        for s, d in data.items():
            f = pd.DataFrame({"protocol": protocol, "site_id": s, "date": d.days, "gpp_obs": d.gpp,
                              **{f"pred_{m}": res["preds"][m][s] for m in methods}})
            frame.append(f[np.any([np.isfinite(res["preds"][m][s]) for m in methods], axis=0)])
        pred_rows.append(pd.concat(frame))
    pd.DataFrame(rows).to_csv(folder / "per_site.csv", index=False, float_format="%.5g")
    pd.concat(pred_rows).to_csv(folder / "predictions.csv", index=False, float_format="%.4g")

    improvement = {p: {b: _improvement(res["scores"], b) for b in methods[1:]} for p, res in results.items()}
    timings["total"] = _time.perf_counter() - t_start
    doc = {
        "config": asdict(cfg),
        "checkpoint": str(checkpoint), "checkpoint_sha256": sha,
        "sites": [{"site_id": s, "veg_type": d.veg_type, "n_days": len(d.days), "n_s2_dates": d.n_dates,
                   "n_gpp_days": int(np.isfinite(d.gpp).sum()), "first": str(d.days[0].date()), "last": str(d.days[-1].date())}
                  for s, d in data.items()],
        "nrmse_definition": "RMSE / (max - min of the observed daily GPP of the same group: site, vegetation type or all)",
        "protocols": {p: {"scores": res["scores"], "training": res["training"]} for p, res in results.items()},
        "improvement_over_baselines": improvement,
        "sweep": sweep,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    from latentcube.evaluate.sections import _clean

    (folder / "metrics.json").write_text(json.dumps(_clean(doc), indent=1) + "\n", encoding="utf-8")
    if write_report_section:
        _write_section(out_dir, data, results, methods, improvement, sweep, figures, cfg, doc)
    say(f"GPP evaluation: {timings['total']:.1f} s -> {folder}")
    return doc


def _improvement(scores: Mapping[str, Any], baseline: str) -> dict[str, Any]:
    e, b = scores["embedding"]["overall"], scores[baseline]["overall"]
    rel = (b["nrmse"] - e["nrmse"]) / b["nrmse"] if b["nrmse"] else float("nan")
    return {"nrmse_embedding": e["nrmse"], "nrmse_baseline": b["nrmse"], "relative_reduction": rel,
            "embedding_better": bool(e["nrmse"] < b["nrmse"])}


def _write_section(out_dir: Path, data: Mapping[str, SiteData], results: Mapping[str, Any], methods: Sequence[str],
                   improvement: Mapping[str, Any], sweep: Mapping[str, Any], figures: list, cfg: GPPConfig,
                   doc: Mapping[str, Any]) -> Path:
    from latentcube.evaluate.sections import table, write_section

    n_sites = len(data)
    text = [
        f"Daily GPP at {n_sites} flux site(s) from site-mean series over a {2 * cfg.radius_px + 1} x "
        f"{2 * cfg.radius_px + 1} px footprint ({cfg.weights} weights), linearly interpolated to daily (gaps up to "
        f"{cfg.max_gap_days} d), {cfg.window_days}-day windows every {cfg.stride_days} d, a Transformer regressor "
        f"(linear input, {cfg.n_layers} encoder blocks, regression head, MAE loss) predicting every day of a window; "
        "overlapping predictions are averaged per day. GPP days with NEE QC < "
        f"{cfg.min_qc_fraction} or GPP < {cfg.min_gpp} are neither trained on nor scored; every method is scored on the same days.",
        "NRMSE = RMSE / (max − min of the observed GPP of the group); RMSE in g C m⁻² d⁻¹. Protocols: "
        + ", ".join(f"{PROTOCOL_LABELS[p]}" + (f" (train {list(cfg.train_years)}, test {list(cfg.test_years)})" if p == "year" else "")
                    for p in results) + ".",
    ]
    for p in results:
        parts = []
        for b, imp in improvement[p].items():
            rel = imp["relative_reduction"]
            verb = "lower" if rel > 0 else "higher"
            parts.append(f"{METHOD_LABELS[b]} {imp['nrmse_baseline']:.3f} ({abs(rel) * 100:.0f} % {verb} with embeddings)")
        text.append(f"{PROTOCOL_LABELS[p].capitalize()}: per-date embeddings NRMSE "
                    f"{results[p]['scores']['embedding']['overall']['nrmse']:.3f} vs " + "; ".join(parts) + ".")
    tables = []
    overall_rows = [[PROTOCOL_LABELS[p], METHOD_LABELS[m], _fmt(results[p]["scores"][m]["overall"]["nrmse"]),
                     _fmt(results[p]["scores"][m]["overall"]["rmse"], 2), _fmt(results[p]["scores"][m]["overall"]["r2"]),
                     results[p]["scores"][m]["overall"]["n"]] for p in results for m in methods]
    tables.append(table("GPP, all sites: per method and protocol", ["protocol", "method", "NRMSE", "RMSE", "R²", "days"],
                        overall_rows))
    vegs = sorted({d.veg_type for d in data.values()})
    veg_rows = [[PROTOCOL_LABELS[p], v, *[_fmt(results[p]["scores"][m]["by_veg_type"][v]["nrmse"]) for m in methods]]
                for p in results for v in vegs]
    tables.append(table("NRMSE per vegetation type", ["protocol", "type", *[METHOD_LABELS[m] for m in methods]], veg_rows))
    site_rows = [[PROTOCOL_LABELS[p], s, data[s].veg_type,
                  *[_fmt(results[p]["scores"][m]["by_site"][s]["nrmse"]) for m in methods],
                  _fmt(results[p]["scores"]["embedding"]["by_site"][s]["rmse"], 2),
                  _fmt(results[p]["scores"]["embedding"]["by_site"][s]["r2"])] for p in results for s in data]
    tables.append(table("NRMSE per site (RMSE and R² of the per-date embeddings)",
                        ["protocol", "site", "type", *[METHOD_LABELS[m] for m in methods], "RMSE emb.", "R² emb."], site_rows))
    if sweep:
        tables.append(table("Window-length sweep (year split, per-date embeddings)", ["window (d)", "NRMSE", "RMSE", "R²"],
                            [[int(w), _fmt(v["nrmse"]), _fmt(v["rmse"], 2), _fmt(v["r2"])] for w, v in sweep.items()]))
    return write_section(out_dir, "gpp", order=60, title="GPP from per-date embeddings", text=text, tables=tables,
                         figures=figures, data={"improvement_over_baselines": improvement, "timings_s": doc["timings_s"]})

"""Footprint means, daily interpolation, windows, day-of-year climatology and metrics (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from latentcube.evaluate.gpp.config import DEFAULT_HALO_PX, GPPError

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



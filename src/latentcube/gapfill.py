"""Gap filling of embedding cubes: per-pixel temporal interpolation onto a regular date axis, out of core.

``gapfill_embeddings(emb, out)`` reads an embedding cube (docs/embed.md; NaN where a pixel-date is
invalid), fills its missing pixel-dates along time, pixel by pixel and feature by feature, and resamples
the series to a regular daily or 5-day axis (or keeps the original dates). Two methods:

* ``"linear"``: linear interpolation in time between the nearest valid observations before and after;
* ``"savgol"``: the same linear interpolation on a daily grid, then a Savitzky-Golay filter along each
  run of filled days (equal to :func:`scipy.signal.savgol_filter` with ``mode="interp"`` on that run, but
  vectorised over all series and evaluated only at the target dates), sampled at the target dates.

A target day is filled only if the pixel has a valid observation on or before it and one on or after it,
and the two are at most ``max_gap_days`` apart (the gap that contains the day is short enough); inside
longer gaps, and before the first / after the last observation (no extrapolation), values stay NaN. This
is the rule of :meth:`xarray.DataArray.interpolate_na` with ``max_gap``. A flag
variable ``filled (time, y, x)`` (uint8) is 1 where the output value is finite but the pixel was not
observed on that day. Dates enter as calendar days (UTC, acquisition times floored to the day).

Runs over spatial chunks with the whole time axis in one chunk (``xarray.apply_ufunc`` with
``dask="parallelized"``), so memory is bounded by the chunk, not the cube. See docs/products.md.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube import __version__
from latentcube.cube import cube_crs, set_crs
from latentcube.embed import EmbeddingCubeError, open_embedding
from latentcube.embed._store import MAX_TIME_CHUNK
from latentcube.files import OutputLock
from latentcube.stores import root_attrs, write_zarr
from latentcube.timeutils import day_numbers

__all__ = ["EmbeddingCubeError", "GapFillError", "as_embedding", "fill_series", "gapfill_embeddings", "match_dates"]

METHODS = ("linear", "savgol")
#: Spatial chunk edge (pixels) of the filling tasks and of the output store. A task holds its chunk's
#: whole series: ``features x days x chunk_px^2 x 4 B`` on the daily grid for savgol (7 x 366 x 128^2 x 4 B
#: = 168 MB at 128 px), ``features x (dates in + out) x chunk_px^2 x 4 B`` for linear.
DEFAULT_CHUNK_PX = 128
#: Values per row batch inside the NumPy kernel (bounds its temporaries: ~4 MB per int64 array).
ROW_BATCH_VALUES = 1 << 19


class GapFillError(EmbeddingCubeError):
    """The input or the options cannot be gap-filled; the message says why and how to fix it."""


# --------------------------------------------------------------------------------------- opening


def as_embedding(emb: str | Path | xr.Dataset | xr.DataArray, *, chunks: dict[str, int] | None = None) -> xr.Dataset:
    """An embedding cube as a (lazy) Dataset with float ``embedding`` ``(time, feature, y, x)``: the store's
    reader :func:`latentcube.embed.open_embedding` with ``as_dataset=True`` (int8 stores decoded, other
    variables kept; a DataArray is taken as the embedding). Raises ``FileNotFoundError`` for a missing path
    and :class:`EmbeddingCubeError` when it is not an embedding cube.
    """
    return open_embedding(emb, chunks=chunks, as_dataset=True)


def match_dates(times: Any, dates: Sequence[Any], *, what: str = "the embedding cube",
                usable: Callable[[], np.ndarray] | None = None) -> list[int]:
    """Indices into ``times`` of the requested calendar ``dates`` (strings or datetimes, matched by day).

    A date with no acquisition on that day raises :class:`EmbeddingCubeError` naming the nearest available
    dates, so a typo is never silently replaced by another date. ``usable``: computed only then, a boolean
    per time (e.g. dates with any valid pixel), so that the dates suggested are ones worth picking.
    """
    index = pd.DatetimeIndex(times)
    days = index.floor("D")
    found = []
    for d in dates:
        try:
            # ISO 8601 only for strings: pandas would otherwise read "July" as 0001-07-01.
            day = (pd.to_datetime(d, format="ISO8601") if isinstance(d, str) else pd.Timestamp(d)).floor("D")
        except (ValueError, TypeError) as err:
            raise EmbeddingCubeError(f"bad date {d!r}: use YYYY-MM-DD.") from err
        hits = np.flatnonzero(days == day)
        if len(hits) == 0:
            if len(days) == 0:
                raise EmbeddingCubeError(f"{what} has no dates.")
            ok = np.ones(len(days), bool) if usable is None else np.asarray(usable(), bool)
            distance = np.abs((days - day).values.astype("timedelta64[D]").astype("int64"))
            order = [i for i in np.argsort(distance, kind="stable") if ok[i]][:3]
            nearest = ", ".join(sorted(str(days[i].date()) for i in order)) or "none"
            empty = "" if ok.all() else f"; {int((~ok).sum())} dates hold no valid pixel and are not suggested"
            raise EmbeddingCubeError(
                f"no date {day.date()} in {what} ({len(days)} dates, {days[0].date()} .. {days[-1].date()}{empty}); "
                f"nearest: {nearest}. Fix: pick one of those."
            )
        found.append(int(hits[0]))
    return found


# ------------------------------------------------------------------------------------ the kernel


def _merge_same_day(values: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average (NaN-aware) acquisitions that fall on the same calendar day: one value per day."""
    uniq, inverse = np.unique(days, return_inverse=True)
    if len(uniq) == len(days):
        return values, days
    merged = np.full((*values.shape[:-1], len(uniq)), np.nan, dtype=values.dtype)
    for k in range(len(uniq)):
        cols = values[..., inverse == k]
        with np.errstate(invalid="ignore"), _quiet():
            merged[..., k] = np.nanmean(cols, axis=-1)
    return merged, uniq


class _quiet:
    """Silence 'Mean of empty slice' (an all-NaN day is simply missing)."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)


def _linear(values: np.ndarray, days: np.ndarray, target: np.ndarray, max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of every row of ``values (S, T)`` (days ``days``) at ``target`` days.

    Returns ``(out (S, N) float32, observed (S, N) bool)``. Vectorised over rows: the nearest valid
    observation at or before / at or after each target day is found with running max/min indices, so
    rows with different NaN patterns need no Python loop.
    """
    n_rows, n_t = values.shape
    valid = np.isfinite(values)
    idx = np.arange(n_t)
    # prev[s, j]: last valid index <= j (-1 if none); nxt[s, j]: first valid index >= j (n_t if none).
    prev = np.maximum.accumulate(np.where(valid, idx, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(valid, idx, n_t)[:, ::-1], axis=1)[:, ::-1]
    k_before = np.searchsorted(days, target, side="right") - 1  # last date <= target (-1: none)
    k_after = np.searchsorted(days, target, side="left")  # first date >= target (n_t: none)
    p = np.where(k_before >= 0, prev[:, np.clip(k_before, 0, n_t - 1)], -1)
    n = np.where(k_after < n_t, nxt[:, np.clip(k_after, 0, n_t - 1)], n_t)
    ok = (p >= 0) & (n < n_t)
    pc, nc = np.clip(p, 0, n_t - 1), np.clip(n, 0, n_t - 1)
    dp, dn = days[pc].astype("float64"), days[nc].astype("float64")
    ok &= (dn - dp) <= max_gap
    vp = np.take_along_axis(values, pc, axis=1).astype("float64")
    vn = np.take_along_axis(values, nc, axis=1).astype("float64")
    span = dn - dp
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(span > 0, (target[None, :] - dp) / np.where(span > 0, span, 1.0), 0.0)
    out = np.where(ok, vp + w * (vn - vp), np.nan).astype("float32")
    observed = ok & (dp == target[None, :])
    return out, observed


@functools.lru_cache(maxsize=64)
def _hat_matrix(window: int, order: int) -> np.ndarray:
    """``(window, window)`` least-squares polynomial fit: row j gives the fitted value at offset j.

    Row ``window // 2`` is the Savitzky-Golay convolution kernel (``scipy.signal.savgol_coeffs``); the
    other rows are the edge fits of ``savgol_filter(mode="interp")``.
    """
    t = np.arange(window, dtype="float64") - window // 2  # centred: a well-conditioned Vandermonde
    v = np.vander(t, order + 1)
    return v @ np.linalg.pinv(v)


def _savgol_at(daily: np.ndarray, pos: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky-Golay smoothed values of every row of ``daily (S, D)`` at the columns ``pos``.

    Equal to ``scipy.signal.savgol_filter(run, w, order, mode="interp")`` applied to each run of
    consecutive finite days separately (savgol_filter cannot skip NaN), evaluated only where needed:
    value at day i of a run [a, b) = the order-``order`` polynomial fitted to the ``w`` days
    ``[s, s + w)`` with ``s = clip(i - w // 2, a, b - w)``, i.e. the centred window inside the run and
    the first / last window of the run near its ends. A run shorter than ``window`` uses the largest odd
    window that fits (``w``); a run of ``order`` days or fewer keeps its linear values. Vectorised: one
    gather and dot product per distinct ``w``, no per-series Python loop.
    """
    n_rows, n_days = daily.shape
    finite = np.isfinite(daily)
    idx = np.arange(n_days, dtype="int32")
    before = np.concatenate([np.zeros((n_rows, 1), bool), finite[:, :-1]], axis=1)
    after = np.concatenate([finite[:, 1:], np.zeros((n_rows, 1), bool)], axis=1)
    # Run containing day i: [start, stop) from running max / min of the run starts / ends.
    start = np.maximum.accumulate(np.where(finite & ~before, idx, -1), axis=1)[:, pos]
    stop = np.minimum.accumulate(np.where(finite & ~after, idx + 1, n_days + 1)[:, ::-1], axis=1)[:, ::-1][:, pos]
    out = daily[:, pos].astype("float32", copy=True)
    rows, k = np.nonzero(finite[:, pos])
    a, b = start[rows, k], stop[rows, k]
    length = b - a
    w = np.minimum(window, np.where(length % 2 == 1, length, length - 1))
    i = pos[k]
    for wv in np.unique(w[w > order]):
        sel = np.flatnonzero(w == wv)
        hat = _hat_matrix(int(wv), order)
        offsets = np.arange(wv)
        # Chunks bound the gathered windows (n x w values) to ~ROW_BATCH_VALUES.
        for c in range(0, len(sel), max(1, ROW_BATCH_VALUES // int(wv))):
            q = sel[c : c + max(1, ROW_BATCH_VALUES // int(wv))]
            s0 = np.clip(i[q] - wv // 2, a[q], b[q] - wv)
            x = daily[rows[q, None], s0[:, None] + offsets]
            out[rows[q], k[q]] = np.einsum("nw,nw->n", x.astype("float64"), hat[i[q] - s0])
    return out


def fill_series(
    values: np.ndarray,
    days: np.ndarray,
    target: np.ndarray,
    *,
    method: str = "linear",
    max_gap_days: float | None = 30.0,
    savgol_window_days: int = 31,
    savgol_order: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill and resample series along the last axis (the NumPy kernel of :func:`gapfill_embeddings`).

    Args:
        values: ``(..., T)`` float, NaN = missing.
        days: ``(T,)`` integer day numbers of the observations, increasing (repeats are averaged).
        target: ``(N,)`` integer day numbers to produce.
        method: ``"linear"`` or ``"savgol"`` (see the module docstring).
        max_gap_days: largest distance in days between the observations around a target day for it to
            be filled; ``None`` = no limit.
        savgol_window_days, savgol_order: Savitzky-Golay window (days, odd; an even value is raised by
            one) and polynomial order.

    Returns:
        ``(filled (..., N) float32, observed (..., N) bool)``: ``observed`` is True where the series had a
        valid value on that very day.
    """
    if method not in METHODS:
        raise GapFillError(f"unknown method {method!r}: use one of {list(METHODS)}.")
    values = np.asarray(values, dtype="float32")
    days = np.asarray(days, dtype="int64")
    target = np.asarray(target, dtype="int64")
    if values.shape[-1] != len(days):
        raise GapFillError(f"{values.shape[-1]} values per series for {len(days)} days")
    if len(days) > 1 and np.any(np.diff(days) < 0):
        raise GapFillError("observation days must be sorted in time. Fix: ds.sortby('time').")
    lead = values.shape[:-1]
    rows = values.reshape(-1, values.shape[-1])
    rows, days = _merge_same_day(rows, days)
    gap = np.inf if max_gap_days is None else float(max_gap_days)
    if len(days) == 0 or rows.shape[0] == 0:
        empty = np.full((rows.shape[0], len(target)), np.nan, "float32")
        return empty.reshape(*lead, len(target)), np.zeros(empty.shape, bool).reshape(*lead, len(target))
    out = np.empty((rows.shape[0], len(target)), "float32")
    observed = np.empty((rows.shape[0], len(target)), bool)
    if method == "savgol":
        window = int(savgol_window_days) | 1  # odd
        first, last = min(days[0], target.min()), max(days[-1], target.max())
        grid = np.arange(first, last + 1, dtype="int64")
    # Rows in batches: the kernel's temporaries (indices, weights, the daily grid) stay ~ROW_BATCH_VALUES each.
    width = max(len(days), len(target), len(grid) if method == "savgol" else 0)
    step = max(1, ROW_BATCH_VALUES // max(width, 1))
    for a in range(0, rows.shape[0], step):
        part = rows[a : a + step]
        out[a : a + step], observed[a : a + step] = _linear(part, days, target, gap)
        if method == "savgol":
            daily, _ = _linear(part, days, grid, gap)
            out[a : a + step] = _savgol_at(daily, target - first, window, int(savgol_order))
    return out.reshape(*lead, len(target)), observed.reshape(*lead, len(target))


# ------------------------------------------------------------------------------------ the cube


def _target_axis(times: np.ndarray, freq: str | None, start: Any, end: Any) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(times)
    if freq is None:
        keep = np.ones(len(index), bool)
        if start is not None:
            keep &= index.floor("D") >= pd.Timestamp(start).floor("D")
        if end is not None:
            keep &= index.floor("D") <= pd.Timestamp(end).floor("D")
        return index[keep]
    first = pd.Timestamp(start).floor("D") if start is not None else index.min().floor("D")
    last = pd.Timestamp(end).floor("D") if end is not None else index.max().floor("D")
    return pd.date_range(first, last, freq=_check_freq(freq))


def _check_freq(freq: str) -> pd.DateOffset:
    """The target axis step as a pandas offset: a positive step of at least one day."""
    from pandas.tseries.frequencies import to_offset

    try:
        step = to_offset(freq)
    except ValueError as err:
        raise GapFillError(f"bad freq {freq!r} ({err}). Fix: use '1D', '5D' or None (keep the input dates).") from err
    if step.n <= 0:  # pandas divides by a zero step and walks a negative one backwards (no dates)
        raise GapFillError(f"freq {freq!r} is not a positive step. Fix: use a positive number of days, e.g. '1D' or "
                           "'5D', or None (keep the input dates).")
    axis = pd.date_range("2000-01-01", periods=3, freq=step)
    if (np.diff(axis.values.astype("datetime64[D]").astype("int64")) < 1).any():
        raise GapFillError(f"freq {freq!r} is finer than a day. Fix: use whole days, e.g. '1D' or '5D'.")
    return step


def _fill_vars(ds: xr.Dataset) -> list[str]:
    """Variables to fill: ``embedding`` and the per-pixel-date quality layers ``quality_*``."""
    names = ["embedding"]
    for name, var in ds.data_vars.items():
        if str(name).startswith("quality") and var.dims[:1] == ("time",) and var.dims[-2:] == ("y", "x") \
                and np.issubdtype(var.dtype, np.floating):
            names.append(str(name))
    return names


def gapfill_embeddings(
    emb: str | Path | xr.Dataset,
    out: str | Path | None = None,
    *,
    freq: str | None = "5D",
    method: str = "linear",
    max_gap_days: float | None = 30.0,
    savgol_window_days: int = 31,
    savgol_order: int = 2,
    start: Any = None,
    end: Any = None,
    chunk_px: int = DEFAULT_CHUNK_PX,
    overwrite: bool = False,
    progress: bool = True,
) -> xr.Dataset:
    """Fill missing pixel-dates of an embedding cube along time and resample to a regular date axis.

    Args:
        emb: an embedding cube (Zarr path or Dataset with ``embedding (time, feature, y, x)``, NaN invalid).
        out: Zarr store to write (``latentcube.stores.ZARR_FORMAT``, consolidated); ``None`` returns the lazy result unwritten.
        freq: target axis ``pandas.date_range(start, end, freq)`` at midnight UTC, e.g. ``"5D"`` or
            ``"1D"``; ``None`` keeps the input dates (and times) and only fills their gaps.
        method: ``"linear"`` (interpolation between the nearest valid dates) or ``"savgol"`` (linear on a
            daily grid, then Savitzky-Golay smoothing along time, sampled at the target days).
        max_gap_days: a target day is filled only when the valid observations just before (or on) it and
            just after (or on) it are at most this many days apart; ``None`` = no limit. No extrapolation.
        savgol_window_days, savgol_order: Savitzky-Golay window in days (odd; even values + 1) and order.
        start, end: first / last target day (default: the first / last input date).
        chunk_px: spatial chunk edge of the computation and of the output store (memory per task grows
            with ``chunk_px^2 x days``; docs/products.md).
        overwrite: replace an existing ``out`` (only a latentcube store is ever deleted).
        progress: show a progress bar while writing.

    Returns:
        The gap-filled Dataset (opened from ``out`` when written): ``embedding`` (and any ``quality_*``
        layers) on the new ``time`` axis, float32, NaN where not fillable; ``filled (time, y, x)`` uint8,
        1 where the value is finite but the pixel had no valid embedding on that day. Other variables
        with a time axis are dropped; time-less variables, coordinates, the CRS and the attributes are
        kept, with ``latentcube:gapfill`` (JSON) describing the filling.
    """
    if method not in METHODS:
        raise GapFillError(f"unknown method {method!r}: use one of {list(METHODS)} (e.g. --method linear).")
    if max_gap_days is not None and max_gap_days < 0:
        raise GapFillError(f"max_gap_days={max_gap_days}: use a non-negative number of days (or None for no limit).")
    if method == "savgol" and not (0 <= savgol_order < (int(savgol_window_days) | 1)):
        raise GapFillError(f"savgol_order={savgol_order} must be >= 0 and below the window ({savgol_window_days} days).")
    if freq is not None:
        _check_freq(freq)  # before the input is read
    source = str(Path(emb).resolve()) if isinstance(emb, (str, Path)) else "<in-memory Dataset>"
    # All dates in one chunk as read; spatial chunks as stored (each storage chunk read once), split into
    # chunk_px tiles below (a cheap slice of the block in memory).
    ds = as_embedding(emb, chunks={"time": -1})
    crs = cube_crs(ds)
    times = ds["time"].values
    if len(times) > 1 and np.any(np.diff(times.astype("datetime64[ns]").astype("int64")) <= 0):
        raise GapFillError("the embedding's dates are not strictly increasing. Fix: ds.sortby('time').")
    axis = _target_axis(times, freq, start, end)
    if len(axis) == 0:
        raise GapFillError(f"no target dates between start={start} and end={end}. Fix: widen the range.")
    obs_days, target_days = day_numbers(times), day_numbers(axis)
    axis_values = axis.values.astype("datetime64[ns]")  # freq=None keeps the input times of day

    names = _fill_vars(ds)
    kw = dict(method=method, max_gap_days=max_gap_days, savgol_window_days=savgol_window_days, savgol_order=savgol_order)
    spatial = {"y": min(chunk_px, ds.sizes["y"]), "x": min(chunk_px, ds.sizes["x"])}

    def fill(da: xr.DataArray, want: str) -> xr.DataArray:
        da = da.chunk({"time": -1, **spatial, **{d: -1 for d in da.dims if d not in ("time", "y", "x")}})
        res = xr.apply_ufunc(
            # "observed" depends only on where the valid days are: the linear kernel gives it cheaply.
            lambda v: fill_series(v, obs_days, target_days, **kw)[0] if want == "values"
            else fill_series(v, obs_days, target_days, **{**kw, "method": "linear"})[1],
            da,
            input_core_dims=[["time"]],
            output_core_dims=[["target"]],
            dask="parallelized",
            output_dtypes=["float32" if want == "values" else bool],
            dask_gufunc_kwargs={"output_sizes": {"target": len(target_days)}},
        )
        return res.rename(target="time").transpose(*da.dims)

    out_vars: dict[str, xr.DataArray] = {}
    for name in names:
        filled = fill(ds[name], "values")
        filled.attrs = {k: v for k, v in ds[name].attrs.items() if k != "stored_as"}  # written as float32
        out_vars[name] = filled
    # The flag follows the embedding's validity (all features of a pixel-date are valid or all NaN).
    valid = ds["embedding"].notnull().any("feature").astype("float32").where(lambda v: v > 0)
    observed = fill(valid, "observed")
    finite = out_vars["embedding"].notnull().any("feature")
    flag = (finite & ~observed).astype("uint8")
    flag.attrs = {"long_name": "1 = value filled (no valid embedding of this pixel on this day), 0 = observed or NaN",
                  "flag_values": [0, 1], "flag_meanings": "observed_or_missing filled", "grid_mapping": "spatial_ref"}
    out_vars["filled"] = flag

    keep = {n: v for n, v in ds.data_vars.items() if "time" not in v.dims and n not in out_vars}
    coords = {k: v for k, v in ds.coords.items() if "time" not in v.dims and k != "spatial_ref"}
    result = xr.Dataset({**out_vars, **keep}, coords={**coords, "time": axis_values})
    result = set_crs(result, crs)
    # A new store: float32 whatever the input's storage type, written whole (no embed blocks to resume).
    attrs = {k: v for k, v in ds.attrs.items() if k != "block_px"}
    if "geoemb:data_type" in attrs:
        attrs["geoemb:data_type"] = "float32"
    description = {
        "method": method,
        "freq": freq,
        "max_gap_days": max_gap_days,
        "savgol_window_days": (int(savgol_window_days) | 1) if method == "savgol" else None,
        "savgol_order": int(savgol_order) if method == "savgol" else None,
        "variables": names,
        "input": source,
        "input_dates": {"n": len(times), "first": str(pd.Timestamp(times[0])), "last": str(pd.Timestamp(times[-1]))}
        if len(times) else None,
        "rule": "per pixel and feature, along time; dates as calendar days (UTC). A target day is filled only if "
                "valid observations exist on/before and on/after it at most max_gap_days apart; no extrapolation. "
                + ("Linear interpolation between those two observations."
                   if method == "linear" else
                   "Linear interpolation onto a daily grid, then Savitzky-Golay smoothing along each run of consecutive "
                   "filled days, equal to scipy.signal.savgol_filter(mode='interp') on that run (shorter runs: the "
                   "largest odd window that fits), sampled at the target days; observed days are smoothed too."),
        "flag": "filled = 1 where the value is finite and the pixel had no valid embedding on that day",
        "latentcube_version": __version__,
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    }
    attrs["latentcube:gapfill"] = json.dumps(description)
    t_attr = attrs.get("latentcube:time")
    if isinstance(t_attr, dict):
        t_attr = {**t_attr, "axis": f"regular {freq} axis (gap-filled)" if freq else f"{t_attr.get('axis', 'input dates')}, gap-filled",
                  "n_dates": len(axis), "first": str(axis.min()), "last": str(axis.max()),
                  "invalid": "NaN where the embedding was invalid and could not be filled (rule in latentcube:gapfill); "
                             "variable 'filled' = 1 where a value was filled"}
        attrs["latentcube:time"] = t_attr
    result.attrs = attrs
    if out is None:
        return result
    return _write(result, Path(out), overwrite=overwrite, progress=progress)


def _is_latentcube_store(path: Path) -> bool:
    return str(root_attrs(path).get("conventions", "")).startswith("latentcube")


def _write(result: xr.Dataset, out: Path, *, overwrite: bool, progress: bool) -> xr.Dataset:
    # One writer per store: a second run (or an --overwrite) while this one is alive is refused, naming it.
    with OutputLock(out, "gap-filled store"):
        return _write_locked(result, out, overwrite=overwrite, progress=progress)


def _write_locked(result: xr.Dataset, out: Path, *, overwrite: bool, progress: bool) -> xr.Dataset:
    if out.exists():
        if not overwrite:
            raise GapFillError(f"{out} exists. Fix: choose another path or pass overwrite=True (--overwrite).")
        if not _is_latentcube_store(out):
            # Never delete what we did not write (e.g. the input passed as the output by mistake).
            raise GapFillError(f"{out} exists and is not a latentcube store; it is left alone. Fix: choose another path.")
        shutil.rmtree(out)
    write_lazy_store(result, out, progress=progress)
    return as_embedding(out)


def write_lazy_store(result: xr.Dataset, out: Path, *, progress: bool, coords_along_time: Sequence[str] = ()) -> None:
    """Compute a lazy store of variables along ``time`` into Zarr ``out``: time split into storage chunks of
    at most ``MAX_TIME_CHUNK`` (a pixel's series is one read; each task's output is sliced, not recomputed),
    NaN fill for floats, the named time coordinates chunked alike; then its STAC Item, ``<out>.stac.json``
    (:func:`latentcube.stac_item.write_stac_item`). Used by gapfill and aggregate."""
    tc = min(result.sizes["time"], MAX_TIME_CHUNK)
    encoding: dict[str, Any] = {name: {"chunks": (tc,)} for name in coords_along_time}
    for name, var in result.data_vars.items():
        if "time" in var.dims:
            result[name] = var = var.chunk({"time": tc})
            enc: dict[str, Any] = {"chunks": tuple(c[0] for c in var.chunks)}
            if np.issubdtype(var.dtype, np.floating):
                enc["_FillValue"] = np.nan
            encoding[name] = enc
        result[name].encoding = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    delayed = write_zarr(result, out, mode="w", compute=False, encoding=encoding)  # latentcube.stores.ZARR_FORMAT
    if progress:
        import sys

        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=1.0, out=sys.stderr):  # stdout is for results
            delayed.compute()
    else:
        delayed.compute()
    from latentcube.stac_item import write_stac_item  # the store is complete: describe it beside it

    write_stac_item(out)

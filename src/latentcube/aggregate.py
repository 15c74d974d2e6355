"""Window aggregates of embedding cubes: per-pixel statistics of the embeddings over date windows, out of core.

``aggregate_embeddings(emb, out, windows=["season"], stats=["mean"])`` summarises every pixel's embedding
series over each date window (named presets ``season`` = April-September, ``quarter``, ``month``, ``year``,
``hydro-year`` = July-June, or explicit ``YYYY-MM-DD/YYYY-MM-DD`` pairs, both days included) with the mean,
the median or percentiles over the window's valid dates, and counts those dates (``valid_count``). A
pixel-date counts whole or not at all: it is valid when every feature is finite (NaN = cloud or no
data), as the embedding stores write it. ``filled=True`` aggregates the gap-filled series
(:func:`latentcube.gapfill.gapfill_embeddings`, regular 5-day axis: a time-weighted summary) instead of
the acquisitions.

The output is an embedding store like the one ``latentcube embed`` writes (``embedding (time, feature,
y, x)``, same CRS, grid and attributes), so ``open_embedding``, ``export``, ``sample`` and the probe read
it: its ``time`` axis holds one entry per window, ``time`` = the window's first day, with the window's
``window`` (label), ``window_start``, ``window_end`` (last day, included) and ``n_dates`` (store dates
inside) along it. The first statistic is ``embedding``; further ones are ``embedding_<stat>`` (e.g.
``embedding_p90``), each ``(time, feature, y, x)``. Computed lazily with Dask over the store's spatial
chunks (a task holds one window of one chunk: ``dates x features x chunk_px^2 x 4 B``) and written with
``to_zarr``. See docs/use.md.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube import __version__
from latentcube.cube import cube_crs, set_crs
from latentcube.embed import EmbeddingCubeError, open_embedding
from latentcube.files import OutputLock, check_output_path
from latentcube.gapfill import write_lazy_store
from latentcube.stores import root_attrs

__all__ = ["PRESETS", "AggregateError", "PartialWindowWarning", "Window", "aggregate_embeddings", "parse_stats",
           "parse_windows", "window_stats"]

#: Named window presets: each gives one window per period that overlaps the store's dates.
PRESETS = ("season", "quarter", "month", "year", "hydro-year")
#: Months (first, last) of the ``season`` preset: the northern growing season.
SEASON_MONTHS = (4, 9)
#: First month of the ``hydro-year`` preset (July to June).
HYDRO_YEAR_START_MONTH = 7
#: Spatial chunk edge (pixels) of the computation and of the output store (larger input chunks are split).
DEFAULT_CHUNK_PX = 256
#: What happens to a window that holds no date of the store.
EMPTY_RULES = ("error", "nan")
_STAT = re.compile(r"^(mean|median|p(\d{1,3}(?:\.\d+)?))$")


class AggregateError(EmbeddingCubeError):
    """Windows, statistics or an input that cannot be aggregated; the message says why and how to fix it."""


class PartialWindowWarning(UserWarning):
    """A window reaches well beyond the store's dates: its statistics describe only the part the data cover."""


#: Share of a window outside the store's first..last date from which :class:`PartialWindowWarning` is raised.
PARTIAL_WINDOW_SHARE = 0.25


@dataclass(frozen=True)
class Window:
    """A date window: calendar days ``start`` .. ``end``, both included."""

    label: str
    start: pd.Timestamp
    end: pd.Timestamp


# ------------------------------------------------------------------------------------ parsing


def _day(text: str, spec: str) -> pd.Timestamp:
    try:
        # ISO 8601 only: pandas would otherwise read "July" as 0001-07-01.
        return pd.to_datetime(text.strip(), format="ISO8601").floor("D").tz_localize(None)
    except (ValueError, TypeError) as err:
        raise AggregateError(f"bad window {spec!r}: {text.strip()!r} is not a date. Fix: write windows as "
                             f"YYYY-MM-DD/YYYY-MM-DD or a preset ({', '.join(PRESETS)}).") from err


def _preset(name: str, first: pd.Timestamp, last: pd.Timestamp) -> list[Window]:
    """The preset's windows that overlap ``first`` .. ``last``."""
    if name in ("month", "quarter", "year"):
        periods = pd.period_range(first, last, freq={"month": "M", "quarter": "Q", "year": "Y"}[name])
        label = {"month": lambda p: p.strftime("%Y-%m"), "quarter": lambda p: f"{p.year}-Q{p.quarter}",
                 "year": lambda p: str(p.year)}[name]
        return [Window(label(p), p.start_time.floor("D"), p.end_time.floor("D")) for p in periods]
    out = []
    for year in range(first.year - 1, last.year + 1):
        if name == "season":
            a, b = pd.Timestamp(year, SEASON_MONTHS[0], 1), pd.Timestamp(year, SEASON_MONTHS[1] + 1, 1)
            w = Window(f"season {year}", a, b - pd.Timedelta(days=1))
        else:  # hydro-year
            a = pd.Timestamp(year, HYDRO_YEAR_START_MONTH, 1)
            w = Window(f"hydro-year {year}-{(year + 1) % 100:02d}", a, pd.Timestamp(year + 1, HYDRO_YEAR_START_MONTH, 1)
                       - pd.Timedelta(days=1))
        if w.start <= last and w.end >= first:
            out.append(w)
    return out


def parse_windows(spec: str | Sequence[str], times: Any) -> list[Window]:
    """The windows of ``spec`` for a store with dates ``times``, sorted by first day.

    ``spec``: comma-separated (or a list of) presets (:data:`PRESETS`; one window per period that overlaps
    the store's first..last date) and explicit ``YYYY-MM-DD/YYYY-MM-DD`` pairs (both days included).
    Raises :class:`AggregateError` for an unknown preset, a bad date, an end before its start, no window
    at all, or two windows starting on the same day (the store's ``time`` axis is the first day).
    """
    items = [s.strip() for part in ([spec] if isinstance(spec, str) else spec) for s in str(part).split(",")]
    items = [s for s in items if s]
    if not items:
        raise AggregateError(f"no windows given. Fix: pass --windows with a preset ({', '.join(PRESETS)}) or "
                             "YYYY-MM-DD/YYYY-MM-DD pairs.")
    days = pd.DatetimeIndex(times).floor("D")
    windows: list[Window] = []
    for item in items:
        if "/" in item:
            a, _, b = item.partition("/")
            start, end = _day(a, item), _day(b, item)
            if end < start:
                raise AggregateError(f"window {item!r} ends before it starts. Fix: write start/end, e.g. "
                                     "2019-04-01/2019-09-30.")
            windows.append(Window(item, start, end))
        elif item.lower() in PRESETS:
            if len(days) == 0:
                raise AggregateError(f"the store has no dates, so preset {item!r} gives no window.")
            found = _preset(item.lower(), days.min(), days.max())
            if not found:
                raise AggregateError(f"no {item} window overlaps the store's dates ({days.min().date()} .. "
                                     f"{days.max().date()}). Fix: pass explicit YYYY-MM-DD/YYYY-MM-DD windows.")
            windows += found
        else:
            raise AggregateError(f"unknown window {item!r}. Fix: use a preset ({', '.join(PRESETS)}) or "
                                 "YYYY-MM-DD/YYYY-MM-DD.")
    windows = sorted(dict.fromkeys(windows), key=lambda w: (w.start, w.end))
    for w0, w1 in zip(windows[:-1], windows[1:], strict=True):
        if w0.start == w1.start:
            raise AggregateError(
                f"windows {w0.label!r} and {w1.label!r} both start on {w0.start.date()}; a window store's time axis is "
                "the first day of each window. Fix: aggregate them into two stores (two aggregate runs).")
    return windows


def parse_stats(stats: str | Sequence[str]) -> list[tuple[str, float | None]]:
    """``[(name, quantile or None for the mean)]`` of ``mean``, ``median`` (= ``p50``) and ``pNN`` (0..100).

    Comma-separated or a list; duplicates dropped, order kept (the first is the store's ``embedding``).
    """
    items = [s.strip().lower() for part in ([stats] if isinstance(stats, str) else stats) for s in str(part).split(",")]
    out: dict[str, float | None] = {}
    for item in (s for s in items if s):
        m = _STAT.match(item)
        q = None if not m else (0.5 if m.group(1) == "median" else None if m.group(1) == "mean" else float(m.group(2)) / 100)
        if not m or (q is not None and not 0.0 <= q <= 1.0):
            raise AggregateError(f"unknown statistic {item!r}. Fix: use mean, median or a percentile p0..p100 "
                                 "(e.g. p10, p90).")
        out[item.replace(".", "_")] = q
    if not out:
        raise AggregateError("no statistic given. Fix: pass --stat mean (or median, p10, p90 ...).")
    return list(out.items())


# ------------------------------------------------------------------------------------ the kernel


def window_stats(values: np.ndarray, quantiles: Sequence[float | None]) -> np.ndarray:
    """Statistics over the last axis of ``values (..., T)`` (NaN = missing): ``(..., S)`` float32.

    ``None`` = the mean, a number = that quantile (linear interpolation between order statistics, as
    :func:`numpy.nanquantile`), both over the finite values only; NaN where a series has none. All-NaN
    series are set aside first, so no "empty slice" warning is raised (no warning filter needed in
    worker threads).
    """
    values = np.asarray(values, dtype="float32")
    lead = values.shape[:-1]
    rows = values.reshape(-1, values.shape[-1]) if values.shape[-1] else np.empty((int(np.prod(lead)), 0), "float32")
    finite = np.isfinite(rows)
    has = finite.any(axis=1)
    out = np.full((rows.shape[0], len(quantiles)), np.nan, dtype="float32")
    some = rows[has].astype("float64")
    n = finite[has].sum(axis=1)
    # numpy.nanquantile's "linear" rule, vectorised: nanquantile loops in Python over every row that holds
    # a NaN (apply_along_axis), hundreds of times slower on cloudy series.
    ordered = np.sort(some, axis=1) if any(q is not None for q in quantiles) else some  # NaN sorts last
    rows_i = np.arange(len(some))
    for s, q in enumerate(quantiles):
        if q is None:
            out[has, s] = np.where(np.isfinite(some), some, 0.0).sum(axis=1) / np.maximum(n, 1)
        else:
            pos = (n - 1) * q
            lo = np.floor(pos).astype("int64")
            hi = np.minimum(lo + 1, n - 1)
            a, b = ordered[rows_i, lo], ordered[rows_i, hi]
            out[has, s] = a + (b - a) * (pos - lo)
    return out.reshape(*lead, len(quantiles))


# ------------------------------------------------------------------------------------ the cube


def _is_latentcube_store(path: Path) -> bool:
    return str(root_attrs(path).get("conventions", "")).startswith("latentcube")


def _input(emb: str | Path | xr.Dataset, filled: bool) -> tuple[xr.Dataset, dict[str, Any] | None]:
    """The embedding (lazy), gap-filled on the fly when asked and not already filled."""
    ds = open_embedding(emb, as_dataset=True)
    already = "latentcube:gapfill" in ds.attrs
    if not filled or already:
        return ds, (json.loads(ds.attrs["latentcube:gapfill"]) if already else None)
    from latentcube.gapfill import gapfill_embeddings

    ds = gapfill_embeddings(emb, None)  # lazy: filled with the defaults of `latentcube gapfill`
    return ds, json.loads(ds.attrs["latentcube:gapfill"])


def aggregate_embeddings(
    emb: str | Path | xr.Dataset,
    out: str | Path | None = None,
    *,
    windows: str | Sequence[str] = "season",
    stats: str | Sequence[str] = "mean",
    filled: bool = False,
    empty: str = "error",
    chunk_px: int = DEFAULT_CHUNK_PX,
    overwrite: bool = False,
    progress: bool = True,
) -> xr.Dataset:
    """Summarise each pixel's embeddings over date windows and write a window store.

    Args:
        emb: an embedding store (Zarr path from ``latentcube embed`` or ``gapfill``) or Dataset.
        out: Zarr store to write (``latentcube.stores.ZARR_FORMAT``, consolidated); ``None`` returns the lazy result unwritten.
        windows: presets and/or ``YYYY-MM-DD/YYYY-MM-DD`` pairs (:func:`parse_windows`).
        stats: ``mean``, ``median``, ``pNN`` (:func:`parse_stats`); the first is ``embedding``, the others
            ``embedding_<stat>``.
        filled: aggregate the gap-filled series (linear, 5-day axis, 30-day gap limit: the defaults of
            ``latentcube gapfill``; for other settings gap-fill first and pass that store). A store that is
            gap-filled already is used as it is.
        empty: a window holding no date of the store: ``"error"`` (default; an explicit window outside the
            store is usually a typo) or ``"nan"`` (kept: all-NaN, ``valid_count`` 0, ``n_dates`` 0).
        chunk_px: spatial chunk edge of the computation and of the output store.
        overwrite: replace an existing window store at ``out`` (never anything else).
        progress: show a progress bar while writing.

    Returns:
        The window store as a Dataset (opened from ``out`` when written): ``embedding`` (and
        ``embedding_<stat>``) ``(time, feature, y, x)`` float32, ``valid_count (time, y, x)`` uint16,
        coordinates ``window``, ``window_start``, ``window_end``, ``n_dates`` along ``time``; attribute
        ``latentcube:aggregate`` (JSON) records windows, statistics, input and rule.
    """
    if empty not in EMPTY_RULES:
        raise AggregateError(f"empty={empty!r}. Fix: use one of {list(EMPTY_RULES)}.")
    if chunk_px < 1:
        raise AggregateError(f"chunk_px={chunk_px}. Fix: use a positive number of pixels (e.g. {DEFAULT_CHUNK_PX}).")
    stat_list = parse_stats(stats)
    source = str(Path(emb).resolve()) if isinstance(emb, (str, Path)) else "<in-memory Dataset>"
    if out is not None and isinstance(emb, (str, Path)) and Path(out).resolve() == Path(emb).resolve():
        raise AggregateError(f"--out {out} is the input store. Fix: choose another output path.")
    ds, fill_info = _input(emb, filled)
    crs = cube_crs(ds)
    da = ds["embedding"]
    times = pd.DatetimeIndex(da["time"].values)
    window_list = parse_windows(windows, times)
    days = times.floor("D")
    members = [np.flatnonzero((days >= w.start) & (days <= w.end)) for w in window_list]
    empties = [w for w, m in zip(window_list, members, strict=True) if m.size == 0]
    if empties and empty == "error":
        names = ", ".join(f"{w.label} ({w.start.date()}/{w.end.date()})" if w.label.count("/") == 0 else w.label
                          for w in empties[:5]) + (" ..." if len(empties) > 5 else "")
        span = f"{days.min().date()} .. {days.max().date()}" if len(days) else "no dates"
        raise AggregateError(f"{len(empties)} window(s) hold no date of the store ({len(days)} dates, {span}): {names}. "
                             "Fix: give windows inside that range, or pass --empty nan to keep them as all-NaN "
                             "windows with valid_count 0.")

    _warn_partial(window_list, members, days)

    spatial = {d: min(chunk_px, max(da.chunksizes[d]) if da.chunks else da.sizes[d]) for d in ("y", "x")}
    da = da.chunk({"feature": -1, **spatial})
    quantiles = [q for _, q in stat_list]
    per_stat: dict[str, list[xr.DataArray]] = {name: [] for name, _ in stat_list}
    counts = []
    for m in members:
        # Every pixel-date whole or not at all; an empty window reads one date and masks it out.
        sub = da.isel(time=m if m.size else [0]).chunk({"time": -1})
        valid = sub.notnull().all("feature") & (m.size > 0)
        sub = sub.where(valid)
        res = xr.apply_ufunc(
            window_stats, sub, kwargs={"quantiles": quantiles},
            input_core_dims=[["time"]], output_core_dims=[["stat"]], dask="parallelized",
            output_dtypes=["float32"], dask_gufunc_kwargs={"output_sizes": {"stat": len(quantiles)}},
        )
        for s, (name, _) in enumerate(stat_list):
            per_stat[name].append(res.isel(stat=s).transpose("feature", "y", "x"))
        counts.append(valid.sum("time").astype("uint16"))

    starts = np.array([w.start for w in window_list], dtype="datetime64[ns]")
    along = {
        "window": ("time", np.array([w.label for w in window_list], dtype=str)),
        "window_start": ("time", starts),
        "window_end": ("time", np.array([w.end for w in window_list], dtype="datetime64[ns]")),
        "n_dates": ("time", np.array([m.size for m in members], dtype="int32")),
    }
    variables: dict[str, xr.DataArray] = {}
    base_attrs = {k: v for k, v in da.attrs.items() if k not in ("stored_as",)}
    for i, (name, q) in enumerate(stat_list):
        var = "embedding" if i == 0 else f"embedding_{name}"
        stacked = xr.concat(per_stat[name], dim="time", coords="minimal", compat="override", join="override")
        what = "mean" if q is None else ("median" if name == "median" else f"{q * 100:g}th percentile")
        stacked.attrs = {**base_attrs, "long_name": f"{what} of the valid embeddings of each pixel in the window",
                         "statistic": name, "cell_methods": f"time: {'mean' if q is None else 'median' if name == 'median' else 'percentile'} "
                         "(interval: window; valid dates only)", "units": "1", "grid_mapping": "spatial_ref"}
        variables[var] = stacked.transpose("time", "feature", "y", "x")
    count = xr.concat(counts, dim="time", coords="minimal", compat="override", join="override")
    count.attrs = {"long_name": "dates with a valid embedding of this pixel in the window", "units": "1",
                   "grid_mapping": "spatial_ref"}
    variables["valid_count"] = count
    coords = {k: v for k, v in ds.coords.items() if "time" not in v.dims and k != "spatial_ref"}
    result = xr.Dataset(variables, coords={**coords, "time": starts, **along})
    result = set_crs(result, crs)

    attrs = {k: v for k, v in ds.attrs.items() if k not in ("block_px",)}
    attrs["geoemb:data_type"] = "float32"
    attrs["conventions"] = "latentcube embedding cube v1 (docs/embed.md), window aggregate (docs/use.md)"
    attrs["latentcube:time"] = {
        **(ds.attrs.get("latentcube:time") if isinstance(ds.attrs.get("latentcube:time"), dict) else {}),
        "dimension": "time",
        "axis": "date windows: time = first day of each window; coordinates window, window_start, window_end "
                "(last day, included), n_dates (store dates inside) along it",
        "n_dates": len(window_list),
        "first": str(window_list[0].start),
        "last": str(window_list[-1].start),
        "invalid": "NaN where the pixel has no valid date in the window (valid_count 0)",
    }
    attrs["latentcube:aggregate"] = json.dumps({
        "statistics": {("embedding" if i == 0 else f"embedding_{n}"): n for i, (n, _) in enumerate(stat_list)},
        "windows": [[w.label, str(w.start.date()), str(w.end.date()), int(m.size)]
                    for w, m in zip(window_list, members, strict=True)],
        "windows_requested": [windows] if isinstance(windows, str) else list(windows),
        "empty": empty,
        "filled": fill_info is not None,
        "gapfill": fill_info,
        "input": source,
        "input_dates": {"n": len(times), "first": str(times.min()), "last": str(times.max())} if len(times) else None,
        "rule": "per pixel, over the store dates whose calendar day (UTC) lies in [window_start, window_end]; a "
                "pixel-date is valid when every feature is finite; statistics over valid dates only (percentiles: "
                "linear interpolation, numpy.nanquantile); NaN where valid_count is 0",
        "latentcube_version": __version__,
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    })
    result.attrs = attrs
    if out is None:
        return result
    return _write(result, Path(out), overwrite=overwrite, progress=progress)


def _warn_partial(windows: Sequence[Window], members: Sequence[np.ndarray], days: pd.DatetimeIndex) -> None:
    """Warn once about the windows of which more than :data:`PARTIAL_WINDOW_SHARE` lies before the store's first or
    after its last date: e.g. a ``season`` summarised from its last two months only, which reads like a whole one."""
    if not len(days):
        return
    first, last = days.min(), days.max()
    partial = []
    for w, m in zip(windows, members, strict=True):
        length = (w.end - w.start).days + 1
        outside = max((first - w.start).days, 0) + max((w.end - last).days, 0)
        if m.size and outside > PARTIAL_WINDOW_SHARE * length:
            partial.append(f"{w.label} ({m.size} dates, {days[m[0]].date()} .. {days[m[-1]].date()} of "
                           f"{w.start.date()} .. {w.end.date()})")
    if partial:
        import warnings

        shown = "; ".join(partial[:3]) + (f"; and {len(partial) - 3} more" if len(partial) > 3 else "")
        warnings.warn(f"{len(partial)} window(s) reach well beyond the store's dates ({first.date()} .. {last.date()}), "
                      f"so their statistics cover part of the window only: {shown}. Compare such windows with care; "
                      "n_dates and valid_count in the result say how much each holds. Fix: give windows inside the "
                      "store's dates, or embed a longer period.", PartialWindowWarning, stacklevel=3)


def _write(result: xr.Dataset, out: Path, *, overwrite: bool, progress: bool) -> xr.Dataset:
    # One writer per store; an existing latentcube store is replaced only with overwrite, anything else never.
    with OutputLock(out, "window store"):
        if check_output_path(out, overwrite=overwrite, is_ours=_is_latentcube_store, what="window store"):
            shutil.rmtree(out)
        # Windows share storage chunks as dates do in embedding stores (a pixel's series is one read); the
        # coordinates along time get the same chunks, so a reader's chunks agree along time.
        write_lazy_store(result, out, progress=progress,
                         coords_along_time=("window", "window_start", "window_end", "n_dates"))
    return open_embedding(out, as_dataset=True)

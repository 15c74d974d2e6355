"""Temporal protocols: one per-pixel feature vector from a ``(T, F, n)`` series, the same way for the
embedding, the raw bands and the PCA codes (so their rows compare on the same dates and pixels).

=========== ==========================================================================================
``date``    the values of one date
``seasonal`` per window of dates, the NaN-median of each feature (default: the probe period's dates cut
            into 3 windows of equal duration); a window with no valid date for a pixel takes that
            pixel's NaN-median over the whole period
``series``  all dates concatenated (date-major); a pixel's NaN dates take its own mean over the period
``mean``    the NaN-mean over the period
=========== ==========================================================================================

Pixels with no valid date at all stay NaN (the caller drops them).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from latentcube.evaluate.probe._inputs import ProbeError

#: Temporal protocols in report order.
PROTOCOLS: tuple[str, ...] = ("date", "seasonal", "series", "mean")


def equal_windows(times: Any, n: int) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """``n`` windows of equal duration from the first to the last of ``times`` (inclusive bounds; a date
    on an inner edge goes to the later window)."""
    if n < 1:
        raise ProbeError(f"the seasonal protocol needs at least 1 window, got {n}.")
    t = pd.DatetimeIndex(times)
    if t.size == 0:
        raise ProbeError("the seasonal protocol has no date to cut into windows.")
    edges = [t.min() + (t.max() - t.min()) * i / n for i in range(n + 1)]
    eps = pd.Timedelta(1, "ns")
    return [(edges[i], edges[i + 1] - (eps if i < n - 1 else pd.Timedelta(0))) for i in range(n)]


def parse_windows(windows: Sequence[Any]) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """User date windows: ``(start, end)`` pairs or ``"START:END"`` strings, both ends inclusive (an end
    given as a day includes that whole day)."""
    out = []
    for w in windows:
        start, end = w.split(":") if isinstance(w, str) else w
        start, end = pd.Timestamp(start), pd.Timestamp(end)
        if end == end.normalize():
            end = end + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
        if end < start:
            raise ProbeError(f"date window {w!r} ends before it starts. Fix: give START:END with START <= END.")
        out.append((start, end))
    if not out:
        raise ProbeError("no date window given. Fix: pass windows like 2019-01-01:2019-04-30,2019-05-01:2019-08-31.")
    return out


def window_members(times: Any, windows: Sequence[tuple[pd.Timestamp, pd.Timestamp]]) -> list[np.ndarray]:
    """Indices of ``times`` inside each window."""
    t = pd.DatetimeIndex(times)
    return [np.flatnonzero((t >= a) & (t <= b)) for a, b in windows]


def aggregate(series: np.ndarray, protocol: str, *, date_index: int | None = None,
              members: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """``(T, F, n)`` -> ``(n, features)`` float32 by ``protocol`` (module docstring).

    ``date_index`` is the date of ``date``; ``members`` the date indices of each ``seasonal`` window
    (``(n, len(members) * F)``, window-major). ``series`` and ``mean`` use all ``T`` dates.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: NaN, filled or dropped
        if protocol == "date":
            if date_index is None:
                raise ProbeError("the date protocol needs a date.")
            out = series[date_index].T
        elif protocol == "mean":
            out = np.nanmean(series, axis=0).T
        elif protocol == "series":
            mean = np.nanmean(series, axis=0, keepdims=True)
            out = np.where(np.isfinite(series), series, mean).transpose(2, 0, 1).reshape(series.shape[2], -1)
        elif protocol == "seasonal":
            if not members:
                raise ProbeError("the seasonal protocol needs date windows.")
            overall = np.nanmedian(series, axis=0)  # (F, n): the fill of a window with no valid date
            parts = []
            for idx in members:
                med = np.nanmedian(series[idx], axis=0) if len(idx) else np.full_like(overall, np.nan)
                parts.append(np.where(np.isfinite(med), med, overall))
            out = np.concatenate(parts, axis=0).T
        else:
            raise ProbeError(f"unknown protocol {protocol!r}; choose from {list(PROTOCOLS)}.")
    return np.ascontiguousarray(out, dtype="float32")

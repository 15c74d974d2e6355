"""Date and unit helpers every step shares: day numbers, nearest-date matching, dB conversion.

One definition of each, so the sampler, the embedding, gap filling, validation and the evaluations
agree on what "the same day" and "within 6 days" mean. Upstream of everything (NumPy, pandas and
xarray only). dB lives here too: it is the one unit conversion the S1 readers of several steps share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["day_numbers", "days_since", "nearest_index", "db_to_linear", "linear_to_db"]

_SECONDS_PER_DAY = 86400.0


def _seconds(times: Any) -> np.ndarray:
    """int64 seconds since 1970-01-01 of datetime-likes (sub-second parts truncated)."""
    return pd.DatetimeIndex(np.asarray(times).ravel()).values.astype("datetime64[s]").astype("int64")


def _nanoseconds(times: Any) -> np.ndarray:
    """int64 nanoseconds since 1970 (explicit unit: pandas may hold datetimes in s, ms or us)."""
    return pd.DatetimeIndex(np.asarray(times).ravel()).values.astype("datetime64[ns]").astype("int64")


def days_since(times: Any, origin: Any = None) -> np.ndarray:
    """Float64 days of ``times`` since ``origin`` (default 1970-01-01), at one-second resolution.

    Differences are taken in integer seconds before dividing, so the result is exact to the second
    whatever the origin; callers cast to float32 only after subtracting a nearby reference.
    """
    t = _seconds(times)
    o = 0 if origin is None else _seconds([origin])[0]
    return (t - o) / _SECONDS_PER_DAY


def day_numbers(times: Any) -> np.ndarray:
    """Calendar days (int64 days since 1970-01-01) of datetime values; times of day floored to the day."""
    return pd.DatetimeIndex(np.asarray(times).ravel()).floor("D").values.astype("datetime64[D]").astype("int64")


def nearest_index(times: Sequence[Any], targets: Sequence[Any], max_gap_days: float) -> np.ndarray:
    """For each of ``targets``, the index into ``times`` of the nearest time at most ``max_gap_days``
    away (inclusive), else -1; of two equally near times, the earlier. ``times`` need not be sorted.

    Used to put Sentinel-1 acquisitions on the Sentinel-2 date axis (``times`` = S1, ``targets`` = S2).
    """
    t, q = _nanoseconds(times), _nanoseconds(targets)
    if t.size == 0:
        return np.full(q.shape, -1, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    ts = t[order]
    pos = np.searchsorted(ts, q)  # ts[pos-1] < q <= ts[pos]
    left = np.clip(pos - 1, 0, ts.size - 1)
    right = np.clip(pos, 0, ts.size - 1)
    # Same instant at several indices: the first of them (stable order), like argmin over the unsorted axis.
    left = np.searchsorted(ts, ts[left], side="left")
    right = np.searchsorted(ts, ts[right], side="left")
    best = np.where(np.abs(q - ts[left]) <= np.abs(ts[right] - q), left, right)
    gap_days = np.abs(ts[best] - q) / (_SECONDS_PER_DAY * 1e9)
    return np.where(gap_days <= max_gap_days + 1e-9, order[best], -1).astype(np.int64)


def db_to_linear(x: Any) -> Any:
    """10^(dB/10); NaN stays NaN. Works on scalars, NumPy arrays and xarray objects."""
    return 10.0 ** (x / 10.0) if isinstance(x, xr.DataArray | xr.Dataset) else 10.0 ** (np.asarray(x, dtype="float64") / 10.0)


def linear_to_db(x: Any) -> Any:
    """10·log10(linear); values <= 0 (not a power) and NaN give NaN, without warnings."""
    if isinstance(x, xr.DataArray | xr.Dataset):
        # where() first: log10 of NaN is silent, of 0 or negatives it would warn (stays lazy on Dask)
        return 10.0 * np.log10(x.where(x > 0))
    a = np.asarray(x, dtype="float64")
    out = np.full(a.shape, np.nan)
    pos = a > 0
    out[pos] = 10.0 * np.log10(a[pos])
    return out if out.ndim else float(out)

"""latentcube.timeutils against independent references: pandas/datetime arithmetic, a brute-force
nearest search, hand-computed dB values."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentcube.timeutils import day_numbers, days_since, db_to_linear, linear_to_db, nearest_index


def test_days_since_and_day_numbers_against_datetime():
    times = pd.to_datetime(["1970-01-02 12:00:00", "2020-02-29 23:59:59", "2021-01-01 00:00:01.7"], format="ISO8601").values
    assert days_since(times).tolist() == [1.5, (dt.date(2020, 2, 29) - dt.date(1970, 1, 1)).days + 86399 / 86400,
                                          (dt.date(2021, 1, 1) - dt.date(1970, 1, 1)).days + 1 / 86400]
    rel = days_since(times, origin=times[0])  # whole seconds (sub-second parts truncated), then days
    assert rel[0] == 0.0 and rel[2] == ((pd.Timestamp("2021-01-01 00:00:01") - pd.Timestamp(times[0])).total_seconds()) / 86400
    ordinal = np.array([pd.Timestamp(t).date().toordinal() - dt.date(1970, 1, 1).toordinal() for t in times])
    assert day_numbers(times).tolist() == ordinal.tolist() and day_numbers(times).dtype == np.int64


def _brute_force(times, targets, max_gap_days):
    t = pd.DatetimeIndex(times)
    out = []
    for q in pd.DatetimeIndex(targets):
        gaps = np.abs((t - q).total_seconds().to_numpy()) / 86400
        i = int(np.argmin(gaps)) if len(t) else -1  # argmin: the first of equal gaps
        if i >= 0:
            ties = np.flatnonzero(gaps == gaps[i])
            i = min(ties, key=lambda j: (t[j], j))  # the earlier time, then the first index
        out.append(i if i >= 0 and gaps[i] <= max_gap_days + 1e-9 else -1)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_nearest_index_matches_brute_force_on_unsorted_times_with_ties(seed):
    rng = np.random.default_rng(seed)
    base = np.datetime64("2020-01-01T00:00:00", "ns")
    times = base + (rng.integers(0, 60, 25) * 12).astype("timedelta64[h]")  # repeats and equal gaps likely
    targets = base + (rng.integers(-5, 70, 40) * 12).astype("timedelta64[h]")
    for gap in (0.0, 1.0, 6.0):
        assert nearest_index(times, targets, gap).tolist() == _brute_force(times, targets, gap)


def test_nearest_index_hand_cases():
    days = lambda *d: pd.to_datetime(list(d)).values  # noqa: E731
    # equally near (2 days either side): the earlier; the gap limit is inclusive
    assert nearest_index(days("2020-01-05", "2020-01-01"), days("2020-01-03"), 2).tolist() == [1]
    assert nearest_index(days("2020-01-01"), days("2020-01-07", "2020-01-08"), 6).tolist() == [0, -1]
    assert nearest_index(days(), days("2020-01-07"), 6).tolist() == [-1]


def test_db_conversion_hand_values():
    assert linear_to_db(np.array([1.0, 0.1, 100.0, 0.0, -1.0, np.nan])).tolist()[:3] == [0.0, -10.0, 20.0]
    assert np.isnan(linear_to_db(np.array([0.0, -1.0, np.nan]))).all()
    assert linear_to_db(0.01) == -20.0 and db_to_linear(np.array([-10.0, 3.0])).tolist() == pytest.approx([0.1, 10**0.3])
    da = xr.DataArray([1.0, 0.0])
    assert np.isnan(linear_to_db(da).values[1]) and db_to_linear(linear_to_db(da)).values[0] == 1.0

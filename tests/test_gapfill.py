"""Gap filling: hand-computed interpolation, the gap limit, the flag, Savitzky-Golay, NaN, CRS, Zarr output."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.signal import savgol_filter

from latentcube.cube import cube_crs, set_crs
from latentcube.gapfill import EmbeddingCubeError, GapFillError, fill_series, gapfill_embeddings, match_dates
from latentcube.stores import write_zarr


def emb_cube(values: np.ndarray, times, *, crs="EPSG:32632", chunks=None) -> xr.Dataset:
    """An embedding-like Dataset: values (time, feature, y, x) float32 on a 10 m grid."""
    t, f, h, w = values.shape
    ds = xr.Dataset(
        {"embedding": (("time", "feature", "y", "x"), values.astype("float32"))},
        coords={"time": pd.DatetimeIndex(times).values.astype("datetime64[ns]"), "feature": [f"fused_{i}" for i in range(f)],
                "y": 5_000_000.0 - 10 * np.arange(h) - 5, "x": 600_000.0 + 10 * np.arange(w) + 5},
        attrs={"conventions": "latentcube embedding cube v1 (docs/embed.md)", "source_cube": "/nowhere/cube.zarr"},
    )
    ds = set_crs(ds, crs)
    return ds.chunk(chunks) if chunks else ds


def test_linear_between_two_known_dates_by_hand():
    # Observed on day 0 (value 1) and day 10 (value 6); day 5 -> 3.5, day 2 -> 2.0.
    vals = np.array([[1.0, np.nan, 6.0]], "float32")
    out, obs = fill_series(vals, np.array([0, 4, 10]), np.array([0, 2, 5, 10, 12]), max_gap_days=None)
    np.testing.assert_allclose(out[0, :4], [1.0, 2.0, 3.5, 6.0], rtol=1e-6)
    assert np.isnan(out[0, 4])  # after the last observation: no extrapolation
    assert obs.tolist() == [[True, False, False, True, False]]


def test_gap_limit_keeps_long_gaps_nan():
    days = np.array([0, 5, 10, 50, 55])
    vals = np.array([[0.0, 1.0, np.nan, 3.0, 4.0]], "float32")  # gap from day 5 to day 50 (45 days)
    target = np.arange(0, 56)
    out, _ = fill_series(vals, days, target, max_gap_days=30)
    assert np.isfinite(out[0, :6]).all() and np.isfinite(out[0, 50:]).all()
    assert np.isnan(out[0, 6:50]).all()
    out2, _ = fill_series(vals, days, target, max_gap_days=45)  # the limit is inclusive
    np.testing.assert_allclose(out2[0, 27], 1.0 + (27 - 5) / 45 * 2.0, rtol=1e-6)
    # Reference: np.interp over the valid days, blanked strictly inside the 45-day gap when it is too long
    # (the rule of xarray's interpolate_na(max_gap=...), which needs bottleneck, not installed here).
    ok = np.isfinite(vals[0])
    for gap in (30, 45, 46):
        ref = np.interp(target, days[ok], vals[0, ok])
        if 45 > gap:
            ref[(target > 5) & (target < 50)] = np.nan
        got, _ = fill_series(vals, days, target, max_gap_days=gap)
        np.testing.assert_allclose(got[0], ref, rtol=1e-6, equal_nan=True)


def test_savgol_reproduces_a_quadratic_exactly():
    days = np.arange(0, 60)
    q = 0.01 * (days - 20.0) ** 2 - 0.5 * days + 3.0
    out, obs = fill_series(q[None].astype("float32"), days, np.arange(0, 60, 5), method="savgol", savgol_window_days=15)
    np.testing.assert_allclose(out[0], q[::5], rtol=1e-5, atol=1e-4)
    assert obs.all()


def test_savgol_is_scipy_on_the_linearly_filled_daily_grid():
    rng = np.random.default_rng(0)
    days = np.array([0, 3, 8, 10, 15, 21, 25, 30, 36, 40])
    vals = rng.normal(size=(2, len(days))).astype("float32")
    vals[1, 4] = np.nan
    out, _ = fill_series(vals, days, np.arange(0, 41, 5), method="savgol", savgol_window_days=9, max_gap_days=None)
    for r in range(2):
        ok = np.isfinite(vals[r])
        daily = np.interp(np.arange(41), days[ok], vals[r, ok])
        ref = savgol_filter(daily, 9, 2, mode="interp")[::5]
        np.testing.assert_allclose(out[r], ref, rtol=1e-4, atol=1e-5)


def _savgol_reference(daily: np.ndarray, window: int, order: int) -> np.ndarray:
    """Slow, obvious reference: scipy's savgol_filter on each run of finite values of each row."""
    out = daily.copy()
    for r in range(daily.shape[0]):
        fin = np.isfinite(daily[r])
        edges = np.diff(np.concatenate([[0], fin.astype(int), [0]]))
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            w = min(window, (b - a) if (b - a) % 2 else (b - a) - 1)
            if w > order:
                out[r, a:b] = savgol_filter(daily[r, a:b], w, order, mode="interp")
    return out


@pytest.mark.parametrize("window,order", [(9, 2), (15, 3), (5, 0)])
def test_savgol_equals_scipy_per_run_with_gaps_and_short_runs(window, order):
    rng = np.random.default_rng(window)
    days = np.sort(rng.choice(np.arange(120), size=40, replace=False))
    vals = rng.normal(size=(30, 40)).astype("float32")
    vals[rng.random(vals.shape) < 0.35] = np.nan
    target = np.arange(days[0], days[-1] + 1)
    out, _ = fill_series(vals, days, target, method="savgol", savgol_window_days=window, savgol_order=order,
                         max_gap_days=6)
    daily, _ = fill_series(vals, days, target, method="linear", max_gap_days=6)  # the linear daily grid
    assert np.isnan(daily).any() and np.isfinite(daily).any()  # several runs per row, some short
    np.testing.assert_allclose(out, _savgol_reference(daily.astype("float64"), window, order), rtol=1e-4, atol=1e-5,
                               equal_nan=True)


def test_savgol_runs_separately_on_each_side_of_a_long_gap():
    days = np.array([0, 2, 4, 6, 8, 40, 42, 44])
    vals = np.array([[0, 2, 4, 6, 8, 40, 42, 44]], "float32")  # linear: any savgol leaves it unchanged
    out, _ = fill_series(vals, days, np.arange(45), method="savgol", savgol_window_days=7, max_gap_days=10)
    np.testing.assert_allclose(out[0, :9], np.arange(9), atol=1e-5)
    np.testing.assert_allclose(out[0, 40:], np.arange(40, 45), atol=1e-5)
    assert np.isnan(out[0, 9:40]).all()


def test_all_nan_series_and_same_day_repeats():
    out, obs = fill_series(np.full((3, 4), np.nan, "float32"), np.arange(4), np.arange(4))
    assert np.isnan(out).all() and not obs.any()
    # Two acquisitions on day 5 are averaged (NaN-aware).
    out, _ = fill_series(np.array([[0.0, 2.0, 4.0, 10.0]], "float32"), np.array([0, 5, 5, 10]), np.array([5, 7]))
    np.testing.assert_allclose(out[0], [3.0, 3.0 + 2 / 5 * 7.0], rtol=1e-6)


def test_gapfill_cube_regular_axis_flag_crs_and_zarr(tmp_path):
    times = pd.to_datetime(["2020-01-01 10:30", "2020-01-06 10:30", "2020-01-11 10:30", "2020-02-20 10:30"])
    v = np.zeros((4, 2, 3, 3), "float32")
    v[:, 0] = np.array([0.0, 5.0, 10.0, 50.0])[:, None, None]
    v[:, 1] = 1.0
    v[1, :, 0, 0] = np.nan  # pixel (0, 0) cloudy on Jan 6
    ds = emb_cube(v, times, chunks={"y": 2, "x": 2})
    res = gapfill_embeddings(ds, tmp_path / "filled.zarr", freq="5D", max_gap_days=20, chunk_px=2, progress=False)
    axis = pd.date_range("2020-01-01", "2020-02-20", freq="5D")
    assert list(pd.DatetimeIndex(res["time"].values)) == list(axis)
    e = res["embedding"].load()
    assert e.dims == ("time", "feature", "y", "x") and e.dtype == np.float32
    # Pixel (0, 0): Jan 6 missing -> linear between Jan 1 (0) and Jan 11 (10) = 5.
    np.testing.assert_allclose(e.sel(time="2020-01-06")[:, 0, 0].values, [5.0, 1.0])
    # Jan 16 .. Feb 15 fall in the 40-day gap (Jan 11 -> Feb 20 > 20 days): NaN everywhere.
    assert np.isnan(e.sel(time=slice("2020-01-16", "2020-02-15")).values).all()
    np.testing.assert_allclose(e.sel(time="2020-02-20")[0].values, 50.0)
    flag = res["filled"].load()
    assert flag.dtype == np.uint8 and flag.dims == ("time", "y", "x")
    assert int(flag.sel(time="2020-01-06")[0, 0]) == 1 and int(flag.sel(time="2020-01-06")[1, 1]) == 0
    assert int(flag.sel(time="2020-01-21")[0, 0]) == 0  # NaN: not counted as filled
    assert int(flag.sum()) == 1
    assert cube_crs(res).to_epsg() == 32632
    np.testing.assert_array_equal(res["x"], ds["x"]) and np.testing.assert_array_equal(res["y"], ds["y"])
    desc = json.loads(res.attrs["latentcube:gapfill"])
    assert desc["method"] == "linear" and desc["max_gap_days"] == 20 and desc["freq"] == "5D"
    assert res.attrs["source_cube"] == "/nowhere/cube.zarr"
    # Equal to the NumPy kernel on the whole array (chunking does not change results).
    ref, _ = fill_series(np.moveaxis(v, 0, -1), np.array([18262, 18267, 18272, 18312]),
                         axis.values.astype("datetime64[D]").astype("int64"), max_gap_days=20)
    np.testing.assert_allclose(e.values, np.moveaxis(ref, -1, 0), equal_nan=True)


def test_freq_none_keeps_dates_and_fills_quality_layers():
    times = pd.date_range("2020-06-01 10:00", periods=3, freq="10D")
    v = np.ones((3, 1, 2, 2), "float32") * np.array([1.0, 2.0, 3.0])[:, None, None, None]
    v[1, :, 1, 1] = np.nan
    ds = emb_cube(v, times)
    q = np.full((3, 2, 2), 0.1, "float32")
    q[1, 1, 1] = np.nan
    ds["quality_s2"] = (("time", "y", "x"), q)
    ds["other"] = (("time", "y", "x"), q)  # not an embedding or quality layer: dropped
    ds["landcover"] = (("y", "x"), np.ones((2, 2), "uint8"))  # time-less: kept
    res = gapfill_embeddings(ds, freq=None, method="linear").compute()
    np.testing.assert_array_equal(res["time"].values, ds["time"].values)
    np.testing.assert_allclose(res["embedding"][:, 0, 1, 1], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(res["quality_s2"][1, 1, 1], 0.1)
    assert "other" not in res and "landcover" in res
    assert res["filled"].values.sum() == 1 and res["filled"][1, 1, 1] == 1


def test_savgol_on_a_cube_matches_the_kernel():
    rng = np.random.default_rng(1)
    times = pd.date_range("2020-01-01", periods=20, freq="3D")
    v = rng.normal(size=(20, 2, 3, 4)).astype("float32")
    v[rng.random(v.shape[:1] + (1,) + v.shape[2:]).repeat(2, 1) < 0.3] = np.nan
    ds = emb_cube(v, times, chunks={"y": 2, "x": 3})
    res = gapfill_embeddings(ds, freq="1D", method="savgol", savgol_window_days=11, max_gap_days=10, chunk_px=2)
    target = pd.date_range(times[0], times[-1], freq="1D").values.astype("datetime64[D]").astype("int64")
    ref, _ = fill_series(np.moveaxis(v, 0, -1), times.values.astype("datetime64[D]").astype("int64"), target,
                         method="savgol", savgol_window_days=11, max_gap_days=10)
    np.testing.assert_allclose(res["embedding"].values, np.moveaxis(ref, -1, 0), rtol=1e-6, equal_nan=True)


def test_start_end_and_errors(tmp_path):
    times = pd.date_range("2020-01-01", periods=4, freq="5D")
    ds = emb_cube(np.ones((4, 1, 2, 2), "float32"), times)
    res = gapfill_embeddings(ds, freq="1D", start="2020-01-03", end="2020-01-08")
    assert res.sizes["time"] == 6 and str(pd.Timestamp(res["time"].values[0]).date()) == "2020-01-03"
    with pytest.raises(GapFillError, match="unknown method 'spline'"):
        gapfill_embeddings(ds, method="spline")
    with pytest.raises(GapFillError, match="bad freq"):
        gapfill_embeddings(ds, freq="five days")
    with pytest.raises(GapFillError, match="finer than a day"):
        gapfill_embeddings(ds, freq="6h")
    for step in ("0D", "-5D"):  # pandas divides by a zero step (ZeroDivisionError) and walks -5D backwards
        with pytest.raises(GapFillError, match=rf"freq '{step}' is not a positive step. Fix: use a positive number"):
            gapfill_embeddings(ds, freq=step)
    with pytest.raises(FileNotFoundError, match="no such embedding store"):
        gapfill_embeddings(tmp_path / "missing.zarr")
    with pytest.raises(EmbeddingCubeError, match="not an embedding store: the Dataset has no 'embedding' variable"):
        gapfill_embeddings(ds.rename(embedding="s2"))
    gapfill_embeddings(ds, tmp_path / "f.zarr", progress=False)
    with pytest.raises(GapFillError, match="exists"):
        gapfill_embeddings(ds, tmp_path / "f.zarr", progress=False)
    (tmp_path / "foreign").mkdir()
    with pytest.raises(GapFillError, match="not a latentcube store"):
        gapfill_embeddings(ds, tmp_path / "foreign", overwrite=True, progress=False)
    assert (tmp_path / "foreign").exists()


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    """While another live run holds the output's lock, gapfill (even with --overwrite) refuses, naming it,
    and deletes nothing; a dead run's lock is taken over and removed at the end."""
    import socket
    import subprocess
    import sys

    from latentcube.files import OutputInUseError

    ds = emb_cube(np.ones((4, 1, 2, 2), "float32"), pd.date_range("2020-01-01", periods=4, freq="5D"))
    out = tmp_path / "filled.zarr"
    gapfill_embeddings(ds, out, progress=False)
    lock = tmp_path / "filled.zarr.lock"

    def lock_of(pid):
        lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00",
                                    "token": "other"}))

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock_of(other.pid)
        with pytest.raises(OutputInUseError, match=rf"gap-filled store .*filled.zarr is being written by the run of "
                                                   rf"pid {other.pid}.*Fix: wait for that run"):
            gapfill_embeddings(ds, out, overwrite=True, progress=False)
        assert (out / "embedding").is_dir()
    finally:
        other.kill()
        other.wait()
    res = gapfill_embeddings(ds, out, overwrite=True, progress=False)
    assert not lock.exists() and res.sizes["time"] == 4


def test_match_dates_by_day_and_nearest_in_error():
    times = pd.to_datetime(["2019-07-09 10:30", "2019-07-14 10:30", "2019-07-24 10:30"])
    assert match_dates(times, ["2019-07-14", "2019-07-09"]) == [1, 0]
    with pytest.raises(EmbeddingCubeError, match=r"no date 2019-07-15 .* nearest: 2019-07-09, 2019-07-14, 2019-07-24"):
        match_dates(times, ["2019-07-15"])
    with pytest.raises(EmbeddingCubeError, match="bad date"):
        match_dates(times, ["July"])


def test_match_dates_suggests_only_usable_dates_and_computes_them_only_for_the_error():
    times = pd.to_datetime(["2019-07-05", "2019-07-09", "2019-07-14", "2019-07-24", "2019-08-03"])
    calls = []

    def usable():
        calls.append(1)
        return np.array([True, True, False, True, True])  # 2019-07-14: no valid pixel

    assert match_dates(times, ["2019-07-14"], usable=usable) == [2] and not calls  # asked for: given as is
    with pytest.raises(EmbeddingCubeError, match=r"\(5 dates, 2019-07-05 .. 2019-08-03; 1 dates hold no valid pixel "
                                                 r"and are not suggested\); nearest: 2019-07-05, 2019-07-09, 2019-07-24\."):
        match_dates(times, ["2019-07-13"], usable=usable)
    assert calls == [1]


def test_int8_store_is_decoded_before_filling(tmp_path):
    embed = pytest.importorskip("latentcube.embed")
    if not hasattr(embed, "quantize_int8"):
        pytest.skip("int8 storage not available")
    times = pd.date_range("2020-01-01 10:30", periods=3, freq="10D")
    rng = np.random.default_rng(2)
    v = rng.normal(size=(3, 4, 2, 3)).astype("float32")
    v[1, :, 0, 0] = np.nan
    q, scale = embed.quantize_int8(v)
    ds = emb_cube(v, times)
    ds["embedding"] = (("time", "feature", "y", "x"), q)
    ds["embedding_scale"] = (("time", "y", "x"), scale)
    ds["quality_s2"] = (("time", "y", "x"), np.full((3, 2, 3), 0.2, "float32"))
    write_zarr(ds, tmp_path / "e8.zarr", encoding={"embedding": {"_FillValue": embed.INT8_INVALID}})
    res = gapfill_embeddings(tmp_path / "e8.zarr", freq=None, progress=False).compute()
    assert "embedding_scale" not in res and res["embedding"].dtype == np.float32
    decoded = q.astype("float32") * scale[:, None]
    np.testing.assert_allclose(res["embedding"][[0, 2]].values, decoded[[0, 2]], rtol=1e-6)
    np.testing.assert_allclose(res["embedding"][1, :, 0, 0].values, (decoded[0, :, 0, 0] + decoded[2, :, 0, 0]) / 2,
                               rtol=1e-5)
    np.testing.assert_allclose(res["quality_s2"].values, 0.2)
    assert int(res["filled"].sum()) == 1


def test_cli_gapfill(tmp_path, capsys):
    from latentcube.cli import main

    times = pd.date_range("2020-01-01 10:30", periods=4, freq="5D")
    v = np.arange(4, dtype="float32")[:, None, None, None] * np.ones((4, 2, 2, 2), "float32")
    v[1, :, 0, 0] = np.nan
    write_zarr(emb_cube(v, times), tmp_path / "e.zarr")
    with pytest.raises(SystemExit) as exc:
        main(["gapfill", str(tmp_path / "e.zarr"), "--out", str(tmp_path / "f.zarr"), "--freq", "1D",
              "--method", "linear", "--max-gap-days", "10"])
    assert exc.value.code == 0
    res = xr.open_zarr(tmp_path / "f.zarr")
    assert res.sizes["time"] == 16
    # Filled days: 12 non-acquisition days x 4 pixels, plus pixel (0, 0) on Jan 6 (cloudy).
    assert int(res["filled"].sum()) == 12 * 4 + 1
    np.testing.assert_allclose(res["embedding"].sel(time="2020-01-06")[:, 0, 0].values, 1.0)
    np.testing.assert_allclose(res["embedding"].sel(time="2020-01-03")[:, 1, 1].values, 0.4)
    with pytest.raises(SystemExit) as exc:
        main(["gapfill", str(tmp_path / "e.zarr"), "--out", str(tmp_path / "g.zarr"), "--method", "cubic"])
    assert exc.value.code == 1
    assert "unknown method 'cubic'" in capsys.readouterr().err

"""Window aggregates: hand-computed statistics with NaN, empty windows, presets, the store other verbs read, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentcube.aggregate import (
    AggregateError,
    PartialWindowWarning,
    aggregate_embeddings,
    parse_stats,
    parse_windows,
    window_stats,
)
from latentcube.cube import cube_crs, set_crs
from latentcube.embed import open_embedding
from latentcube.stores import write_zarr


def emb_store(values: np.ndarray, times, *, crs="EPSG:32632", chunks=None) -> xr.Dataset:
    """An embedding-store-like Dataset: values (time, feature, y, x) float32 on a 10 m grid."""
    t, f, h, w = values.shape
    ds = xr.Dataset(
        {"embedding": (("time", "feature", "y", "x"), values.astype("float32"))},
        coords={"time": pd.DatetimeIndex(times).values.astype("datetime64[ns]"), "feature": [f"fused_{i}" for i in range(f)],
                "y": 5_000_000.0 - 10 * np.arange(h) - 5, "x": 600_000.0 + 10 * np.arange(w) + 5},
        attrs={"conventions": "latentcube embedding cube v1 (docs/embed.md)", "source_cube": "/nowhere/cube.zarr",
               "block_px": 16},
    )
    ds = set_crs(ds, crs)
    return ds.chunk(chunks) if chunks else ds


#: Six dates; the 2019 season (Apr 1 .. Sep 30, both included) holds the middle four.
TIMES = pd.DatetimeIndex(["2019-03-15", "2019-04-10 10:30", "2019-05-20", "2019-07-01", "2019-09-30 10:40", "2019-10-05"])


def hand_case() -> xr.Dataset:
    v = np.zeros((6, 2, 2, 2), "float32")
    v[:, 0, 0, 0] = [1, 2, np.nan, 4, 8, 100]  # pixel (0, 0): one cloudy date in the season
    v[:, 1, 0, 0] = [1, 1, np.nan, 1, 1, 1]
    v[:, :, 0, 1] = np.nan  # pixel (0, 1): never valid
    v[:, 0, 1, 0] = [0, 10, 20, 30, 40, 0]  # pixel (1, 0): feature 1 missing on 07-01 -> that date invalid
    v[:, 1, 1, 0] = [0, 1, 1, np.nan, 1, 0]
    v[:, :, 1, 1] = 5.0
    return emb_store(v, TIMES)


def test_window_stats_by_hand():
    series = np.array([[2, np.nan, 4, 8], [np.nan] * 4, [1, 1, 1, 1]], "float32")
    got = window_stats(series, [None, 0.5, 0.9])
    np.testing.assert_allclose(got[0], [14 / 3, 4.0, 7.2], rtol=1e-6)  # p90 of 2, 4, 8: 4 + 0.8 x 4
    assert np.isnan(got[1]).all()
    np.testing.assert_allclose(got[2], [1, 1, 1])


def test_season_mean_median_percentile_and_count_by_hand(tmp_path):
    res = aggregate_embeddings(hand_case(), tmp_path / "season.zarr", windows="season", stats=["mean", "median", "p90"],
                               progress=False)
    assert res.sizes["time"] == 1 and str(res["window"].values[0]) == "season 2019"
    assert pd.Timestamp(res["time"].values[0]) == pd.Timestamp("2019-04-01")
    assert pd.Timestamp(res["window_end"].values[0]) == pd.Timestamp("2019-09-30")
    assert int(res["n_dates"].values[0]) == 4  # 04-10, 05-20, 07-01 and 09-30 (last day included, 10:40 too)
    mean, med, p90 = (res[v].isel(time=0).values for v in ("embedding", "embedding_median", "embedding_p90"))
    np.testing.assert_allclose(mean[:, 0, 0], [14 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(med[:, 0, 0], [4.0, 1.0])
    np.testing.assert_allclose(p90[:, 0, 0], [7.2, 1.0], rtol=1e-6)
    assert np.isnan(mean[:, 0, 1]).all() and np.isnan(p90[:, 0, 1]).all()
    # pixel (1, 0): 07-01 is invalid as a whole (feature 1 NaN), so feature 0's 30 is left out too
    np.testing.assert_allclose(mean[:, 1, 0], [70 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(med[:, 1, 0], [20.0, 1.0])
    np.testing.assert_allclose(mean[:, 1, 1], [5.0, 5.0])
    assert res["valid_count"].isel(time=0).values.tolist() == [[3, 0], [3, 4]]
    assert res["valid_count"].dtype == np.uint16
    assert cube_crs(res).to_epsg() == 32632
    meta = json.loads(res.attrs["latentcube:aggregate"])
    assert meta["statistics"] == {"embedding": "mean", "embedding_median": "median", "embedding_p90": "p90"}
    assert meta["windows"] == [["season 2019", "2019-04-01", "2019-09-30", 4]]
    assert "block_px" not in res.attrs  # no embed blocks to resume in a window store


def test_against_numpy_on_random_data_with_chunks(tmp_path):
    rng = np.random.default_rng(3)
    times = pd.date_range("2019-01-03", "2019-12-28", freq="6D")
    v = rng.normal(size=(len(times), 3, 9, 7)).astype("float32")
    cloudy = rng.random((len(times), 9, 7)) < 0.4  # cloudy pixel-dates: all features NaN
    ds = emb_store(np.where(cloudy[:, None], np.nan, v), times, chunks={"time": 10, "y": 4, "x": 4})
    res = aggregate_embeddings(ds, None, windows="quarter", stats="p25,mean", chunk_px=3)
    assert res["embedding"].chunks[2] == (3, 3, 3)  # computed in 3-px tiles
    arr = ds["embedding"].values
    for k, q in enumerate(range(1, 5)):
        sel = pd.DatetimeIndex(times).quarter == q
        part = arr[sel]
        with warnings.catch_warnings():  # all-NaN pixels: numpy warns, we do not
            warnings.simplefilter("ignore", RuntimeWarning)
            ref_p25 = np.nanquantile(part, 0.25, axis=0)
            ref_mean = np.nanmean(part, axis=0)
        np.testing.assert_allclose(res["embedding"].isel(time=k).values, ref_p25, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res["embedding_mean"].isel(time=k).values, ref_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(res["valid_count"].isel(time=k).values, np.isfinite(part[:, 0]).sum(0))


def test_empty_window_is_an_error_naming_it_or_nan_with_count_zero(tmp_path):
    ds = hand_case()
    with pytest.raises(AggregateError, match=r"1 window\(s\) hold no date of the store \(6 dates, 2019-03-15 .. "
                                             r"2019-10-05\): 2019-06-01/2019-06-20\. Fix: .*--empty nan"):
        aggregate_embeddings(ds, tmp_path / "a.zarr", windows="2019-04-01/2019-05-31,2019-06-01/2019-06-20")
    assert not (tmp_path / "a.zarr").exists()
    res = aggregate_embeddings(ds, tmp_path / "a.zarr", windows=["2019-04-01/2019-05-31", "2019-06-01/2019-06-20"],
                               stats="median", empty="nan", progress=False)
    assert res["n_dates"].values.tolist() == [2, 0]
    assert np.isnan(res["embedding"].isel(time=1).values).all()
    assert (res["valid_count"].isel(time=1).values == 0).all()
    np.testing.assert_allclose(res["embedding"].isel(time=0).values[0, 1, 0], 15.0)  # median of 10, 20


def test_windows_reaching_well_beyond_the_store_are_named_and_windows_inside_are_not():
    """A season the data cover for its last two months only (data from 2018-08-04, as the WorldCereal chip) is
    summarised, and a warning names it with the dates it holds; a window inside the data warns of nothing."""
    times = pd.date_range("2018-08-04", "2019-11-27", freq="10D")
    ds = emb_store(np.random.default_rng(0).normal(size=(len(times), 2, 2, 2)), times)
    with pytest.warns(PartialWindowWarning, match=r"^1 window\(s\) reach well beyond the store's dates \(2018-08-04 .. "
                      r"2019-11-\d\d\), so their statistics cover part of the window only: season 2018 \(6 dates, "
                      r"2018-08-04 .. 2018-09-23 of 2018-04-01 .. 2018-09-30\)\. Compare"):
        res = aggregate_embeddings(ds, None, windows="season", progress=False)
    assert list(res["n_dates"].values) == [6, 19]  # both seasons kept, with what they hold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aggregate_embeddings(ds, None, windows=["2018-09-01/2019-08-31", "2019-04-01/2019-09-30"], progress=False)
        # up to 25 % of a window outside the data is fine: 21 of these 121 days lie before 2018-08-04
        aggregate_embeddings(ds, None, windows="2018-07-14/2018-11-11", progress=False)


def test_presets_cover_the_store_span():
    times = pd.DatetimeIndex(["2019-05-10", "2020-08-01"])
    labels = {p: [w.label for w in parse_windows(p, times)] for p in ("season", "quarter", "month", "year", "hydro-year")}
    assert labels["season"] == ["season 2019", "season 2020"]
    assert labels["quarter"] == ["2019-Q2", "2019-Q3", "2019-Q4", "2020-Q1", "2020-Q2", "2020-Q3"]
    assert len(labels["month"]) == 16 and labels["month"][0] == "2019-05" and labels["month"][-1] == "2020-08"
    assert labels["year"] == ["2019", "2020"]
    hydro = parse_windows("hydro-year", times)
    assert [w.label for w in hydro] == ["hydro-year 2018-19", "hydro-year 2019-20", "hydro-year 2020-21"]
    assert (hydro[1].start, hydro[1].end) == (pd.Timestamp("2019-07-01"), pd.Timestamp("2020-06-30"))
    q = parse_windows("quarter", times)[3]
    assert (q.start, q.end) == (pd.Timestamp("2020-01-01"), pd.Timestamp("2020-03-31"))
    feb = [w for w in parse_windows("month", times) if w.label == "2020-02"][0]
    assert feb.end == pd.Timestamp("2020-02-29")  # leap year


@pytest.mark.parametrize(("windows", "message"), [
    ("seasons", r"unknown window 'seasons'\. Fix: use a preset \(season, quarter"),
    ("2019-04-01/2019-13-01", r"'2019-13-01' is not a date\. Fix"),
    ("2019-09-30/2019-04-01", r"ends before it starts\. Fix"),
    ("season,quarter", r"'2019-Q2' and 'season 2019' both start on 2019-04-01.*Fix: aggregate them into two stores"),
    ("", r"no windows given\. Fix"),
])
def test_bad_windows(windows, message):
    with pytest.raises(AggregateError, match=message):
        parse_windows(windows, TIMES)


def test_preset_outside_the_store_and_bad_stats():
    with pytest.raises(AggregateError, match=r"no season window overlaps the store's dates \(2019-10-05 .. 2019-12-01\)"):
        parse_windows("season", pd.DatetimeIndex(["2019-10-05", "2019-12-01"]))
    with pytest.raises(AggregateError, match=r"unknown statistic 'p101'\. Fix: use mean, median or a percentile"):
        parse_stats("mean,p101")
    with pytest.raises(AggregateError, match=r"unknown statistic 'max'"):
        parse_stats(["max"])
    assert parse_stats("median, p2.5,median") == [("median", 0.5), ("p2_5", 0.025)]


def test_output_rules(tmp_path):
    ds = hand_case()
    out = tmp_path / "w.zarr"
    aggregate_embeddings(ds, out, windows="season", progress=False)
    from latentcube.files import OutputExistsError

    with pytest.raises(OutputExistsError, match=r"window store .*w\.zarr exists\. Fix: pass --overwrite"):
        aggregate_embeddings(ds, out, windows="year", progress=False)
    res = aggregate_embeddings(ds, out, windows="year", progress=False, overwrite=True)
    assert str(res["window"].values[0]) == "2019"
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"thesis exists and is not a latentcube window store"):
        aggregate_embeddings(ds, mine, windows="year", progress=False, overwrite=True)
    assert (mine / "chapter1.tex").read_text() == "mine"
    with pytest.raises(AggregateError, match=r"is the input store"):
        aggregate_embeddings(out, out, windows="year", overwrite=True)


def test_int8_store_and_filled_series(tmp_path):
    from latentcube.embed import quantize_int8

    ds = hand_case()
    q, scale = quantize_int8(ds["embedding"].values)
    stored = ds.assign(embedding=(ds["embedding"].dims, q), embedding_scale=(("time", "y", "x"), scale))
    stored["embedding"].encoding["_FillValue"] = -128
    stored["embedding"].attrs["scale_variable"] = "embedding_scale"
    write_zarr(stored, tmp_path / "i8.zarr")
    res = aggregate_embeddings(tmp_path / "i8.zarr", None, windows="season")
    ref = aggregate_embeddings(open_embedding(tmp_path / "i8.zarr", as_dataset=True), None, windows="season")
    np.testing.assert_allclose(res["embedding"].values, ref["embedding"].values, equal_nan=True)
    assert res["embedding"].dtype == np.float32
    # --filled: the gap-filled 5-day series (gapfill's defaults) aggregated; reference: gapfill, then numpy
    from latentcube.gapfill import gapfill_embeddings

    times = pd.date_range("2019-04-02", periods=12, freq="10D")
    v = np.arange(12, dtype="float32")[:, None, None, None] * np.ones((12, 2, 2, 2), "float32")
    v[3:5, :, 0, 0] = np.nan  # a 30-day gap: bridged
    v[2:9, :, 0, 1] = np.nan  # an 80-day gap: left NaN
    ds = emb_store(v, times)
    filled = aggregate_embeddings(ds, None, windows="2019-04-10/2019-07-01", filled=True)
    meta = json.loads(filled.attrs["latentcube:aggregate"])
    assert meta["filled"] and meta["gapfill"]["freq"] == "5D"
    g = gapfill_embeddings(ds, None)
    part = g["embedding"].sel(time=slice("2019-04-10", "2019-07-01")).values
    with warnings.catch_warnings():  # all-NaN pixels: numpy warns, we do not
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmean(part, axis=0)
    np.testing.assert_allclose(filled["embedding"].isel(time=0).values, ref, rtol=1e-6)
    counts = filled["valid_count"].isel(time=0).values
    np.testing.assert_array_equal(counts, np.isfinite(part).all(1).sum(0))
    assert counts[0, 0] == counts[1, 1] == len(part) == 17 and 0 < counts[0, 1] < 17

@pytest.mark.slow  # rasterio and scikit-learn imports: ~10 s on a busy 2-core machine
def test_window_store_reads_in_other_verbs(tmp_path):
    from latentcube.embed import embedding_summary
    from latentcube.evaluate.maps import pca_rgb
    from latentcube.export import export_geotiff

    rng = np.random.default_rng(1)
    times = pd.date_range("2019-01-05", "2020-12-25", freq="10D")
    ds = emb_store(rng.normal(size=(len(times), 4, 6, 5)), times)
    out = tmp_path / "season.zarr"
    aggregate_embeddings(ds, out, windows="season", stats="median", progress=False)
    emb = open_embedding(out)
    assert emb.dims == ("time", "feature", "y", "x") and emb.sizes["time"] == 2
    info = embedding_summary(out)
    assert info["dates"] == 2 and info["first"] == "2019-04-01"
    paths = export_geotiff(out, tmp_path / "tif", progress=False)
    assert [p.name for p in paths] == ["embedding_2019-04-01.tif", "embedding_2020-04-01.tif"]
    import rasterio

    with rasterio.open(paths[1]) as src:
        np.testing.assert_allclose(src.read(), emb.isel(time=1).values, rtol=1e-6)
    rgb = pca_rgb(out, date="2020-04-01")
    assert rgb.shape == (6, 5, 3)


def test_cli_aggregate(tmp_path, monkeypatch):
    from latentcube.cli import main

    write_zarr(hand_case(), tmp_path / "e.zarr")
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    with pytest.raises(SystemExit) as exc:
        main(["aggregate", "e.zarr", "--windows", "season", "--windows", "2019-03-01/2019-03-31", "--stat", "mean",
              "--stat", "p90", "--out", "w.zarr"])
    assert exc.value.code == 0
    res = xr.open_zarr(tmp_path / "w.zarr")
    assert [str(w) for w in res["window"].values] == ["2019-03-01/2019-03-31", "season 2019"]
    np.testing.assert_allclose(res["embedding_p90"].isel(time=1).values[0, 0, 0], 7.2, rtol=1e-6)


def test_cli_aggregate_error_is_one_line(tmp_path, capsys, monkeypatch):
    from latentcube.cli import main

    write_zarr(hand_case(), tmp_path / "e.zarr")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["aggregate", "e.zarr", "--windows", "2021-01-01/2021-02-01", "--out", "w.zarr"])
    assert exc.value.code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "AggregateError: 1 window(s) hold no date of the store" in err and "Traceback" not in err


@pytest.mark.slow  # matplotlib and scikit-learn fits: ~15-40 s on a busy 2-core machine
def test_pca_figure_and_probe_read_a_window_store(tmp_path):
    from latentcube.cube import new_cube
    from latentcube.evaluate.maps import pca_figure
    from latentcube.evaluate.probe import run_probe

    rng = np.random.default_rng(4)
    h = w = 16
    t2 = pd.DatetimeIndex([f"2021-{m:02d}-15 10:30" for m in range(1, 13)])
    lab = ((np.arange(h)[:, None] // 4 + np.arange(w)[None] // 4) % 2 + 1).astype("uint8")
    s2 = (0.1 * lab[None, None] + rng.normal(0, 0.01, (12, 10, h, w))).astype("float32")
    s2[3, :, :8] = np.nan  # April half cloudy: the S2 panel shows May, the first clear date in the season
    cube = new_cube(s2=s2, time=t2, y=5_600_000.0 - 10 * np.arange(h) - 5, x=600_000.0 + 10 * np.arange(w) + 5,
                    crs="EPSG:32632", layers={"landcover": lab})
    e = np.concatenate([s2[:, :3] * 10, rng.normal(0, 1, (12, 1, h, w)).astype("float32")], axis=1)
    emb = emb_store(e, t2).assign_coords(y=cube["y"], x=cube["x"])
    out = tmp_path / "season.zarr"
    aggregate_embeddings(emb, out, windows="season", progress=False)
    png = pca_figure(out, cube, None, tmp_path / "pca.png")  # S2 beside it: the clearest date in Apr..Sep
    assert png.stat().st_size > 1000
    from latentcube.evaluate.maps import _s2_index

    win = open_embedding(out)
    assert pd.Timestamp(cube["time"].values[_s2_index(cube, win, 0, pd.Timestamp("2021-04-01"))]).month == 5
    table = run_probe(out, cube, feature_sets=("embedding_date",), block_px=4, folds=3, classifiers=("logreg",))
    assert str(table.attrs["probe"]["date"]).startswith("2021-04-01")
    assert table[table.metric == "balanced_accuracy"]["mean"].iloc[0] > 0.9


def test_window_stats_equal_numpy_nanquantile_on_ragged_nan():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 13)).astype("float32")
    x[rng.random(x.shape) < 0.5] = np.nan
    x[0] = np.nan
    x[1, 1:] = np.nan  # one valid value
    qs = [0.0, 0.1, 0.5, 0.9, 1.0]
    got = window_stats(x, [None, *qs])
    with warnings.catch_warnings():  # the all-NaN row
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanquantile(x.astype("float64"), qs, axis=1).T
        mean = np.nanmean(x.astype("float64"), axis=1)
    np.testing.assert_allclose(got[:, 1:], ref, rtol=1e-6, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(got[:, 0], mean, rtol=1e-6, atol=1e-6, equal_nan=True)

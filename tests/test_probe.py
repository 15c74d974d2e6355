"""Probe (latentcube.evaluate.probe): features against hand computation, the PCA code against
scikit-learn's PCA, seasonal medians against a hand-computed case, scores against a scikit-learn
reference on the same blocked folds, seeds, date choice, rare classes, errors, outputs and CLI; then
the probe on the real WorldCereal chip and the issue-7 acceptance check on the synthetic world."""

from __future__ import annotations

import glob
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import SMALL_MODEL

from latentcube.cube import new_cube, save_cube
from latentcube.evaluate.probe import (
    DEFAULT_FEATURE_SETS,
    FEATURE_SETS,
    ProbeError,
    aggregate,
    block_offset,
    equal_windows,
    make_classifier,
    parse_windows,
    probe_features,
    ratios,
    run_probe,
    spatial_blocks,
    window_members,
)

#: The one-date, series and annual-mean sets of the embedding and the raw bands.
CLASSIC = ("embedding_date", "embedding_series", "embedding_mean", "raw_date", "raw_mean")

H = W = 24
BLOCK = 4
# Monthly S2 dates in 2021 (15th, 10:30); S1 one day later except in October (no S1 within 6 days).
T2 = pd.DatetimeIndex([f"2021-{m:02d}-15 10:30" for m in range(1, 13)])
T1 = pd.DatetimeIndex([t + pd.Timedelta(days=1, hours=7) for t in T2 if t.month != 10])
JUNE, JANUARY, JULY = 5, 0, 6


def _labels() -> np.ndarray:
    """Classes 1..3 in a checkerboard of 4-px blocks (each class in many blocks), a row of 0 (unlabelled)."""
    yy, xx = np.mgrid[0:H, 0:W]
    lab = ((yy // BLOCK + xx // BLOCK) % 3 + 1).astype("uint8")
    lab[0, :] = 0
    return lab


def _cube(seed: int = 0) -> xr.Dataset:
    """Raw bands separate the classes (class-specific spectrum + small noise); clouds on some dates:
    January fully clear (out of season), June clear but 3 pixels, July 25 % cloudy, others 50 %."""
    rng = np.random.default_rng(seed)
    lab = _labels()
    spectra = np.array([[0.02] * 10, [0.05 + 0.03 * b for b in range(10)], [0.3 - 0.02 * b for b in range(10)],
                        [0.1] * 10], dtype="float32")  # index 0 = unlabelled
    s2 = spectra[lab].transpose(2, 0, 1)[None] + rng.normal(0, 0.005, (len(T2), 10, H, W))
    s2 = s2.astype("float32")
    cloud = rng.random((len(T2), H, W)) < 0.5
    cloud[JANUARY] = False
    cloud[JUNE] = False
    cloud[JUNE, 5, 5:8] = True
    cloud[JULY] = rng.random((H, W)) < 0.25
    s2[np.broadcast_to(cloud[:, None], s2.shape)] = np.nan
    s1 = rng.gamma(4.0, 0.03, (len(T1), 2, H, W)).astype("float32")
    return new_cube(s2=s2, time=T2, y=5_600_000.0 - 10 * np.arange(H) - 5, x=600_000.0 + 10 * np.arange(W) + 5,
                    crs="EPSG:32632", s1=s1, time_s1=T1, layers={"landcover": lab})


def _embedding(ds: xr.Dataset, seed: int = 1, informative: bool = False) -> xr.Dataset:
    """A stand-in embedding cube (4 features, NaN where S2 is invalid): pure noise, or the first
    S2 band plus noise when ``informative``."""
    rng = np.random.default_rng(seed)
    e = rng.normal(0, 1, (len(T2), 4, H, W)).astype("float32")
    if informative:
        e[:, 0] = ds["s2"].values[:, 1] * 100
    e[~np.isfinite(ds["s2"].values).all(1)[:, None].repeat(4, 1)] = np.nan
    names = [f"fused_{i}" for i in range(3)] + ["s2_0"]
    return xr.Dataset({"embedding": (("time", "feature", "y", "x"), e)},
                      coords={"time": ds["time"].values, "feature": names, "y": ds["y"].values, "x": ds["x"].values})


@pytest.fixture(scope="module")
def cube() -> xr.Dataset:
    return _cube()


@pytest.fixture(scope="module")
def emb(cube) -> xr.Dataset:
    return _embedding(cube)


# ------------------------------------------------------------------------------------ features


def test_spatial_blocks_hand_computed():
    rows = np.array([0, 0, 3, 4, 9, 9])
    cols = np.array([0, 4, 3, 9, 0, 9])
    # 4-px blocks, 3 block columns (cols up to 9): id = (row // 4) * 3 + col // 4
    np.testing.assert_array_equal(spatial_blocks(rows, cols, 4), [0, 1, 0, 5, 6, 8])
    # grid shifted by (1, 2): rows 1 1 4 5 10 10, cols 2 6 5 11 2 11, 3 block columns (cols up to 11)
    np.testing.assert_array_equal(spatial_blocks(rows, cols, 4, offset=(1, 2)), [0, 1, 4, 5, 6, 8])
    assert block_offset(0, 4) == (0, 0) and block_offset(1, 4) == block_offset(1, 4)
    with pytest.raises(ProbeError, match="block_px must be a positive"):
        spatial_blocks(rows, cols, 0)


def test_features_match_hand_computation(cube, emb):
    d = probe_features(emb, cube, block_px=BLOCK, max_pixels=None, feature_sets=CLASSIC)
    # Default date: the clearest in April-September = June (January is clearer but out of season).
    assert d.date == T2[JUNE] and d.raw_date == T2[JUNE] and d.s1_date == T1[JUNE]
    assert d.year == 2021 and d.n_period_dates == 12
    # Fused group only (the store also has s2_0), raw = 10 S2 bands + VV/VH in dB.
    assert d.embedding_features == ["fused_0", "fused_1", "fused_2"]
    assert d.raw_bands[-2:] == ["VV_dB", "VH_dB"] and len(d.raw_bands) == 12
    # Labelled pixels: all but row 0; the 3 pixels cloudy in June are dropped from every set.
    assert d.n_labelled == (H - 1) * W and d.n_invalid == 3 and d.y.size == (H - 1) * W - 3
    assert set(np.unique(d.y)) == {1, 2, 3} and not np.isin(d.rows, [0]).any()
    assert not ((d.rows == 5) & np.isin(d.cols, [5, 6, 7])).any()
    assert {k: v.shape[1] for k, v in d.X.items()} == {
        "embedding_date": 3, "embedding_series": 12 * 3, "embedding_mean": 3, "raw_date": 12, "raw_mean": 12}

    i = int(np.flatnonzero((d.rows == 7) & (d.cols == 11))[0])
    e = emb["embedding"].values[:, :3, 7, 11]  # (T, 3)
    s2 = cube["s2"].values[:, :, 7, 11]
    s1 = cube["s1"].values[:, :, 7, 11]
    np.testing.assert_allclose(d.X["embedding_date"][i], e[JUNE], rtol=1e-6)
    np.testing.assert_allclose(d.X["raw_date"][i, :10], s2[JUNE], rtol=1e-6)
    np.testing.assert_allclose(d.X["raw_date"][i, 10:], 10 * np.log10(s1[JUNE]), rtol=1e-5)
    valid = np.isfinite(e).all(1)
    mean = e[valid].mean(0)
    np.testing.assert_allclose(d.X["embedding_mean"][i], mean, rtol=1e-5)
    # series: the pixel's missing dates filled with its own mean, dates x features flattened date-major
    filled = np.where(valid[:, None], e, mean)
    np.testing.assert_allclose(d.X["embedding_series"][i], filled.reshape(-1), rtol=1e-5)
    assert not valid.all()  # the fill was exercised
    s2_valid = np.isfinite(s2).all(1)
    np.testing.assert_allclose(d.X["raw_mean"][i, :10], s2[s2_valid].mean(0), rtol=1e-5)
    # S1 on the embedding's dates (each S1 acquisition is the one day-later match of one S2 date), in dB
    np.testing.assert_allclose(d.X["raw_mean"][i, 10:], (10 * np.log10(s1)).mean(0), rtol=1e-5)


def test_seasonal_medians_hand_computed_with_nans_and_an_all_nan_window():
    times = pd.DatetimeIndex(["2021-01-01", "2021-02-01", "2021-05-01", "2021-06-01", "2021-09-01", "2021-12-31"])
    # Thirds of Jan 1 .. Dec 31 (364 days): [Jan 1, May 2.3), [May 2.3, Aug 31.7), [Aug 31.7, Dec 31]
    wins = equal_windows(times, 3)
    members = window_members(times, wins)
    assert [m.tolist() for m in members] == [[0, 1, 2], [3], [4, 5]]
    nan = np.nan
    # (T=6, F=2, n=2); pixel 1 has no valid date in the second window (date 3 is NaN)
    series = np.array([
        [[1.0, 10.0], [5.0, 50.0]],
        [[nan, 20.0], [nan, 60.0]],
        [[3.0, 40.0], [7.0, nan]],
        [[4.0, nan], [8.0, 70.0]],
        [[nan, nan], [9.0, 80.0]],
        [[6.0, 30.0], [nan, 90.0]],
    ], dtype="float32").transpose(0, 2, 1)  # written [t, pixel, f], used (T, F, n)
    got = aggregate(series, "seasonal", members=members)
    # window-major features (w0 f0, w0 f1, w1 f0, w1 f1, w2 f0, w2 f1); by hand:
    # pixel 0: w0 f0 median(1, 3) = 2, w0 f1 median(10, 20, 40) = 20; w1 f0 = 4, w1 f1 all NaN -> the pixel's
    #   median of f1 over all dates median(10, 20, 40, 30) = 25; w2 f0 = 6, w2 f1 = 30
    # pixel 1: w0 f0 median(5, 7) = 6, w0 f1 median(50, 60) = 55; w1 = (8, 70); w2 f0 = 9, w2 f1 median(80, 90) = 85
    expected = np.array([[2, 20, 4, 25, 6, 30], [6, 55, 8, 70, 9, 85]], dtype="float32")
    np.testing.assert_array_equal(got, expected)
    # the mean, series and one-date protocols on the same series
    np.testing.assert_allclose(aggregate(series, "mean"), [[3.5, 25.0], [7.25, 70.0]])
    np.testing.assert_allclose(aggregate(series, "date", date_index=2), [[3.0, 40.0], [7.0, nan]])
    filled = aggregate(series, "series")
    assert filled.shape == (2, 12) and filled[0, 2] == 3.5 and filled[1, 5] == 70.0  # date 1 f0, date 2 f1 filled
    # a pixel with no valid date at all stays NaN (the probe drops it)
    assert np.isnan(aggregate(np.full((6, 2, 1), np.nan, "float32"), "seasonal", members=members)).all()
    # user windows: inclusive day ends; errors name the fix
    assert [m.tolist() for m in window_members(times, parse_windows(["2021-01-01:2021-02-01", ("2021-05-01", "2021-12-31")]))] \
        == [[0, 1], [2, 3, 4, 5]]
    with pytest.raises(ProbeError, match="ends before it starts"):
        parse_windows(["2021-06-01:2021-01-01"])
    with pytest.raises(ProbeError, match="unknown protocol 'median'"):
        aggregate(series, "median")


def test_seasonal_features_in_the_probe(cube, emb):
    d = probe_features(emb, cube, block_px=BLOCK, max_pixels=None, feature_sets=("embedding_seasonal", "raw_seasonal"))
    # monthly dates Jan 15 .. Dec 15 in thirds of 334 days: Jan-Apr, May-Aug, Sep-Dec
    assert [n for _, _, n in d.windows] == [4, 4, 4]
    assert d.X["embedding_seasonal"].shape[1] == 3 * 3 and d.X["raw_seasonal"].shape[1] == 3 * 12
    i = int(np.flatnonzero((d.rows == 7) & (d.cols == 11))[0])
    e = emb["embedding"].values[4:8, :3, 7, 11]  # May-August
    np.testing.assert_allclose(d.X["embedding_seasonal"][i, 3:6], np.nanmedian(e, axis=0), rtol=1e-6)
    s1 = cube["s1"].values[8:, :, 7, 11]  # S1 of Sep, Nov, Dec (no October acquisition): the third window
    np.testing.assert_allclose(d.X["raw_seasonal"][i, 34:36], np.median(10 * np.log10(s1), axis=0), rtol=1e-5)


def _smoothed_s1_on_s2_dates(cube: xr.Dataset) -> np.ndarray:
    """S1 as the models see it, by hand: 3-frame centred rolling mean in linear power (pandas), the
    acquisition one day after each S2 date (none in October), (T2, 2, H, W)."""
    s1 = cube["s1"].values.astype("float64")
    flat = s1.reshape(len(T1), -1)
    smooth = pd.DataFrame(flat).rolling(3, center=True, min_periods=1).mean().to_numpy().reshape(s1.shape)
    out = np.full((len(T2), *s1.shape[1:]), np.nan)
    j = 0
    for t in range(len(T2)):
        if T2[t].month != 10:
            out[t] = smooth[j]
            j += 1
    return out


def test_pca_code_equals_scikit_learn_pca(cube, emb):
    from sklearn.decomposition import PCA

    d = probe_features(emb, cube, block_px=BLOCK, max_pixels=None, feature_sets=("pca_date", "pca_mean"))
    # Reference: the fused model's inputs by hand (S2 reflectance; S1 smoothed, matched, dB normalised with the
    # default bounds VV -25..0, VH -32..-5 dB), every clear pixel-date of the cube, scikit-learn PCA-3.
    s1_db = 10 * np.log10(_smoothed_s1_on_s2_dates(cube))
    s1_norm = np.stack([(s1_db[:, 0] + 25) / 25, (s1_db[:, 1] + 32) / 27], axis=1)
    x = np.concatenate([cube["s2"].values.astype("float64"), s1_norm], axis=1)  # (T, 12, H, W)
    rows = x.transpose(0, 2, 3, 1).reshape(-1, 12)
    clear = np.isfinite(rows).all(1)
    ref = PCA(n_components=3).fit(rows[clear])
    assert d.pca["k"] == 3 and d.pca["n_fit_pixel_dates"] == int(clear.sum())
    np.testing.assert_allclose(d.pca["explained_variance_ratio"], ref.explained_variance_ratio_, rtol=1e-4)
    i = int(np.flatnonzero((d.rows == 7) & (d.cols == 11))[0])
    expected = ref.transform(x[JUNE, :, 7, 11][None])[0]
    np.testing.assert_allclose(d.X["pca_date"][i], expected, rtol=1e-4, atol=1e-5)
    codes = np.array([ref.transform(x[t, :, 7, 11][None])[0] if np.isfinite(x[t, :, 7, 11]).all() else [np.nan] * 3
                      for t in range(len(T2))])
    assert np.isnan(codes[9]).all()  # October: no S1 within 6 days, no code
    np.testing.assert_allclose(d.X["pca_mean"][i], np.nanmean(codes, axis=0), rtol=1e-4, atol=1e-5)
    # Fitted on the training strip of a spatial split only: a different fit, same pixels probed.
    strip = probe_features(emb, cube, block_px=BLOCK, max_pixels=None, feature_sets=("pca_date",),
                           pca_spatial_split={"val": 0.5})
    west = x[:, :, :, :12].transpose(0, 2, 3, 1).reshape(-1, 12)
    assert strip.pca["n_fit_pixel_dates"] == int(np.isfinite(west).all(1).sum())
    assert "training strip" in strip.pca["fit"]
    # The S2 group: PCA of the 10 S2 bands only, k = 1 (one s2 feature in this store)
    s2 = probe_features(emb, cube, block_px=BLOCK, feature_sets=("pca_date", "raw_date"), embedding_features="s2")
    assert s2.pca["k"] == 1 and s2.pca["bands"] == [str(b) for b in cube["band"].values] and len(s2.raw_bands) == 10


def test_baseline_sensors_hold_a_fused_embedding_against_s2_alone(cube, emb):
    from sklearn.decomposition import PCA

    d = probe_features(emb, cube, block_px=BLOCK, max_pixels=None, feature_sets=("raw_date", "pca_date"),
                       baseline_sensors=("s2",))
    # the fused group (3 features) against S2 only: 10 raw bands, PCA-3 of the 10 S2 reflectances
    assert d.raw_bands == [str(b) for b in cube["band"].values] and d.pca["bands"] == d.raw_bands and d.pca["k"] == 3
    x = cube["s2"].values.astype("float64")
    rows = x.transpose(0, 2, 3, 1).reshape(-1, 10)
    ref = PCA(n_components=3).fit(rows[np.isfinite(rows).all(1)])
    i = int(np.flatnonzero((d.rows == 7) & (d.cols == 11))[0])
    np.testing.assert_allclose(d.X["pca_date"][i], ref.transform(x[JUNE, :, 7, 11][None])[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d.X["raw_date"][i], x[JUNE, :, 7, 11], rtol=1e-6)
    both = probe_features(emb, cube, block_px=BLOCK, feature_sets=("raw_date",))  # default: the group's S2+S1
    assert len(both.raw_bands) == 12
    with pytest.raises(ProbeError, match=r"baseline sensors must be among s2, s1, got \['s3'\]"):
        probe_features(emb, cube, block_px=BLOCK, feature_sets=("raw_date",), baseline_sensors=("s2", "s3"))
    with pytest.raises(ProbeError, match=r"the cube has no \['s1'\] data for the baselines"):
        probe_features(emb, cube.drop_vars("s1"), block_px=BLOCK, feature_sets=("raw_date",), baseline_sensors=("s1",))


def test_int8_embedding_stores_are_decoded(cube, emb, tmp_path):
    """int8 storage (latentcube.embed): codes x per-pixel-date scale, as open_embedding decodes it."""
    e = emb["embedding"].values
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (invalid) pixel-dates: scale NaN
        scale = (np.nanmax(np.abs(e), axis=1) / 127).astype("float32")  # (time, y, x)
    codes = np.round(e / scale[:, None]).astype("float32")  # what CF decoding of the int8 store gives
    q = emb.assign(embedding=(emb["embedding"].dims, codes), embedding_scale=(("time", "y", "x"), scale))
    d = probe_features(q, cube, block_px=BLOCK)
    ref = probe_features(emb, cube, block_px=BLOCK)
    np.testing.assert_array_equal(d.rows, ref.rows)
    err = np.abs(d.X["embedding_date"] - ref.X["embedding_date"])
    assert 0 < err.max() <= np.nanmax(scale) / 2 * 1.0001
    # the same through a stored int8 Zarr (opened with latentcube.embed.open_embedding)
    store = q.assign(embedding=(q["embedding"].dims, np.where(np.isfinite(codes), codes, -128).astype("int8")))
    store["embedding"].encoding["_FillValue"] = -128
    store.to_zarr(tmp_path / "q.zarr", zarr_format=2)
    d2 = probe_features(tmp_path / "q.zarr", cube, block_px=BLOCK)
    np.testing.assert_allclose(d2.X["embedding_date"], d.X["embedding_date"], rtol=1e-6)


def test_date_override_takes_the_nearest_date_and_checks_s1(cube, emb):
    d = probe_features(emb, cube, block_px=BLOCK, date="2021-08-13")
    assert d.date == T2[7]
    with pytest.raises(ProbeError, match="no S1 acquisition within 6 days of 2021-10-15"):
        probe_features(emb, cube, block_px=BLOCK, date="2021-10-15")
    with pytest.raises(ProbeError, match="no embedding date near 2023-01-01"):
        probe_features(emb, cube, block_px=BLOCK, date="2023-01-01")
    # A southern-hemisphere season wrapping over the new year picks January (fully clear).
    assert probe_features(emb, cube, block_px=BLOCK, season=(10, 3)).date == T2[JANUARY]


def test_rare_classes_dropped_with_warning_and_nodata_codes(cube, emb):
    lab = cube["landcover"].values.copy()
    lab[10:12, 1] = 9  # 2 pixels of a rare class
    lab[20:, :] = 99  # "unknown" code, ignored when named as nodata
    ds = cube.assign(landcover=(("y", "x"), lab))
    with pytest.warns(UserWarning, match=r"dropped classes \{9: 2\}"):
        d = probe_features(emb, ds, block_px=BLOCK, nodata=(0, 99))
    assert set(np.unique(d.y)) == {1, 2, 3} and d.rows.max() < 20
    # Everything but one class unlabelled -> error
    one = np.where(lab == 1, 1, 0).astype("uint8")
    with pytest.raises(ProbeError, match="fewer than 2 classes"):
        probe_features(emb, cube.assign(landcover=(("y", "x"), one)), block_px=BLOCK)


def test_max_pixels_keeps_class_shares(cube, emb):
    d = probe_features(emb, cube, block_px=BLOCK, max_pixels=200, seed=3)
    assert d.y.size <= 200
    shares = np.bincount(d.y)[1:] / d.y.size
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.03)


def test_input_errors(cube, emb, tmp_path):
    with pytest.raises(ProbeError, match="no label layer 'crops'.*'landcover'"):
        probe_features(emb, cube, labels="crops")
    with pytest.raises(ProbeError, match="different grids"):
        probe_features(emb.isel(x=slice(0, 20)), cube)
    with pytest.raises(ProbeError, match="none in this store; its groups are \\['fused', 's2'\\]"):
        probe_features(emb, cube, embedding_features="s1")
    with pytest.raises(FileNotFoundError, match="latentcube embed"):
        probe_features(tmp_path / "missing.zarr", cube)
    with pytest.raises(ProbeError, match="no 'embedding' variable"):
        probe_features(emb.rename(embedding="z"), cube)
    floats = cube.assign(landcover=(("y", "x"), cube["landcover"].values + 0.5))
    with pytest.raises(ProbeError, match="non-integer"):
        probe_features(emb, floats)
    with pytest.raises(ProbeError, match="only 36 spatial blocks.*fewer than folds=40"):
        run_probe(emb, cube, block_px=BLOCK, folds=40)
    with pytest.raises(ProbeError, match="unknown feature sets \\['ndvi'\\]"):
        run_probe(emb, cube, feature_sets=["ndvi"])
    with pytest.raises(ProbeError, match="unknown classifier 'svm'"):
        make_classifier("svm")
    with pytest.raises(ProbeError, match=r"no embedding given for seeds \[2\]"):
        run_probe({0: emb, 1: emb}, cube, seeds=(0, 2))
    with pytest.raises(ProbeError, match="holds no embedding store and no folder seed0/"):
        run_probe(tmp_path, cube, seeds=(0,))
    with pytest.raises(ProbeError, match="hold no embedding date"):
        probe_features(emb, cube, windows=["2030-01-01:2030-02-01"], feature_sets=("embedding_seasonal",))


def test_seeded_probe_is_reproducible_and_aggregates_over_seeds(cube, emb):
    kw = {"block_px": BLOCK, "folds": 3, "classifiers": ("logreg",),
          "feature_sets": ("embedding_seasonal", "raw_seasonal", "pca_seasonal")}
    a = run_probe(emb, cube, seeds=(0, 1), **kw)
    pd.testing.assert_frame_equal(a, run_probe(emb, cube, seeds=(0, 1), **kw))  # same seeds, same table
    assert (a["spread"] == "seeds").all() and a.attrs["probe"]["seeds"] == [0, 1]
    assert a.attrs["probe"]["seeds_over"].startswith("cross-validation")
    ba = ("balanced_accuracy",)

    def single(e, s):
        return run_probe(e, cube, seed=s, **kw).set_index(["features", "metric"])["mean"]

    one = {s: single(emb, s) for s in (0, 1)}
    rows = a.set_index(["features", "metric"])
    for fs in kw["feature_sets"]:
        per = rows.loc[(fs, *ba), "per_seed"]
        assert per == [one[0][(fs, *ba)], one[1][(fs, *ba)]]  # each seed = a one-seed run with that seed
        assert rows.loc[(fs, *ba), "mean"] == pytest.approx(np.mean(per))
        assert rows.loc[(fs, *ba), "std"] == pytest.approx(np.std(per, ddof=1))
    per = rows.loc[("embedding_seasonal", *ba), "per_seed"]
    assert per[0] != per[1]  # other folds per seed: the noise embedding scores differently
    # One model per seed: model s is probed with the folds of seed s; the raw rows do not depend on the model.
    other = _embedding(cube, seed=5, informative=True)
    m = run_probe({0: emb, 1: other}, cube, seeds=(0, 1), **kw).set_index(["features", "metric"])
    assert m.loc[("embedding_seasonal", *ba), "per_seed"] == [one[0][("embedding_seasonal", *ba)],
                                                             single(other, 1)[("embedding_seasonal", *ba)]]
    assert m.loc[("raw_seasonal", *ba), "per_seed"] == rows.loc[("raw_seasonal", *ba), "per_seed"]


def test_cv_repeats_average_other_block_draws_per_seed(cube, emb):
    from latentcube.evaluate.probe._cv import CV_REPEAT_OFFSET

    kw = {"block_px": BLOCK, "folds": 3, "classifiers": ("logreg",), "feature_sets": ("embedding_seasonal", "raw_seasonal")}
    ba = ("balanced_accuracy",)
    other = _embedding(cube, seed=5, informative=True)
    rep = run_probe({0: emb, 1: other}, cube, seeds=(0, 1), cv_repeats=2, **kw).set_index(["features", "metric"])
    # reference: each shuffle as a plain seeded run of the same model (seed s + r * offset)
    draws = {s: run_probe({s: e, s + CV_REPEAT_OFFSET: e}, cube, seeds=(s, s + CV_REPEAT_OFFSET), **kw)
             .set_index(["features", "metric"]) for s, e in ((0, emb), (1, other))}
    for fs in kw["feature_sets"]:
        want = [float(np.mean(draws[s].loc[(fs, *ba), "per_seed"])) for s in (0, 1)]
        assert rep.loc[(fs, *ba), "per_seed"] == pytest.approx(want, abs=1e-12)
        assert rep.loc[(fs, *ba), "std"] == pytest.approx(np.std(want, ddof=1))
        assert len(rep.loc[(fs, *ba), "folds"]) == 2 * 2 * 3  # seeds x shuffles x folds
    per = draws[0].loc[("embedding_seasonal", *ba), "per_seed"]
    assert per[0] != per[1]  # the two draws score the noise embedding differently: the average is not one draw
    one = run_probe(emb, cube, seed=0, cv_repeats=3, **kw)
    assert (one["spread"] == "cv_repeats").all() and one.attrs["probe"]["cv_repeats"] == 3
    with pytest.raises(ProbeError, match=r"cv_repeats must be >= 1, got 0. Fix: pass 1"):
        run_probe(emb, cube, cv_repeats=0, **kw)


# -------------------------------------------------------------------------------------- scores


def test_scores_equal_a_sklearn_reference_on_the_same_blocked_folds(cube, emb):
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from sklearn.model_selection import StratifiedGroupKFold

    table = run_probe(emb, cube, block_px=BLOCK, folds=4, seed=2)
    assert len(table) == len(DEFAULT_FEATURE_SETS) * 2 * 3 and len(FEATURE_SETS) == 12
    assert list(table.columns) == ["features", "classifier", "metric", "mean", "std", "spread", "per_seed", "folds",
                                   "n_features", "n_pixels", "n_classes", "date"]
    assert (table["spread"] == "folds").all()
    # Reference: the same pixels, blocks and folds, built here with scikit-learn directly.
    d = probe_features(emb, cube, block_px=BLOCK, seed=2)
    oy, ox = block_offset(2, BLOCK)  # seeds other than 0 shift the block grid (StratifiedGroupKFold's shuffle
    assert (oy, ox) != (0, 0)        # only breaks ties, so every seed would otherwise get the same folds)
    groups = ((d.rows + oy) // BLOCK) * (W // BLOCK + 1) + (d.cols + ox) // BLOCK
    ref_ba, ref_f1 = [], []
    for tr, te in StratifiedGroupKFold(4, shuffle=True, random_state=2).split(d.X["raw_date"], d.y, groups):
        assert not set(groups[tr]) & set(groups[te])  # blocked: no block on both sides
        pred = make_classifier("knn").fit(d.X["raw_date"][tr], d.y[tr]).predict(d.X["raw_date"][te])
        ref_ba.append(balanced_accuracy_score(d.y[te], pred))
        ref_f1.append(f1_score(d.y[te], pred, average="macro"))
    row = table.set_index(["features", "classifier", "metric"])
    np.testing.assert_allclose(row.loc[("raw_date", "knn", "balanced_accuracy"), "folds"], ref_ba, rtol=1e-12)
    np.testing.assert_allclose(row.loc[("raw_date", "knn", "macro_f1"), "mean"], np.mean(ref_f1), rtol=1e-12)
    np.testing.assert_allclose(row.loc[("raw_date", "knn", "balanced_accuracy"), "std"], np.std(ref_ba), rtol=1e-12)
    # The raw bands separate the classes; the noise embedding is near chance (1/3).
    ba = table[table.metric == "balanced_accuracy"].set_index(["features", "classifier"])["mean"]
    assert ba[("raw_date", "logreg")] == 1.0 and ba[("raw_mean", "knn")] == 1.0
    assert ba[("embedding_date", "logreg")] < 0.55 and ba[("embedding_mean", "knn")] < 0.55
    r = ratios(table)
    assert r["logreg"] == pytest.approx(ba[("embedding_date", "logreg")] / 1.0)


def test_an_informative_embedding_scores_high(cube):
    table = run_probe(_embedding(cube, informative=True), cube, block_px=BLOCK, folds=3,
                      feature_sets=("embedding_date",), classifiers=("logreg",))
    assert table.set_index("metric").loc["balanced_accuracy", "mean"] > 0.95


def test_run_dir_outputs_and_report_section(cube, emb, tmp_path):
    table = run_probe(emb, cube, block_px=BLOCK, folds=3, classifiers=("knn",), run_dir=tmp_path)
    doc = json.loads((tmp_path / "evaluation" / "probe" / "probe.json").read_text())
    assert doc["settings"]["date"] == "2021-06-15" and doc["settings"]["block_px"] == BLOCK
    # synthetic-world class names only for a synthetic cube: codes here
    assert list(doc["settings"]["classes"]) == ["1", "2", "3"]
    assert sum(doc["settings"]["classes"].values()) == table["n_pixels"].iloc[0] == (H - 1) * W - 3
    assert len(doc["results"]) == len(table)
    csv = pd.read_csv(tmp_path / "evaluation" / "probe" / "probe.csv")
    assert len(csv) == len(table)
    assert (tmp_path / "evaluation" / "probe" / "probe.png").stat().st_size > 5000
    sec = json.loads((tmp_path / "sections" / "070_probe.json").read_text())
    assert sec["order"] == 70 and sec["title"] == "Land-cover probe"
    assert sec["figures"] == [{"path": "evaluation/probe/probe.png", "caption": sec["figures"][0]["caption"]}]
    assert len(sec["tables"][0]["rows"]) == len(DEFAULT_FEATURE_SETS)
    assert "knn" in sec["data"]["ratios"]


def test_cli_probe(cube, emb, tmp_path):
    from typer.testing import CliRunner

    from latentcube.cli import app

    cube_path = save_cube(cube, tmp_path / "c.zarr")
    emb.to_zarr(tmp_path / "e.zarr", zarr_format=2)
    res = CliRunner().invoke(app, ["evaluate", "probe", str(tmp_path / "e.zarr"), "--cube", str(cube_path),
                                   "--block-px", "4", "--folds", "3", "--date", "2021-07-15", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert "2021-07-15" in res.output and "raw_date" in res.output and "one-date embedding / raw bands" in res.output
    doc = json.loads((tmp_path / "run" / "evaluation" / "probe" / "probe.json").read_text())
    assert doc["settings"]["date"] == "2021-07-15" and doc["settings"]["folds"] == 3
    res = CliRunner().invoke(app, ["evaluate", "probe", str(tmp_path / "e.zarr"), "--cube", str(cube_path), "--labels", "x"])
    assert res.exit_code != 0 and "no label layer 'x'" in str(res.exception)  # a coordinate is no label layer


def test_cli_probe_protocols_windows_pca_and_seeds(cube, emb, tmp_path, monkeypatch):
    """The new options as a user runs them: relative paths from the run folder, one store per seed."""
    from typer.testing import CliRunner

    from latentcube.cli import app

    save_cube(cube, tmp_path / "c.zarr")
    for s in (0, 1):
        emb.to_zarr(tmp_path / f"e{s}.zarr", zarr_format=2)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [
        "evaluate", "probe", "e{seed}.zarr", "--cube", "c.zarr", "--block-px", "4", "--folds", "3",
        "--protocols", "seasonal,series", "--windows", "2021-01-01:2021-06-30,2021-07-01:2021-12-31",
        "--classifiers", "logreg", "--pca-fit", "c.zarr", "--pca-holdout", "0.3", "--seeds", "0,1", "--out", "run"])
    assert res.exit_code == 0, res.output
    assert "mean ± sd over 2 seeds" in res.output and "raw_series" in res.output
    assert "embedding_seasonal" in res.output  # row names whole on an 80-column terminal, not "embedding_season…"
    doc = json.loads((tmp_path / "run" / "evaluation" / "probe" / "probe.json").read_text())
    assert [r["features"] for r in doc["results"] if r["metric"] == "balanced_accuracy"] == [
        "embedding_seasonal", "raw_seasonal", "pca_seasonal", "embedding_series", "raw_series", "pca_series"]
    assert doc["settings"]["windows"] == [{"start": "2021-01-01", "end": "2021-06-30", "dates": 6},
                                          {"start": "2021-07-01", "end": "2021-12-31", "dates": 6}]
    assert doc["settings"]["seeds"] == [0, 1] and doc["settings"]["seeds_over"].startswith("models")
    assert doc["settings"]["pca"]["fit"] == "c.zarr, training strip of {'val': 0.3}"
    res = CliRunner().invoke(app, ["evaluate", "probe", "e{seed}.zarr", "--cube", "c.zarr", "--block-px", "4",
                                   "--folds", "3", "--classifiers", "logreg", "--seeds", "0,1", "--cv-repeats", "2"])
    assert res.exit_code == 0, res.output
    assert "mean ± sd over 2 seeds (each the mean of 2 CV shuffles)" in " ".join(res.output.split())
    n = {r["features"]: r["n_features"] for r in doc["results"]}
    assert n["raw_seasonal"] == 2 * 12 and n["pca_series"] == 12 * 3 and n["embedding_seasonal"] == 2 * 3
    res = CliRunner().invoke(app, ["evaluate", "probe", "e0.zarr", "--cube", "c.zarr", "--protocols", "weekly"])
    assert res.exit_code != 0 and "unknown feature sets ['embedding_weekly'" in str(res.exception)
    res = CliRunner().invoke(app, ["evaluate", "probe", "e0.zarr", "--cube", "c.zarr", "--block-px", "4", "--folds", "3",
                                   "--classifiers", "logreg", "--protocols", "seasonal", "--baseline-sensors", "s2",
                                   "--out", "run_s2"])
    assert res.exit_code == 0, res.output
    assert "raw bands: B02 B03 B04 B05 B06 B07 B08 B8A B11 B12; PCA-3 of B02" in " ".join(res.output.split())
    doc = json.loads((tmp_path / "run_s2" / "evaluation" / "probe" / "probe.json").read_text())
    n = {r["features"]: r["n_features"] for r in doc["results"]}
    assert n["raw_seasonal"] == 3 * 10 and n["pca_seasonal"] == 3 * 3 and len(doc["settings"]["raw_bands"]) == 10


def test_real_probe_benchmark_skips_cleanly_without_the_chip(tmp_path):
    """benchmarks/real_probe.py from another folder: without the real data it says so and exits 0."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "real_probe.py"
    env = {**os.environ, "LATENTCUBE_SHARED_DATA": str(tmp_path / "absent")}
    res = subprocess.run([sys.executable, str(script), "--seeds", "0", "--work", "w"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "real_probe: skipped, the WorldCereal chip is absent" in res.stdout and str(tmp_path / "absent") in res.stdout
    assert not (tmp_path / "w").exists()  # nothing written
    res = subprocess.run([sys.executable, str(script), "--cv-repeats", "0"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "--cv-repeats must be >= 1, got 0. Fix: pass 1" in res.stderr


def test_real_probe_benchmark_names_a_bad_chip_folder(tmp_path):
    """--chip / --probe-chip: a folder that is missing or lacks the WorldCereal files is an error naming it."""
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "real_probe.py"
    env = {**os.environ, "LATENTCUBE_SHARED_DATA": str(tmp_path / "absent")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), "--seeds", "0", "--work", "w", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    res = run("--chip", "nowhere")
    assert res.returncode == 1 and "--chip nowhere does not exist. Fix: pass a WorldCereal chip folder" in res.stderr
    (tmp_path / "empty").mkdir()
    res = run("--chip", "empty", "--probe-chip", "nowhere")
    assert res.returncode == 1 and "--probe-chip nowhere is not a folder" in res.stderr
    res = run("--chip", "empty", "--halves", "--probe-chip", "empty")
    assert res.returncode == 1 and "--halves probes the south half of --chip; it cannot be combined with --probe-chip" in res.stderr
    res = run("--chip", "empty")  # relative to the working directory, as a user types it
    assert res.returncode == 1 and f"expected one OUTPUT_POLY-110_*.nc in {tmp_path / 'empty'}, found 0" in res.stderr


@pytest.mark.slow
def test_real_probe_halves_trains_on_one_half_and_probes_the_other(tmp_path, shared_data):
    """--halves end to end, as a user runs it (a relative --chip folder, another working directory): the
    chip's north half trains the three stages (1 epoch), its south half is embedded, probed and scored
    (the --probe-chip path); the stores hold the south half's pixels and the runs name the north half's cube."""
    import os
    import shutil
    import subprocess
    import sys

    wc = shared_data / "worldcereal_chip_31UES_2018_2019"
    if not wc.exists():
        pytest.skip(f"WorldCereal chip {wc} absent")
    shutil.copytree(wc, tmp_path / "my chip")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "real_probe.py"
    res = subprocess.run([sys.executable, str(script), "--chip", "my chip", "--halves", "--seeds", "0", "--epochs", "1",
                          "--work", "w", "--json", "rp.json"], cwd=tmp_path,
                         env={**os.environ, "LATENTCUBE_SHARED_DATA": str(shared_data)}, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Models and PCA baselines fitted on half_north; probe and MAE on half_south (unseen)." in res.stdout
    assert "S2 centre-pixel MAE on half_south (unseen)" in res.stdout
    doc = json.loads((tmp_path / "rp.json").read_text())
    assert doc["probe_chip"] == str(tmp_path / "w" / "half_south") and doc["seeds"] == [0]
    names = {(r["labels"], r["protocol"], r["source"]) for r in doc["probe"]}
    for labels in ("CT", "LC"):
        for protocol in ("seasonal", "one date"):
            assert {(labels, protocol, s) for s in ("embedding", "raw", "pca", "raw_s2only", "pca_s2only")} <= names
    assert all(0 < r["mean"] <= 1 for r in doc["probe"])
    mae = doc["s2_centre_mae_held_out"]["0"]
    south = xr.open_zarr(tmp_path / "w" / "probe_half_south.zarr")
    assert south.sizes["y"] == 32 and 0 < mae["s2_pixel_dates"] <= south.sizes["time"] * 32 * 64
    assert 0 < mae["s2_pca9"] < mae["fused_pca7_s2only"] and mae["s2_model"] > 0  # PCA-9 reconstructs better than PCA-7
    emb = xr.open_zarr(tmp_path / "w" / "seed0" / "emb_fused_probe_half_south.zarr")
    np.testing.assert_array_equal(emb["y"].values, south["y"].values)  # the unseen half was embedded
    north = xr.open_zarr(tmp_path / "w" / "chip.zarr")
    assert north.sizes["y"] == 32 and not np.isin(north["y"].values, south["y"].values).any()  # never seen in training
    with xr.open_dataset(next(wc.glob("S2_L2A_10m_*.nc"))) as full:  # together, the halves are the whole chip
        np.testing.assert_array_equal(np.sort(np.r_[north["y"].values, south["y"].values]), np.sort(full["y"].values))
    card = json.loads((tmp_path / "w" / "seed0" / "runs" / "fusion" / "model_card.json").read_text())
    assert [(c["path"], c["size_px"]) for c in card["data"]["cubes"]] == [(str(tmp_path / "w" / "chip.zarr"), [32, 64])]


# ---------------------------------------------------------------------------- trained models

CHIP = "worldcereal_chip_31UES_2018_2019"
SMALL = SMALL_MODEL


def _train_s2(cubes: list[Path], splits: dict | None, out: Path, *, steps: int, model: dict | None = None,
              sampling: dict | None = None, val_batches: int = 1, spatial_split: dict | None = None) -> Path:
    from latentcube.train import load_train_config, run_training

    base = load_train_config(Path(__file__).resolve().parents[1] / "src" / "latentcube" / "configs" / "demo" / "s2.yaml")
    cfg = replace(
        base, out_dir=str(out), model={**base.model, **(model or {})},
        data=replace(base.data, cubes=tuple(str(c) for c in cubes), splits=splits, spatial_split=spatial_split,
                     sampling={**base.data.sampling, **(sampling or {})}),
        trainer=replace(base.trainer, max_epochs=10_000, max_steps=steps, enable_progress_bar=False,
                             limit_val_batches=val_batches),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(run_training(cfg, test=False)["model"])


@pytest.mark.slow
def test_probe_on_the_worldcereal_chip(tmp_path, one_torch_thread, shared_data):
    """Issue 8: the probe runs on the real WorldCereal chip with its LC labels (a model trained on the chip)."""
    wc = shared_data / CHIP
    if not wc.exists():
        pytest.skip(f"WorldCereal chip {wc} absent")
    from latentcube.embed import embed_cube
    from latentcube.sources.importers import import_cube

    def one(pattern: str) -> str:
        return glob.glob(str(wc / pattern))[0]

    labels = one("OUTPUT_POLY-110_*.nc")
    ds = import_cube([one("S2_L2A_10m_*.nc"), one("S2_L2A_20m_*.nc")], one("S1_GRD-*.nc"), preset="worldcereal",
                     layers={"landcover": (labels, "LC"), "croptype": (labels, "CT")})
    # Train on the chip itself (a spatial holdout): the west half for training, the east half for validation.
    cube_path = save_cube(ds, tmp_path / "chip.zarr")
    t0 = time.time()
    # 25 steps: the PCA warm start sets the code; the probe scores at 25 and 150 steps agree to 0.005
    # (benchmarks/RESULTS.md, Test loop).
    model = _train_s2([cube_path], None, tmp_path / "s2", steps=25, model=SMALL, sampling={"space_stride": 4},
                      spatial_split={"val": 0.5})
    emb = embed_cube(cube_path, model, tmp_path / "emb.zarr", scheduler="synchronous", progress=False)
    t_model = time.time() - t0
    table = run_probe(emb, cube_path, labels="landcover", block_px=8, folds=5,
                      feature_sets=("embedding_date", "embedding_mean", "raw_date", "raw_mean"), run_dir=tmp_path)
    s = table.attrs["probe"]
    ba = table[table.metric == "balanced_accuracy"].set_index(["features", "classifier"])
    print(f"\nWorldCereal chip LC probe ({s['n_pixels']} px, classes {s['classes']}, date {s['date']}, "
          f"train+embed {t_model:.0f} s):")
    for (fs, clf), r in ba.iterrows():
        print(f"  {fs:16s} {clf:7s} balanced accuracy {r['mean']:.3f} ± {r['std']:.3f}")
    assert s["classes"] == {"11": 2338, "13": 1387, "99": 371}
    assert s["year"] == 2019 and s["date"].startswith("2019-")
    chance = 1 / 3
    assert ba.loc[("raw_date", "logreg"), "mean"] > chance + 0.15
    assert ba.loc[("raw_mean", "logreg"), "mean"] > chance + 0.15
    assert (ba["mean"] > 0).all() and (ba["mean"] <= 1).all()
    assert ba.loc[("embedding_mean", "knn"), "mean"] > chance + 0.1
    # Crop type works the same way (0 = unlabelled; rare crops are dropped with a warning).
    with pytest.warns(UserWarning, match="dropped classes"):
        ct = run_probe(emb, cube_path, labels="croptype", block_px=8, folds=3, feature_sets=("raw_mean",),
                       classifiers=("logreg",), min_samples=100)
    assert ct.attrs["probe"]["n_pixels"] < 4096 - 371


@pytest.mark.slow
def test_issue7_one_date_embedding_reaches_90_percent_of_raw_bands(tmp_path, one_torch_thread):
    """Issue 7 acceptance: on the synthetic world, a probe on one date's embeddings reaches >= 90 % of the
    same probe on the raw 12 bands (same pixels, same blocked folds). The S2 autoencoder (9-d) is trained
    briefly here; the fused embedding needs three stages, see docs/evaluation.md for its figures."""
    from latentcube.embed import embed_cube
    from latentcube.synthetic import make_world, write_world

    write_world(make_world(seed=0, scene_size=64, n_scenes=3, n_towers=0), tmp_path / "world")
    cubes = [tmp_path / "world" / f"scene_00{i}.zarr" for i in range(3)]
    t0 = time.time()
    # 25 steps (3 epochs): the ratios at 25 and 150 steps agree to 0.003 (benchmarks/RESULTS.md, Test loop).
    model = _train_s2(cubes, {"train": ("scene_000", "scene_001"), "val": ("scene_002",)}, tmp_path / "s2", steps=25)
    t_train = time.time() - t0
    emb = embed_cube(cubes[2], model, tmp_path / "emb.zarr", scheduler="synchronous", progress=False)
    table = run_probe(emb, cubes[2], feature_sets=("embedding_date", "raw_date"), block_px=16, folds=5)
    r = ratios(table)
    ba = table[table.metric == "balanced_accuracy"].set_index(["features", "classifier"])
    print(f"\nissue 7 probe (S2 autoencoder, {t_train:.0f} s training, date {table.attrs['probe']['date']}):")
    for (fs, clf), row in ba.iterrows():
        print(f"  {fs:16s} {clf:7s} balanced accuracy {row['mean']:.3f} ± {row['std']:.3f}")
    print(f"  ratios one-date embedding / raw 12 bands: {r}")
    # The issue asks for "logistic regression or k-NN" >= 90 %. The demo config starts from the PCA warm
    # start, whose trailing coordinates are near-constant: per-feature standardisation inflates them and
    # the k-NN drops (docs/training.md, "Linear warm start"), while logistic regression is unaffected.
    # So: one of the two reaches the target, and neither probe collapses.
    assert max(r["logreg"], r["knn"]) >= 0.90, r
    assert min(r["logreg"], r["knn"]) >= 0.75, r

    # Issue 7, second half: water, urban and forest get clearly different mean colours in the PCA map
    # (first three components over the whole cube, robust 2-98 % scaling) on the probe's date.
    from latentcube.evaluate.maps import class_colours, fit_pca, pca_rgb

    landcover = xr.open_zarr(cubes[2])["landcover"].values
    groups = np.select([np.isin(landcover, (1, 2)), landcover == 5, landcover == 6], [1, 2, 3], 0)
    rgb = pca_rgb(emb, date=table.attrs["probe"]["date"], fit=fit_pca(emb, progress=False), nan_colour=None)
    colours = class_colours(rgb, groups)
    names = {1: "forest", 2: "urban", 3: "water"}
    assert set(colours) >= set(names), f"scene lacks a class: {sorted(colours)}"
    dists = {(names[a], names[b]): float(np.linalg.norm(colours[a] - colours[b])) for a, b in ((1, 2), (1, 3), (2, 3))}
    print(f"  PCA-RGB distances between class means (0..1.73): {dists}")
    assert min(dists.values()) > 0.2, dists

"""Preprocessing: dB conversion, S1 smoothing (by hand, NaN, per orbit), normalisation round trips,
S1-to-S2 date matching on hand-made date lists."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from latentcube.constants import S2_BANDS
from latentcube.cube import new_cube, validate_cube
from latentcube.preprocess import (
    DEFAULT_S1_BOUNDS_DB,
    Normalization,
    db_to_linear,
    fit_normalization,
    linear_to_db,
    match_s1_to_s2,
    smooth_s1,
)


def cube(s1_series=None, s1_dates=None, s2_dates=None, orbit=None, ny=2, nx=2) -> xr.Dataset:
    s2_dates = pd.to_datetime(["2020-01-01", "2020-01-06"] if s2_dates is None else list(s2_dates))
    s1_dates = pd.to_datetime(["2020-01-02", "2020-01-08", "2020-01-14"] if s1_dates is None else list(s1_dates))
    rng = np.random.default_rng(0)
    s1 = np.empty((len(s1_dates), 2, ny, nx), "float32")
    series = np.asarray(s1_series if s1_series is not None else np.linspace(0.01, 0.1, len(s1_dates)), "float32")
    s1[:] = series[:, None, None, None]
    s1[:, 1] *= 0.2  # VH weaker than VV
    ds = new_cube(
        s2=(rng.random((len(s2_dates), len(S2_BANDS), ny, nx)) * 0.5).astype("float32"),
        time=s2_dates, y=5_000_005.0 - 10 * np.arange(ny), x=300_005.0 + 10 * np.arange(nx), crs="EPSG:32633",
        s1=s1, time_s1=s1_dates,
    )
    if orbit is not None:
        ds = ds.assign_coords(orbit_state=("time_s1", list(orbit)))
    return ds


# --------------------------------------------------------------------------------------------- dB


def test_db_linear_known_values_and_nan():
    np.testing.assert_allclose(db_to_linear(np.array([0.0, -10.0, 10.0, -20.0])), [1.0, 0.1, 10.0, 0.01])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero / invalid warnings
        out = linear_to_db(np.array([1.0, 0.1, 0.0, -0.5, np.nan]))
    np.testing.assert_allclose(out[:2], [0.0, -10.0])
    assert np.isnan(out[2:]).all()
    assert np.isnan(db_to_linear(np.nan))


@given(st.lists(st.floats(-60, 30), min_size=1, max_size=20))
@settings(max_examples=50, deadline=None)
def test_db_round_trip(values):
    v = np.array(values)
    np.testing.assert_allclose(linear_to_db(db_to_linear(v)), v, atol=1e-9)


# --------------------------------------------------------------------------------------- smoothing


def test_three_frame_rolling_mean_by_hand_with_nan():
    dates = pd.date_range("2020-01-01", periods=5, freq="6D")
    ds = cube([0.1, 0.3, np.nan, 0.5, 0.2], dates)
    got = smooth_s1(ds)["s1"].values[:, 0, 0, 0]
    # centred windows of valid frames: [0.1,0.3] [0.1,0.3,-] [0.3,-,0.5] [-,0.5,0.2] [0.5,0.2]
    expected = [0.2, 0.2, 0.4, 0.35, 0.35]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    strict = smooth_s1(ds, min_periods=2)["s1"].values[:, 0, 0, 0]
    np.testing.assert_allclose(strict, expected, rtol=1e-6)  # every window has >= 2 valid frames
    # min_periods=3: only windows with three valid frames; the NaN frame breaks the windows at 1-3 and
    # the edges have only two frames -> every output is NaN
    assert np.isnan(smooth_s1(ds, min_periods=3)["s1"].values[:, 0, 0, 0]).all()
    assert ds["s1"].values[0, 0, 0, 0] == pytest.approx(0.1)  # input untouched
    validate_cube(smooth_s1(ds))


def test_smoothing_is_in_linear_scale_not_db():
    ds = cube([1.0, 0.01, 1.0], pd.date_range("2020-01-01", periods=3, freq="6D"))
    # linear mean of (1, 0.01, 1) = 0.67; a dB mean would give 10^((0-20+0)/30) = 0.215
    assert smooth_s1(ds)["s1"].values[1, 0, 0, 0] == pytest.approx(2.01 / 3, rel=1e-6)


def test_per_orbit_smoothing_keeps_orbits_apart():
    dates = pd.date_range("2020-01-01", periods=6, freq="3D")
    ds = cube([0.1, 1.0, 0.2, 2.0, 0.3, 3.0], dates, orbit=["ascending", "descending"] * 3)
    got = smooth_s1(ds)["s1"].values[:, 0, 0, 0]
    # ascending frames 0.1, 0.2, 0.3 -> 0.15, 0.2, 0.25 ; descending 1, 2, 3 -> 1.5, 2, 2.5
    np.testing.assert_allclose(got, [0.15, 1.5, 0.2, 2.0, 0.25, 2.5], rtol=1e-6)
    mixed = smooth_s1(ds, by_orbit=False)["s1"].values[:, 0, 0, 0]
    assert mixed[1] == pytest.approx((0.1 + 1.0 + 0.2) / 3, rel=1e-6)
    assert list(smooth_s1(ds)["orbit_state"].values) == ["ascending", "descending"] * 3


def test_smoothing_argument_errors():
    ds = cube()
    with pytest.raises(ValueError, match="positive odd number"):
        smooth_s1(ds, window=4)
    with pytest.raises(ValueError, match="has no 's1'"):
        smooth_s1(ds.drop_vars(["s1"]))


# ----------------------------------------------------------------------------------- normalisation


def test_default_normalization_known_values():
    norm = Normalization()
    ds = cube([1.0, 0.1, 10 ** -2.5])
    out = norm.normalize(ds)
    # S2 bounds 0..1: identity
    np.testing.assert_allclose(out["s2"].values, ds["s2"].values, rtol=1e-6)
    # VV: 0 dB -> (0 + 25) / 25 = 1 ; -10 dB -> 0.6 ; -25 dB -> 0
    np.testing.assert_allclose(out["s1"].sel(band_s1="VV").values[:, 0, 0], [1.0, 0.6, 0.0], atol=1e-6)
    # VH = 0.2 x VV: 10log10(0.2) = -6.9897 dB -> (-6.9897 + 32) / 27 = 0.92631
    assert out["s1"].sel(band_s1="VH").values[0, 0, 0] == pytest.approx((10 * np.log10(0.2) + 32) / 27, rel=1e-5)
    assert Normalization.from_cube(out) == norm
    with pytest.raises(ValueError, match="already normalised"):
        norm.normalize(out)
    back = norm.denormalize(out)
    np.testing.assert_allclose(back["s1"].values, ds["s1"].values, rtol=1e-5)
    assert "latentcube_normalization" not in back.attrs


@given(
    s2=st.lists(st.floats(-0.1, 1.5, allow_nan=False), min_size=10, max_size=10),
    s1_db=st.lists(st.floats(-40, 10), min_size=2, max_size=2),
    lo=st.floats(-40, -5),
    width=st.floats(1, 40),
)
@settings(max_examples=60, deadline=None)
def test_normalize_denormalize_round_trip(s2, s1_db, lo, width):
    norm = Normalization(s1_db={"VV": (lo, lo + width), "VH": DEFAULT_S1_BOUNDS_DB["VH"]})
    x2 = np.array(s2, "float32").reshape(1, 10, 1, 1)
    x1 = db_to_linear(np.array(s1_db)).astype("float32").reshape(1, 2, 1, 1)
    np.testing.assert_allclose(norm.denormalize_array(norm.normalize_array(x2, S2_BANDS, "s2"), S2_BANDS, "s2"), x2, atol=1e-6)
    back = norm.denormalize_array(norm.normalize_array(x1, ["VV", "VH"], "s1"), ["VV", "VH"], "s1")
    np.testing.assert_allclose(linear_to_db(back), linear_to_db(x1), atol=1e-4)  # float32: ~1e-5 dB
    assert Normalization.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm


def test_normalization_validation_clip_and_fit():
    with pytest.raises(ValueError, match="need finite lo < hi"):
        Normalization(s1_db={"VV": (0.0, -25.0)})
    with pytest.raises(ValueError, match=r"no s1 normalisation bounds for bands \['VH'\]"):
        Normalization(s1_db={"VV": (-25.0, 0.0)}).normalize(cube())
    with pytest.raises(ValueError, match="not a latentcube Normalization"):
        Normalization.from_dict({"s2": {}})
    clipped = Normalization(clip=True).normalize_array(np.array([[-0.5, 2.0]]), ["B02", "B03"], "s2")
    np.testing.assert_array_equal(clipped, [[0.0, 1.0]])
    ds = cube(np.linspace(0.001, 1.0, 50), pd.date_range("2020-01-01", periods=50, freq="6D"))
    fitted = fit_normalization(ds, percentiles=(0, 100))
    # VV spans 0.001..1 linear = -30..0 dB
    assert fitted.s1_db["VV"] == pytest.approx((-30.0, 0.0), abs=1e-4)
    assert 0.0 <= fitted.s2["B02"][0] < fitted.s2["B02"][1] <= 0.5


# ------------------------------------------------------------------------------------------ matching


def test_match_s1_to_s2_by_hand():
    s2 = ["2020-01-01", "2020-01-05", "2020-01-10", "2020-01-30"]
    s1 = ["2020-01-03", "2020-01-07", "2020-01-16"]
    ds = cube([0.01, 0.02, 0.03], s1, s2)
    m = match_s1_to_s2(ds, max_gap_days=6)
    # 01-01: nearest 01-03 (+2) ; 01-05: 01-03 and 01-07 both 2 days away -> tie to the earlier 01-03
    # 01-10: 01-07 (-3) beats 01-16 (+6) ; 01-30: nearest 01-16 is 14 days away -> no match
    assert [str(t)[:10] if not pd.isna(t) else None for t in m["s1_time"].values] == ["2020-01-03", "2020-01-03", "2020-01-07", None]
    np.testing.assert_array_equal(m["s1_gap_days"].values, [2.0, -2.0, -3.0, np.nan])
    np.testing.assert_allclose(m.sel(band_s1="VV").values[:, 0, 0], [0.01, 0.01, 0.02, np.nan], rtol=1e-6)
    assert m.dims == ("time", "band_s1", "y", "x") and m.dtype == np.float32
    assert list(m["time"].values) == list(ds["time"].values)
    # the gap limit is inclusive: 6 days matches, 5.9 does not
    ds2 = cube([0.01, 0.02, 0.03], ["2020-01-07", "2020-02-01", "2020-03-01"], ["2020-01-01", "2020-01-02"])
    assert match_s1_to_s2(ds2, max_gap_days=6)["s1_gap_days"].values.tolist() == [6.0, 5.0]
    assert np.isnan(match_s1_to_s2(ds2, max_gap_days=5.9)["s1_gap_days"].values[0])


def test_normalize_is_lazy_on_dask_cubes():
    ds = cube([1.0, 0.1, 0.0]).chunk({"time_s1": 1})
    out = Normalization().normalize(ds)
    assert out["s1"].chunks is not None  # still a Dask graph, nothing computed
    # linear 0 is not a power: NaN after normalisation, no warning
    vv = out["s1"].sel(band_s1="VV").values[:, 0, 0]
    np.testing.assert_allclose(vv[:2], [1.0, 0.6], atol=1e-6)
    assert np.isnan(vv[2])


# ------------------------------------------------------------------------ impossible values (issue 27)


def test_impossible_values_become_nan_per_pixel_date_counted_and_logged_once(caplog):
    rng = np.random.default_rng(1)
    clean = (rng.random((4, len(S2_BANDS), 3, 3)) * 0.5).astype("float32")
    bad = clean.copy()
    bad[0, 2, 0, 0] = 1e30  # one band spoils its pixel-date
    bad[1, :, 1, 1] = np.inf
    bad[2, 5, 2, 2] = -np.inf
    bad[3, 0, 0, 1] = 2.5  # above the physical bound 2.0
    bad[3, 1, 0, 2] = 2.0  # on the bound: kept
    bad[3, 1, 1, 0] = np.nan  # a cloud is missing, not impossible: not counted
    norm = Normalization()
    with caplog.at_level("DEBUG", logger="latentcube.preprocess"):
        out = norm.normalize_array(bad, list(S2_BANDS), "s2")
        norm.normalize_array(bad, list(S2_BANDS), "s2")
    spoiled = np.zeros((4, 1, 3, 3), bool)
    spoiled[0, 0, 0, 0] = spoiled[1, 0, 1, 1] = spoiled[2, 0, 2, 2] = spoiled[3, 0, 0, 1] = True
    assert np.isnan(out).sum() == 4 * len(S2_BANDS) + 1  # four pixel-dates, every band, and the cloud
    assert np.isnan(out[np.broadcast_to(spoiled, out.shape)]).all()
    expected = Normalization().normalize_array(np.where(spoiled, np.nan, bad), list(S2_BANDS), "s2")
    np.testing.assert_array_equal(out, expected)  # everything else exactly as before
    assert out[3, 1, 0, 2] == pytest.approx(2.0)
    assert norm.masked == {"s2": 8}
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels[0][0] == "WARNING" and "4 of 36 pixel-dates" in levels[0][1] and "Fix:" in levels[0][1]
    assert levels[1][0] == "DEBUG" and "(8 so far)" in levels[1][1]
    assert Normalization() == norm and "masked" not in norm.to_dict()  # a tally, not a setting


def test_impossible_backscatter_becomes_nan_in_arrays_and_lazy_cubes():
    ds = cube(ny=2, nx=2)
    s1 = ds["s1"].values.copy()
    s1[0, 0, 0, 0] = 1e30  # VV beyond +40 dB
    s1[1, 1, 1, 1] = -0.01  # negative power
    s1[2, :, 0, 1] = 5e3  # bright but possible (+37 dB): kept
    norm = Normalization()
    out = norm.normalize_array(s1, ["VV", "VH"], "s1")
    assert np.isnan(out[0, :, 0, 0]).all() and np.isnan(out[1, :, 1, 1]).all()
    assert np.isfinite(out[2, :, 0, 1]).all() and np.isfinite(out[0, :, 1, 1]).all()
    assert norm.masked == {"s1": 2}
    lazy = Normalization().normalize(ds.assign(s1=(ds["s1"].dims, s1)).chunk({"time_s1": 1}))
    np.testing.assert_allclose(lazy["s1"].values, out, rtol=1e-6)  # same NaN layout (the xarray path is float32)


@pytest.mark.slow  # two embeddings of a 32 x 32 px cube (~25 s on 2 cores)
def test_an_extreme_patch_does_not_spread_nan_in_the_embedding(tmp_path, one_torch_thread):
    """Patches of 1e30 and +inf (4 x 4 px x 4 dates each) embed exactly as the same pixel-dates set NaN:
    no other pixel or date loses its embedding (they used to turn ~1,100 pixel-dates NaN)."""
    from dataclasses import replace

    import torch

    from latentcube.cube import save_cube
    from latentcube.embed import embed_cube
    from latentcube.nn import SensorAutoencoder, s2_config
    from latentcube.train import save_model

    torch.manual_seed(0)
    small = dict(widths=(8, 12, 16), multiscale_branch_ch=4, d_model=16, n_heads=2, ffn_dim=16, decoder_d_model=16,
                 decoder_ffn_dim=16, decoder_widths=(16, 8, 8), decoder_branch_ch=4)
    model = save_model(tmp_path / "s2.pt", SensorAutoencoder(replace(s2_config(), **small)).eval(),
                       normalization=Normalization())
    rng = np.random.default_rng(0)
    nt, n = 16, 32  # the patches stay under 1 % of the values: more would be refused, not masked
    s2 = (rng.random((nt, len(S2_BANDS), n, n)) * 0.4 + 0.02).astype("float32")
    huge = (slice(5, 9), slice(None), slice(2, 6), slice(2, 6))  # 4 dates x 4 x 4 px, every band
    inf = (slice(3, 7), slice(None), slice(15, 19), slice(15, 19))  # across the 16-px block edges

    def embed(name: str, huge_value: float, inf_value: float) -> np.ndarray:
        values = s2.copy()
        values[huge], values[inf] = huge_value, inf_value
        ds = new_cube(s2=values, time=pd.date_range("2021-04-01", periods=nt, freq="5D"),
                      y=5_000_000.0 - 10 * np.arange(n), x=500_000.0 + 10 * np.arange(n), crs="EPSG:32632")
        store = embed_cube(save_cube(ds, tmp_path / f"{name}.zarr"), model, tmp_path / f"{name}-emb.zarr",
                           block_px=16, scheduler="synchronous", progress=False)
        return xr.open_zarr(store)["embedding"].transpose("time", "feature", "y", "x").values

    reference = embed("nan", np.nan, np.nan)
    assert np.isnan(reference).any(axis=1).sum() == 2 * 4 * 4 * 4  # only the patches' own pixel-dates
    np.testing.assert_array_equal(embed("bad", 1e30, np.inf), reference)

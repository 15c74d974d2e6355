"""GPP evaluation (issue 8): windowing, daily interpolation, metrics, climatology, footprint means, the
cropped site embedding against the whole-cube embedding, FLUXNET files of the synthetic world, and a
small end-to-end run."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from sklearn.metrics import mean_squared_error, r2_score

from latentcube.evaluate.gpp import (
    GPPConfig,
    GPPError,
    GPPWarning,
    crop_window,
    doy_climatology,
    doy_index,
    embed_site,
    evaluate_gpp,
    fit_regressor,
    footprint_weights,
    make_windows,
    metrics,
    nrmse,
    predict_daily,
    r2,
    read_sites,
    rmse,
    site_mean,
    to_daily,
    window_starts,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread: on shared cores torch's spinning thread pool is much slower under contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------- windowing


def test_window_starts_counts_and_end_window():
    assert window_starts(100, 90, 10).tolist() == [0, 10]  # 10 + 90 = 100: the end is covered
    assert window_starts(105, 90, 10).tolist() == [0, 10, 15]  # + one window aligned to the end
    assert window_starts(90, 90, 10).tolist() == [0]
    assert window_starts(89, 90, 10).tolist() == []
    s = window_starts(1461, 90, 10)  # four years of days
    assert len(s) == (1461 - 90) // 10 + 2 and s[-1] == 1461 - 90 and s[-2] == 1370
    with pytest.raises(GPPError, match="must be >= 1"):
        window_starts(10, 0, 1)


def test_make_windows_values():
    x = np.arange(12).reshape(6, 2)  # day d has features (2d, 2d + 1)
    w = make_windows(x, np.array([0, 2, 3]), 3)
    assert w.shape == (3, 3, 2)
    np.testing.assert_array_equal(w[1], [[4, 5], [6, 7], [8, 9]])
    np.testing.assert_array_equal(w[2, :, 0], [6, 8, 10])


class _Identity(torch.nn.Module):
    """Predicts feature 0 of every day, plus the window's start value: reveals which windows were averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., 0] + x[:, :1, 1]


def test_predict_daily_averages_overlapping_windows():
    n, length, stride = 13, 6, 4  # starts 0, 4 and the end window 7
    x = np.zeros((n, 2), "float32")
    x[:, 0] = np.arange(n)
    x[:, 1] = np.arange(n) * 100  # the start day's value is added to the whole window
    out = predict_daily(_Identity(), x, length, stride)
    # day d: mean over covering windows s of (d + 100 s): windows {0} for d<4, {0,4} for 4..5, {4} 6,
    # {4,7} 7..9, {7} 10..12
    cover = {d: [s for s in (0, 4, 7) if s <= d < s + length] for d in range(n)}
    expected = [d + 100 * np.mean(cover[d]) for d in range(n)]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert np.isnan(predict_daily(_Identity(), x[:5], length, stride)).all()  # shorter than one window


# ------------------------------------------------------------------------------- interpolation


def test_to_daily_linear_with_max_gap():
    base = pd.Timestamp("2020-01-01")
    times = base + pd.to_timedelta([0, 4, 20, 22, 22], "D") + pd.Timedelta(hours=10, minutes=30)
    vals = np.array([0.0, 4.0, 20.0, 21.0, 23.0])  # two acquisitions on day 22: averaged to 22
    days = pd.date_range(base - pd.Timedelta(days=1), periods=26, freq="D")  # day -1 .. 24
    out = to_daily(times, vals, days, max_gap_days=10)
    assert out.shape == (26, 1) and out.dtype == np.float32
    d = np.arange(-1, 25)
    expected = np.full(26, np.nan)
    expected[(d >= 0) & (d <= 4)] = d[(d >= 0) & (d <= 4)]  # gap of 4 days: interpolated
    expected[d == 20] = 20  # observed days inside the rule keep their value; 5..19 lie in a 16-day gap
    expected[d == 21] = 21
    expected[d == 22] = 22
    np.testing.assert_allclose(out[:, 0], expected)  # NaN before the first and after the last valid day too
    # the same data with a rule allowing 16-day gaps: day 12 halfway between 4 and 20
    wide = to_daily(times, vals, days, max_gap_days=16)
    assert wide[d == 12, 0][0] == pytest.approx(12.0)
    assert np.isnan(to_daily(times, vals, days, max_gap_days=15)[d == 12, 0][0])


def test_to_daily_per_feature_nan():
    base = pd.Timestamp("2021-06-01")
    times = base + pd.to_timedelta([0, 2, 4], "D")
    vals = np.array([[1.0, 10.0], [np.nan, 30.0], [3.0, np.nan]])
    out = to_daily(times, vals, pd.date_range(base, periods=5, freq="D"), max_gap_days=30)
    np.testing.assert_allclose(out[:, 0], [1, 1.5, 2, 2.5, 3])  # the NaN date is skipped for feature 0
    np.testing.assert_allclose(out[:, 1], [10, 20, 30, np.nan, np.nan], equal_nan=True)  # no extrapolation


# ------------------------------------------------------------------------------------- metrics


def test_metrics_against_sklearn_and_hand_values():
    obs = np.array([1.0, 2.0, 4.0, 8.0, np.nan, 3.0])
    pred = np.array([1.5, 1.0, 4.0, 6.0, 2.0, np.nan])
    o, p = obs[:4], pred[:4]  # NaN on either side drops the pair
    assert rmse(obs, pred) == pytest.approx(np.sqrt(mean_squared_error(o, p)))
    assert rmse(obs, pred) == pytest.approx(np.sqrt((0.25 + 1 + 0 + 4) / 4))
    assert r2(obs, pred) == pytest.approx(r2_score(o, p))
    assert nrmse(obs, pred) == pytest.approx(np.sqrt(5.25 / 4) / (8 - 1))  # RMSE / observed range
    m = metrics(obs, pred)
    assert m["n"] == 4 and m["nrmse"] == pytest.approx(nrmse(o, p))
    assert np.isnan(nrmse([2.0, 2.0], [1.0, 3.0]))  # no range
    with pytest.raises(GPPError, match="3 observations for 2 predictions"):
        rmse([1, 2, 3], [1, 2])


# ---------------------------------------------------------------------------------- climatology


def test_doy_index_leap_years():
    d = pd.to_datetime(["2019-01-01", "2019-02-28", "2019-03-01", "2019-12-31",
                        "2020-02-28", "2020-02-29", "2020-03-01", "2020-12-31"])
    assert doy_index(d).tolist() == [0, 58, 59, 364, 58, 58, 59, 364]


def test_doy_climatology_hand_case():
    dates = pd.to_datetime(["2018-01-01", "2019-01-01", "2018-01-02", "2018-12-31", "2019-07-01"])
    gpp = np.array([1.0, 3.0, 5.0, 7.0, np.nan])
    raw = doy_climatology(dates, gpp, smooth_days=1)
    assert raw[0] == pytest.approx(2.0) and raw[1] == pytest.approx(5.0) and raw[364] == pytest.approx(7.0)
    assert np.isnan(raw[181]) and np.isfinite(raw).sum() == 3  # the NaN observation adds nothing
    sm = doy_climatology(dates, gpp, smooth_days=3)
    # circular 3-day window: slot 0 sees slots 364, 0, 1 -> (7 + 1 + 3 + 5) / 4 observations
    assert sm[0] == pytest.approx(16 / 4)
    assert sm[364] == pytest.approx((7 + 1 + 3) / 3)  # slots 363 (none), 364, 0
    assert sm[2] == pytest.approx(5.0) and np.isnan(sm[3])


# ------------------------------------------------------------------------------------ footprint


def test_site_mean_radius_weights_and_nan():
    v = np.arange(9, dtype="float64").reshape(3, 3)
    assert site_mean(v) == pytest.approx(4.0)
    w = footprint_weights(1, "gaussian", sigma_px=1.0)
    assert w.sum() == pytest.approx(1.0) and w[1, 1] / w[0, 0] == pytest.approx(np.exp(1.0))
    assert site_mean(v, w) == pytest.approx(4.0)  # symmetric weights on a linear field
    vn = v.copy()
    vn[0, :] = np.nan  # 3 of 9 pixels invalid -> mean of the rest
    assert site_mean(vn) == pytest.approx(np.mean(np.arange(3, 9)))
    assert np.isnan(site_mean(vn, min_valid_fraction=0.7))  # 6/9 < 0.7 of the weight valid
    # per-date (time, feature, y, x): a cloudy date is NaN, weights per pixel
    stack = np.stack([v, vn, np.full((3, 3), np.nan)])[:, None]
    wt = np.zeros((3, 3))
    wt[1, 1], wt[0, 0] = 3.0, 1.0
    out = site_mean(stack, wt, 0.5)
    assert out.shape == (3, 1)
    assert out[0, 0] == pytest.approx((3 * 4 + 0) / 4)
    assert out[1, 0] == pytest.approx(4.0)  # (0,0) invalid: 3/4 of the weight left >= 0.5
    assert np.isnan(out[2, 0])
    assert footprint_weights(2).shape == (5, 5) and np.allclose(footprint_weights(2), 1 / 25)
    with pytest.raises(GPPError, match="do not match the footprint"):
        site_mean(v, np.ones((5, 5)))


def test_crop_window_and_errors():
    cy, cx, iy, ix = crop_window(16, 16, 2, 32, 32, halo=7)
    assert (cy, cx) == (slice(7, 26), slice(7, 26)) and (iy, ix) == (slice(7, 12), slice(7, 12))
    cy, cx, iy, ix = crop_window(3, 28, 1, 32, 32, halo=7)  # clipped at the cube edge like the whole-cube run
    assert (cy, cx) == (slice(0, 12), slice(20, 32)) and (iy, ix) == (slice(2, 5), slice(7, 10))
    with pytest.raises(GPPError, match="leaves the 32 x 32 cube"):
        crop_window(1, 16, 2, 32, 32)
    with pytest.raises(GPPError, match="outside the 32 x 32 cube"):
        crop_window(40, 16, 0, 32, 32)


def test_config_errors():
    with pytest.raises(GPPError, match="not a multiple of patch_days"):
        GPPConfig(window_days=92)
    with pytest.raises(GPPError, match="unknown methods"):
        GPPConfig(methods=("embedding", "lai"))
    with pytest.raises(GPPError, match="overlap"):
        GPPConfig(train_years=(2019, 2020), test_years=(2020,))
    assert GPPConfig.from_dict({"radius_px": 1, "sweep_windows": [60, 90]}).sweep_windows == (60, 90)


# ------------------------------------------------------------------------ embeddings of a site

SMALL = dict(widths=(8, 12, 16), multiscale_branch_ch=4, d_model=16, n_heads=2, ffn_dim=16, decoder_d_model=16,
             decoder_ffn_dim=16, decoder_widths=(16, 8, 8), decoder_branch_ch=4)


@pytest.fixture(scope="module")
def tiny_fusion(tmp_path_factory) -> Path:
    """An untrained tiny fusion model (same classes as the real ones)."""
    from latentcube.nn import FusionConfig, FusionModel, SensorAutoencoder, s1_config, s2_config
    from latentcube.preprocess import Normalization
    from latentcube.train import save_model

    torch.manual_seed(1)
    s1 = SensorAutoencoder(replace(s1_config(), **SMALL)).eval()
    s2 = SensorAutoencoder(replace(s2_config(), **SMALL)).eval()
    fused = FusionModel({"s1": s1, "s2": s2}, FusionConfig(proj_dim=8, d_model=16, ffn_dim=16)).freeze_sensor_models().eval()
    return save_model(tmp_path_factory.mktemp("model") / "fusion.pt", fused, normalization=Normalization())


@pytest.fixture(scope="module")
def small_cube() -> xr.Dataset:
    from latentcube.cube import new_cube

    rng = np.random.default_rng(0)
    t2, t1, h = 14, 16, 24
    s2 = (rng.random((t2, 10, h, h)) * 0.4 + 0.02).astype("float32")
    s2[3, :, 2:15, 5:20] = np.nan  # a cloud over part of the footprint
    time2 = pd.Timestamp("2020-04-01T10:30") + pd.to_timedelta(5 * np.arange(t2), "D")
    time1 = pd.Timestamp("2020-04-01T17:20") + pd.to_timedelta(4 * np.arange(t1) + 1, "D")
    s1 = rng.gamma(4.0, 0.03, (t1, 2, h, h)).astype("float32")
    return new_cube(s2=s2, time=time2, y=5_600_000.0 - 10 * np.arange(h) - 5, x=600_000.0 + 10 * np.arange(h) + 5,
                    crs="EPSG:32632", s1=s1, time_s1=time1)


def test_site_embedding_crop_equals_whole_cube(tiny_fusion, small_cube, tmp_path):
    from latentcube.embed import embed_cube

    full = xr.open_zarr(embed_cube(small_cube, tiny_fusion, tmp_path / "full.zarr", block_px=24, scheduler="synchronous",
                                   progress=False))["embedding"].load()
    sites = {}
    for row, col in [(12, 11), (3, 20)]:  # interior, and a footprint whose halo is clipped at the edge
        site = sites[row] = embed_site(small_cube, row, col, tiny_fusion, radius_px=2, cache=tmp_path / f"c{row}.zarr")
        ref = full.isel(y=slice(row - 2, row + 3), x=slice(col - 2, col + 3))
        assert site.shape == (14, 7, 5, 5)
        np.testing.assert_allclose(site.values, ref.values, atol=1e-5, equal_nan=True)
        assert np.isnan(site.values).any() and np.isfinite(site.values).any()  # the cloud is NaN
        np.testing.assert_array_equal(site["y"].values, ref["y"].values)
    # the cache is re-used (bit-identical values); another radius does not match the cached key
    again = embed_site(small_cube, 12, 11, tiny_fusion, radius_px=2, cache=tmp_path / "c12.zarr")
    np.testing.assert_array_equal(again.values, sites[12].values)
    other = embed_site(small_cube, 12, 11, tiny_fusion, radius_px=1, cache=tmp_path / "c12.zarr")
    assert other.shape == (14, 7, 3, 3)


def test_fit_regressor_is_seeded_and_learns():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 20, 2)).astype("float32")
    y = (2 * x[..., 0] + 1).astype("float32")
    y[:, :3] = np.nan  # masked targets are ignored
    cfg = GPPConfig(window_days=20, d_model=16, n_heads=2, ffn_dim=16, n_layers=2, max_epochs=25, patience=25, lr=5e-3,
                    batch_size=8)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    m1, info = fit_regressor(x[:48], y[:48], x[48:], y[48:], cfg)
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded without resetting the caller's generator
    m2, _ = fit_regressor(x[:48], y[:48], x[48:], y[48:], cfg)
    assert float(m1.target_scale) == pytest.approx(info["target_scale"])  # a buffer: saved with state_dict
    assert "target_scale" in m1.state_dict()
    p1 = predict_daily(m1, x[48], 20, 10)
    np.testing.assert_array_equal(p1, predict_daily(m2, x[48], 20, 10))
    base = np.nanmean(np.abs(y[48:] - np.nanmean(y[:48])))
    assert info["es_mae"] < 0.5 * base  # well below predicting the mean
    assert info["n_fit_windows"] == 48 and 1 <= info["best_epoch"] <= 25


# ------------------------------------------------------------------------------ sites and FLUXNET


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    from latentcube.synthetic import make_world, write_world

    world = make_world(3, n_scenes=0, n_towers=2, tower_size=24, tower_years=(2019, 2020))
    d = tmp_path_factory.mktemp("world")
    write_world(world, d)
    return d


def test_synthetic_fluxnet_files_go_through_read_fluxnet(world_dir):
    from latentcube.evaluate.gpp.sites import _fluxnet_file
    from latentcube.sources.fluxnet import read_fluxnet

    towers = pd.read_csv(world_dir / "towers.csv")
    for site in towers["site_id"]:
        path = _fluxnet_file(world_dir / "fluxnet", site)
        assert path.name.startswith(f"FLX_{site}_FLUXNET2015_FULLSET_DD_")
        df = read_fluxnet(path)
        assert df.attrs["resolution"] == "DD" and df.index[0] == pd.Timestamp("2019-01-01")
        raw = pd.read_csv(path, na_values=[-9999])
        np.testing.assert_allclose(df["gpp"].to_numpy(), raw["GPP_NT_VUT_REF"].to_numpy(), equal_nan=True)
    with pytest.raises(GPPError, match="no FLUXNET file for site XX-NO1"):
        _fluxnet_file(world_dir / "fluxnet", "XX-NO1")


def test_read_sites_layouts(world_dir):
    towers = pd.read_csv(world_dir / "towers.csv")
    t = read_sites(world_dir / "towers.csv", world_dir)
    assert list(t.columns) == ["site_id", "cube", "cube_path", "row", "col", "veg_type"]
    assert t["row"].tolist() == towers["row"].tolist() and t["veg_type"].tolist() == towers["veg_type"].tolist()
    # x/y instead of row/col, and a site plan's layout (cube_id, lon, lat, land-cover name)
    xy = read_sites(towers.drop(columns=["row", "col"]), world_dir)
    assert xy[["row", "col"]].values.tolist() == towers[["row", "col"]].values.tolist()
    from pyproj import Transformer

    # towers.csv's lat/lon is the cube centre (a pixel corner for even sizes): use the tower pixel's own
    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(towers["x"], towers["y"])
    plan = towers.rename(columns={"cube": "cube_id"})[["cube_id", "site_id", "landcover_name"]]
    plan = plan.rename(columns={"landcover_name": "landcover"}).assign(lon=lon, lat=lat)
    p = read_sites(plan, world_dir)
    assert p[["row", "col"]].values.tolist() == towers[["row", "col"]].values.tolist()
    assert p["veg_type"].tolist() == towers["veg_type"].tolist()
    with pytest.raises(GPPError, match="cube 'nope' not found"):
        read_sites(pd.DataFrame({"site_id": ["A"], "cube": ["nope"], "row": [1], "col": [1]}), world_dir)


@pytest.mark.slow
def test_evaluate_gpp_end_to_end(world_dir, tiny_fusion, tmp_path):
    cfg = GPPConfig(radius_px=1, train_years=(2019,), test_years=(2020,), window_days=60, d_model=16, n_heads=2,
                    ffn_dim=16, n_layers=2, max_epochs=2, patience=1, n_jobs=1)
    doc = evaluate_gpp(world_dir / "towers.csv", tmp_path, checkpoint=tiny_fusion, cubes=world_dir,
                       fluxnet=world_dir / "fluxnet", config=cfg)
    folder = tmp_path / "evaluation" / "gpp"
    for name in ("metrics.json", "per_site.csv", "predictions.csv", "gpp_series_year.png", "gpp_series_loso.png",
                 "gpp_nrmse.png"):
        assert (folder / name).stat().st_size > 0, name
    saved = json.loads((folder / "metrics.json").read_text())
    for p in ("year", "loso"):
        for m in ("embedding", "bands", "ndvi", "annual_embedding", "climatology"):
            o = saved["protocols"][p]["scores"][m]["overall"]
            assert np.isfinite([o["rmse"], o["nrmse"], o["r2"]]).all() and o["n"] > 50, (p, m)
        # every method is scored on the same days
        assert len({saved["protocols"][p]["scores"][m]["overall"]["n"] for m in doc["protocols"][p]["scores"]}) == 1
    per_site = pd.read_csv(folder / "per_site.csv")
    assert len(per_site) == 2 * 5 * 2 and per_site["nrmse"].notna().all()
    section = json.loads((tmp_path / "sections" / "060_gpp.json").read_text())
    assert section["order"] == 60 and len(section["tables"]) == 3 and len(section["figures"]) == 3
    assert any("per-date embeddings NRMSE" in t for t in section["text"])
    assert len(list((folder / "cache").glob("*.zarr"))) == 2
    # Two worker processes (all protocols' fits in one batch, with the window sweep) give the serial run's
    # numbers up to float summation order (one torch thread per worker). The caller's thread count and
    # matplotlib backend are what they were (the workers set their own threads; figures use no pyplot).
    import matplotlib

    backend, threads = matplotlib.get_backend(), torch.get_num_threads()
    matplotlib.use("pdf")
    torch.set_num_threads(3)
    try:
        par = evaluate_gpp(world_dir / "towers.csv", tmp_path / "par", checkpoint=tiny_fusion, cubes=world_dir,
                           fluxnet=world_dir / "fluxnet", config=replace(cfg, n_jobs=2, sweep_windows=(40, 60)))
        assert matplotlib.get_backend() == "pdf" and torch.get_num_threads() == 3
    finally:
        matplotlib.use(backend)
        torch.set_num_threads(threads)
    for p in ("year", "loso"):
        for m in ("embedding", "bands", "ndvi", "annual_embedding", "climatology"):
            want = doc["protocols"][p]["scores"][m]["overall"]
            got = par["protocols"][p]["scores"][m]["overall"]
            assert got["n"] == want["n"] and got["rmse"] == pytest.approx(want["rmse"], rel=1e-3), (p, m)
    assert set(par["sweep"]) == {"40", "60"} and all(np.isfinite(v["nrmse"]) for v in par["sweep"].values())


# ------------------------------------------------------------------------ meteorological drivers


def test_meteo_config_and_methods():
    assert GPPConfig().run_methods == ["embedding", "bands", "ndvi", "annual_embedding", "climatology"]
    met = GPPConfig(meteo=("sw_in", "ta", "vpd"))
    assert met.run_methods[-4:] == ["meteo", "embedding_meteo", "bands_meteo", "ndvi_meteo"]
    assert GPPConfig(meteo=("ta",), methods=("climatology", "meteo")).run_methods == ["embedding", "climatology", "meteo"]
    with pytest.raises(GPPError, match=r"methods \['embedding_meteo'\] need meteorological drivers. Fix: meteo="):
        GPPConfig(methods=("embedding_meteo",))
    with pytest.raises(GPPError, match=r"unknown meteorological drivers \['rh'\]"):
        GPPConfig(meteo=("rh",))


def test_prepare_gives_each_input_group_its_own_gap_flag():
    from latentcube.evaluate.gpp.regressor import _prepare
    from latentcube.evaluate.gpp.sites import SiteData

    days = pd.date_range("2020-01-01", periods=4)
    f = np.array([[1.0, 10.0], [np.nan, 20.0], [3.0, np.nan], [5.0, 30.0]], "float32")  # (embedding, meteo)
    d = SiteData("A", "DBF", days, np.ones(4), {"m": f}, groups={"m": [1, 1]})
    x = _prepare({"A": d}, "m", {"A": np.ones(4, bool)}).x["A"]
    assert x.shape == (4, 4)
    np.testing.assert_array_equal(x[:, 2], [1, 0, 1, 1])  # first group's flag: day 2 has no embedding
    np.testing.assert_array_equal(x[:, 3], [1, 1, 0, 1])  # second group's flag: day 3 has no weather
    np.testing.assert_allclose(x[:, 0], [(1 - 3) / np.std([1, 3, 5]), 0, 0, (5 - 3) / np.std([1, 3, 5])], rtol=1e-6)
    one = _prepare({"A": SiteData("A", "DBF", days, np.ones(4), {"m": f})}, "m", {"A": np.ones(4, bool)}).x["A"]
    np.testing.assert_array_equal(one[:, 2], [1, 0, 0, 1])  # without groups: one flag over all features


def _tower_folder(tmp_path: Path, flux: pd.DataFrame) -> tuple[Path, Path, Path]:
    (tmp_path / "c1.zarr").mkdir()
    sites = tmp_path / "towers.csv"
    pd.DataFrame({"site_id": ["XX-Eth"], "cube": ["c1"], "row": [5], "col": [5], "veg_type": ["GRA"]}).to_csv(sites, index=False)
    (tmp_path / "flux").mkdir()
    flux.to_csv(tmp_path / "flux" / "FLX_XX-Eth_DD.csv", index=False)
    model = tmp_path / "model.pt"
    model.write_bytes(b"not read: the tower files are checked first")
    return sites, tmp_path / "flux", model


def test_cli_flux_columns_and_meteo_reach_the_reader_before_any_embedding(tmp_path, capsys):
    from latentcube.cli import main

    flux = pd.DataFrame({"TIMESTAMP": ["20200101", "20200102"], "GPP_DT_CUT_REF": [1.0, 2.0], "QCF_NEE": [1.0, 1.0],
                         "TA_T1_47_1": [3.0, 4.0]})
    sites, folder, model = _tower_folder(tmp_path, flux)
    base = ["evaluate", "gpp", "--checkpoint", str(model), "--sites", str(sites), "--fluxnet", str(folder),
            "--cubes", str(tmp_path), "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exc:
        main(base)  # FLUXNET2015 names: no such GPP column, and the fix names the CLI option
    assert exc.value.code == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert "no GPP column 'GPP_NT_VUT_REF'" in err and "--flux-columns eth" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main([*base, "--flux-columns", "eth", "--meteo", "ta,sw_in"])
    err = capsys.readouterr().err.replace("\n", "")
    assert "driver columns not found: ta 'TA_T1_2_1' (candidates: ['TA_T1_47_1'])" in err
    assert "sw_in 'SW_IN_T1_2_1' (candidates: none)" in err


@pytest.mark.slow
def test_evaluate_gpp_with_meteo(world_dir, tiny_fusion, tmp_path):
    cfg = GPPConfig(radius_px=1, train_years=(2019,), test_years=(2020,), window_days=60, d_model=16, n_heads=2,
                    ffn_dim=16, n_layers=2, max_epochs=2, patience=1, n_jobs=1, protocols=("year",),
                    meteo=("sw_in", "ta", "vpd"), methods=("meteo", "embedding_meteo", "climatology"))
    doc = evaluate_gpp(world_dir / "towers.csv", tmp_path, checkpoint=tiny_fusion, cubes=world_dir,
                       fluxnet=world_dir / "fluxnet", config=cfg)
    scores = doc["protocols"]["year"]["scores"]
    assert list(scores) == ["embedding", "climatology", "meteo", "embedding_meteo"]
    assert len({s["overall"]["n"] for s in scores.values()}) == 1 and scores["meteo"]["overall"]["n"] > 50
    imp = doc["improvement_with_meteo"]["year"]
    assert set(imp) == {"embedding", "climatology", "meteo"}
    assert imp["meteo"]["nrmse_embedding"] == scores["embedding_meteo"]["overall"]["nrmse"]
    section = json.loads((tmp_path / "sections" / "060_gpp.json").read_text())
    assert any(t.startswith("Year split: embeddings + meteo NRMSE") for t in section["text"])
    assert any("daily SW_IN, TA, VPD from the tower file" in t for t in section["text"])
    # the drivers are the tower file's daily values on the site's days
    from latentcube.evaluate.gpp.sites import load_site_data, read_sites

    rows = read_sites(world_dir / "towers.csv", world_dir)
    first = rows[rows["site_id"] == rows["site_id"].iloc[0]]
    d = load_site_data(first, checkpoint=tiny_fusion, fluxnet=world_dir / "fluxnet", cfg=cfg,
                       cache_dir=tmp_path / "evaluation" / "gpp" / "cache")
    raw = pd.read_csv(next((world_dir / "fluxnet").glob(f"FLX_{d.site_id}_*.csv")), na_values=[-9999])
    raw.index = pd.to_datetime(raw["TIMESTAMP"].astype(str))
    np.testing.assert_allclose(d.features["meteo"], raw.loc[d.days, ["SW_IN_F", "TA_F", "VPD_F"]].to_numpy(), rtol=1e-6)
    assert d.groups["embedding_meteo"] == [7, 3] and d.features["embedding_meteo"].shape[1] == 10


# ------------------------------------------------------------- what a new user's setup runs into


def test_cache_name_is_the_cube_stem_and_a_path_hash(tmp_path, monkeypatch):
    from latentcube.evaluate.gpp.sites import cache_name

    (tmp_path / "a" / "area.zarr").mkdir(parents=True)
    (tmp_path / "b" / "area.zarr").mkdir(parents=True)
    (tmp_path / "gpp").mkdir()
    monkeypatch.chdir(tmp_path / "gpp")
    rel = cache_name("../a/area.zarr", 32, 31, 3)
    assert rel.startswith("area-") and rel.endswith("_r32c31_R3.zarr") and "/" not in rel and ".." not in rel
    assert cache_name(tmp_path / "a" / "area.zarr", 32, 31, 3) == rel  # the same cube by its absolute path
    assert cache_name("../b/area.zarr", 32, 31, 3) != rel  # same name, other folder: its own cache
    assert cache_name("../a/area.zarr", 32, 31, 2) != rel
    assert cache_name("cubes/my site (v2)", 1, 2, 3).startswith("my_site_v2_-")


def test_relative_cube_path_from_another_directory_caches_inside_cache(world_dir, tiny_fusion, tmp_path, monkeypatch):
    from latentcube.evaluate.gpp.sites import load_site_data

    towers = pd.read_csv(world_dir / "towers.csv").iloc[:1]
    (tmp_path / "gpp").mkdir()
    monkeypatch.chdir(tmp_path / "gpp")  # the cube as a path relative to this working directory, no --cubes
    rel = os.path.relpath(world_dir / f"{towers['cube'].iloc[0]}.zarr")
    assert rel.startswith("..")
    table = read_sites(towers.assign(cube=rel)[["site_id", "cube", "row", "col", "veg_type"]])
    cfg = GPPConfig(radius_px=1)
    d = load_site_data(table, checkpoint=tiny_fusion, fluxnet=world_dir / "fluxnet", cfg=cfg, cache_dir="run/cache")
    assert np.isfinite(d.gpp).sum() > 100
    from latentcube.evaluate.gpp.sites import cache_name

    stores = list(Path("run/cache").iterdir())
    want = cache_name(world_dir / f"{towers['cube'].iloc[0]}.zarr", 12, 12, 1)  # the absolute path: the same name
    assert [p.name for p in stores] == [want] and want.startswith(f"{towers['cube'].iloc[0]}-")
    assert (stores[0] / "gpp_site.json").exists()
    assert sorted(p.name for p in Path("run").iterdir()) == ["cache"]  # nothing written beside or outside cache/


def _hh_sample(path: Path, start: str = "2005-01-01", n: int = 99, qc: int = 3) -> Path:
    """A FLUXNET2015 HH file like the CH-Cha sample: n half-hours from start, every NEE_VUT_REF_QC = qc."""
    t = pd.date_range(start, periods=n, freq="30min")
    pd.DataFrame({"TIMESTAMP_START": t.strftime("%Y%m%d%H%M"), "TIMESTAMP_END": (t + pd.Timedelta("30min")).strftime("%Y%m%d%H%M"),
                  "GPP_NT_VUT_REF": 2.0, "NEE_VUT_REF_QC": qc}).to_csv(path, index=False)
    return path


def test_no_gpp_day_message_says_which_cause_applies(tmp_path):
    from latentcube.evaluate.gpp.sites import check_gpp_days, read_site_flux

    cfg = GPPConfig()
    period = pd.date_range("2018-08-04", "2019-11-27", freq="D")
    (tmp_path / "hh").mkdir()
    _hh_sample(tmp_path / "hh" / "FLX_CH-Cha_FLUXNET2015_FULLSET_HH_2005-2020_beta-3_sample.csv")
    flux = read_site_flux(tmp_path / "hh", "CH-Cha", cfg)
    with pytest.raises(GPPError) as exc:
        check_gpp_days("CH-Cha", flux, period, cfg)
    msg = str(exc.value)
    assert msg.startswith("site CH-Cha: no GPP day passes the filter within the cube period 2018-08-04 .. 2019-11-27. "
                          "The FLUXNET file FLX_CH-Cha_FLUXNET2015_FULLSET_HH_2005-2020_beta-3_sample.csv covers "
                          "2005-01-01 .. 2005-01-03 (3 days, 3 with a GPP value); 0 days reach the QC threshold "
                          "(>= 0.7 of the day measured or good gap-fill by NEE_VUT_REF_QC), 0 pass the filter "
                          "(QC and GPP >= 0), 0 of them inside the cube period. Fix: (1) no day reaches the QC threshold")
    assert "--flux-columns nee_qc=<column>" in msg and "GPPConfig(min_qc_fraction=...)" in msg
    assert "(2) the file (2005-01-01 .. 2005-01-03) does not overlap the cube period (2018-08-04 .. 2019-11-27)" in msg
    # good QC (flag 0) but other years: only the period is named
    (tmp_path / "good").mkdir()
    _hh_sample(tmp_path / "good" / "FLX_CH-Cha_HH.csv", n=48 * 2, qc=0)
    with pytest.raises(GPPError) as exc:
        check_gpp_days("CH-Cha", read_site_flux(tmp_path / "good", "CH-Cha", cfg), period, cfg)
    msg = str(exc.value)
    assert "(2 days, 2 with a GPP value); 2 days reach the QC threshold" in msg and ", 2 pass the filter" in msg
    assert "Fix: the file (2005-01-01 .. 2005-01-02) does not overlap" in msg and "QC threshold:" not in msg
    # overlapping file whose passing days all lie before the cube period
    (tmp_path / "near").mkdir()
    _hh_sample(tmp_path / "near" / "FLX_CH-Cha_HH.csv", start="2018-08-02", n=48 * 2, qc=0)
    near = read_site_flux(tmp_path / "near", "CH-Cha", cfg)
    check_gpp_days("CH-Cha", near, pd.date_range("2018-08-03", periods=3), cfg)  # day 2 passes: no error
    with pytest.raises(GPPError, match=r"Fix: the days that pass \(2018-08-02 .. 2018-08-03\) lie outside the cube "
                                       r"period \(2018-08-04 .. 2019-11-27\)"):
        check_gpp_days("CH-Cha", near.reindex(pd.date_range("2018-08-02", "2018-08-05", name="date")), period, cfg)


def _one_site(world_dir: Path, tmp_path: Path, flux_dir: Path | None = None) -> list[str]:
    towers = pd.read_csv(world_dir / "towers.csv").iloc[:1]
    towers[["site_id", "cube", "row", "col"]].to_csv(tmp_path / "sites.csv", index=False)  # no veg_type: optional
    model = tmp_path / "model.pt"
    model.write_bytes(b"never read: the checks come before any embedding")
    return ["evaluate", "gpp", "--checkpoint", str(model), "--sites", str(tmp_path / "sites.csv"), "--cubes",
            str(world_dir), "--fluxnet", str(flux_dir or world_dir / "fluxnet"), "--out", str(tmp_path / "run")]


def test_cli_period_qc_and_split_errors_come_before_any_embedding(world_dir, tmp_path, capsys):
    from latentcube.cli import main

    site = pd.read_csv(world_dir / "towers.csv")["site_id"].iloc[0]
    (tmp_path / "flux").mkdir()
    _hh_sample(tmp_path / "flux" / f"FLX_{site}_HH.csv")

    def err_of(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 1
        err = capsys.readouterr().err.replace("\n", " ")
        assert "Traceback" not in err and not (tmp_path / "run" / "evaluation" / "gpp" / "cache").exists()
        return " ".join(err.split())

    err = err_of(_one_site(world_dir, tmp_path, tmp_path / "flux"))
    assert f"site {site}: no GPP day passes the filter within the cube period 2019-" in err
    assert "covers 2005-01-01 .. 2005-01-03 (3 days, 3 with a GPP value)" in err
    base = _one_site(world_dir, tmp_path)
    err = err_of(base)  # defaults: both protocols, one site
    assert ("leave-one-site-out needs at least 2 sites; the site table has 1 "
            f"({site}). Fix: add sites to the table, or run the year split only: --protocols year (Python: "
            "GPPConfig(protocols=('year',)))") in err
    err = err_of([*base, "--protocols", "year", "--train-years", "2018", "--test-years", "2021"])
    assert ("no site has days in the test years 2021 (--test-years): the sites' days run 2019-") in err
    assert ("with filtered GPP in 2019, 2020. Fix: --train-years 2019 --test-years 2020 (Python: "
            "GPPConfig(train_years=(2019,), test_years=(2020,)))") in err
    err = err_of([*base, "--protocols", "year", "--train-years", "2019,2020", "--test-years", "2020"])
    assert ("training years 2019,2020 and test years 2020 overlap (2020): a day cannot both train and score. Fix: "
            "disjoint years, e.g. --train-years 2019 --test-years 2020") in err
    assert "(2020,)" not in err


def test_cli_help_lists_the_site_table_columns():
    from typer.testing import CliRunner

    from latentcube.cli import app

    text = " ".join(CliRunner().invoke(app, ["evaluate", "gpp", "--help"], terminal_width=200).output.split())
    text = text.replace("│ ", "").replace(" │", "")
    assert "row,col or lon,lat or x,y (cube CRS), and optionally veg_type (else 'unknown')" in " ".join(text.split())


def test_tower_outside_its_cube_gives_bounds_and_lon_lat(world_dir):
    towers = pd.read_csv(world_dir / "towers.csv").iloc[:1]
    swapped = towers.rename(columns={"cube": "cube_id"})[["cube_id", "site_id"]].assign(lon=towers["lat"], lat=towers["lon"])
    cube = xr.open_zarr(world_dir / f"{towers['cube'].iloc[0]}.zarr")
    xs, ys = cube["x"].values, cube["y"].values
    with pytest.raises(GPPError) as exc:
        read_sites(swapped, world_dir)
    msg = str(exc.value)
    assert f"lon {towers['lat'].iloc[0]:.5f}, lat {towers['lon'].iloc[0]:.5f} lies outside cube {towers['cube'].iloc[0]}" in msg
    assert f"spans x {xs.min() - 5:.1f} .. {xs.max() + 5:.1f}, y {ys.min() - 5:.1f} .. {ys.max() + 5:.1f} (lon " in msg
    assert "(EPSG:32632)" in msg and "lon/lat swapped?" in msg and "e+" not in msg


def test_thin_setup_warns_and_fit_log_names_the_protocol_once():
    from latentcube.evaluate.gpp.protocols import _fit_label, _run_protocols, _score
    from latentcube.evaluate.gpp.run import _warn_degenerate
    from latentcube.evaluate.gpp.sites import SiteData

    assert _fit_label("year", "year/embedding") == "year split, embedding"
    assert _fit_label("loso", "XX-A/bands") == "leave-one-site-out, XX-A held out, bands"
    assert _fit_label("sweep 60 d", "year/embedding") == "sweep 60 d, embedding"
    # one site, data from 2018-08-04 to 2019-11-27 as in the walkthrough: train 2018, test 2019
    days = pd.date_range("2018-08-04", "2019-11-27", freq="D", name="date")
    rng = np.random.default_rng(0)
    gpp = 5 + 4 * np.sin(2 * np.pi * days.day_of_year.to_numpy() / 365) + rng.normal(0, 0.3, len(days))
    feats = {"embedding": np.stack([np.sin(2 * np.pi * days.day_of_year.to_numpy() / 365)] * 2, 1).astype("float32")}
    data = {"XX-A": SiteData("XX-A", "GRA", days, gpp, feats)}
    cfg = GPPConfig(train_years=(2018,), test_years=(2019,), protocols=("year",), window_days=20, d_model=8, n_heads=2,
                    ffn_dim=8, n_layers=1, max_epochs=2, n_jobs=1)
    lines: list[str] = []
    done = _run_protocols(data, {"year": ("year", 20, ["embedding", "climatology"])}, cfg, lines.append)
    assert len(lines) == 1 and lines[0].startswith("  year split, embedding: 2 epochs (no early stopping), ")
    preds, info = done["year"]
    res = {"preds": preds, "scores": _score(data, preds), "training": info}
    n_test = int((days.year == 2019).sum())
    n_clim = int(np.isfinite(preds["climatology"]["XX-A"]).sum())  # only the days of year seen in 2018's Aug-Dec
    assert res["scores"]["embedding"]["overall"]["n"] == n_clim < 0.5 * n_test
    with pytest.warns(GPPWarning) as rec:
        _warn_degenerate(data, "year", res, cfg)
    msgs = [str(w.message) for w in rec]
    assert msgs[0].startswith("year split: 1 of 1 regressors had no early-stopping windows (n_es_windows 0 in "
                              "metrics.json)") and "Fix: more training sites or years (--train-years" in msgs[0]
    assert msgs[1].startswith(f"year split: scored on {n_clim} of the {n_test} test days with filtered GPP")
    assert f"days each method predicts: climatology {n_clim}, embedding {n_test}" in msgs[1]
    assert "(--methods; Python: GPPConfig(methods=...))" in msgs[1]

"""Acceptance checks of the synthetic world (issue: embedded default dataset).

One small world (2 scenes of 64 px over one year, 4 tower cubes of 32 px over 2017-2020, with the
noise-free truth) is generated once per module; checks needing other sizes use tiny configs.
Every check reads values: spectra/NDVI, cloud statistics, backscatter levels, speckle ENL, GPP.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentcube.constants import S1_BANDS, S1_DIMS, S2_BANDS, S2_DIMS
from latentcube.cube import cube_crs, open_cube, validate_cube
from latentcube.synthetic import (
    FLUXNET_DD_COLUMNS,
    VEG_TYPE_CLASS,
    WorldConfig,
    fluxnet_dd_filename,
    make_world,
    write_fluxnet_dd,
    write_world,
)

ENF, DBF, GRA, CRO, URB, WAT, BAR = 1, 2, 3, 4, 5, 6, 7
CLEAR_SCL = [4, 5, 6]  # vegetation, not vegetated, water (snow, clouds, shadows excluded)
WINTER, SUMMER = [12, 1, 2], [6, 7, 8]


@pytest.fixture(scope="module")
def world():
    return make_world(0, scene_size=64, n_scenes=2, n_towers=4, keep_truth=True)


@pytest.fixture(scope="module")
def tiny_config():
    return WorldConfig(seed=3, n_scenes=1, scene_size=16, n_towers=2, tower_size=8, tower_years=(2019, 2020))


def _ndvi(ds: xr.Dataset) -> np.ndarray:
    b08, b04 = ds["s2"].sel(band="B08").values, ds["s2"].sel(band="B04").values
    return (b08 - b04) / (b08 + b04)


def _class_series(ds: xr.Dataset, cls: int, truth: xr.Dataset | None = None, min_px: int = 1) -> pd.Series:
    """Per-date mean NDVI of the clear pixels of a class (dates with >= half of them clear, >= min_px)."""
    nd, scl, lc = _ndvi(ds), ds["s2_scl"].values, ds["landcover"].values
    px = lc == cls
    if px.sum() < min_px:
        return pd.Series(dtype=float, index=pd.DatetimeIndex([]))
    clear = np.isin(scl[:, px], CLEAR_SCL)
    vals = np.where(clear, nd[:, px], np.nan)
    ok = (clear.mean(1) >= 0.5) & (clear.sum(1) >= min_px)
    if truth is not None:  # dates with no snow pack on the ground (phenology, not snow, is measured)
        snow = truth["snow_cover"].sel(day=pd.DatetimeIndex(ds.time.values).normalize()).values
        ok &= snow == 0
    mean = np.full(len(ok), np.nan)
    mean[ok] = np.nanmean(vals[ok], axis=1)
    return pd.Series(mean, index=pd.DatetimeIndex(ds.time.values)).dropna()


def _amplitude(series: pd.Series) -> float:
    """Summer (JJA) - winter (DJF) NDVI from seasonal medians (robust to a stray contaminated date)."""
    m = series.index.month
    summer, winter = series[m.isin(SUMMER)], series[m.isin(WINTER)]
    assert len(summer) >= 3 and len(winter) >= 3, "too few clear snow-free dates to measure an amplitude"
    return float(summer.median() - winter.median())


# ------------------------------------------------------------------------------ data model, layout


def test_every_cube_follows_the_data_model(world):
    assert set(world.cubes) == {"scene_000", "scene_001", "tower_XS-DB1", "tower_XS-EN1", "tower_XS-GR1", "tower_XS-CR1"}
    for ds in world.cubes.values():
        validate_cube(ds, require_s1=True)
        assert ds["s2"].dims == S2_DIMS and ds["s2"].dtype == np.float32
        assert ds["s1"].dims == S1_DIMS and ds["s1"].dtype == np.float32
        assert list(ds["band"].values) == list(S2_BANDS) and list(ds["band_s1"].values) == list(S1_BANDS)
        assert ds["s2_scl"].dtype == np.uint8 and ds["landcover"].dtype == np.uint8
        assert ds["parcel_id"].dims == ("y", "x")
        assert set(np.unique(ds["landcover"].values)) <= set(range(1, 8))
        # 10 m pixels, north-up, projected UTM 32N
        assert np.allclose(np.diff(ds.x), 10.0) and np.allclose(np.diff(ds.y), -10.0)
        assert cube_crs(ds).to_epsg() == 32632
        # revisits: S2 every 5 days, S1 every 6 days
        assert set(np.diff(ds.time.values).astype("timedelta64[D]").astype(int)) == {5}
        assert set(np.diff(ds.time_s1.values).astype("timedelta64[D]").astype(int)) == {6}
        s2 = ds["s2"].values
        assert np.nanmin(s2) >= 0 and np.nanmax(s2) <= 1
        assert ds.attrs["source"] == "latentcube.synthetic" and ds.attrs["seed"] == 0
        assert WorldConfig.from_dict(json.loads(ds.attrs["config"])) == world.config
    # tower cubes span 2017-2020 for the year split
    t = world.cubes["tower_XS-DB1"].time.dt.year.values
    assert t.min() == 2017 and t.max() == 2020


def test_landcover_parcels_follow_table_one_mix_and_are_coherent(world):
    lc = np.concatenate([world.cubes[n]["landcover"].values.ravel() for n in ("scene_000", "scene_001")])
    frac = np.bincount(lc, minlength=8)[1:] / lc.size
    expected = np.array(world.config.landcover_fractions)
    np.testing.assert_allclose(frac, expected, atol=0.04)
    assert frac[ENF - 1] + frac[DBF - 1] == pytest.approx(0.40, abs=0.01)  # forests thresholded exactly
    for name in ("scene_000", "scene_001"):
        a = world.cubes[name]["landcover"].values
        same = np.mean(a[:, 1:] == a[:, :-1]), np.mean(a[1:] == a[:-1])
        assert min(same) > 0.85  # parcels and patches, not salt-and-pepper
        pid = world.cubes[name]["parcel_id"].values
        for p in np.unique(pid):  # one class per management unit
            assert len(np.unique(a[pid == p])) == 1


def test_towers_sit_in_homogeneous_stands_of_their_type(world):
    t = world.towers
    assert list(t.veg_type) == ["DBF", "ENF", "GRA", "CRO"]
    assert list(t.site_id) == ["XS-DB1", "XS-EN1", "XS-GR1", "XS-CR1"]
    for _, row in t.iterrows():
        ds = world.cubes[row.cube]
        lc = ds["landcover"].values
        assert row.landcover == VEG_TYPE_CLASS[row.veg_type]
        assert np.all(lc[row.row - 2 : row.row + 3, row["col"] - 2 : row["col"] + 3] == row.landcover)
        assert float(ds.x[row["col"]]) == row.x and float(ds.y[row.row]) == row.y
    assert set(world.gpp) == set(t.site_id)


# ---------------------------------------------------------------------------------------- optical


def test_ndvi_phenology_by_class(world):
    def pooled(cls):  # per-date class means of every cube, on clear and snow-free dates
        return pd.concat([_class_series(ds, cls, world.truth[n], min_px=20) for n, ds in world.cubes.items()])

    assert _amplitude(pooled(DBF)) > 0.4  # deciduous: leaf-on vs leaf-off
    assert _amplitude(pooled(ENF)) < 0.2  # evergreen nearly flat
    # the 4-year broadleaf tower cube alone: dense summer canopy (~0.85), leaf-off winter (~0.3)
    s = _class_series(world.cubes["tower_XS-DB1"], DBF, world.truth["tower_XS-DB1"])
    assert _amplitude(s) > 0.4
    assert s[s.index.month == 7].median() > 0.75 and s[s.index.month.isin(WINTER)].median() < 0.45
    # water: NIR absorbed, NDVI < 0 on every clear date where the class has enough pixels to average
    water = pd.concat([_class_series(ds, WAT, min_px=50) for ds in world.cubes.values()])
    assert len(water) > 20 and water.max() < 0 and water.mean() < -0.3


def test_spectral_shapes(world):
    ds = world.cubes["scene_000"]
    s2, lc, scl = ds["s2"].values, ds["landcover"].values, ds["s2_scl"].values
    summer = ds.time.dt.month.isin(SUMMER).values

    def mean_spectrum(cls, season=summer):
        px = (lc == cls)[None] & np.isin(scl, CLEAR_SCL) & season[:, None, None]
        return np.nanmean(np.moveaxis(s2, 1, -1)[px], axis=0)

    b = {k: i for i, k in enumerate(S2_BANDS)}
    veg = mean_spectrum(DBF)
    assert veg[b["B04"]] < veg[b["B05"]] < veg[b["B06"]] < veg[b["B07"]]  # red-edge rise
    assert veg[b["B08"]] > 5 * veg[b["B04"]] and abs(veg[b["B8A"]] - veg[b["B08"]]) < 0.05  # NIR plateau
    assert veg[b["B11"]] < veg[b["B08"]] and veg[b["B12"]] < veg[b["B11"]]  # leaf water absorption
    water = mean_spectrum(WAT)
    assert water[b["B08"]] < 0.03 and water[b["B11"]] < 0.01  # dark NIR, SWIR absorbed
    # urban: bright and spectrally flat sealed surfaces (winter, when street trees are leafless)
    urban, soil = mean_spectrum(URB, ds.time.dt.month.isin(WINTER).values), mean_spectrum(BAR)
    assert urban[b["B02"]] > 0.09 and urban[b["B08"]] / urban[b["B04"]] < 2 and np.ptp(urban) < 0.4 * np.ptp(veg)
    assert soil[b["B02"]] < soil[b["B04"]] < soil[b["B08"]] < soil[b["B11"]]  # soil line: rising


def test_crop_parcels_show_sowing_and_harvest(world):
    pre, mid, post = [], [], []
    for name in ("scene_000", "scene_001", "tower_XS-CR1"):
        ds, tr = world.cubes[name], world.truth[name]
        nd, scl = _ndvi(ds), ds["s2_scl"].values
        t = ds.time.values.astype("datetime64[D]")
        clear = np.isin(scl, [4, 5])
        spring = np.isin(tr["crop_type"].values, [2, 3])  # spring cereal, maize
        for k, y, x in zip(*np.nonzero(spring), strict=True):
            sow = tr["sow"].values[k, y, x].astype("datetime64[D]")
            harvest = tr["harvest"].values[k, y, x].astype("datetime64[D]")
            centre = tr["greenup"].values[k, y, x] + (tr["senesc"].values[k, y, x] - tr["greenup"].values[k, y, x]) / 2
            centre = centre.astype("datetime64[D]")
            ok = clear[:, y, x]
            for out, lo, hi in ((pre, sow - 30, sow), (mid, centre - 10, centre + 10), (post, harvest + 3, harvest + 30)):
                sel = ok & (t >= lo) & (t < hi)
                out.extend(nd[sel, y, x])
    assert min(len(pre), len(mid), len(post)) > 100
    assert np.mean(pre) < 0.3 and np.quantile(pre, 0.95) < 0.4  # bare soil before sowing
    assert np.mean(mid) > 0.7 and np.quantile(mid, 0.05) > 0.5  # dense canopy mid-season
    assert np.mean(post) < 0.4  # stubble / bare after harvest


def test_grassland_mowing_drops_then_regrows(world):
    ds, tr = world.cubes["tower_XS-GR1"], world.truth["tower_XS-GR1"]
    cover = tr["canopy_cover"].values  # noise-free, on the S2 dates
    t = ds.time.values.astype("datetime64[D]")
    drops = []
    for year_i, cut, y, x in zip(*np.nonzero(~np.isnat(tr["mowing"].values)), strict=True):
        tm = tr["mowing"].values[year_i, cut, y, x].astype("datetime64[D]")
        before = (t >= tm - 6) & (t < tm)
        after = (t >= tm) & (t < tm + 6)
        later = (t >= tm + 35) & (t < tm + 41)
        if before.any() and after.any() and later.any():
            drops.append((cover[before, y, x].mean(), cover[after, y, x].mean(), cover[later, y, x].mean()))
    d = np.array(drops)
    assert len(d) > 50
    assert np.median(d[:, 0] - d[:, 1]) > 0.2  # abrupt drop at the cut
    assert np.median(d[:, 2] - d[:, 1]) > 0.15  # regrowth within weeks


# ----------------------------------------------------------------------------------------- clouds


def test_clouds_clear_fraction_and_winter_overcast(world):
    lo, hi = world.config.clear_fraction_range
    by_season: dict[str, list[np.ndarray]] = {"winter": [], "summer": []}
    for name, ds in world.cubes.items():
        s2, scl = ds["s2"].values, ds["s2_scl"].values
        masked = np.isin(scl, [3, 8, 9, 10])
        # NaN exactly where clouds/shadows are, in every band
        np.testing.assert_array_equal(np.isnan(s2).any(1), masked)
        np.testing.assert_array_equal(np.isnan(s2).all(1), masked)
        clear = ~masked
        years = ds.time.dt.year.values
        months = ds.time.dt.month.values
        for y in np.unique(years):
            assert lo <= clear[years == y].mean() <= hi, (name, y)
            full = clear[(years == y) & np.isin(months, WINTER)].sum((1, 2)) == 0
            assert full.any(), (name, y)  # at least one fully overcast Dec/Jan/Feb date
        by_season["winter"].append(clear[np.isin(months, WINTER)].ravel())
        by_season["summer"].append(clear[np.isin(months, SUMMER)].ravel())
    # climatology over all cubes: cloudier winters (single years may differ, as in reality)
    assert np.concatenate(by_season["winter"]).mean() < np.concatenate(by_season["summer"]).mean() - 0.1
    all_scl = np.concatenate([ds["s2_scl"].values.ravel() for ds in world.cubes.values()])
    for code in (3, 4, 5, 6, 8, 9):
        assert (all_scl == code).any(), code


@pytest.mark.slow
def test_cloud_fraction_range_is_enforced():
    with pytest.raises(ValueError, match="clear fraction"):
        make_world(0, n_scenes=1, scene_size=16, n_towers=0, clear_fraction_range=(0.95, 1.0))


# ------------------------------------------------------------------------------------------- radar


def _class_db(ds, cls, band):
    px = ds["landcover"].values == cls
    return 10 * np.log10(np.nanmean(ds["s1"].sel(band_s1=band).values[:, px]))


def test_s1_backscatter_levels_by_class(world):
    for name in ("scene_000", "scene_001"):
        ds = world.cubes[name]
        vv = {c: _class_db(ds, c, "VV") for c in range(1, 8)}
        vh = {c: _class_db(ds, c, "VH") for c in range(1, 8)}
        for c in range(1, 8):
            assert vh[c] < vv[c] - 4, c  # cross-pol weaker for every class
        assert vv[WAT] < vv[GRA] - 7  # specular water far darker
        assert vv[GRA] < vv[ENF] and vv[GRA] < vv[DBF]  # forest volume brighter than grass
        assert vv[URB] > max(v for c, v in vv.items() if c != URB) + 2  # double bounce brightest
        # typical C-band levels (dB): water ~-20, forest ~-7.5, urban ~-3
        assert -24 < vv[WAT] < -17 and -9 < vv[ENF] < -6 and -5 < vv[URB] < -1
        # VH/VV ratio rises with vegetation volume: forest > bare soil
        assert vh[ENF] - vv[ENF] > vh[BAR] - vv[BAR] + 1.5


def test_s1_speckle_enl_and_invalid_border(world):
    ratios = []
    for name, ds in world.cubes.items():
        r = ds["s1"].values / world.truth[name]["s1_clean"].values
        ratios.append(r[np.isfinite(r)])
    r = np.concatenate(ratios)
    enl = r.mean() ** 2 / r.var()  # moment estimator on observed / noise-free intensity
    assert enl == pytest.approx(world.config.enl, rel=0.10)
    assert r.mean() == pytest.approx(1.0, abs=0.01)  # speckle is unbiased in linear power
    nan_dates = sum(int(np.isnan(ds["s1"].values).any((1, 2, 3)).sum()) for ds in world.cubes.values())
    total = sum(ds.sizes["time_s1"] for ds in world.cubes.values())
    assert 0 < nan_dates < 0.15 * total  # a few RTC border strips
    for ds in world.cubes.values():
        bad = np.isnan(ds["s1"].values).any(1)
        inner = bad[:, :, 2:-2] & ~bad[:, :, :1] & ~bad[:, :, -1:]
        assert not inner.any()  # invalid strips touch the west or east edge only


def test_s1_soil_moisture_pulses_after_rain(world):
    ds, tr = world.cubes["scene_000"], world.truth["scene_000"]
    px = ds["landcover"].values == BAR
    vv = 10 * np.log10(tr["s1_clean"].sel(band_s1="VV").values[:, px].mean(1))
    moist = tr["soil_moisture"].sel(day=pd.DatetimeIndex(ds.time_s1.values).normalize()).values
    assert np.corrcoef(vv, moist)[0, 1] > 0.9
    # the speckled data show it too once averaged over the bare-soil parcels
    obs = 10 * np.log10(np.nanmean(ds["s1"].sel(band_s1="VV").values[:, px], 1))
    assert np.corrcoef(obs, moist)[0, 1] > 0.8
    # and moisture rises after rain events: wet days follow rainy days
    rain = tr["rain"].to_series()
    sm = tr["soil_moisture"].to_series()
    assert sm[rain.shift(1) > 10].mean() > sm[rain.rolling(5).sum() == 0].mean() + 0.2


# ---------------------------------------------------------------------------------------------- GPP


def _tower_pairs(world, site):
    row = world.towers.set_index("site_id").loc[site]
    ds = world.cubes[row.cube]
    nd = _ndvi(ds)[:, row.row, row["col"]]
    ok = np.isin(ds["s2_scl"].values[:, row.row, row["col"]], [4, 5])
    days = pd.DatetimeIndex(ds.time.values).normalize()[ok]
    gpp = world.gpp[site]["GPP_NT_VUT_REF"].reindex(days).values
    f = np.isfinite(gpp)
    return nd[ok][f], gpp[f]


def test_gpp_tracks_tower_ndvi_and_is_dormant_in_winter(world):
    for site in ("XS-DB1", "XS-CR1"):  # canopies with a leaf-off / bare season
        nd, gpp = _tower_pairs(world, site)
        assert len(nd) > 60
        assert np.corrcoef(nd, gpp)[0, 1] > 0.7, site
    g = world.gpp["XS-DB1"]["GPP_NT_VUT_REF"]
    assert g[g.index.month.isin(WINTER)].mean() < 1.0  # leaf-off
    assert 8 < g[g.index.month.isin([6, 7])].mean() < 16  # summer peak of a beech forest
    assert g.quantile(0.99) < 25
    e = world.gpp["XS-EN1"]["GPP_NT_VUT_REF"]
    assert 4 < e[e.index.month.isin([6, 7])].mean() < 9  # evergreen needleleaf lower


def test_gpp_is_the_lue_model_of_the_tower_canopy(world):
    tr = world.truth["tower_XS-DB1"]
    fapar, canopy = tr["tower_fapar"].values, tr["tower_canopy"].values
    # fAPAR = 0.95 (1 - exp(-0.5 LAI)), LAI = LAI_max g: monotone in the canopy state, 0 when leaf-off
    assert np.all(np.diff(fapar[np.argsort(canopy)]) >= -1e-12) and fapar[canopy < 1e-3].max() < 0.01
    expected = 1.30 * fapar * tr["tower_par_mj"].values * tr["tower_f_t"].values * tr["tower_f_w"].values
    np.testing.assert_allclose(tr["tower_gpp_true"].values, expected, rtol=1e-12)
    # noise is modest: observed vs true
    obs = world.gpp["XS-DB1"]["GPP_NT_VUT_REF"].values
    f = np.isfinite(obs)
    assert np.corrcoef(obs[f], tr["tower_gpp_true"].values[f])[0, 1] > 0.95
    # f_T is zero below 0 deg C
    ta = tr["ta"].values
    assert np.all(tr["tower_f_t"].values[ta <= 0] == 0)


def test_flux_qc_and_gaps(world):
    for site, df in world.gpp.items():
        assert list(df.columns) == list(FLUXNET_DD_COLUMNS[1:])
        assert df.index.equals(pd.date_range("2017-01-01", "2020-12-31", name="date"))
        qc = df["NEE_VUT_REF_QC"].dropna()
        assert qc.between(0, 1).all()
        assert 0.1 < (qc < 0.7).mean() < 0.6, site  # degraded days exist, most days are usable
        assert 0 < df["GPP_NT_VUT_REF"].isna().mean() < 0.1
        assert df["TA_F"].notna().all() and df["SW_IN_F"].notna().all()


# --------------------------------------------------------------------------------- determinism, I/O


def test_same_seed_same_world_other_seed_differs(tiny_config):
    a, b = make_world(config=tiny_config), make_world(config=tiny_config)
    c = make_world(4, config=tiny_config)
    assert c.config.seed == 4 and a.config.seed == 3
    for name in a.cubes:
        for var in a.cubes[name].data_vars:
            xr.testing.assert_identical(a.cubes[name][var], b.cubes[name][var])
        assert not np.array_equal(a.cubes[name]["s2"].values, c.cubes[name]["s2"].values, equal_nan=True)
    for site in a.gpp:
        pd.testing.assert_frame_equal(a.gpp[site], b.gpp[site])
        assert not a.gpp[site].equals(c.gpp[site])
    pd.testing.assert_frame_equal(a.towers, b.towers)


def test_adding_scenes_leaves_towers_unchanged(tiny_config):
    a = make_world(config=tiny_config)
    b = make_world(config=tiny_config, n_scenes=2)
    assert set(b.cubes) - set(a.cubes) == {"scene_001"}
    for site in a.gpp:
        pd.testing.assert_frame_equal(a.gpp[site], b.gpp[site])
        name = f"tower_{site}"
        for var in a.cubes[name].data_vars:
            xr.testing.assert_identical(a.cubes[name][var], b.cubes[name][var])


def test_write_world_round_trip(tmp_path, tiny_config):
    w = make_world(config=tiny_config)
    paths = write_world(w, tmp_path)
    for name, ds in w.cubes.items():
        assert paths[name] == tmp_path / f"{name}.zarr"
        back = open_cube(paths[name], validate=True).load()
        np.testing.assert_array_equal(back["s2"].values, ds["s2"].values)
        np.testing.assert_array_equal(back["s1"].values, ds["s1"].values)
        np.testing.assert_array_equal(back["landcover"].values, ds["landcover"].values)
        assert cube_crs(back).to_epsg() == 32632
    towers = pd.read_csv(paths["towers"])
    pd.testing.assert_frame_equal(towers, w.towers)
    assert WorldConfig.from_dict(json.loads(paths["config"].read_text())) == w.config

    for site, df in w.gpp.items():
        path = paths[f"fluxnet/{site}"]
        assert path.name == fluxnet_dd_filename(site, 2019, 2020) == f"FLX_{site}_FLUXNET2015_FULLSET_DD_2019-2020_beta-3.csv"
        assert path.parent == tmp_path / "fluxnet"
        raw = pd.read_csv(path)
        assert list(raw.columns) == list(FLUXNET_DD_COLUMNS)
        assert raw["TIMESTAMP"].dtype == np.int64
        assert raw["TIMESTAMP"].iloc[0] == 20190101 and raw["TIMESTAMP"].iloc[-1] == 20201231
        np.testing.assert_array_equal(raw["TIMESTAMP"].values, df.index.strftime("%Y%m%d").astype(int))
        text = path.read_text().splitlines()
        assert text[1].startswith("20190101,")
        for col in FLUXNET_DD_COLUMNS[1:]:
            written = raw[col].to_numpy(float)
            missing = df[col].isna().to_numpy()
            assert np.all(written[missing] == -9999) and not np.any(written[~missing] == -9999)
            np.testing.assert_array_equal(written[~missing], df[col].to_numpy()[~missing])
        assert (raw["GPP_NT_VUT_REF"] == -9999).any()  # this tiny world has gaps too


def test_fluxnet_files_read_by_the_project_reader(tmp_path, tiny_config):
    fluxnet = pytest.importorskip("latentcube.sources.fluxnet")
    w = make_world(config=tiny_config)
    site, df = next(iter(w.gpp.items()))
    path = write_fluxnet_dd(df, tmp_path / fluxnet_dd_filename(site, 2019, 2020))
    got = fluxnet.read_fluxnet(path)
    np.testing.assert_allclose(got["gpp"].values, df["GPP_NT_VUT_REF"].values, equal_nan=True)
    np.testing.assert_allclose(got["nee_qc_fraction"].values, df["NEE_VUT_REF_QC"].values, equal_nan=True)
    assert list(pd.DatetimeIndex(got.index)) == list(df.index)


def test_write_fluxnet_dd_rejects_bad_input(tmp_path):
    hourly = pd.DataFrame({"GPP_NT_VUT_REF": [1.0, 2.0]}, index=pd.date_range("2020-01-01", periods=2, freq="h"))
    with pytest.raises(ValueError, match="midnight"):
        write_fluxnet_dd(hourly, tmp_path / "x.csv")
    with pytest.raises(ValueError, match="DatetimeIndex or a TIMESTAMP"):
        write_fluxnet_dd(pd.DataFrame({"GPP_NT_VUT_REF": [1.0]}), tmp_path / "x.csv")
    with pytest.raises(ValueError, match="non-numeric"):
        write_fluxnet_dd(pd.DataFrame({"X": ["a"]}, index=pd.date_range("2020-01-01", periods=1)), tmp_path / "x.csv")
    # a TIMESTAMP column of YYYYMMDD ints is accepted and written back unchanged
    df = pd.DataFrame({"TIMESTAMP": [20200101, 20200102], "GPP_NT_VUT_REF": [1.5, np.nan]})
    raw = pd.read_csv(write_fluxnet_dd(df, tmp_path / "y.csv"))
    assert raw["TIMESTAMP"].tolist() == [20200101, 20200102] and raw["GPP_NT_VUT_REF"].tolist() == [1.5, -9999]


def test_config_errors_and_round_trip():
    cfg = WorldConfig(seed=7, scene_size=32)
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown WorldConfig keys"):
        WorldConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="clear_fraction_range"):
        WorldConfig(clear_fraction_range=(0.6, 0.5))
    with pytest.raises(ValueError, match="tower_veg_types"):
        WorldConfig(tower_veg_types=("EBF",))
    with pytest.raises(ValueError, match="not projected"):
        WorldConfig(crs="EPSG:4326")
    with pytest.raises(ValueError, match=">= 8 px"):
        WorldConfig(scene_size=4)
    with pytest.raises(TypeError, match="unknown WorldConfig fields"):
        make_world(0, scene_sise=64)


@pytest.mark.slow
def test_default_world_is_complete():
    w = make_world()  # its run time is a benchmark figure (benchmarks/RESULTS.md), not asserted here
    assert len([n for n in w.cubes if n.startswith("scene_")]) == 3
    assert sorted(set(w.towers.veg_type)) == ["CRO", "DBF", "ENF", "GRA"] and len(w.towers) == 6
    lo, hi = w.config.clear_fraction_range
    for name, ds in w.cubes.items():
        validate_cube(ds, require_s1=True)
        n = 128 if name.startswith("scene_") else 32
        assert ds.sizes["y"] == ds.sizes["x"] == n
        clear = np.isfinite(ds["s2"].values).all(1)
        years = ds.time.dt.year.values
        for y in np.unique(years):
            assert lo <= clear[years == y].mean() <= hi


def test_cli_synth_sizes_a_small_world(tmp_path, monkeypatch, capsys):
    """`latentcube synth --scenes 2 --scene-size 48 --towers 0`: a small world for trials, from the command line."""
    from latentcube.cli import main
    from latentcube.cube import open_cube

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", "small", "--scenes", "2", "--scene-size", "48", "--towers", "0"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.split() == ["small/scene_000.zarr", "small/scene_001.zarr"]
    ds = open_cube(tmp_path / "small" / "scene_001.zarr")
    assert ds.sizes["y"] == ds.sizes["x"] == 48 and not list((tmp_path / "small").glob("tower_*"))

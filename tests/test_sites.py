"""Site planner acceptance: Table I mix, separation, reproducibility, splits, periods, I/O, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentcube.sources.sites import (
    ESA_CCI_CLASSES,
    PLAN_COLUMNS,
    TABLE_I,
    SiteError,
    haversine_km,
    plan_sites,
    read_plan,
    write_plan,
)


def europe_landcover(seed: int = 1, res: float = 0.05) -> xr.DataArray:
    """Seeded class raster (codes 1..7 of latentcube) over 10W-30E, 35N-60N: 0.5-degree blocks of random
    classes so every class is common and spatially clustered."""
    rng = np.random.default_rng(seed)
    blocks = rng.choice(np.arange(1, 8), size=(50, 80), p=[0.15, 0.15, 0.15, 0.25, 0.08, 0.12, 0.10])
    cells = int(round(0.5 / res))
    codes = np.kron(blocks, np.ones((cells, cells), dtype=int)).astype("uint8")
    lat = 60 - res * (np.arange(codes.shape[0]) + 0.5)
    lon = -10 + res * (np.arange(codes.shape[1]) + 0.5)
    return xr.DataArray(codes, dims=("lat", "lon"), coords={"lat": lat, "lon": lon})


@pytest.fixture(scope="module")
def plan() -> pd.DataFrame:
    return plan_sites(europe_landcover(), n=250, class_map="latentcube", seed=0)


def test_haversine_known_distance():
    # one degree of latitude = 2*pi*6371.0088/360 = 111.195 km; pole to pole = pi*R
    assert haversine_km(0, 0, 0, 1) == pytest.approx(111.19508, rel=1e-6)
    assert haversine_km(10, -90, 10, 90) == pytest.approx(np.pi * 6371.0088)


def test_layout_and_class_proportions(plan):
    assert list(plan.columns) == list(PLAN_COLUMNS)
    assert len(plan) == 500 and plan["site_id"].nunique() == 250 and plan["cube_id"].is_unique
    sites = plan.drop_duplicates("site_id")
    share = sites["stratum"].value_counts(normalize=True)
    for stratum, target in TABLE_I.items():
        assert abs(share.get(stratum, 0.0) - target) <= 0.05, (stratum, share.get(stratum))
    # "others" never contains water; each named stratum is its own class
    assert "water" not in set(sites["landcover"])
    named = sites[sites["stratum"] != "others"]
    assert (named["stratum"] == named["landcover"]).all()
    assert set(sites.loc[sites["stratum"] == "others", "landcover"]) <= {"cropland", "bare_soil"}


def test_min_separation_holds_for_every_pair(plan):
    sites = plan.drop_duplicates("site_id")
    lon, lat = sites["lon"].to_numpy(), sites["lat"].to_numpy()
    d = haversine_km(lon[:, None], lat[:, None], lon[None, :], lat[None, :])
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 50.0
    assert ((-10 <= lon) & (lon <= 30) & (35 <= lat) & (lat <= 60)).all()


def test_same_seed_same_plan_other_seed_other_plan(plan):
    again = plan_sites(europe_landcover(), n=250, class_map="latentcube", seed=0)
    pd.testing.assert_frame_equal(plan, again)
    other = plan_sites(europe_landcover(), n=250, class_map="latentcube", seed=1)
    assert not np.allclose(plan["lon"].to_numpy(), other["lon"].to_numpy())


def test_splits_per_site_and_periods(plan):
    assert plan.groupby("site_id")["split"].nunique().max() == 1
    sites = plan.drop_duplicates("site_id")["split"].value_counts()
    # 250 sites x (0.75, 0.17, 0.08) = 187.5, 42.5, 20 -> largest remainder 188, 42, 20 (tie to the first)
    assert sites.to_dict() == {"train": 188, "val": 42, "test": 20}
    for _, g in plan.groupby("site_id"):
        g = g.sort_values("period")
        assert list(g["period"]) == [1, 2]
        assert ((g["end"] - g["start"]).dt.days.isin([364, 365])).all()  # 12-month calendar years
        gap = g["start"].iloc[1] - g["end"].iloc[0]
        assert gap >= pd.Timedelta(days=365)  # at least one year between the two periods
    assert plan["start"].min() >= pd.Timestamp("2017-01-01") and plan["end"].max() <= pd.Timestamp("2024-12-31")


def test_write_read_round_trip(plan, tmp_path):
    for name in ("plan.csv", "plan.geojson"):
        back = read_plan(write_plan(plan, tmp_path / name))
        pd.testing.assert_frame_equal(back, plan, check_dtype=False, check_exact=False, rtol=1e-9)
    with pytest.raises(SiteError, match="unknown plan format '.txt'"):
        write_plan(plan, tmp_path / "plan.txt")


def test_impossible_request_says_how_many_were_placed():
    small = europe_landcover().sel(lon=slice(0, 3), lat=slice(50, 47))  # about 210 x 330 km
    with pytest.raises(SiteError, match=r"could place only \d+ of 250 sites.*lower min_separation_km"):
        plan_sites(small, n=250, class_map="latentcube", seed=0)


def test_esa_cci_codes_and_projected_raster():
    assert ESA_CCI_CLASSES[71] == "needleleaf_forest" and ESA_CCI_CLASSES[62] == "broadleaf_forest"
    assert ESA_CCI_CLASSES[130] == "grassland" and ESA_CCI_CLASSES[190] == "urban" and ESA_CCI_CLASSES[210] == "water"
    # ESA CCI-coded raster on a projected grid (ETRS89-LAEA, EPSG:3035), 5 km pixels, 1000 x 1000 km
    rng = np.random.default_rng(3)
    codes = rng.choice([10, 62, 71, 130, 190, 210], size=(200, 200))
    x = 4_000_000 + 5000 * (np.arange(200) + 0.5)
    y = 3_000_000 - 5000 * (np.arange(200) + 0.5)
    da = xr.DataArray(codes, dims=("y", "x"), coords={"y": y, "x": x}, attrs={"crs_wkt": "EPSG:3035"})
    p = plan_sites(da, n=20, min_separation_km=50, seed=2, periods_per_site=1)
    assert len(p) == 20 and set(p["period"]) == {1}
    lon, lat = p["lon"].to_numpy(), p["lat"].to_numpy()
    assert (lon > 0).all() and (lon < 30).all() and (lat > 40).all() and (lat < 60).all()  # central Europe
    d = haversine_km(lon[:, None], lat[:, None], lon[None, :], lat[None, :])
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 50


def test_bad_arguments():
    lc = europe_landcover()
    with pytest.raises(SiteError, match="proportions sum to 0.900"):
        plan_sites(lc, class_map="latentcube", proportions={"grassland": 0.9})
    with pytest.raises(SiteError, match="no two calendar years in 2019-2020"):
        plan_sites(lc, class_map="latentcube", years=(2019, 2020))
    with pytest.raises(SiteError, match="unknown class_map"):
        plan_sites(lc, class_map="corine")
    with pytest.raises(SiteError, match="no such land-cover file"):
        plan_sites("/nonexistent/esa_cci.tif")


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # rasterio/affine internals
def test_esa_cci_netcdf_and_geotiff_files_with_bbox(tmp_path):
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(5)
    blocks = rng.choice([10, 62, 71, 130, 190, 210, 0], size=(20, 40))
    codes = np.kron(blocks, np.ones((10, 10), dtype=int)).astype("uint8")  # 0.1 deg pixels, 1-degree blocks
    lat = 60 - 0.1 * (np.arange(200) + 0.5)
    lon = -10 + 0.1 * (np.arange(400) + 0.5)
    # ESA CCI NetCDF layout: lccs_class (time=1, lat, lon)
    nc = tmp_path / "ESACCI-LC.nc"
    xr.Dataset({"lccs_class": (("time", "lat", "lon"), codes[None])},
               coords={"time": [pd.Timestamp("2020-01-01")], "lat": lat, "lon": lon}).to_netcdf(nc)
    tif = tmp_path / "ESACCI-LC.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=400, height=200, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=Affine(0.1, 0, -10, 0, -0.1, 60)) as dst:
        dst.write(codes, 1)
    bbox = (0.0, 45.0, 20.0, 55.0)
    plans = [plan_sites(p, bbox=bbox, n=30, seed=4) for p in (nc, tif)]
    for p in plans:
        assert len(p) == 60
        assert ((p["lon"] >= 0) & (p["lon"] <= 20) & (p["lat"] >= 45) & (p["lat"] <= 55)).all()
        assert not set(p["landcover"]) & {"water", "no_data"}
    # same pixels, same seed: the two file formats give the same plan
    pd.testing.assert_frame_equal(plans[0], plans[1])


def test_plan_is_readable_by_the_fetcher(tmp_path, plan):
    stac = pytest.importorskip("latentcube.sources.stac")
    for name in ("plan.csv", "plan.geojson"):
        got = stac.read_plan(write_plan(plan, tmp_path / name))
        assert list(got["cube_id"]) == list(plan["cube_id"])
        np.testing.assert_allclose(got["lon"].to_numpy(float), plan["lon"].to_numpy(), rtol=1e-12)

"""Offline tests of latentcube.sources.stac against small local GeoTIFFs and PC-style STAC items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pystac
import pytest
import xarray as xr
from stac_fixtures import DN_DEFAULT, FakeClient, center_lonlat, s1_item, s2_item

from latentcube.constants import S2_BANDS
from latentcube.cube import CubeError, new_cube, open_cube, validate_cube
from latentcube.sources.masks import SCLMask
from latentcube.sources.stac import (
    COMPLETE_MARKER,
    boa_offset,
    cube_is_complete,
    dedupe_s2_items,
    fetch_cube,
    fetch_sites,
    make_geobox,
    read_plan,
    utm_crs,
)

# odc-geo/shapely deprecation chatter (library internals), not our behaviour
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")

START, END = "2021-01-01", "2022-12-31"


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[pystac.Item]:
    d = tmp_path_factory.mktemp("stac")
    b05 = np.full((10, 10), 1500, "uint16")
    b05[:, 5:] = 3500  # a vertical edge at 20 m column 5 (x = 500100 m)
    b02 = np.full((20, 20), 1100, "uint16")
    b02[0, 0] = 0  # nodata pixel
    scl = np.full((10, 10), 4, "uint8")
    scl[2, 3], scl[5, 6], scl[7, 1] = 9, 3, 11  # cloud high, shadow, snow
    vv = np.full((20, 20), 0.05, "float32")
    vv[0, 0] = -32768.0  # RTC nodata
    return [
        # D1: pre-04.00 baseline, no offset.
        s2_item(d, "S2A_D1", "2021-06-05T10:30:21Z", "03.01", dn={"B05": b05, "B02": b02}, scl=scl, cloud_cover=10),
        # D2: two tiles of one pass (west / east halves), both >= 04.00: mosaicked into one date.
        s2_item(d, "S2B_D2_W", "2022-06-10T10:30:21Z", "05.00", valid_cols_20m=slice(0, 5), tile="32TMR", cloud_cover=50),
        s2_item(d, "S2B_D2_E", "2022-06-10T10:30:25Z", "04.00", valid_cols_20m=slice(5, 10), tile="32TNR", cloud_cover=50),
        # D3: same day, mixed baselines: the offset must follow each tile, not the date.
        s2_item(d, "S2A_D3_W", "2022-06-20T10:30:21Z", "05.00", dn={b: 1500 for b in DN_DEFAULT},
                valid_cols_20m=slice(0, 5), tile="32TMR", cloud_cover=5),
        s2_item(d, "S2A_D3_E", "2022-06-20T10:30:25Z", "03.01", dn={b: 500 for b in DN_DEFAULT},
                valid_cols_20m=slice(5, 10), tile="32TNR", cloud_cover=5),
        # S1: a descending and an ascending pass on the same day, then another descending one.
        s1_item(d, "S1A_a", "2021-06-03T05:40:00Z", "descending", 66, vv, 0.01),
        s1_item(d, "S1A_b", "2021-06-03T17:20:00Z", "ascending", 88, 0.08, 0.02),
        s1_item(d, "S1A_c", "2022-06-12T05:40:00Z", "descending", 66, 0.11, 0.03),
    ]


@pytest.fixture(scope="module")
def raw(items) -> tuple[xr.Dataset, FakeClient, list[str]]:
    client = FakeClient(items)
    signed: list[str] = []

    def signer(item):
        signed.append(item.id)
        return item

    ds = fetch_cube(center=center_lonlat(), edge_m=200, start=START, end=END, catalog=client, sign=signer,
                    max_cloud_cover=60, mask=None)
    return ds, client, signed


# ------------------------------------------------------------------------------------ query / API


def test_query_sent_to_stac_api(raw):
    ds, client, signed = raw
    s2_call, s1_call = client.calls
    assert s2_call["collections"] == ["sentinel-2-l2a"]
    assert s2_call["datetime"] == "2021-01-01/2022-12-31"
    assert s2_call["query"] == {"eo:cloud_cover": {"lt": 60.0}}
    w, s, e, n = s2_call["bbox"]
    lon, lat = center_lonlat()
    assert w < lon < e and s < n and s < lat < n
    assert e - w == pytest.approx(200 / (111320 * np.cos(np.radians(lat))), rel=0.02)  # 200 m edge
    assert s1_call == {"collections": ["sentinel-1-rtc"], "bbox": s2_call["bbox"], "datetime": "2021-01-01/2022-12-31"}
    # every item is signed exactly once before loading
    assert sorted(signed) == sorted(["S2A_D1", "S2B_D2_W", "S2B_D2_E", "S2A_D3_W", "S2A_D3_E", "S1A_a", "S1A_b", "S1A_c"])
    assert ds.attrs["stac_s2_items"] == 5 and ds.attrs["stac_s1_items"] == 3
    assert '"sentinel-1-rtc"' in ds.attrs["stac_collections"]
    assert '"lt": 60.0' in ds.attrs["stac_query"]


def test_bbox_mode_passes_bbox_unchanged(items):
    client = FakeClient(items)
    lon, lat = center_lonlat()
    bbox = (lon - 0.001, lat - 0.0008, lon + 0.001, lat + 0.0008)
    ds = fetch_cube(bbox=bbox, start="2021-06-01", end="2021-06-30", catalog=client, sign=False,
                    include_s1=False, mask=None)
    assert client.calls[0]["bbox"] == list(bbox)
    assert "query" not in client.calls[0]  # no cloud filter unless asked
    # the local filter is not applied to a client: the fake returned everything; the grid is 10 m aligned
    assert np.all(np.mod(ds.x.values - 5, 10) == 0) and np.all(np.mod(ds.y.values - 5, 10) == 0)
    assert "s1" not in ds


# ----------------------------------------------------------------------------------- S2 contents


def test_cube_layout_lazy_and_valid(raw):
    ds, _, _ = raw
    assert ds["s2"].dims == ("time", "band", "y", "x") and ds["s2"].dtype == np.float32
    assert ds["s2"].chunks is not None  # lazy
    assert [str(b) for b in ds.band.values] == list(S2_BANDS)
    assert pd.DatetimeIndex(ds.time.values).strftime("%Y-%m-%d").tolist() == ["2021-06-05", "2022-06-10", "2022-06-20"]
    assert ds.sizes["y"] == 20 and ds.sizes["x"] == 20
    np.testing.assert_array_equal(ds.x.values, 500005 + 10 * np.arange(20))
    np.testing.assert_array_equal(ds.y.values, 5000195 - 10 * np.arange(20))
    assert "32632" in ds["spatial_ref"].attrs["crs_wkt"] or "UTM zone 32N" in ds["spatial_ref"].attrs["crs_wkt"]
    validate_cube(ds.compute(), require_s1=True)


def test_band_order_and_pre_0400_scaling(raw):
    ds, _, _ = raw
    pixel = ds["s2"].isel(time=0, y=10, x=3).values  # west of the B05 edge
    expected = np.array([DN_DEFAULT[b] for b in S2_BANDS], "float32") / np.float32(10000)
    np.testing.assert_array_equal(pixel, expected)


def test_baseline_0400_offset_and_same_day_mosaic(raw):
    ds, _, _ = raw
    d2 = ds["s2"].isel(time=1).values  # two tiles, baselines 05.00 and 04.00, one date
    expected = (np.array([DN_DEFAULT[b] for b in S2_BANDS], "float32") - 1000) / np.float32(10000)
    for x in (0, 9, 10, 19):  # both halves of the mosaic
        np.testing.assert_allclose(d2[:, 3, x], expected, rtol=0, atol=1e-7)
    # mixed baselines on one day: DN 1500 at 05.00 and DN 500 at 03.01 are both reflectance 0.05
    d3 = ds["s2"].isel(time=2).values
    assert np.isfinite(d3).all()
    np.testing.assert_allclose(d3, 0.05, rtol=0, atol=1e-7)


def test_nodata_dn0_is_nan(raw):
    ds, _, _ = raw
    b02 = ds["s2"].isel(time=0).sel(band="B02").values
    assert np.isnan(b02[0, 0]) and np.isfinite(b02).sum() == 399
    assert np.isfinite(ds["s2"].isel(time=0, y=0, x=0).drop_sel(band="B02").values).all()


def test_20m_bands_bilinear_and_scl_nearest(raw):
    ds, _, _ = raw
    row = ds["s2"].isel(time=0, y=7).sel(band="B05").values * 10000
    # uniform regions keep the 20 m value in every 10 m pixel; at the edge bilinear weights are 3/4, 1/4
    np.testing.assert_allclose(row[:9], 1500, atol=1e-3)
    np.testing.assert_allclose(row[9:11], [2000, 3000], atol=1e-3)
    np.testing.assert_allclose(row[11:], 3500, atol=1e-3)
    scl = ds["s2_scl"].isel(time=0).values
    assert scl.dtype == np.uint8
    expected = np.full((20, 20), 4, "uint8")
    expected[4:6, 6:8], expected[10:12, 12:14], expected[14:16, 2:4] = 9, 3, 11
    np.testing.assert_array_equal(scl, expected)


# ------------------------------------------------------------------------------------------- S1


def test_s1_same_grid_exact_linear_values_and_orbits(raw):
    ds, _, _ = raw
    s1 = ds["s1"]
    assert s1.dims == ("time_s1", "band_s1", "y", "x") and s1.dtype == np.float32
    assert [str(b) for b in ds.band_s1.values] == ["VV", "VH"]
    np.testing.assert_array_equal(s1.x.values, ds.x.values)
    np.testing.assert_array_equal(s1.y.values, ds.y.values)
    # the two passes of 2021-06-03 stay separate observations
    assert pd.DatetimeIndex(ds.time_s1.values).strftime("%Y-%m-%dT%H:%M").tolist() == [
        "2021-06-03T05:40", "2021-06-03T17:20", "2022-06-12T05:40"]
    assert ds.orbit_state.values.tolist() == ["descending", "ascending", "descending"]
    assert ds.relative_orbit.values.tolist() == [66, 88, 66]
    v = s1.values
    np.testing.assert_array_equal(v[:, :, 5, 5], np.array([[0.05, 0.01], [0.08, 0.02], [0.11, 0.03]], "float32"))
    assert np.isnan(v[0, 0, 0, 0]) and np.isfinite(v[0, 0]).sum() == 399  # -32768 -> NaN


# ---------------------------------------------------------------------------------------- masks


def test_fetch_with_scl_mask_and_min_valid_fraction(items):
    ds = fetch_cube(center=center_lonlat(), edge_m=200, start=START, end=END, catalog=list(items), sign=False,
                    include_s1=False, mask="scl").compute()
    d1 = ds["s2"].isel(time=0).values
    masked = np.isnan(d1).all(axis=0)
    expected = np.zeros((20, 20), bool)
    expected[4:6, 6:8] = expected[10:12, 12:14] = True  # cloud (9) and shadow (3); snow (11) kept
    expected[0, 0] = False  # only B02 is NaN there, other bands valid
    np.testing.assert_array_equal(masked, expected)
    assert np.isfinite(d1[:, 14:16, 2:4]).all()
    # 8 masked pixels of 400 on D1 (valid 0.98); with snow also masked 12 (0.97) -> dropped at 0.975
    kept = fetch_cube(center=center_lonlat(), edge_m=200, start=START, end=END, catalog=list(items), sign=False,
                      include_s1=False, mask=SCLMask(mask_snow=True), min_valid_fraction=0.975)
    assert pd.DatetimeIndex(kept.time.values).strftime("%Y-%m-%d").tolist() == ["2022-06-10", "2022-06-20"]


def test_local_item_list_applies_cloud_and_date_filters(items):
    ds = fetch_cube(center=center_lonlat(), edge_m=200, start="2021-06-01", end="2022-06-30", catalog=list(items),
                    sign=False, max_cloud_cover=20, mask=None)
    # D2 (50 % cloud) filtered by the query, S1 of 2022-06-12 inside the dates
    assert pd.DatetimeIndex(ds.time.values).strftime("%Y-%m-%d").tolist() == ["2021-06-05", "2022-06-20"]
    assert ds.sizes["time_s1"] == 3


# ---------------------------------------------------------------------------------------- errors


def test_empty_search_error_names_area_dates_and_fix(items):
    with pytest.raises(CubeError, match=r"no Sentinel-2 items found .*between 2023-01-01 and 2023-12-31.*widen the dates or raise max_cloud_cover"):
        fetch_cube(center=center_lonlat(), edge_m=200, start="2023-01-01", end="2023-12-31", catalog=list(items), sign=False)
    with pytest.raises(CubeError, match=r"eo:cloud_cover < 1.*raise max_cloud_cover"):
        fetch_cube(center=center_lonlat(), edge_m=200, start=START, end=END, catalog=list(items), sign=False,
                   max_cloud_cover=1)
    s2_only = [it for it in items if it.collection_id == "sentinel-2-l2a"]
    with pytest.raises(CubeError, match=r"no Sentinel-1 RTC items.*include_s1=False"):
        fetch_cube(center=center_lonlat(), edge_m=200, start=START, end=END, catalog=FakeClient(s2_only), sign=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="bad bbox"):
        fetch_cube(bbox=(10.0, 50.0, 9.0, 51.0), start=START, end=END, catalog=[])
    with pytest.raises(ValueError, match="bad bbox"):
        fetch_cube(bbox=(9.0, 50.0, 10.0), start=START, end=END, catalog=[])
    with pytest.raises(ValueError, match=r"start 2022-01-01 must be before end 2021-01-01"):
        fetch_cube(center=(9, 45), edge_m=100, start="2022-01-01", end="2021-01-01", catalog=[])
    with pytest.raises(ValueError, match="exactly one of bbox"):
        fetch_cube(bbox=(9, 45, 9.1, 45.1), center=(9, 45), edge_m=100, start=START, end=END, catalog=[])
    with pytest.raises(ValueError, match="needs edge_m"):
        fetch_cube(center=(9, 45), start=START, end=END, catalog=[])
    with pytest.raises(ValueError, match=r"unknown S2 bands \['B10'\]"):
        fetch_cube(center=(9, 45), edge_m=100, start=START, end=END, s2_bands=["B02", "B10"], catalog=[])


# ----------------------------------------------------------------------------------- grid, items


def test_geobox_and_utm():
    assert utm_crs(9.1, 45.1).to_epsg() == 32632
    assert utm_crs(-70.5, -33.4).to_epsg() == 32719
    gb = make_geobox(center=center_lonlat(), edge_m=200)
    assert gb.shape == (20, 20) and gb.crs.epsg == 32632
    assert tuple(gb.affine)[:6] == (10.0, 0.0, 500000.0, 0.0, -10.0, 5000200.0)
    gb2 = make_geobox(bbox=(9.0, 45.0, 9.01, 45.01), resolution=10)
    a = gb2.affine
    assert a.c % 10 == 0 and a.f % 10 == 0 and gb2.crs.epsg == 32632
    gb3 = make_geobox(center=(9.0, 45.0), edge_m=1000, crs="EPSG:3035")
    assert gb3.crs.epsg == 3035 and gb3.shape == (100, 100)


def _item(id_, props, dt="2022-06-10T10:30:21Z"):
    return pystac.Item(id_, None, None, pd.Timestamp(dt).to_pydatetime(), props, collection="sentinel-2-l2a")


def test_boa_offset_rules():
    assert boa_offset(_item("a", {"s2:processing_baseline": "05.00"})) == -1000.0
    assert boa_offset(_item("b", {"s2:processing_baseline": "04.00"})) == -1000.0
    assert boa_offset(_item("c", {"s2:processing_baseline": "03.01"})) == 0.0
    assert boa_offset(_item("d", {"s2:processing_baseline": "05.00", "earthsearch:boa_offset_applied": True})) == 0.0
    assert boa_offset(_item("e", {}, "2022-02-01T10:00:00Z")) == -1000.0  # no baseline: by date
    assert boa_offset(_item("f", {}, "2021-02-01T10:00:00Z")) == 0.0


def test_dedupe_keeps_newest_baseline_per_tile_and_time():
    old = _item("old", {"s2:mgrs_tile": "32TMR", "s2:processing_baseline": "02.09"})
    new = _item("new", {"s2:mgrs_tile": "32TMR", "s2:processing_baseline": "05.00"})
    other = _item("other", {"s2:mgrs_tile": "32TNR", "s2:processing_baseline": "02.09"})
    assert [it.id for it in dedupe_s2_items([new, old, other])] == ["new", "other"]


# ------------------------------------------------------------------------------------ fetch_sites


def _plan(n=2):
    lon, lat = center_lonlat()
    return pd.DataFrame({
        "cube_id": [f"c{i}" for i in range(n)], "site_id": [f"s{i}" for i in range(n)], "lon": [lon] * n,
        "lat": [lat] * n, "edge_m": [200] * n, "start": [START] * n, "end": [END] * n, "split": ["train"] * n,
        "landcover": ["cropland"] * n,
    })


class CountingLoader:
    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, **kw):
        self.calls.append(kw)
        rng = np.random.default_rng(len(self.calls))
        return new_cube(s2=rng.uniform(0, 0.5, (2, 10, 4, 4)), time=["2021-01-01", "2021-01-11"],
                        y=5000195 - 10 * np.arange(4), x=500005 + 10 * np.arange(4), crs="EPSG:32632")


def test_fetch_sites_writes_skips_and_redoes_partial(tmp_path):
    loader = CountingLoader()
    paths = fetch_sites(_plan(), tmp_path, fetch=loader, progress=False, max_cloud_cover=30)
    assert [p.name for p in paths] == ["c0.zarr", "c1.zarr"] and all(cube_is_complete(p) for p in paths)
    assert len(loader.calls) == 2
    assert loader.calls[0]["center"] == pytest.approx(center_lonlat()) and loader.calls[0]["max_cloud_cover"] == 30
    cube = open_cube(paths[0], validate=True)
    assert cube.attrs["site_id"] == "s0" and cube.attrs["split"] == "train" and cube.attrs["landcover"] == "cropland"
    assert not list(tmp_path.glob(".*.partial"))

    assert fetch_sites(_plan(), tmp_path, fetch=loader, progress=False) == paths
    assert len(loader.calls) == 2  # finished cubes are not fetched again

    (paths[1] / COMPLETE_MARKER).unlink()  # an interrupted cube: data there, no completion marker
    (tmp_path / ".c0.zarr.partial").mkdir()  # leftover of a crashed write
    fetch_sites(_plan(), tmp_path, fetch=loader, progress=False)
    assert len(loader.calls) == 3 and loader.calls[-1]["center"] == pytest.approx(center_lonlat())
    assert cube_is_complete(paths[1]) and not (tmp_path / ".c0.zarr.partial").exists()


def test_fetch_sites_failure_leaves_no_finished_cube(tmp_path):
    def broken(**kw):
        raise CubeError("no Sentinel-2 items found")

    with pytest.raises(CubeError, match="no Sentinel-2 items found"):
        fetch_sites(_plan(1), tmp_path, fetch=broken, progress=False)
    assert not cube_is_complete(tmp_path / "c0.zarr")
    assert fetch_sites(_plan(1), tmp_path, fetch=broken, progress=False, on_error="skip") == []


def test_fetch_sites_end_to_end_from_csv(tmp_path, items):
    plan = tmp_path / "plan.csv"
    _plan(1).to_csv(plan, index=False)
    (path,) = fetch_sites(plan, tmp_path / "cubes", catalog=list(items), sign=False, progress=False)
    cube = open_cube(path, validate=True)
    assert cube.sizes["time"] == 3 and cube.sizes["time_s1"] == 3
    assert cube["orbit_state"].values.tolist() == ["descending", "ascending", "descending"]
    np.testing.assert_allclose(cube["s2"].isel(time=2).values, 0.05, atol=1e-7)


def test_read_plan_errors(tmp_path):
    with pytest.raises(ValueError, match=r"lacks columns \['edge_m'\]"):
        read_plan(_plan().drop(columns="edge_m"))
    dup = _plan()
    dup["cube_id"] = "same"
    with pytest.raises(ValueError, match="duplicate cube_id"):
        read_plan(dup)
    gj = tmp_path / "plan.geojson"
    gj.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Point", '
                  '"coordinates": [9.0, 45.0]}, "properties": {"cube_id": "g1", "edge_m": 100, '
                  '"start": "2021-01-01", "end": "2021-12-31"}}]}')
    df = read_plan(gj)
    assert df.loc[0, "lon"] == 9.0 and df.loc[0, "lat"] == 45.0 and df.loc[0, "cube_id"] == "g1"


def test_dates_from_a_plan_read_as_timestamps_are_inclusive_days():
    from latentcube.sources.stac._search import _datetime_range

    rng, t0, t1 = _datetime_range(pd.Timestamp("2021-01-01"), pd.Timestamp("2021-12-31"))
    assert rng == "2021-01-01/2021-12-31"
    assert t0 == pd.Timestamp("2021-01-01") and t1 == pd.Timestamp("2021-12-31 23:59:59.999999")
    assert _datetime_range("2021-01-01T06:00:00Z", "2021-01-02")[0] == "2021-01-01T06:00:00Z/2021-01-02"


def test_an_unreachable_stac_api_is_one_error_with_the_fix():
    """Offline (or a wrong URL): a StacError naming the URL, the cause and the fix, not pystac_client's APIError;
    a connection that breaks during the search alike. Port 9 on this machine refuses at once: no network is used."""
    from latentcube.errors import LatentcubeError
    from latentcube.sources.stac import StacError, search_items

    kw = dict(collections=["sentinel-2-l2a"], bbox=[4.0, 50.0, 4.1, 50.1], datetime="2020-01-01/2020-02-01")
    with pytest.raises(StacError, match=r"^cannot search the STAC API at http://127\.0\.0\.1:9/api \(APIError: .*"
                                        r"Connection refused.*\)\. Fix: check the network connection") as err:
        search_items("http://127.0.0.1:9/api", **kw)
    assert isinstance(err.value, LatentcubeError)

    class Broken:
        self_href = "https://example.test/stac"

        def search(self, **_):
            raise ConnectionResetError("connection reset by peer")

    with pytest.raises(StacError, match=r"at https://example\.test/stac \(ConnectionResetError: connection reset"):
        search_items(Broken(), **kw)

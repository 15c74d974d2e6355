"""Importers: real exports in /work/shared/data (exact values against the raw files) and small
synthetic NetCDF/GeoTIFF files for band maps, scaling, nodata, time dimensions and error messages."""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import SHARED_DATA

from latentcube.cube import CubeError, cube_crs, open_cube, save_cube, validate_cube
from latentcube.sources.importers import canonical_band_name, decode_openeo_s1, import_cube

DATA = SHARED_DATA  # $LATENTCUBE_SHARED_DATA or ../shared/data (tests/conftest.py)
WC = DATA / "worldcereal_chip_31UES_2018_2019"
OE = DATA / "openeo_cdse_belgium_2023"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"real data folder {DATA} absent")


def _one(pattern: str) -> str:
    return glob.glob(str(WC / pattern))[0]


def _raw(path: str, var: str) -> np.ndarray:
    """Raw stored integers, read with netCDF4 directly (no scaling, no masking, unsigned view)."""
    with netCDF4.Dataset(path) as nc:
        v = nc.variables[var]
        v.set_auto_maskandscale(False)
        a = np.asarray(v[:])
        if getattr(v, "_Unsigned", "") == "true":
            a = a.view(a.dtype.str.replace("i", "u"))
        return a


# --------------------------------------------------------------------------------- WorldCereal


@pytest.fixture(scope="module")
def wc_cube():
    if not DATA.exists():
        pytest.skip("real data absent")
    return import_cube(
        [_one("S2_L2A_10m_*.nc"), _one("S2_L2A_20m_*.nc")],
        _one("S1_GRD-*.nc"),
        preset="worldcereal",
        layers={"landcover": (_one("OUTPUT_POLY-110_*.nc"), "LC"), "croptype": (_one("OUTPUT_POLY-110_*.nc"), "CT")},
    )


@needs_data
def test_worldcereal_chip_is_a_valid_cube(wc_cube):
    ds = validate_cube(wc_cube, require_s1=True)
    assert ds.sizes == {"time": 72, "band": 10, "y": 64, "x": 64, "time_s1": 80, "band_s1": 2}
    assert cube_crs(ds).to_epsg() == 32631
    assert ds["s2_scl"].dtype == np.uint8
    assert set(ds["orbit_state"].values) == {"ascending"}  # from the S1 file name
    assert str(ds.time.values[0])[:19] == "2018-08-04T10:50:22"


@needs_data
def test_worldcereal_10m_value_equals_raw_dn_times_1e4(wc_cube):
    scl20 = _raw(_one("S2_L2A_20m_*.nc"), "SCL")
    b04 = _raw(_one("S2_L2A_10m_*.nc"), "B04")
    yy, xx = 10, 21
    # first date whose SCL (20 m pixel covering this 10 m pixel) is vegetation/bare soil: not masked
    t = int(np.flatnonzero(np.isin(scl20[:, yy // 2, xx // 2], (4, 5)))[0])
    expected = np.float32(b04[t, yy, xx] * 1e-4)
    assert wc_cube["s2"].sel(band="B04").values[t, yy, xx] == pytest.approx(expected, rel=1e-6)


@needs_data
def test_worldcereal_20m_band_edge_is_exact_and_interior_is_bilinear(wc_cube):
    raw = _raw(_one("S2_L2A_20m_*.nc"), "B11").astype("float64") * 1e-4
    scl20 = _raw(_one("S2_L2A_20m_*.nc"), "SCL")
    clear = np.isin(scl20, (4, 5))
    t = int(np.flatnonzero(clear[:, :3, :3].all(axis=(1, 2)))[0])
    got = wc_cube["s2"].sel(band="B11").values[t]
    # 10 m pixel (0, 0) has its centre a quarter 20 m pixel inside the 20 m pixel (0, 0): with edge
    # clamping the bilinear value is the 20 m value itself.
    assert got[0, 0] == pytest.approx(raw[t, 0, 0], rel=1e-6)
    # 10 m pixel (2, 2): centre x = 574705 between 20 m centres 574690 (col 0) and 574710 (col 1):
    # weights 0.25 / 0.75 on each axis (same for y, whose 20 m centres are 5622430 and 5622410
    # around 5622415).
    w = np.array([0.25, 0.75])
    expected = float(w @ raw[t, 0:2, 0:2] @ w)
    assert got[2, 2] == pytest.approx(expected, rel=1e-5)


@needs_data
def test_worldcereal_scl_nearest_and_masking(wc_cube):
    scl20 = _raw(_one("S2_L2A_20m_*.nc"), "SCL")
    scl = wc_cube["s2_scl"].values
    # a 20 m pixel covers exactly 2x2 10 m pixels
    for dy in (0, 1):
        for dx in (0, 1):
            np.testing.assert_array_equal(scl[:, dy::2, dx::2], scl20)
    masked = np.isin(scl, (3, 8, 9, 10))
    assert masked.any()
    assert np.isnan(wc_cube["s2"].values.transpose(1, 0, 2, 3)[:, masked]).all()


@needs_data
def test_worldcereal_s1_is_decoded_db_to_linear(wc_cube):
    raw = _raw(_one("S1_GRD-*.nc"), "VV")
    k = 7
    expected_db = raw[k, 0, 0] * 1e-4  # int32 x 1e-4 = sigma0 dB
    assert wc_cube["s1"].sel(band_s1="VV").values[k, 0, 0] == pytest.approx(10 ** (expected_db / 10), rel=1e-5)
    vv_db = 10 * np.log10(wc_cube["s1"].sel(band_s1="VV").values)
    assert -15 < np.nanmedian(vv_db) < -5


@needs_data
def test_worldcereal_plausible_ndvi_and_labels(wc_cube):
    red, nir = wc_cube["s2"].sel(band="B04"), wc_cube["s2"].sel(band="B08")
    ndvi = ((nir - red) / (nir + red)).values
    ndvi = ndvi[np.isfinite(ndvi)]
    assert ndvi.size > 10_000
    lo, hi = np.percentile(ndvi, [0.5, 99.5])
    assert -0.2 <= lo and hi <= 1.0
    np.testing.assert_array_equal(wc_cube["landcover"].values, _raw(_one("OUTPUT_POLY-110_*.nc"), "LC"))
    assert wc_cube["croptype"].dtype == np.uint16


# --------------------------------------------------------------------------------------- openEO


@needs_data
def test_openeo_cdse_s2_and_s1():
    s2p, s1p = str(OE / "cdse_sentinel2_l2a.nc"), str(OE / "cdse_sentinel1_grd.nc")
    ds = import_cube(s2p, s1p, preset="openeo")
    validate_cube(ds, require_s1=True)
    assert list(ds["band"].values) == ["B04", "B08", "B11"]  # B01 and AOT are not model bands
    assert "S2-L2A-B01" in ds.attrs["import_dropped_variables"]
    scl = _raw(s2p, "S2-L2A-SCL")
    np.testing.assert_array_equal(ds["s2_scl"].values, scl.astype("uint8"))
    t, yy, xx = np.argwhere(np.isin(scl, (4, 5)))[0]
    dn = _raw(s2p, "S2-L2A-B08")[t, yy, xx]
    assert ds["s2"].sel(band="B08").values[t, yy, xx] == pytest.approx(dn * 1e-4, rel=1e-6)
    dn1 = int(_raw(s1p, "S1-SIGMA0-VH")[3, 5, 6])
    db = 20 * np.log10(dn1) - 83  # openEO uint16 encoding
    assert ds["s1"].sel(band_s1="VH").values[3, 5, 6] == pytest.approx(10 ** (db / 10), rel=1e-5)
    # a pixel stored as a negative int16 (_Unsigned='true'): must be read as DN = int16 + 65536
    with netCDF4.Dataset(s1p) as nc:
        v = nc.variables["S1-SIGMA0-VV"]
        v.set_auto_maskandscale(False)
        stored = np.asarray(v[:])
    k, yy1, xx1 = np.argwhere(stored < 0)[0]
    dn_u = int(stored[k, yy1, xx1]) + 65536
    expected = 10 ** ((20 * np.log10(dn_u) - 83) / 10)
    assert ds["s1"].sel(band_s1="VV").values[k, yy1, xx1] == pytest.approx(expected, rel=1e-5)
    vv_db = 10 * np.log10(ds["s1"].sel(band_s1="VV").values)
    assert -15 < np.nanmedian(vv_db) < -5
    assert ds.sizes["time_s1"] == 10 and ds.sizes["time"] == 12


@needs_data
def test_openeo_optical_cube():
    p = str(OE / "test_optical_cube.nc")
    ds = import_cube(p, preset="openeo")
    validate_cube(ds)
    assert list(ds["band"].values) == ["B02", "B03", "B04", "B08"]
    assert ds.sizes["time"] == 19 and ds.sizes["y"] == 52 and ds.sizes["x"] == 46
    scl = _raw(p, "S2-L2A-SCL")
    t, yy, xx = np.argwhere(np.isin(scl, (4, 5)))[-1]
    assert ds["s2"].sel(band="B02").values[t, yy, xx] == pytest.approx(_raw(p, "S2-L2A-B02")[t, yy, xx] * 1e-4, rel=1e-6)
    # without masking the cloudy pixels are kept
    ds_all = import_cube(p, preset="openeo", scl_mask=None)
    assert np.isfinite(ds_all["s2"].values).sum() > np.isfinite(ds["s2"].values).sum()


# --------------------------------------------------------------------------------- synthetic files


def _nc(path: Path, *, tdim="t", names=("red", "nir"), dates=("2021-03-01", "2021-03-06", "2021-03-11"),
        with_crs=True, res=10.0, n=4, value_fn=None, south_up=False, shift_y=0.0) -> Path:
    """A small NetCDF export, north-up (row 0 = north) unless ``south_up``: the same pixels, rows reversed."""
    y = 5_600_000.0 - res * (np.arange(n) + 0.5) + shift_y
    x = 400_000.0 + res * (np.arange(n) + 0.5)
    data = {}
    for i, name in enumerate(names):
        arr = np.full((len(dates), n, n), 1000 + 100 * i, dtype="uint16") if value_fn is None else value_fn(i, len(dates), n)
        data[name] = ((tdim, "y", "x"), arr[:, ::-1] if south_up else arr, {"grid_mapping": "crs"} if with_crs else {})
    y = y[::-1] if south_up else y
    ds = xr.Dataset(data, coords={tdim: pd.to_datetime(list(dates)), "y": y, "x": x})
    if with_crs:
        from pyproj import CRS

        ds["crs"] = xr.DataArray(np.int32(0), attrs={"crs_wkt": CRS.from_epsg(32632).to_wkt()})
    ds.to_netcdf(path)
    return path


def test_canonical_band_names():
    assert canonical_band_name("S2-L2A-B04") == "B04"
    assert canonical_band_name("b4") == "B04"
    assert canonical_band_name("B8a") == "B8A"
    assert canonical_band_name("S1-SIGMA0-VV") == "VV"
    assert canonical_band_name("S2-L2A-SCL") == "SCL"
    assert canonical_band_name("sunZenithAngles") is None


def test_decode_openeo_s1_known_values():
    # DN = 10^((dB + 83) / 20): dB -10 -> DN 10^3.65 = 4466.8; DN 10^4.15 = 14125.4 -> 0 dB
    db = decode_openeo_s1(np.array([0, 65535, 10**3.65, 10**4.15]))
    assert np.isnan(db[:2]).all()
    np.testing.assert_allclose(db[2:], [-10.0, 0.0], atol=1e-9)


def test_netcdf_with_t_dim_band_map_scale_offset_nodata(tmp_path):
    def values(i, nt, n):
        a = np.full((nt, n, n), 2000 + 500 * i, dtype="uint16")
        a[1, 0, 0] = 65535  # nodata
        return a

    p = _nc(tmp_path / "a.nc", value_fn=values)
    ds = import_cube(p, band_map={"red": "B04", "nir": "B08"}, s2_scale=1e-4, s2_offset=-0.1, s2_nodata=65535)
    validate_cube(ds)
    # (2000 x 1e-4) - 0.1 = 0.1 ; (2500 x 1e-4) - 0.1 = 0.15
    assert ds["s2"].sel(band="B04").values[0, 0, 0] == pytest.approx(0.1)
    assert ds["s2"].sel(band="B08").values[0, 2, 2] == pytest.approx(0.15)
    assert np.isnan(ds["s2"].values[1, :, 0, 0]).all()
    assert "s2_scl" not in ds
    assert cube_crs(ds).to_epsg() == 32632


def test_unknown_band_and_unrecognised_variables(tmp_path):
    p = _nc(tmp_path / "a.nc")
    with pytest.raises(CubeError, match=r"unknown band name\(s\) in band_map: \{'red': 'B99'\}"):
        import_cube(p, band_map={"red": "B99"}, s2_scale=1e-4)
    with pytest.raises(CubeError, match="no Sentinel-2 band variable recognised among \\['nir', 'red'\\]"):
        import_cube(p, s2_scale=1e-4)
    with pytest.raises(CubeError, match="band_map names \\['rouge'\\] but the file's variables are"):
        import_cube(p, band_map={"rouge": "B04"}, s2_scale=1e-4)
    # a band_map entry matching no file is an error even when other entries work
    with pytest.raises(CubeError, match="band_map names \\['rouge'\\], found in none of the files"):
        import_cube(p, band_map={"red": "B04", "rouge": "B05"}, s2_scale=1e-4)


def test_missing_crs_missing_file_and_time_dim_errors(tmp_path):
    p = _nc(tmp_path / "nocrs.nc", names=("B04", "B08"), with_crs=False)
    with pytest.raises(CubeError, match="missing CRS.*Fix: pass crs='EPSG:<code>'"):
        import_cube(p, s2_scale=1e-4)
    ds = import_cube(p, s2_scale=1e-4, crs="EPSG:32632")
    assert cube_crs(ds).to_epsg() == 32632
    with pytest.raises(CubeError, match="differs from crs="):
        import_cube(_nc(tmp_path / "c.nc", names=("B04",)), s2_scale=1e-4, crs="EPSG:32631")
    with pytest.raises(CubeError, match="no such file: .*missing.nc"):
        import_cube(tmp_path / "missing.nc")
    with pytest.raises(CubeError, match="time dimension 'date' not found; the file has dimensions"):
        import_cube(_nc(tmp_path / "d.nc", names=("B04",)), time_dim="date", s2_scale=1e-4)
    with pytest.raises(CubeError, match="unknown preset"):
        import_cube(p, preset="sentinelhub")


def test_time_dim_autodetect_unsorted_and_duplicate_dates(tmp_path):
    p = _nc(tmp_path / "u.nc", tdim="timestamp", names=("B04",), dates=("2021-03-11", "2021-03-01", "2021-03-06"),
            value_fn=lambda i, nt, n: np.arange(1, nt + 1, dtype="uint16")[:, None, None].repeat(n, 1).repeat(n, 2) * 1000)
    with pytest.warns(UserWarning, match="not sorted; sorted them"):
        ds = import_cube(p, s2_scale=1e-4)
    assert list(pd.DatetimeIndex(ds.time.values).day) == [1, 6, 11]
    # the values travel with their dates: 2021-03-01 was stored second (DN 2000)
    np.testing.assert_allclose(ds["s2"].values[:, 0, 0, 0], [0.2, 0.3, 0.1])
    q = _nc(tmp_path / "dup.nc", names=("B04",), dates=("2021-03-01", "2021-03-01", "2021-03-06"))
    with pytest.raises(CubeError, match="duplicate S2 dates \\['2021-03-01 00:00:00'\\].*duplicates='first'"):
        import_cube(q, s2_scale=1e-4)
    assert import_cube(q, s2_scale=1e-4, duplicates="first").sizes["time"] == 2


def test_10m_and_20m_files_and_s1_db(tmp_path):
    p10 = _nc(tmp_path / "s2_10m.nc", names=("B04", "B08"), n=4, res=10.0)

    def ramp(i, nt, n):  # DN increasing by 100 per 20 m column
        return np.broadcast_to(1000 + 100 * np.arange(n, dtype="uint16"), (nt, n, n)).copy()

    p20 = _nc(tmp_path / "s2_20m.nc", names=("B11",), n=2, res=20.0, value_fn=ramp)
    scl = _nc(tmp_path / "scl_20m.nc", names=("SCL",), n=2, res=20.0,
              value_fn=lambda i, nt, n: np.array([[4, 9], [4, 4]], dtype="uint8")[None].repeat(nt, 0))
    s1 = _nc(tmp_path / "s1_DESCENDING.nc", names=("VV", "VH"), n=2, res=20.0, dates=("2021-03-02", "2021-03-08"),
             value_fn=lambda i, nt, n: np.full((nt, n, n), -10 - 5 * i, dtype="int16"))
    ds = import_cube([p10, p20, scl], s1, s2_scale=1e-4, s1_encoding="db")
    validate_cube(ds, require_s1=True)
    assert list(ds["band"].values) == ["B04", "B08", "B11"]
    b11 = ds["s2"].sel(band="B11").values[0]
    # columns: 10 m centres at 5, 15, 25, 35 m; 20 m centres at 10 (DN 1000) and 30 (DN 1100):
    # clamped edge 0.1, then 0.75*0.1+0.25*0.11=0.1025, 0.1075, 0.11 (rows 2-3: SCL 4, unmasked)
    np.testing.assert_allclose(b11[3], [0.1, 0.1025, 0.1075, 0.11], rtol=1e-6)
    # SCL nearest: 20 m pixel (0, 1) is cloud (9) -> 10 m pixels rows 0-1, cols 2-3 masked
    np.testing.assert_array_equal(ds["s2_scl"].values[0], [[4, 4, 9, 9], [4, 4, 9, 9], [4, 4, 4, 4], [4, 4, 4, 4]])
    assert np.isnan(ds["s2"].values[0, :, 0:2, 2:4]).all() and np.isfinite(ds["s2"].values[0, :, 2:, :]).all()
    # S1: -10 dB -> 0.1, -15 dB -> 10^-1.5
    np.testing.assert_allclose(ds["s1"].values[:, 0], 0.1, rtol=1e-6)
    np.testing.assert_allclose(ds["s1"].values[:, 1], 10**-1.5, rtol=1e-6)
    assert list(ds["orbit_state"].values) == ["descending", "descending"]
    out = save_cube(ds, tmp_path / "cube.zarr")
    back = open_cube(out, validate=True)
    np.testing.assert_array_equal(back["s2"].values, ds["s2"].values)


def test_south_up_files_are_imported_north_up_with_the_same_values(tmp_path):
    """NetCDF exports with y ascending (rows south to north) give the cube of the north-up file: the 10 m
    grid reordered exactly, a 20 m band resampled as from the north-up file."""
    def field(i, nt, n):  # distinct DN per pixel, date and band
        return (1000 + 100 * i + 10 * np.arange(nt)[:, None, None] + np.arange(n * n).reshape(n, n)).astype("uint16")

    cubes = {}
    for flip in (False, True):
        d = tmp_path / ("south" if flip else "north")
        d.mkdir()
        p10 = _nc(d / "s2_10m.nc", names=("B04", "B08"), value_fn=field, south_up=flip)
        p20 = _nc(d / "s2_20m.nc", names=("B11",), n=2, res=20.0, value_fn=field, south_up=flip)
        cubes[flip] = import_cube([p10, p20], s2_scale=1e-4)
    north, south = cubes[False], cubes[True]
    assert (np.diff(south["y"].values) < 0).all() and (np.diff(south["x"].values) > 0).all()
    np.testing.assert_array_equal(south["y"].values, north["y"].values)
    np.testing.assert_array_equal(south["s2"].values, north["s2"].values)
    # Row 0 is the north row: the 10 m file's first row (DN 1000 + column) on the first date.
    np.testing.assert_allclose(north["s2"].sel(band="B04").values[0, 0], (1000 + np.arange(4)) * 1e-4, rtol=1e-6)


def test_a_file_shifted_by_half_a_pixel_is_resampled_not_taken_as_the_same_grid(tmp_path):
    """5 m at a UTM northing of 5.6e6 is within numpy's default relative tolerance; the grids still differ."""
    def ramp(i, nt, n):  # DN rising by 100 per row, north to south
        return np.broadcast_to(1000 + 100 * np.arange(n, dtype="uint16")[:, None], (nt, n, n)).copy()

    ref = _nc(tmp_path / "b04.nc", names=("B04",))
    shifted = _nc(tmp_path / "b08.nc", names=("B08",), value_fn=ramp, shift_y=-5.0)  # centres 5 m south
    b08 = import_cube([ref, shifted], s2_scale=1e-4)["s2"].sel(band="B08").values[0, :, 0]
    # Target centres sit half-way between the shifted file's: 0.1 clamped at the north edge, then means.
    np.testing.assert_allclose(b08, [0.1, 0.105, 0.115, 0.125], rtol=1e-6)


def test_cubes_that_are_not_north_up_are_refused_with_the_fix():
    from latentcube.cube import CubeError
    from latentcube.synthetic import make_world

    ds = next(iter(make_world(0, n_scenes=1, n_towers=0, scene_size=32, scene_years=(2019,)).cubes.values()))
    with pytest.raises(CubeError, match=r"'y' increases \(the rows run south to north\); the data model is north-up.*"
                                        r"Fix: ds = ds.isel\(y=slice\(None, None, -1\)\)"):
        validate_cube(ds.isel(y=slice(None, None, -1)))
    with pytest.raises(CubeError, match=r"'x' decreases \(the columns run east to west\).*ds.isel\(x=slice"):
        validate_cube(ds.isel(x=slice(None, None, -1)))
    validate_cube(ds.isel(y=slice(None, None, -1)).isel(y=slice(None, None, -1)))  # fixed as the message says


def test_geotiff_stack_per_date(tmp_path):
    import rasterio
    from affine import Affine

    paths = []
    for k, date in enumerate(["20200605", "20200601"]):  # deliberately unsorted
        p = tmp_path / f"S2_{date}.tif"
        data = np.stack([np.full((3, 5), 1000 * (k + 1), "uint16"), np.full((3, 5), 3000, "uint16")])
        data[0, 0, 0] = 0
        with rasterio.open(p, "w", driver="GTiff", width=5, height=3, count=2, dtype="uint16",
                           crs="EPSG:32633", transform=Affine(10, 0, 500_000, 0, -10, 6_000_000), nodata=0) as dst:
            dst.write(data)
            dst.set_band_description(1, "B4")
            dst.set_band_description(2, "B8")
        paths.append(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = import_cube(paths, s2_scale=1e-4)
    validate_cube(ds)
    assert list(ds["band"].values) == ["B04", "B08"]
    assert [str(t)[:10] for t in ds.time.values] == ["2020-06-01", "2020-06-05"]
    # pixel centres: first x centre = 500000 + 5, first y centre = 6000000 - 5
    assert ds.x.values[0] == 500_005.0 and ds.y.values[0] == 5_999_995.0
    np.testing.assert_allclose(ds["s2"].sel(band="B04").values[:, 1, 1], [0.2, 0.1])
    assert np.isnan(ds["s2"].values[:, 0, 0, 0]).all()  # GeoTIFF nodata 0
    with pytest.raises(CubeError, match="pass band_names"):
        import_cube(paths[0], band_names=["B04"], s2_scale=1e-4)
    # glob patterns expand to the sorted file list
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        globbed = import_cube(str(tmp_path / "S2_*.tif"), s2_scale=1e-4)
    np.testing.assert_array_equal(globbed["s2"].values, ds["s2"].values)
    with pytest.raises(CubeError, match="no file matches"):
        import_cube(str(tmp_path / "L8_*.tif"))


def test_bilinear_matches_gdal_with_nan_neighbours():
    """Our 20 m -> 10 m bilinear equals GDAL's (rasterio.warp.reproject, nodata NaN) everywhere,
    including the NaN pattern: a 10 m pixel inside a NaN 20 m pixel stays NaN, a valid one next to NaN
    neighbours renormalises the remaining weights."""
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    from latentcube.sources.importers._regrid import _to_grid_same_crs

    rng = np.random.default_rng(0)
    v = rng.random((16, 16))
    v[rng.random((16, 16)) < 0.2] = np.nan
    da = xr.DataArray(v, dims=("y", "x"), coords={"y": 2000 - 20 * (np.arange(16) + 0.5), "x": 1000 + 20 * (np.arange(16) + 0.5)})
    x10, y10 = 1000 + 10 * (np.arange(32) + 0.5), 2000 - 10 * (np.arange(32) + 0.5)
    ours = _to_grid_same_crs(da, x10, y10, "bilinear").values
    gdal = np.full((32, 32), np.nan)
    reproject(v, gdal, src_transform=Affine(20, 0, 1000, 0, -20, 2000), dst_transform=Affine(10, 0, 1000, 0, -10, 2000),
              src_crs="EPSG:32631", dst_crs="EPSG:32631", resampling=Resampling.bilinear, src_nodata=np.nan, dst_nodata=np.nan)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(gdal))
    np.testing.assert_allclose(ours, gdal, rtol=1e-12, equal_nan=True)
    assert np.isnan(ours).sum() > 4 * np.isnan(v).sum() - 1  # each NaN 20 m pixel -> its four 10 m pixels


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # odc-geo internals
def test_file_in_another_crs_is_warped_and_zarr_is_read(tmp_path):
    from pyproj import Transformer

    p10 = _nc(tmp_path / "s2_10m.nc", names=("B04",), n=8, res=10.0)  # EPSG:32632, DN 1000
    # a 20 m B11 file in EPSG:32633 (neighbouring UTM zone) covering the 10 m area with margin
    cx, cy = Transformer.from_crs(32632, 32633, always_xy=True).transform(400_040.0, 5_599_960.0)
    n = 12
    x = cx - 20 * (n / 2) + 20 * (np.arange(n) + 0.5)
    y = cy + 20 * (n / 2) - 20 * (np.arange(n) + 0.5)
    from pyproj import CRS

    other = xr.Dataset(
        {"B11": (("t", "y", "x"), np.full((3, n, n), 2000, "uint16"), {"grid_mapping": "crs"})},
        coords={"t": pd.to_datetime(["2021-03-01", "2021-03-06", "2021-03-11"]), "y": y, "x": x},
    )
    other["crs"] = xr.DataArray(np.int32(0), attrs={"crs_wkt": CRS.from_epsg(32633).to_wkt()})
    other.to_zarr(tmp_path / "s2_20m.zarr", zarr_format=2, consolidated=True)
    ds = import_cube([p10, tmp_path / "s2_20m.zarr"], s2_scale=1e-4)
    validate_cube(ds)
    assert cube_crs(ds).to_epsg() == 32632 and ds.sizes["x"] == 8
    np.testing.assert_allclose(ds["s2"].sel(band="B11").values, 0.2, rtol=1e-6)  # constant field stays constant
    np.testing.assert_allclose(ds["s2"].sel(band="B04").values, 0.1, rtol=1e-6)


def test_band_map_spans_s2_and_s1_files(tmp_path):
    s2 = _nc(tmp_path / "s2.nc", names=("red", "nir"))
    s1 = _nc(tmp_path / "s1.nc", names=("sigma_vv", "VH"), dates=("2021-03-02",),
             value_fn=lambda i, nt, n: np.full((nt, n, n), 0.05, "float32"))
    # one map for all files; VH is recognised by name, sigma_vv through the map; S1 stored linear
    ds = import_cube(s2, s1, band_map={"red": "B04", "nir": "B08", "sigma_vv": "VV"}, s2_scale=1e-4)
    assert list(ds["band_s1"].values) == ["VV", "VH"]
    np.testing.assert_allclose(ds["s1"].values, 0.05, rtol=1e-6)


def test_no_time_dimension_is_explained(tmp_path):
    p = tmp_path / "static.nc"
    xr.Dataset({"B04": (("y", "x"), np.ones((2, 2), "uint16"))},
               coords={"y": [15.0, 5.0], "x": [5.0, 15.0]}).to_netcdf(p)
    with pytest.raises(CubeError, match=r"no time dimension among \['y', 'x'\].*Fix: pass time_dim="):
        import_cube(p, crs="EPSG:32632")


def test_cli_parsers():
    from latentcube.sources.importers import parse_band_map, parse_layers

    assert parse_band_map(["red=B04", "S1-SIGMA0-VV=VV"]) == {"red": "B04", "S1-SIGMA0-VV": "VV"}
    assert parse_band_map(None) is None
    with pytest.raises(CubeError, match="expected SOURCE=BAND"):
        parse_band_map(["red:B04"])
    assert parse_layers(["landcover=out/labels.nc:LC", "mask=mask.tif", "w=C:\\data\\x.tif"]) == {
        "landcover": ("out/labels.nc", "LC"), "mask": "mask.tif", "w": "C:\\data\\x.tif"}
    with pytest.raises(CubeError, match="expected NAME=PATH"):
        parse_layers(["labels.nc"])


def _layer_nc(path: Path, values: np.ndarray) -> Path:
    """A (y, x) label layer "LC" on the grid of ``_nc`` (n = 4, 10 m, EPSG:32632)."""
    from pyproj import CRS

    n = values.shape[0]
    ds = xr.Dataset({"LC": (("y", "x"), values, {"grid_mapping": "crs"})},
                    coords={"y": 5_600_000.0 - 10.0 * (np.arange(n) + 0.5), "x": 400_000.0 + 10.0 * (np.arange(n) + 0.5)})
    ds["crs"] = xr.DataArray(np.int32(0), attrs={"crs_wkt": CRS.from_epsg(32632).to_wkt()})
    ds.to_netcdf(path)
    return path


def test_cli_layer_glob_is_expanded_to_its_one_file(tmp_path, capsys, monkeypatch):
    """The user walkthrough: --layer "croptype=$D/OUTPUT_POLY-*.nc:CT" failed with 'no such file', while --s2/--s1
    expand globs. Run from another directory with relative paths; none or several matches are errors."""
    import os
    import subprocess
    import sys

    from latentcube.cli import main

    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    work.mkdir()
    _nc(data / "S2_a.nc", names=("B04", "B08"))
    labels = np.arange(16, dtype="uint8").reshape(4, 4)
    _layer_nc(data / "OUTPUT_POLY-110_x.nc", labels)
    args = ["import", "--s2", "../data/S2_*.nc", "--s2-scale", "1e-4", "--layer", "croptype=../data/OUTPUT_POLY-*.nc:LC",
            "--out", "c.zarr"]
    proc = subprocess.run([sys.executable, "-m", "latentcube.cli", *args], cwd=work, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("c.zarr: 3 S2 dates, 0 S1 dates, 4x4 px")
    np.testing.assert_array_equal(open_cube(work / "c.zarr")["croptype"].values, labels)
    monkeypatch.chdir(work)  # the Python API expands the pattern too (the CLI passes it on as written)
    ds = import_cube("../data/S2_*.nc", s2_scale=1e-4, layers={"croptype": ("../data/OUTPUT_POLY-*.nc", "LC")})
    np.testing.assert_array_equal(ds["croptype"].values, labels)

    monkeypatch.chdir(work)
    for pattern, message in (
        ("../data/NOPE-*.nc:LC", f"CubeError: layer croptype: no file matches '../data/NOPE-*.nc' (relative to {work}). "
                                 "Fix: check the pattern and the folder."),
        ("../data/OUTPUT_POLY-*.nc:LC", "CubeError: layer croptype: '../data/OUTPUT_POLY-*.nc' matches 2 files "
                                        "(../data/OUTPUT_POLY-110_x.nc, ../data/OUTPUT_POLY-110_y.nc); a layer is one "
                                        "file. Fix: narrow the pattern, or name the file, e.g. --layer "
                                        "croptype=../data/OUTPUT_POLY-110_x.nc:LC (Python: "
                                        "layers={'croptype': ('../data/OUTPUT_POLY-110_x.nc', 'LC')})."),
    ):
        if "POLY" in pattern:
            _layer_nc(data / "OUTPUT_POLY-110_y.nc", labels)
        with pytest.raises(SystemExit) as exc:
            main(["import", "--s2", "../data/S2_*.nc", "--s2-scale", "1e-4", "--layer", f"croptype={pattern}",
                  "--out", "d.zarr"])
        err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
        assert exc.value.code == 1 and message in err, err
    assert not (work / "d.zarr").exists()


def test_openeo_preset_reads_65535_and_the_files_fill_value_as_nodata(tmp_path):
    """A monthly openEO composite fills empty months with 65535: reflectance 6.55 used to pass through and
    the cube was refused with a wrong fix ("divide by 10000")."""
    months = pd.date_range("2023-01-01", periods=4, freq="MS")
    rng = np.random.default_rng(0)
    dn = rng.integers(200, 4000, (4, 5, 6)).astype("uint16")
    b04, b08 = dn.copy(), dn + 1000
    b04[1] = b08[1] = 65535  # a month without any acquisition
    b04[0, 0, 0] = 0  # openEO's other nodata value
    b08[2, 3, 4] = 60000  # declared as _FillValue by the file
    y = 5_600_000.0 - 10 * (np.arange(5) + 0.5)
    x = 400_000.0 + 10 * (np.arange(6) + 0.5)
    src = xr.Dataset({"S2-L2A-B04": (("t", "y", "x"), b04, {"grid_mapping": "crs"}),
                      "S2-L2A-B08": (("t", "y", "x"), b08, {"grid_mapping": "crs"})},
                     coords={"t": months, "y": y, "x": x})
    from pyproj import CRS

    src["crs"] = xr.DataArray(np.int32(0), attrs={"crs_wkt": CRS.from_epsg(32631).to_wkt()})
    path = tmp_path / "openeo_monthly.nc"
    src.to_netcdf(path, encoding={"S2-L2A-B08": {"_FillValue": 60000}, "S2-L2A-B04": {"_FillValue": None}})
    ds = validate_cube(import_cube(path, preset="openeo"))
    s2 = ds["s2"].values
    assert np.isnan(s2[1]).all()  # the filled month
    assert np.isnan(s2[0, 0, 0, 0]) and np.isfinite(s2[0, 1, 0, 0])  # 0 in B04 only: that band
    assert np.isnan(s2[2, 1, 3, 4]) and s2[2, 0, 3, 4] == pytest.approx(dn[2, 3, 4] * 1e-4, rel=1e-6)
    ok = np.ones(dn.shape, bool)
    ok[1] = False
    ok[2, 3, 4] = False
    np.testing.assert_allclose(s2[:, 1][ok], (dn + 1000)[ok] * 1e-4, rtol=1e-6)
    assert np.nanmax(s2) < 1.0
    # the user's own nodata adds to the file's: 60000 stays nodata
    user = import_cube(path, preset="openeo", s2_nodata=[0, 65535])
    assert np.isnan(user["s2"].values[2, 1, 3, 4]) and np.isnan(user["s2"].values[1]).all()
    # without 65535 the filled month is refused as a fill value, not as digital numbers
    with pytest.raises(CubeError, match=r"impossible reflectances .*most often 6\.5535.*a fill value stored as data, "
                                        r"not digital numbers\. Fix: .*--s2-nodata"):
        import_cube(path, preset="openeo", s2_nodata=[0])


def test_s1_files_that_meet_no_s2_pixel_or_date_are_refused_at_import(tmp_path):
    """S1 on a grid 10 km away (or of another year) used to import as all-NaN S1 and fuse as absent."""
    s2 = _nc(tmp_path / "s2.nc", names=("B04", "B08"), n=4)

    def db(i, nt, n):
        return np.full((nt, n, n), -10 - 5 * i, dtype="int16")

    kw = dict(names=("VV", "VH"), n=4, value_fn=db)
    far = _nc(tmp_path / "s1_far.nc", shift_y=10_000.0, **kw)
    with pytest.raises(CubeError, match=r"S1 files \['s1_far\.nc'\]: S1 covers 0 of 3 S2 dates .* and 0% of the sampled "
                                        r"S2 pixels.*Fix: check their CRS, extent and dates"):
        import_cube(s2, far, s2_scale=1e-4, s1_encoding="db")
    later = _nc(tmp_path / "s1_later.nc", dates=("2022-03-01", "2022-03-06", "2022-03-11"), **kw)
    with pytest.raises(CubeError, match=r"S1 covers 0 of 3 S2 dates"):
        import_cube(s2, later, s2_scale=1e-4, s1_encoding="db")
    same = _nc(tmp_path / "s1.nc", **kw)
    ds = import_cube(s2, same, s2_scale=1e-4, s1_encoding="db")  # on the grid and dates: accepted
    assert np.isfinite(ds["s1"].values).all()


# ------------------------------------------------------------------- S1 encoding that does not fit the files


def _dn_s1(tmp_path: Path) -> tuple[Path, Path]:
    """An S2 file and an S1 file of openEO-like uint16 digital numbers (500..10000, 0 = nodata)."""
    s2 = _nc(tmp_path / "s2.nc", names=("B04", "B08"), n=4)

    def dn(i, nt, n):
        a = np.random.default_rng(i).integers(500, 10_000, (nt, n, n)).astype("uint16")
        a[0, 0, 0] = 0
        return a

    return s2, _nc(tmp_path / "s1.nc", names=("VV", "VH"), n=4, value_fn=dn)


def test_s1_digital_numbers_imported_as_linear_or_db_are_refused_with_the_encoding(tmp_path):
    s2, s1 = _dn_s1(tmp_path)
    with pytest.raises(CubeError, match=r"s1 is not linear backscatter \(imported with s1_encoding='linear'\): its "
                                        r"median \d+ .*looks like digital numbers or dB.*--s1-encoding db.*"
                                        r"--s1-encoding openeo_uint16.*import_cube\(\.\.\., s1_encoding="):
        import_cube(s2, s1, s2_scale=1e-4, s1_nodata=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dB -> linear overflow is no RuntimeWarning, the error says it
        with pytest.raises(CubeError, match=r"s1 is not linear backscatter \(imported with s1_encoding='db'\): 100% of "
                                            r"the sampled s1 values are outside .*values that overflow to inf when "
                                            r"decoded from dB are digital numbers.*--s1-encoding openeo_uint16"):
            import_cube(s2, s1, s2_scale=1e-4, s1_nodata=0, s1_encoding="db")
        ds = import_cube(s2, s1, s2_scale=1e-4, s1_encoding="openeo_uint16", s1_nodata=0)  # the right encoding
    db = 10 * np.log10(ds["s1"].values)
    assert np.isnan(db[0, :, 0, 0]).all() and -30 < np.nanmedian(db) < 0


def test_unscaled_s2_names_the_import_options(tmp_path):
    s2, _ = _dn_s1(tmp_path)
    with pytest.raises(CubeError, match=r"s2 looks like unscaled digital numbers .*Fix: divide by 10000 .*on "
                                        r"`latentcube import` pass --s2-scale 1e-4 .*--preset openeo or --preset "
                                        r"worldcereal.*import_cube\(\.\.\., s2_scale=1e-4"):
        import_cube(s2)


@needs_data
def test_cli_import_and_info_of_a_3_band_openeo_export_name_the_missing_model_bands(tmp_path):
    """The user walkthrough: S2 of B04 B08 B11 only. `import` warns and `info` says what the default model lacks,
    with the train error's fix, and lists the dropped variables (before, only `train` told). Relative paths."""
    import os
    import subprocess
    import sys

    rel = Path(os.path.relpath(OE, tmp_path))
    env = {**os.environ, "COLUMNS": "400"}
    fix = ("the cube lacks ['B02', 'B03', 'B05', 'B06', 'B07', 'B8A', 'B12']: fetch or import them into the cube, "
           "or train a model on the cube's bands (model: {n_bands: 3, band_names: ['B04', 'B08', 'B11']})")
    args = ["import", "--preset", "openeo", "--s2", str(rel / "cdse_sentinel2_l2a.nc"), "--s1",
            str(rel / "cdse_sentinel1_grd.nc"), "--out", "belgium.zarr"]
    proc = subprocess.run([sys.executable, "-m", "latentcube.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("belgium.zarr: 12 S2 dates, 10 S1 dates")
    assert proc.stderr.strip() == f"warning: s2: the default s2 model (the shipped configs) expects 10 bands; {fix}"
    info = subprocess.run([sys.executable, "-m", "latentcube.cli", "info", "belgium.zarr"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)
    assert info.returncode == 0, info.stderr
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in info.stdout.splitlines()
             if line.count("│") == 3}
    assert lines["s2 vs model"] == f"the default s2 model (the shipped configs) expects 10 bands; {fix}"
    assert "s1 vs model" not in lines
    assert lines["dropped at import"].startswith("S2-L2A-AOT, S2-L2A-B01 (S2 file variables not recognised as a band")


@needs_data
def test_cli_import_of_openeo_s1_without_the_preset_fails_with_the_encoding(tmp_path):
    """The user walkthrough: openEO S1 uint16 DN imported without --preset openeo used to give a 'valid' cube
    of digital numbers read as linear backscatter. Run from another directory with relative paths."""
    import os
    import subprocess
    import sys

    rel = Path(os.path.relpath(OE, tmp_path))
    args = ["import", "--s2", str(rel / "cdse_sentinel2_l2a.nc"), "--s1", str(rel / "cdse_sentinel1_grd.nc"),
            "--s2-scale", "1e-4", "--s2-nodata", "0", "--out", "nopreset.zarr"]
    proc = subprocess.run([sys.executable, "-m", "latentcube.cli", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    err = " ".join(proc.stderr.split())  # rich wraps long lines
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "s1 is not linear backscatter (imported with s1_encoding='linear'): its median 2353" in err, err
    assert "looks like digital numbers or dB" in err and "--s1-encoding openeo_uint16" in err and "--preset openeo" in err
    assert "mask the fill value" not in err and "RuntimeWarning" not in err
    assert not (tmp_path / "nopreset.zarr").exists()

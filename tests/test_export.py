"""GeoTIFF export: CRS, transform, bands, values and NaN through rasterio; the Zarr readable in a fresh process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from affine import Affine

from latentcube.cube import set_crs
from latentcube.export import NoValidPixelWarning, export_geotiff, grid_transform
from latentcube.gapfill import EmbeddingCubeError

TIMES = pd.to_datetime(["2019-07-09 10:30", "2019-07-14 10:30", "2019-08-01 10:30"])


def emb_store(tmp_path, h: int = 5, w: int = 7):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 4, h, w)).astype("float32")
    v[1, :, 2, 3] = np.nan
    ds = xr.Dataset({"embedding": (("time", "feature", "y", "x"), v),
                     "quality_s2": (("time", "y", "x"), rng.random((3, h, w)).astype("float32"))},
                    coords={"time": TIMES.values, "feature": ["fused_0", "fused_1", "s1_0", "s1_1"],
                            "y": 5_200_000.0 - 10 * np.arange(h) - 5, "x": 400_000.0 + 10 * np.arange(w) + 5},
                    attrs={"conventions": "latentcube embedding cube v1", "geoemb:model": "latentcube fusion model, sha256:ab"})
    ds = set_crs(ds, "EPSG:32633")
    path = tmp_path / "emb.zarr"
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return path, ds


def test_grid_transform_by_hand():
    t = grid_transform(np.array([105.0, 115.0, 125.0]), np.array([995.0, 985.0]))
    assert t == Affine(10.0, 0.0, 100.0, 0.0, -10.0, 1000.0)
    with pytest.raises(EmbeddingCubeError, match="irregular pixel spacing along x"):
        grid_transform(np.array([0.0, 10.0, 25.0]), np.array([5.0, -5.0]))
    with pytest.raises(EmbeddingCubeError, match="at least 2 x 2"):
        grid_transform(np.array([0.0]), np.array([5.0, -5.0]))


def test_geotiff_per_date_crs_transform_bands_values(tmp_path):
    path, ds = emb_store(tmp_path)
    files = export_geotiff(path, tmp_path / "tif", progress=False)
    assert [f.name for f in files] == ["embedding_2019-07-09.tif", "embedding_2019-07-14.tif", "embedding_2019-08-01.tif"]
    for t, f in enumerate(files):
        with rasterio.open(f) as src:
            assert src.crs.to_epsg() == 32633
            assert src.transform == Affine(10.0, 0.0, 400_000.0, 0.0, -10.0, 5_200_000.0)
            assert (src.count, src.height, src.width) == (4, 5, 7)
            assert src.descriptions == ("fused_0", "fused_1", "s1_0", "s1_1")
            assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
            data = src.read()
            assert src.tags()["date"] == str(TIMES[t]) and src.tags()["geoemb_model"].endswith("sha256:ab")
        np.testing.assert_array_equal(data, ds["embedding"].values[t])  # NaN at the same places
    with rasterio.open(files[1]) as src:
        assert np.isnan(src.read()[:, 2, 3]).all() and np.isfinite(src.read()[:, 0, 0]).all()
        # Pixel (row 2, col 3) centre in map coordinates = the Zarr's x/y of that pixel.
        assert src.xy(2, 3) == (float(ds["x"][3]), float(ds["y"][2]))


def test_selected_dates_single_band_variable_and_errors(tmp_path):
    path, ds = emb_store(tmp_path)
    files = export_geotiff(path, tmp_path / "q", variable="quality_s2", dates=["2019-08-01"], prefix="q", progress=False)
    assert [f.name for f in files] == ["q_2019-08-01.tif"]
    with rasterio.open(files[0]) as src:
        assert src.count == 1 and src.descriptions == ("quality_s2",)
        np.testing.assert_array_equal(src.read(1), ds["quality_s2"].values[2])
    with pytest.raises(EmbeddingCubeError, match=r"no date 2019-07-15 .*nearest: 2019-07-09, 2019-07-14, 2019-08-01"):
        export_geotiff(path, tmp_path / "x", dates=["2019-07-15"])
    with pytest.raises(EmbeddingCubeError, match="no 'ndvi' variable"):
        export_geotiff(path, tmp_path / "x", variable="ndvi")
    with pytest.raises(EmbeddingCubeError, match="dtype='int16'"):
        export_geotiff(path, tmp_path / "x", dtype="int16")
    with pytest.raises(FileNotFoundError, match="no such embedding store"):
        export_geotiff(tmp_path / "nope.zarr", tmp_path / "x")


def test_same_day_acquisitions_get_times_in_names(tmp_path):
    _, ds = emb_store(tmp_path)
    ds = ds.assign_coords(time=pd.to_datetime(["2019-07-09 10:30", "2019-07-09 10:40", "2019-08-01 10:30"]).values)
    files = export_geotiff(ds, tmp_path / "t", progress=False)
    assert [f.name for f in files][:2] == ["embedding_2019-07-09T103000.tif", "embedding_2019-07-09T104000.tif"]


def test_zarr_opens_in_a_fresh_process(tmp_path):
    path, ds = emb_store(tmp_path)
    code = (
        "import sys, xarray as xr, numpy as np, rioxarray; ds = xr.open_zarr(sys.argv[1], decode_coords='all'); "
        "e = ds['embedding']; print(e.dims, e.shape, ds.rio.crs.to_epsg(), float(np.nansum(e.values)))"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split(")")[0] == "('time', 'feature', 'y', 'x'"
    assert "(3, 4, 5, 7) 32633" in res.stdout
    np.testing.assert_allclose(float(res.stdout.split()[-1]), float(np.nansum(ds["embedding"].values)), rtol=1e-6)


def test_cli_export(tmp_path, capsys):
    from latentcube.cli import main

    path, _ = emb_store(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["export", str(path), "--format", "geotiff", "--out", str(tmp_path / "t"), "--dates", "2019-07-14,2019-08-01"])
    assert exc.value.code == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["embedding_2019-07-14.tif", "embedding_2019-08-01.tif"]
    with pytest.raises(SystemExit) as exc:
        main(["export", str(path), "--format", "netcdf", "--out", str(tmp_path / "u")])
    assert exc.value.code == 2 and "use 'geotiff' or 'cog'" in capsys.readouterr().err


# ------------------------------------------------------------------------- cloud-optimised GeoTIFF (issue 26)


def test_cog_has_overviews_descriptions_nodata_and_the_store_values(tmp_path):
    path, ds = emb_store(tmp_path, h=40, w=48)
    files = export_geotiff(path, tmp_path / "cog", cog=True, progress=False)
    assert len(files) == 3
    for t, f in enumerate(files):
        with rasterio.open(f) as src:
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.overviews(1) == [2, 4]  # 40 px -> 20 -> 10 (halving stops under MIN_OVERVIEW_PX = 8)
            assert src.descriptions == ("fused_0", "fused_1", "s1_0", "s1_1")
            assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
            assert src.scales == (1.0,) * 4 and src.offsets == (0.0,) * 4
            assert src.crs.to_epsg() == 32633 and src.transform == Affine(10.0, 0.0, 400_000.0, 0.0, -10.0, 5_200_000.0)
            np.testing.assert_array_equal(src.read(), ds["embedding"].values[t])  # NaN where the store has NaN
            if t == 1:  # the first overview: the mean of each 2 x 2 block's valid pixels (NaN skipped)
                half = src.read(1, out_shape=(20, 24))
                blocks = ds["embedding"].values[1, 0].reshape(20, 2, 24, 2)
                np.testing.assert_allclose(half, np.nanmean(blocks, axis=(1, 3)), rtol=1e-5)
                assert np.isfinite(half[1, 1])  # the block holding the NaN pixel (2, 3) averages the other three


def test_int8_store_exports_int8_cogs_with_scale_offset_and_nodata(tmp_path):
    from latentcube.embed import open_embedding, quantize_int8
    from latentcube.export import INT8_NODATA

    _, ds = emb_store(tmp_path, h=12, w=10)
    codes, scale = quantize_int8(ds["embedding"].values)
    q = ds.drop_vars("embedding").assign(
        embedding=(("time", "feature", "y", "x"), codes), embedding_scale=(("time", "y", "x"), scale))
    q["embedding"].encoding = {"_FillValue": -128}
    q8 = tmp_path / "int8.zarr"
    q.to_zarr(q8, zarr_format=2, consolidated=True)
    decoded = open_embedding(q8).values
    files = export_geotiff(q8, tmp_path / "cog8", cog=True, progress=False)
    for t, f in enumerate(files):
        with rasterio.open(f) as src:
            assert src.dtypes[0] == "int8" and src.nodata == INT8_NODATA and src.overviews(1) == [2]
            assert src.descriptions == ("fused_0", "fused_1", "s1_0", "s1_1")
            scales, offsets = np.array(src.scales), np.array(src.offsets)
            raw = src.read()
            assert "int8_decoding" in src.tags()
        invalid = ~np.isfinite(decoded[t])
        assert (raw[invalid] == INT8_NODATA).all() and (raw[~invalid] > INT8_NODATA).all()
        values = raw * scales[:, None, None] + offsets[:, None, None]
        err = np.abs(values - decoded[t])[~invalid]
        bound = np.broadcast_to(scales[:, None, None] / 2, raw.shape)[~invalid]
        assert (err <= bound * (1 + 1e-6) + 1e-7).all()
        # The band's range spans the codes: its extremes decode to codes -127 and 127.
        assert raw[0][~invalid[0]].min() == -127 and raw[0][~invalid[0]].max() == 127
    # float32 on request: the decoded store values exactly
    (f32,) = export_geotiff(q8, tmp_path / "f32", dtype="float32", dates=["2019-07-14"], cog=True, progress=False)
    with rasterio.open(f32) as src:
        np.testing.assert_array_equal(src.read(), decoded[1])


def test_cli_export_cog(tmp_path):
    from latentcube.cli import main

    path, _ = emb_store(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(["export", str(path), "--out", str(tmp_path / "c"), "--format", "cog", "--dates", "2019-08-01"])
    assert done.value.code == 0
    with rasterio.open(tmp_path / "c" / "embedding_2019-08-01.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.overviews(1)


def test_export_names_the_files_without_a_valid_pixel(tmp_path):
    """Two clear dates gap-filled onto a 5-day axis: 4 of 6 dates are all NaN (no extrapolation). export writes
    them (a complete series) but says how many and which, in the CLI's summary (run as users do: another
    working directory, relative paths) and as a warning and the return value of the library call."""
    import warnings

    days = pd.to_datetime(["2019-07-01", "2019-07-06", "2019-07-12", "2019-07-19", "2019-07-26"])
    v = np.random.default_rng(1).normal(size=(5, 2, 4, 4)).astype("float32")
    v[2:] = np.nan  # the three later dates are clouded out
    ds = xr.Dataset({"embedding": (("time", "feature", "y", "x"), v)},
                    coords={"time": days.values, "feature": ["s2_0", "s2_1"],
                            "y": 5_200_000.0 - 10 * np.arange(4) - 5, "x": 400_000.0 + 10 * np.arange(4) + 5},
                    attrs={"conventions": "latentcube embedding cube v1"})
    set_crs(ds, "EPSG:32633").to_zarr(tmp_path / "emb.zarr", zarr_format=2, consolidated=True)
    work = tmp_path / "work"
    work.mkdir()

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "latentcube.cli", *args], cwd=work, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc

    cli("gapfill", "../emb.zarr", "--out", "filled.zarr", "--freq", "5D")
    proc = cli("export", "filled.zarr", "--out", "tifs")
    empty_days = ["2019-07-11", "2019-07-16", "2019-07-21", "2019-07-26"]
    assert proc.stdout.strip() == (
        "6 files in tifs; 4 of 6 files hold no valid pixel (all nodata): 2019-07-11, 2019-07-16, 2019-07-21 and 1 "
        "more. They are written all the same (a complete series); gap filling does not extrapolate, so a date before "
        "a pixel's first or after its last clear observation stays empty. To leave them out, pass only the other "
        "dates (--dates / dates=[...])")
    assert "NoValidPixelWarning" not in proc.stderr  # said once, in the summary
    tifs = sorted((work / "tifs").glob("*.tif"))
    assert len(tifs) == 6
    for f in tifs:
        with rasterio.open(f) as src:
            assert np.isnan(src.read()).all() == any(d in f.name for d in empty_days), f.name

    with pytest.warns(NoValidPixelWarning, match=r"^4 of 6 files hold no valid pixel \(all nodata\): 2019-07-11, "
                                                 r"2019-07-16, 2019-07-21 and 1 more\. They are written"):
        files = export_geotiff(work / "filled.zarr", tmp_path / "lib", progress=False)
    assert len(files) == 6 and files.empty_dates == empty_days
    assert [p.name for p in files.empty] == [f"embedding_{d}.tif" for d in empty_days]
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoValidPixelWarning)
        some = export_geotiff(work / "filled.zarr", tmp_path / "lib2", dates=["2019-07-01", "2019-07-06"],
                              progress=False)
    assert len(some) == 2 and some.empty == [] and some.empty_message is None
    with pytest.warns(NoValidPixelWarning, match=r"^1 of 2 files hold .*: 2019-07-12\. .*; no pixel had a clear "
                                                 r"observation on those dates\."):  # not gap-filled, int8
        int8 = export_geotiff(tmp_path / "emb.zarr", tmp_path / "q", dtype="int8", dates=["2019-07-06", "2019-07-12"],
                              progress=False)
    assert int8.empty_dates == ["2019-07-12"]
    with rasterio.open(int8.empty[0]) as src:
        assert (src.read() == src.nodata).all()

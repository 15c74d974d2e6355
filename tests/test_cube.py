"""The cube data model: construction, validation (every rejection rule), Zarr/NetCDF round trips."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from latentcube.constants import S1_BANDS, S2_BANDS
from latentcube.cube import (
    CubeError,
    cube_crs,
    cube_summary,
    new_cube,
    open_cube,
    save_cube,
    set_crs,
    validate_cube,
)


def make_cube(n_time: int = 4, ny: int = 6, nx: int = 7, *, s1: bool = True, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    s2 = (rng.random((n_time, len(S2_BANDS), ny, nx)) * 0.4).astype("float32")
    s2[0, :, 0, 0] = np.nan  # one cloudy pixel
    kwargs = {}
    if s1:
        kwargs = {
            "s1": (rng.gamma(4.4, 0.05 / 4.4, (3, 2, ny, nx))).astype("float32"),
            "time_s1": pd.date_range("2020-01-02", periods=3, freq="6D"),
        }
    return new_cube(
        s2=s2,
        time=pd.date_range("2020-01-01", periods=n_time, freq="5D"),
        y=4_000_000.0 - 10.0 * np.arange(ny) - 5.0,
        x=500_000.0 + 10.0 * np.arange(nx) + 5.0,
        crs="EPSG:32632",
        s2_scl=np.full((n_time, ny, nx), 4, dtype="uint8"),
        layers={"landcover": np.ones((ny, nx), dtype="uint8")},
        attrs={"source": "test"},
        **kwargs,
    )


def test_valid_cube_passes_and_has_the_documented_layout():
    ds = make_cube()
    assert validate_cube(ds) is ds
    assert ds["s2"].dims == ("time", "band", "y", "x") and ds["s2"].dtype == np.float32
    assert ds["s1"].dims == ("time_s1", "band_s1", "y", "x") and ds["s1"].dtype == np.float32
    assert list(ds["band"].values) == list(S2_BANDS)
    assert list(ds["band_s1"].values) == list(S1_BANDS)
    assert cube_crs(ds).to_epsg() == 32632
    assert ds["s2"].attrs["grid_mapping"] == "spatial_ref"
    # GeoTransform: top-left pixel edge = first centre minus half a pixel.
    gt = [float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split()]
    assert gt == [500_000.0, 10.0, 0.0, 4_000_000.0, 0.0, -10.0]


def test_missing_s2_is_rejected():
    with pytest.raises(CubeError, match="missing 's2'"):
        validate_cube(make_cube().drop_vars("s2"))


def test_wrong_dimension_order_is_rejected_with_transpose_hint():
    ds = make_cube()
    ds["s2"] = ds["s2"].transpose("band", "time", "y", "x")
    with pytest.raises(CubeError, match=r"wrong order.*transpose"):
        validate_cube(ds)


def test_wrong_dimension_names_are_rejected_with_rename_hint():
    ds = make_cube(s1=False).rename(time="t")
    with pytest.raises(CubeError, match=r"dimensions \('t', 'band', 'y', 'x'\).*rename"):
        validate_cube(ds)


def test_unscaled_digital_numbers_are_rejected():
    ds = make_cube()
    ds["s2"] = ds["s2"] * 10000
    with pytest.raises(CubeError, match="divide by 10000"):
        validate_cube(ds)


def test_s1_in_decibels_is_rejected():
    ds = make_cube()
    ds["s1"] = 10 * np.log10(ds["s1"])
    with pytest.raises(CubeError, match=r"decibels.*10 \*\* \(ds\['s1'\] / 10\)"):
        validate_cube(ds)


@pytest.mark.parametrize("sensor", ["s2", "s1"])
def test_nodata_stored_as_zero_in_every_band_is_refused_or_warned(sensor):
    ds = make_cube(n_time=10, ny=20, nx=20)  # 4,000 pixel-dates, all sampled
    band_dim = "band" if sensor == "s2" else "band_s1"
    zero = xr.zeros_like(ds[sensor].isel({band_dim: 0}), dtype=bool)
    zero[:, :2, :] = True  # 2 of 20 rows = 10 % of the pixel-dates
    bad = ds.assign({sensor: ds[sensor].where(~zero, 0.0)})
    with pytest.raises(CubeError, match=rf"10.0% of the sampled {sensor} pixel-dates are 0 in every band: nodata "
                                        rf"stored as 0, not NaN. Fix: .*ds\['{sensor}'\].where"):
        validate_cube(bad)
    fixed = bad.assign({sensor: bad[sensor].where((bad[sensor] != 0).any(band_dim))})  # the fix the message gives
    assert validate_cube(fixed) is fixed
    assert int(np.isnan(fixed[sensor]).all(band_dim).sum()) == int(zero.sum())
    four = xr.zeros_like(zero)
    four[0, 0, :4] = True  # 4 pixel-dates: below the refusal share (0.5 %), a warning
    few = ds.assign({sensor: ds[sensor].where(~four, 0.0)})
    with pytest.warns(UserWarning, match=rf"4 sampled {sensor} pixel-dates \({4 / zero.size:.2%}\) are 0 in every band"):
        validate_cube(few)
    # one band at 0 is a real (dark) value, not nodata
    one = ds.copy()
    one[sensor] = ds[sensor].where(~(zero & (ds[band_dim] == ds[band_dim][0])), 0.0)
    validate_cube(one)


def test_duplicate_dates_are_rejected():
    ds = make_cube()
    times = ds["time"].values.copy()
    times[2] = times[1]
    with pytest.raises(CubeError, match="duplicate dates in 'time'"):
        validate_cube(ds.assign_coords(time=times))


def test_unsorted_dates_are_rejected():
    ds = make_cube()
    with pytest.raises(CubeError, match=r"not sorted.*sortby"):
        validate_cube(ds.isel(time=[1, 0, 2, 3]))


def test_unsorted_s1_dates_are_rejected():
    ds = make_cube()
    with pytest.raises(CubeError, match="'time_s1' are not sorted"):
        validate_cube(ds.isel(time_s1=[2, 0, 1]))


def test_missing_crs_is_rejected():
    with pytest.raises(CubeError, match="missing CRS.*set_crs"):
        validate_cube(make_cube().drop_vars("spatial_ref"))


def test_geographic_crs_is_rejected():
    ds = set_crs(make_cube(), "EPSG:4326")
    with pytest.raises(CubeError, match="not projected"):
        validate_cube(ds)


def test_irregular_pixel_spacing_is_rejected():
    ds = make_cube()
    x = ds["x"].values.copy()
    x[3:] += 5.0
    with pytest.raises(CubeError, match="irregular pixel spacing along 'x'"):
        validate_cube(ds.assign_coords(x=x))


def test_cube_without_any_valid_s2_observation_is_rejected():
    ds = make_cube()
    ds["s2"] = xr.full_like(ds["s2"], np.nan)
    with pytest.raises(CubeError, match="no valid S2 observation"):
        validate_cube(ds)


def test_bands_out_of_canonical_order_and_unknown_bands_are_rejected():
    ds = make_cube()
    with pytest.raises(CubeError, match="out of the canonical order"):
        validate_cube(ds.isel(band=[1, 0, 2, 3, 4, 5, 6, 7, 8, 9]))
    with pytest.raises(CubeError, match="not Sentinel-2 L2A bands"):
        validate_cube(ds.assign_coords(band=["B01", *S2_BANDS[1:]]))
    # A subset in canonical order (e.g. openEO exports with four bands) is a valid cube.
    validate_cube(ds.sel(band=["B02", "B04", "B08"]))


def test_float64_reflectance_is_rejected():
    ds = make_cube()
    ds["s2"] = ds["s2"].astype("float64")
    with pytest.raises(CubeError, match="float32"):
        validate_cube(ds)


def test_require_s1():
    with pytest.raises(CubeError, match="missing 's1'"):
        validate_cube(make_cube(s1=False), require_s1=True)


def test_validating_a_lazy_cube_reads_a_few_chunk_windows_not_the_whole_cube():
    """A stride over every chunk would read a tile-size cube whole; the sample reads at most 4 x 4 spatial
    chunks (x the time chunks), and still catches what it checks."""
    import dask.array as da

    from latentcube.cube import SAMPLE_CHUNKS_PER_AXIS

    class Counting:  # an array-like that records the chunks dask reads from it
        def __init__(self, values):
            self.values, self.shape, self.dtype, self.ndim, self.reads = values, values.shape, values.dtype, values.ndim, []

        def __getitem__(self, key):
            self.reads.append(key)
            return self.values[key]

    ref = make_cube(n_time=4, ny=8 * 16, nx=8 * 16, s1=False)
    for scale, error in ((1.0, None), (10_000.0, "unscaled digital numbers")):
        src = Counting(ref["s2"].values * np.float32(scale))
        lazy = ref.assign(s2=(ref["s2"].dims, da.from_array(src, chunks=(4, 10, 16, 16), asarray=False)))
        if error:
            with pytest.raises(CubeError, match=error):
                validate_cube(lazy)
        else:
            validate_cube(lazy)
        chunks = {(k[2].start, k[3].start) for k in src.reads}
        assert 0 < len(chunks) <= SAMPLE_CHUNKS_PER_AXIS**2 < 8 * 8  # of the 64 spatial chunks


def test_a_saved_cube_with_lazy_coordinates_validates(tmp_path):
    """Zarr opens non-index coordinates (orbit_state along time_s1) as Dask arrays chunked apart from the data."""
    n_s1 = 70  # more than a storage chunk of dates (64): the data is split along time_s1, the coordinate not
    s2 = make_cube(n_time=4, ny=6, nx=7, s1=False)
    s1 = np.random.default_rng(1).gamma(4.4, 0.05 / 4.4, (n_s1, 2, 6, 7)).astype("float32")
    ds = new_cube(s2=s2["s2"].values, time=s2["time"].values, y=s2["y"].values, x=s2["x"].values, crs="EPSG:32632",
                  s1=s1, time_s1=pd.date_range("2020-01-02", periods=n_s1, freq="6D"))
    ds = ds.assign_coords(orbit_state=("time_s1", ["ascending", "descending"] * (n_s1 // 2)))
    lazy = open_cube(save_cube(ds, tmp_path / "orbits.zarr"))
    assert validate_cube(lazy) is lazy


def test_require_s2_false_accepts_an_s1_only_cube_and_still_checks_it():
    s1_only = make_cube().drop_vars(["s2", "band", "time", "s2_scl"])
    with pytest.raises(CubeError, match="missing 's2'"):
        validate_cube(s1_only)
    assert validate_cube(s1_only, require_s2=False) is s1_only
    with pytest.raises(CubeError, match="s1 looks like decibels"):
        validate_cube(s1_only.assign(s1=10 * np.log10(s1_only["s1"])), require_s2=False)
    with pytest.raises(CubeError, match=r"'x' decreases"):
        validate_cube(s1_only.isel(x=slice(None, None, -1)), require_s2=False)
    with pytest.raises(CubeError, match="missing 's2'"):  # neither sensor: nothing to accept
        validate_cube(s1_only.drop_vars(["s1"]), require_s2=False)


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_save_open_round_trip_is_lazy_and_exact(tmp_path, suffix):
    ds = make_cube()
    path = save_cube(ds, tmp_path / f"cube{suffix}")
    out = open_cube(path, validate=True)
    assert out["s2"].chunks is not None  # lazy, dask-backed
    xr.testing.assert_identical(out[["s2", "s1", "s2_scl", "landcover"]].load().drop_vars("spatial_ref"),
                                ds[["s2", "s1", "s2_scl", "landcover"]].drop_vars("spatial_ref"))
    assert np.isnan(out["s2"].values[0, :, 0, 0]).all()
    assert cube_crs(out).to_epsg() == 32632


def test_cubes_are_zarr_v3_with_consolidated_metadata_and_no_warnings(tmp_path):
    import json
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither zarr's v3 notes (consolidated metadata, string types) nor others
        path = save_cube(make_cube(), tmp_path / "c.zarr")
        out = open_cube(path, validate=True)
        plain = xr.open_zarr(path, consolidated=True)
    root = json.loads((path / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and {"s2", "band"} <= set(root["consolidated_metadata"]["metadata"])
    assert root["consolidated_metadata"]["metadata"]["band"]["data_type"] == "string"
    assert not (path / ".zmetadata").exists() and (path / "s2" / "c" / "0" / "0" / "0" / "0").is_file()
    assert zarr.open_group(path, mode="r").metadata.zarr_format == 3
    assert [str(b) for b in out["band"].values] == list(S2_BANDS) == [str(b) for b in plain["band"].values]


def test_format_2_cubes_written_before_still_open_and_are_replaced_by_v3(tmp_path, monkeypatch):
    import latentcube.stores
    from latentcube.cube import is_cube_store

    ds = make_cube()
    with monkeypatch.context() as m:  # the writer as it was before Zarr v3
        m.setattr(latentcube.stores, "ZARR_FORMAT", 2)
        path = save_cube(ds, tmp_path / "c.zarr")
    assert (path / ".zmetadata").is_file() and not (path / "zarr.json").exists()
    assert is_cube_store(path)
    out = open_cube(path, validate=True)
    xr.testing.assert_identical(out[["s2", "s1"]].load().drop_vars("spatial_ref"), ds[["s2", "s1"]].drop_vars("spatial_ref"))
    save_cube(out, path)  # rewritten by today's writer: v3
    assert (path / "zarr.json").is_file() and not (path / ".zmetadata").exists()
    np.testing.assert_array_equal(open_cube(path)["s2"].values, ds["s2"].values)


def test_saved_cube_is_readable_by_rioxarray_in_a_fresh_process(tmp_path):
    path = save_cube(make_cube(), tmp_path / "cube.zarr")
    code = (
        "import xarray as xr, rioxarray; "
        f"ds = xr.open_zarr({str(path)!r}, decode_coords='all'); "
        "print(ds.rio.crs.to_epsg(), tuple(ds.rio.transform())[:6])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "32632 (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)"


def test_open_missing_path_gives_clear_error(tmp_path):
    with pytest.raises(CubeError, match="no such cube"):
        open_cube(tmp_path / "nothing.zarr")


def test_summary_reports_dates_valid_fraction_and_ranges():
    ds = make_cube()
    info = cube_summary(ds)
    assert info["s2"]["dates"] == 4 and info["s1"]["dates"] == 3
    # one invalid pixel of 42 on one of 4 dates
    assert info["s2"]["valid_fraction_mean"] == pytest.approx(1 - 1 / 42 / 4)
    assert info["crs"] == "EPSG:32632"
    assert info["pixel_size_m"] == (10.0, 10.0)
    # pixel edges (as GeoTIFFs and STAC give them), not the centres 500005 .. 500065, 3999945 .. 3999995
    assert info["bounds"] == (500_000.0, 3_999_940.0, 500_070.0, 4_000_000.0)
    lo, mid, hi = info["s2"]["value_p1_p50_p99"]
    assert 0 <= lo < mid < hi <= 0.4


def test_info_prints_the_pixel_edge_bounds_in_full_metres(tmp_path):
    """The user walkthrough: `info` gave the pixel-centre extent as bounds. Relative path, another directory."""
    import json
    import os

    save_cube(make_cube(), tmp_path / "c.zarr")
    env = {**os.environ, "COLUMNS": "200"}
    run = [sys.executable, "-m", "latentcube.cli", "info", "c.zarr"]
    table = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert table.returncode == 0, table.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in table.stdout.splitlines()
            if line.count("│") == 3}
    assert rows["bounds"] == "500000, 3999940, 500070, 4000000 (pixel edges: xmin, ymin, xmax, ymax)"
    js = subprocess.run([*run, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert json.loads(js.stdout)["bounds"] == [500_000.0, 3_999_940.0, 500_070.0, 4_000_000.0]


def test_summary_names_the_default_models_missing_bands_with_the_train_fix():
    """A cube of 3 S2 bands (an openEO export) is told at `info`, not first at `train`, with the train error's fix."""
    from latentcube.constants import model_band_selection
    from latentcube.describe import cube_rows

    full = cube_summary(make_cube())
    assert "model_bands" not in full["s2"] and "model_bands" not in full["s1"]
    assert [label for label, _ in cube_rows(full)] == [  # a full cube's info is as before: no new rows
        "crs", "dims", "pixel_size_m", "bounds", "s2 dates", "s2 bands", "s2 valid fraction", "s2 p1/p50/p99",
        "s1 dates", "s1 bands", "s1 valid fraction", "s1 p1/p50/p99", "variables"]

    ds = make_cube().sel(band=["B04", "B08", "B11"])
    ds.attrs["import_dropped_variables"] = "S2-L2A-AOT, S2-L2A-B01"
    info = cube_summary(ds)
    fix = ("the cube lacks ['B02', 'B03', 'B05', 'B06', 'B07', 'B8A', 'B12']: fetch or import them into the cube, "
           "or train a model on the cube's bands (model: {n_bands: 3, band_names: ['B04', 'B08', 'B11']})")
    assert info["s2"]["model_bands"] == f"the default s2 model (the shipped configs) expects 10 bands; {fix}"
    assert "model_bands" not in info["s1"]
    with pytest.raises(ValueError) as err:  # the same words as train's and embed's error
        model_band_selection(ds.band.values, S2_BANDS, what="s2 bands")
    assert f"Fix: {fix}." in str(err.value)
    rows = dict(cube_rows(info))
    assert rows["s2 vs model"] == info["s2"]["model_bands"] and "s1 vs model" not in rows
    assert rows["dropped at import"].startswith("S2-L2A-AOT, S2-L2A-B01 (S2 file variables not recognised")
    assert "--band-map VARIABLE=BAND" in rows["dropped at import"]

    s1_only_vv = cube_summary(make_cube().isel(band_s1=[0]))
    assert s1_only_vv["s1"]["model_bands"].startswith("the default s1 model (the shipped configs) expects 2 bands; "
                                                      "the cube lacks ['VH']")


# ------------------------------------------------------------------- writing over paths (issue 27)


def test_save_cube_never_deletes_a_folder_that_is_not_a_cube(tmp_path):
    from latentcube.files import OutputExistsError

    thesis = tmp_path / "thesis"
    (thesis / "figures").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("chapter 1")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=r"is not a latentcube cube; refusing to delete it\. Fix:"):
            save_cube(make_cube(), thesis, overwrite=overwrite)
    assert (thesis / "thesis.tex").read_text() == "chapter 1" and (thesis / "figures").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["thesis"]  # no temporary left behind


@pytest.mark.parametrize("suffix", [".zarr", ".nc"])
def test_save_cube_replaces_a_cube_only_with_overwrite(tmp_path, suffix):
    from latentcube.files import OutputExistsError

    path = save_cube(make_cube(seed=1), tmp_path / f"c{suffix}")
    with pytest.raises(OutputExistsError, match=r"cube .* exists\. Fix: pass --overwrite"):
        save_cube(make_cube(seed=2), path, overwrite=False)
    np.testing.assert_array_equal(open_cube(path)["s2"].values, make_cube(seed=1)["s2"].values)
    save_cube(make_cube(seed=2), path, overwrite=True)
    np.testing.assert_array_equal(open_cube(path)["s2"].values, make_cube(seed=2)["s2"].values)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"c{suffix}"]


def test_cli_import_refuses_a_folder_of_other_files_and_keeps_them(tmp_path):
    from latentcube.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        main(["import", "--out", str(tmp_path / "out"), "--s2", str(tmp_path / "missing.nc")])
    assert exc.value.code == 1
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------- corrupt stores (issue 27)


#: The first chunk file of a 4-d array in each Zarr format.
FIRST_CHUNK = {3: "c/0/0/0/0", 2: "0.0.0.0"}


@pytest.fixture(params=[3, 2], ids=["zarr3", "zarr2"])
def zarr_format(request, monkeypatch):
    """Stores written in Zarr v3 (the format of new stores) and in format 2 (the stores written before)."""
    import latentcube.stores

    monkeypatch.setattr(latentcube.stores, "ZARR_FORMAT", request.param)
    return request.param


def _chunk(path, var="s2"):
    from latentcube.stores import array_layout

    return path / var / array_layout(path, var).keys()[0]


def test_every_chunk_is_written_and_a_deleted_one_is_named(tmp_path, zarr_format):
    ds = make_cube()
    ds["s1"][:] = np.nan  # all-NaN: zarr would skip writing this chunk
    path = save_cube(ds, tmp_path / "c.zarr")
    assert open_cube(path)["s1"].isnull().all()
    assert _chunk(path, "s1") == path / "s1" / FIRST_CHUNK[zarr_format]
    _chunk(path, "s1").unlink()
    with pytest.raises(CubeError, match=rf"incomplete cube .*variable 's1', chunk file .*s1/{re.escape(FIRST_CHUNK[zarr_format])} "
                                        r"is missing.*read as NaN\. Fix: re-create the cube"):
        open_cube(path)


def test_an_empty_chunk_file_is_named(tmp_path, zarr_format):
    path = save_cube(make_cube(), tmp_path / "c.zarr")
    _chunk(path).write_bytes(b"")
    with pytest.raises(CubeError, match=rf"corrupt cube .*variable 's2', chunk file .*s2/{re.escape(FIRST_CHUNK[zarr_format])} "
                                        r"is empty \(0 bytes\)\. Fix: re-create"):
        open_cube(path)


@pytest.mark.parametrize("verb", ["validate", "info"])
def test_a_truncated_chunk_is_an_error_not_a_crash(tmp_path, verb, zarr_format):
    """Blosc trusts its header: half a chunk file used to kill the interpreter (exit 139, nothing printed).
    Run as the user does, in a subprocess, so a crash fails this test rather than pytest."""
    path = save_cube(make_cube(), tmp_path / "c.zarr")
    chunk = _chunk(path)
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    proc = subprocess.run([sys.executable, "-m", "latentcube.cli", verb, "c.zarr"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 1, proc.stderr
    assert (f"variable 's2', chunk file c.zarr/s2/{FIRST_CHUNK[zarr_format]} is {len(data) // 2:,} bytes but its Blosc "
            "header announces") in err
    assert "Fix: re-create the cube" in err and "Traceback" not in err


def test_stores_without_the_complete_chunks_record_warn_about_absent_data_chunks(tmp_path, zarr_format):
    import json

    path = save_cube(make_cube(), tmp_path / "c.zarr")
    if zarr_format == 3:  # the root attributes are those of the root zarr.json
        meta = json.loads((path / "zarr.json").read_text())
        meta["attributes"].pop("latentcube_all_chunks_written")
        (path / "zarr.json").write_text(json.dumps(meta))
    else:
        meta = json.loads((path / ".zmetadata").read_text())
        meta["metadata"][".zattrs"].pop("latentcube_all_chunks_written")
        (path / ".zmetadata").write_text(json.dumps(meta))
    _chunk(path).unlink()
    with pytest.warns(UserWarning, match=r"1 chunk files of \['s2'\] are absent .*they read as NaN"):
        ds = open_cube(path)
    assert ds["s2"].isnull().all()


def test_chunk_problems_lists_each_problem(tmp_path, zarr_format):
    from latentcube.chunks import chunk_problems

    path = save_cube(make_cube(), tmp_path / "c.zarr")
    assert chunk_problems(path) == []
    _chunk(path, "s1").unlink()
    _chunk(path, "s2_scl").write_bytes(b"\x02\x01")
    found = {(p.variable, p.kind) for p in chunk_problems(path)}
    assert found == {("s1", "missing"), ("s2_scl", "truncated")}


# ------------------------------------------------------------------- not a cube, bad values (issue 27)


def test_folders_and_files_that_are_not_cubes(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    (tmp_path / "zero.nc").write_bytes(b"")
    (tmp_path / "text.nc").write_text("hello")
    for name, match in [("empty", r"is an empty folder, not a cube\. Fix:"),
                        ("docs", r"is a folder but not a Zarr cube \(no \.zgroup or zarr\.json; it holds a\.txt\)\. Fix:"),
                        ("zero.nc", r"is an empty file \(0 bytes\), not a cube.*Fix:"),
                        ("text.nc", r"is not a NetCDF file \(it starts with b'hell'\), so not a cube\. Fix:")]:
        with pytest.raises(CubeError, match=match):
            open_cube(tmp_path / name)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_coordinates_are_named_not_irregular_spacing(bad):
    ds = make_cube(s1=False)
    x = ds["x"].values.copy()
    x[3] = bad
    with pytest.raises(CubeError, match=r"coordinate 'x' has 1 NaN or infinite value\(s\) \(first at index 3 of 7\).*Fix:"):
        validate_cube(ds.assign_coords(x=x))


def test_impossible_reflectance_is_a_fill_value_not_digital_numbers():
    ds = make_cube(s1=False)
    s2 = ds["s2"].values.copy()
    s2[:, :, :2] = 1e30  # a third of the cube
    with pytest.raises(CubeError, match=r"impossible reflectances.*a fill value stored as data, not digital numbers\. "
                                        r"Fix: mask it as NaN on import \(--s2-nodata"):
        validate_cube(ds.assign(s2=(ds["s2"].dims, s2)))
    s2 = ds["s2"].values.copy()
    s2[1, :, 2, 3] = np.inf  # one pixel-date: read as NaN, reported
    with pytest.warns(UserWarning, match=r"10 \(0\.6\d%\) of the sampled s2 values are infinite.*as NaN"):
        validate_cube(ds.assign(s2=(ds["s2"].dims, s2)))
    with pytest.raises(CubeError, match="divide by 10000"):  # digital numbers keep their own fix
        validate_cube(ds.assign(s2=ds["s2"] * 10000))


# --------------------------------------------------------------- S1 that is not linear backscatter


def _with_s1(values: np.ndarray, **attrs) -> xr.Dataset:
    ds = make_cube(n_time=4, ny=12, nx=14)
    return ds.assign(s1=(ds["s1"].dims, values.astype("float32"))).assign_attrs(**attrs)


def _s1_shape() -> tuple[int, ...]:
    return make_cube(n_time=4, ny=12, nx=14)["s1"].shape


def test_s1_digital_numbers_are_refused_with_the_encoding_to_use():
    """openEO uint16 DN (median ~2353) imported as linear power used to validate with a fill-value warning."""
    dn = np.random.default_rng(1).uniform(500, 10_000, _s1_shape())
    dn[0, :, 0, :3] = np.nan
    with pytest.raises(CubeError) as exc:
        validate_cube(_with_s1(dn, import_s1_encoding="linear"))
    msg = str(exc.value)
    assert re.search(r"s1 is not linear backscatter \(imported with s1_encoding='linear'\): its median \d{4} "
                     r"\(\+3\d dB\) is far above land sigma0 .*looks like digital numbers or dB", msg), msg
    for fix in ("--s1-encoding db", "--s1-encoding openeo_uint16", "--preset openeo",
                "import_cube(..., s1_encoding='db' | 'openeo_uint16')", "re-create the cube"):
        assert fix in msg, fix
    assert "--s1-nodata" not in msg  # not the fill-value fix
    # a cube built by hand (no import attrs) gets the same error, without the import note
    with pytest.raises(CubeError, match=r"^s1 is not linear backscatter: its median .*Fix: re-import .*--s1-encoding"):
        validate_cube(_with_s1(dn), require_s1=True)


def test_s1_that_is_mostly_infinite_is_refused_with_the_encoding_to_use():
    """DN decoded as dB overflow to inf: 100 % impossible values used to pass validation with a warning."""
    inf = np.full(_s1_shape(), np.inf)
    with pytest.raises(CubeError, match=r"s1 is not linear backscatter \(imported with s1_encoding='db'\): 100% of the "
                                        r"sampled s1 values are outside the physical range \[0, 10000\] \(100% infinite\); "
                                        r"values that overflow to inf when decoded from dB are digital numbers.*"
                                        r"Fix: .*--s1-encoding openeo_uint16"):
        validate_cube(_with_s1(inf, import_s1_encoding="db"))
    half = np.random.default_rng(2).gamma(4.4, 0.05 / 4.4, _s1_shape())
    half[:, :, :6] = 1e30  # half of the pixels: the bulk, not a few fill values
    with pytest.raises(CubeError, match=r"50% of the sampled s1 values are outside .*\(0% infinite\) \(median of the "
                                        r"finite ones .*\); they look like digital numbers or dB.*--s1-encoding db"):
        validate_cube(_with_s1(half))


def test_real_looking_linear_s1_passes_and_a_few_fill_values_only_warn():
    rng = np.random.default_rng(3)
    linear = 10 ** rng.uniform(-3, np.log10(0.5), _s1_shape())  # 1e-3..0.5 (-30..-3 dB)
    linear[1, :, 2:5, 2:5] = np.nan  # nodata
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_cube(_with_s1(linear), require_s1=True)
        bright = linear * 6.0  # dense urban / steep slopes facing the radar: median ~ -7 dB, up to +5 dB
        validate_cube(_with_s1(bright), require_s1=True)
    fill = linear.copy()
    fill[0, :, 0, 0] = 65535.0  # one unmasked fill value: a warning with the fill-value fix only
    with pytest.warns(UserWarning, match=r"sampled s1 values are infinite or outside the physical range \[0, 10000\]; "
                                         r"embed and train read .* Fix: mask the fill value on import \(--s1-nodata VALUE\) "
                                         r"or re-create the cube\.$"):
        validate_cube(_with_s1(fill))
    # values above 0 dB for the most part (but below the error threshold) and a few above the range: the
    # warning names the encoding too
    odd = rng.uniform(2.0, 6.0, _s1_shape())
    odd[0, :, 0, :2] = 2e4
    with pytest.warns(UserWarning, match=r"Fix: mask the fill value on import \(--s1-nodata VALUE\); the values also "
                                         r"look like digital numbers or dB.*--s1-encoding db"):
        validate_cube(_with_s1(odd))


# ------------------------------------------------------------------------- S1 coverage (issue 27)


def _coverage_cube(**kw):
    ds = make_cube(n_time=6, s1=False)
    t = pd.DatetimeIndex(ds["time"].values)
    s1 = np.full((6, 2, ds.sizes["y"], ds.sizes["x"]), 0.05, "float32")
    return new_cube(s2=ds["s2"].values, time=t, y=ds["y"].values, x=ds["x"].values, crs="EPSG:32632",
                    s1=kw.get("s1", s1), time_s1=kw.get("time_s1", t + pd.Timedelta("1D")))


def test_s1_coverage_counts_dates_and_pixels():
    from latentcube.cube_checks import s1_coverage

    assert s1_coverage(_coverage_cube()) == (cov := s1_coverage(_coverage_cube())) and cov.date_share == 1.0
    assert cov.pixel_share == 1.0
    t = pd.DatetimeIndex(_coverage_cube()["time"].values)
    # S1 of the next year (dates that never meet S2's); S1 7 days after each S2 date: 5 of 6 meet a later S1 2 days off
    assert s1_coverage(_coverage_cube(time_s1=t + pd.Timedelta("365D"))).dates_covered == 0
    assert s1_coverage(_coverage_cube(time_s1=t + pd.Timedelta("7D"))).dates_covered == 5
    s1 = np.full((6, 2, 6, 7), 0.05, "float32")
    s1[:4] = np.nan  # a lost S1 chunk of the first four dates: 2 of 6 S2 dates keep S1
    assert s1_coverage(_coverage_cube(s1=s1)).dates_covered == 2
    s1 = np.full((6, 2, 6, 7), 0.05, "float32")
    s1[..., :5] = np.nan  # S1 over 2 of 7 columns only (another grid)
    assert s1_coverage(_coverage_cube(s1=s1)).pixel_share == pytest.approx(2 / 7, abs=0.03)


def test_check_s1_coverage_errors_on_none_warns_on_little_unless_allowed():
    from latentcube.cube_checks import check_s1_coverage

    t = pd.DatetimeIndex(_coverage_cube()["time"].values)
    never = _coverage_cube(time_s1=t + pd.Timedelta("400D"))
    with pytest.raises(CubeError, match=r"this model: S1 covers 0 of 6 S2 dates.*fusion would see S1 as absent everywhere.*"
                                        r"Fix: .*--allow-missing-s1"):
        check_s1_coverage(never)
    with pytest.warns(UserWarning, match="S1 absent as allowed"):
        assert check_s1_coverage(never, allow_missing=True).dates_covered == 0
    with pytest.raises(CubeError, match=r"the cube has no 's1'"):
        check_s1_coverage(make_cube(s1=False))
    s1 = np.full((6, 2, 6, 7), 0.05, "float32")
    s1[:4] = np.nan
    with pytest.warns(UserWarning, match=r"S1 covers 2 of 6 S2 dates \(33%"):
        check_s1_coverage(_coverage_cube(s1=s1))


def test_cli_validate_refuses_s1_that_meets_no_s2_date_unless_allowed(tmp_path, capsys):
    from latentcube.cli import main

    t = pd.DatetimeIndex(_coverage_cube()["time"].values)
    save_cube(_coverage_cube(time_s1=t + pd.Timedelta("400D")), tmp_path / "c.zarr")
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(tmp_path / "c.zarr")])
    assert exc.value.code == 1 and "S1 covers 0 of 6 S2 dates" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(tmp_path / "c.zarr"), "--allow-missing-s1"])
    printed = capsys.readouterr()  # the warning as the CLI shows it: one line, no source line
    assert exc.value.code == 0 and "valid" in printed.out
    assert printed.err.startswith("warning: ") and "S1 absent as allowed" in printed.err and ".py:" not in printed.err


def test_scan_cube_counts_every_value_exactly(tmp_path):
    from latentcube.cube_checks import scan_cube

    ds = make_cube(n_time=4, ny=6, nx=7)
    s2 = ds["s2"].values.copy()
    s2[1, 3, 2, 2] = 1e30  # two impossible pixel-dates, one of them in two bands
    s2[2, :2, 4, 4] = np.inf
    s1 = ds["s1"].values.copy()
    s1[0, 1, 0, 0] = -1.0
    ds = ds.assign(s2=(ds["s2"].dims, s2), s1=(ds["s1"].dims, s1))
    for cube in (ds, open_cube(save_cube(ds, tmp_path / "c.zarr"))):  # in memory and chunk by chunk
        scans = scan_cube(cube)
        assert scans["s2"].values == s2.size and scans["s2"].missing == int(np.isnan(s2).sum()) == 10
        assert scans["s2"].impossible_pixel_dates == 2 and scans["s2"].pixel_dates == 4 * 6 * 7
        assert scans["s1"].impossible_pixel_dates == 1 and scans["s1"].missing == 0


@pytest.mark.slow
def test_a_chunk_that_does_not_decode_is_named_by_validate_full(tmp_path, zarr_format):
    """A chunk file of the right size whose payload is garbage: the codec's message names no file; the plain
    validate says how to find it, --full names it. In a subprocess: a decoder crash must fail this test only."""
    path = save_cube(make_cube(n_time=12, ny=40, nx=40), tmp_path / "c.zarr")
    chunk = _chunk(path)
    data = bytearray(chunk.read_bytes())
    data[32:] = np.random.default_rng(0).integers(0, 256, len(data) - 32).astype("uint8").tobytes()
    chunk.write_bytes(bytes(data))

    def run(*extra):
        proc = subprocess.run([sys.executable, "-m", "latentcube.cli", "validate", "c.zarr", *extra], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr
        return " ".join(proc.stderr.split())

    plain = run()
    assert "cannot read 's2': a chunk file does not decode" in plain and "Fix: `latentcube validate --full" in plain
    assert f"cannot decode variable 's2', chunk file c.zarr/s2/{FIRST_CHUNK[zarr_format]}" in run("--full")


def test_cli_validate_full_prints_exact_counts(tmp_path, capsys):
    from latentcube.cli import main

    ds = make_cube(s1=False)
    s2 = ds["s2"].values.copy()
    s2[1, 0, 2, 2] = np.inf
    save_cube(ds.assign(s2=(ds["s2"].dims, s2)), tmp_path / "c.zarr")
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(tmp_path / "c.zarr"), "--full"])
    assert exc.value.code == 0
    printed = capsys.readouterr()
    assert "s2: 10 of 1,680 values missing (0.6%); 1 of 168 pixel-dates with impossible values" in printed.out
    assert printed.err.startswith("warning: ") and "infinite" in printed.err


def test_s1_coverage_samples_the_same_pixels_of_both_sensors(monkeypatch):
    """A sample small enough to stride: S2 (more values per pixel) and S1 must still be read at the same
    pixels (per-sensor strides gave masks of different shapes: IndexError on the WorldCereal chip)."""
    import latentcube.cube_checks as checks

    monkeypatch.setattr(checks, "_SAMPLE_TARGET", 700)  # S2: 60 values per pixel -> every 2nd pixel; S1 (12): every pixel
    s1 = np.full((6, 2, 6, 7), 0.05, "float32")
    s1[..., :5] = np.nan  # S1 over the last 2 of 7 columns; the stride keeps columns 0, 2, 4, 6
    cov = checks.s1_coverage(_coverage_cube(s1=s1))
    assert cov.dates_covered == 6 and cov.pixel_share == pytest.approx(1 / 4)

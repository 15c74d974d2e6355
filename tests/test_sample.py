"""Point sampling: direct indexing at random points given in other CRSs, polygon means by hand, chunk reads, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pyproj import Transformer

from latentcube.cube import set_crs
from latentcube.sample_points import SampleError, read_points, sample_embeddings
from latentcube.stores import write_zarr

#: A UTM 32N grid, 10 m pixels, north-up: pixel (row, col) has its centre at (X0 + 10 col + 5, Y0 - 10 row - 5).
X0, Y0 = 600_000.0, 5_000_000.0
TIMES = pd.DatetimeIndex(["2019-04-03", "2019-05-13", "2019-07-02"])


def store(path, *, h=60, w=50, chunk=10, seed=0, zarr_format=None) -> xr.Dataset:
    """A float32 embedding store (3 dates, 4 features) with NaN pixel-dates, written with chunk x chunk tiles
    as latentcube writes stores (Zarr v3; ``zarr_format=2``: as before v3)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(TIMES), 4, h, w)).astype("float32")
    v[rng.random((len(TIMES), h, w))[:, None].repeat(4, 1) < 0.2] = np.nan
    ds = xr.Dataset(
        {"embedding": (("time", "feature", "y", "x"), v),
         "quality_s2": (("time", "y", "x"), rng.random((len(TIMES), h, w)).astype("float32"))},
        coords={"time": TIMES.values, "feature": [f"fused_{i}" for i in range(4)],
                "y": Y0 - 10 * np.arange(h) - 5, "x": X0 + 10 * np.arange(w) + 5},
        attrs={"conventions": "latentcube embedding cube v1 (docs/embed.md)"},
    )
    ds = set_crs(ds, "EPSG:32632")
    write_zarr(ds, path, zarr_format=zarr_format, encoding={"embedding": {"chunks": (3, 4, chunk, chunk)},
                                                            "quality_s2": {"chunks": (3, chunk, chunk)}})
    return ds


def random_pixels(n, h, w, seed=1):
    """n random (row, col) and a random position inside each pixel, in UTM metres."""
    rng = np.random.default_rng(seed)
    r, c = rng.integers(0, h, n), rng.integers(0, w, n)
    x = X0 + 10 * c + rng.uniform(0.5, 9.5, n)
    y = Y0 - 10 * r - rng.uniform(0.5, 9.5, n)
    return r, c, x, y


def to_crs(x, y, crs):
    return Transformer.from_crs("EPSG:32632", crs, always_xy=True).transform(x, y)


def test_50_random_points_in_lonlat_csv_equal_direct_indexing(tmp_path):
    ds = store(tmp_path / "e.zarr")
    r, c, x, y = random_pixels(50, 60, 50)
    lon, lat = to_crs(x, y, "EPSG:4326")
    pd.DataFrame({"site": [f"s{i}" for i in range(50)], "Longitude": lon, "Latitude": lat}).to_csv(tmp_path / "p.csv",
                                                                                                  index=False)
    table = sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.csv", tmp_path / "out.csv", series=True, progress=False)
    assert len(table) == 50 * 3
    ref = ds["embedding"].values  # (T, F, H, W)
    for i in range(50):
        rows = table[table["point"] == i]
        assert (rows["site"] == f"s{i}").all()
        np.testing.assert_array_equal(rows[[f"fused_{k}" for k in range(4)]].to_numpy(), ref[:, :, r[i], c[i]])
        np.testing.assert_array_equal(rows["quality_s2"].to_numpy(), ds["quality_s2"].values[:, r[i], c[i]])
        np.testing.assert_array_equal(rows["n_valid"].to_numpy(), np.isfinite(ref[:, 0, r[i], c[i]]).astype(int))
    np.testing.assert_allclose(table["store_x"].to_numpy()[::3], x, atol=1e-6)
    back = pd.read_csv(tmp_path / "out.csv")
    assert list(back.columns[:4]) == ["point", "site", "Longitude", "Latitude"] and len(back) == 150
    np.testing.assert_allclose(back["fused_2"].to_numpy(), table["fused_2"].to_numpy(), rtol=1e-6, equal_nan=True)


def test_geojson_in_web_mercator_and_a_date_in_wide_format(tmp_path):
    ds = store(tmp_path / "e.zarr")
    r, c, x, y = random_pixels(50, 60, 50, seed=2)
    mx, my = to_crs(x, y, "EPSG:3857")
    fc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
          "features": [{"type": "Feature", "properties": {"id": i}, "geometry": {"type": "Point", "coordinates": [a, b]}}
                       for i, (a, b) in enumerate(zip(mx, my, strict=True))]}
    (tmp_path / "p.geojson").write_text(json.dumps(fc))
    table = sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.geojson", dates=["2019-05-13"], fmt="wide")
    assert len(table) == 50 and "fused_3_2019-05-13" in table and "n_valid_2019-05-13" in table
    np.testing.assert_array_equal(table["fused_3_2019-05-13"].to_numpy(), ds["embedding"].values[1, 3, r, c])


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_reads_only_the_chunks_that_hold_points(tmp_path, monkeypatch, zarr_format):
    import zarr.storage

    store(tmp_path / "e.zarr", h=200, w=200, chunk=20, zarr_format=zarr_format)  # 100 spatial chunks per variable
    reads: list[str] = []
    original = zarr.storage.LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        reads.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    rng = np.random.default_rng(0)
    # 2,000 points in two chunks (rows/cols 0..19 and 140..159) and one in a third
    rc = np.concatenate([rng.integers(0, 20, (1000, 2)), rng.integers(140, 160, (1000, 2)), [[199, 0]]])
    x, y = X0 + 10 * rc[:, 1] + 5, Y0 - 10 * rc[:, 0] - 5
    pd.DataFrame({"x": x, "y": y}).to_csv(tmp_path / "p.csv", index=False)
    table = sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.csv", crs="EPSG:32632", series=True, progress=False)
    assert len(table) == 2001 * 3
    metadata = ("zarr.json", ".zarray", ".zattrs")
    chunk_reads = sorted(k for k in reads if k.startswith("embedding/") and not k.endswith(metadata))
    if zarr_format == 3:
        assert chunk_reads == ["embedding/c/0/0/0/0", "embedding/c/0/0/7/7", "embedding/c/0/0/9/0"]
    else:
        assert chunk_reads == ["embedding/0.0.0.0", "embedding/0.0.7.7", "embedding/0.0.9.0"]
    assert len([k for k in reads if k.startswith("quality_s2/") and not k.endswith(metadata)]) == 3


def test_polygon_mean_by_hand(tmp_path):
    ds = store(tmp_path / "e.zarr")
    # A rectangle around the centres of rows 2..3 and cols 4..6 (6 pixels), in UTM.
    ring = [[X0 + 41, Y0 - 21], [X0 + 69, Y0 - 21], [X0 + 69, Y0 - 39], [X0 + 41, Y0 - 39], [X0 + 41, Y0 - 21]]
    tiny = [[X0 + 101, Y0 - 101], [X0 + 103, Y0 - 101], [X0 + 103, Y0 - 103], [X0 + 101, Y0 - 101]]  # no centre inside
    fc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:32632"}}, "features": [
        {"type": "Feature", "properties": {"name": "field"}, "geometry": {"type": "Polygon", "coordinates": [ring]}},
        {"type": "Feature", "properties": {"name": "tiny"}, "geometry": {"type": "Polygon", "coordinates": [tiny]}},
        {"type": "Feature", "properties": {"name": "two parts"}, "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[X0 + 51, Y0 - 21], [X0 + 69, Y0 - 21], [X0 + 69, Y0 - 29], [X0 + 51, Y0 - 29], [X0 + 51, Y0 - 21]]],  # row 2: cols 5, 6
            [[[X0 + 201, Y0 - 401], [X0 + 209, Y0 - 401], [X0 + 209, Y0 - 409], [X0 + 201, Y0 - 409], [X0 + 201, Y0 - 401]]],
        ]}}]}
    (tmp_path / "f.geojson").write_text(json.dumps(fc))
    table = sample_embeddings(tmp_path / "e.zarr", tmp_path / "f.geojson", series=True, progress=False)
    block = ds["embedding"].values[:, :, 2:4, 4:7].reshape(3, 4, 6)
    valid = np.isfinite(block).all(1)
    field = table[table["name"] == "field"]
    assert (field["n_pixels"] == 6).all()
    np.testing.assert_array_equal(field["n_valid"].to_numpy(), valid.sum(1))
    for t in range(3):
        np.testing.assert_allclose(field[[f"fused_{k}" for k in range(4)]].to_numpy()[t], block[t][:, valid[t]].mean(1),
                                   rtol=1e-5)
    assert (field["store_x"].iloc[0], field["store_y"].iloc[0]) == (X0 + 55, Y0 - 30)  # mean of the 6 centres
    parts = table[table["name"] == "two parts"]
    pix = np.stack([ds["embedding"].values[:, :, 2, 5], ds["embedding"].values[:, :, 2, 6],
                    ds["embedding"].values[:, :, 40, 20]], axis=-1)  # (T, F, 3)
    ok = np.isfinite(pix).all(1)
    assert (parts["n_pixels"] == 3).all()
    for t in range(3):
        np.testing.assert_allclose(parts[[f"fused_{k}" for k in range(4)]].to_numpy()[t], pix[t][:, ok[t]].mean(1)
                                   if ok[t].any() else np.full(4, np.nan), rtol=1e-5)
    small = table[table["name"] == "tiny"]
    assert (small["n_pixels"] == 1).all()  # smaller than a pixel: the pixel it touches
    np.testing.assert_array_equal(small["fused_0"].to_numpy(), ds["embedding"].values[:, 0, 10, 10])


def test_points_outside_the_store(tmp_path):
    store(tmp_path / "e.zarr")
    x = [X0 + 5, X0 - 100, X0 + 25, X0 + 10_000]
    y = [Y0 - 5, Y0 - 5, Y0 - 15, Y0 - 5]
    pd.DataFrame({"x": x, "y": y}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(SampleError) as err:  # full metres, never 4.9994e+06
        sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.csv", crs="EPSG:32632", series=True)
    assert str(err.value).startswith(
        "2 of 4 points/polygons lie outside the store (pixel edges x 600000 .. 600500, y 4999400 .. 5000000 in "
        "EPSG:32632; first: input row 1, counting from 0 at x 599900, y 4999995). Fix: check the points' CRS (--crs), "
        "or pass --outside drop")
    dropped = sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.csv", crs="EPSG:32632", dates=["2019-04-03"],
                                outside="drop")
    assert dropped["point"].tolist() == [0, 2]
    kept = sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.csv", crs="EPSG:32632", dates=["2019-04-03"], outside="nan")
    assert kept["point"].tolist() == [0, 1, 2, 3] and kept["fused_0"].isna().tolist()[1::2] == [True, True]
    assert kept["n_valid"].tolist()[1::2] == [0, 0]


@pytest.mark.parametrize(("text", "kwargs", "message"), [
    ("a,b\n1,2\n", {}, r"p\.csv has no coordinate columns \(it has \['a', 'b'\]\)\. Fix: add lon and lat columns"),
    ("x,y\n600005,4999995\n", {}, r"p\.csv has x/y columns but no CRS\. Fix: pass --crs"),
    ("lon,lat\n9.0,\n", {}, r"1 row\(s\) without numeric lon/lat \(first: row 0\)"),
    ("x,y\n600005,4999995\n", {"crs": "EPSG:99999999"}, r"'EPSG:99999999' is not a CRS"),
])
def test_points_file_errors(tmp_path, text, kwargs, message):
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(SampleError, match=message):
        read_points(tmp_path / "p.csv", **kwargs)


def test_option_errors(tmp_path):
    store(tmp_path / "e.zarr")
    pd.DataFrame({"lon": [9.0], "lat": [45.0], "time": [1]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(SampleError, match=r"the store has 3 dates and none was chosen\. Fix: pass --date"):
        sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.csv", outside="drop")
    with pytest.raises(SampleError, match=r"column\(s\) \['time'\], which the output table uses\. Fix: rename them"):
        sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.csv", series=True, outside="drop")
    with pytest.raises(SampleError, match=r"written as \.parquet \(GeoParquet\) or \.csv"):
        sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.csv", tmp_path / "o.xlsx", series=True)
    with pytest.raises(SampleError, match=r"is the points file"):
        sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.csv", tmp_path / "p.csv", series=True, overwrite=True)
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                                                     "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}]}
    (tmp_path / "l.geojson").write_text(json.dumps(fc))
    with pytest.raises(SampleError, match=r"feature 0 has LineString; sample takes Point, Polygon and MultiPolygon"):
        read_points(tmp_path / "l.geojson")


def test_geopandas_missing_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_geopandas(name, *args, **kwargs):
        if name == "geopandas":
            raise ImportError("no geopandas")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_geopandas)
    (tmp_path / "p.parquet").write_bytes(b"PAR1")
    with pytest.raises(SampleError, match=r"needs geopandas, which is not installed\. Fix: pip install 'latentcube\[vector\]'"):
        read_points(tmp_path / "p.parquet")
    with pytest.raises(SampleError, match=r"needs geopandas"):
        sample_embeddings(tmp_path / "nowhere.zarr", tmp_path / "p.csv", tmp_path / "o.parquet")


def test_geoparquet_in_and_out(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import Point

    ds = store(tmp_path / "e.zarr")
    r, c, x, y = random_pixels(50, 60, 50, seed=3)
    gdf = gpd.GeoDataFrame({"plot": np.arange(50)}, geometry=[Point(a, b) for a, b in zip(x, y, strict=True)],
                           crs="EPSG:32632").to_crs("EPSG:4326")
    gdf.to_parquet(tmp_path / "p.parquet")
    sample_embeddings(tmp_path / "e.zarr", tmp_path / "p.parquet", tmp_path / "o.parquet", series=True, progress=False)
    back = gpd.read_parquet(tmp_path / "o.parquet")
    assert back.crs.to_epsg() == 4326 and len(back) == 150
    np.testing.assert_allclose(back.geometry.x.to_numpy()[::3], gdf.geometry.x.to_numpy())
    np.testing.assert_array_equal(back["fused_1"].to_numpy().reshape(50, 3), ds["embedding"].values[:, 1, r, c].T)


@pytest.mark.parametrize("crs", ["EPSG:32632", "EPSG:4326"])
def test_geodataframe_equals_the_same_features_in_a_geojson_file(tmp_path, crs):
    """The notebook input (user walkthrough): a GeoDataFrame of points and a polygon, in the store's CRS or in
    WGS84, gives the table of the same features written to a GeoJSON file (before: a raw TypeError)."""
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import Point, Polygon

    ds = store(tmp_path / "e.zarr")
    r, c, x, y = random_pixels(20, 60, 50, seed=4)
    px, py = to_crs(x, y, crs)
    ring = [[X0 + 41, Y0 - 21], [X0 + 69, Y0 - 21], [X0 + 69, Y0 - 39], [X0 + 41, Y0 - 39], [X0 + 41, Y0 - 21]]
    rx, ry = to_crs(np.array(ring)[:, 0], np.array(ring)[:, 1], crs)
    ring = np.column_stack([rx, ry]).tolist()
    names = [f"p{i}" for i in range(20)] + ["field"]
    gdf = gpd.GeoDataFrame({"name": names}, geometry=[*map(Point, px, py), Polygon(ring)], crs=crs)
    features = [{"type": "Feature", "properties": {"name": f"p{i}"}, "geometry": {"type": "Point", "coordinates": [a, b]}}
                for i, (a, b) in enumerate(zip(px, py, strict=True))]
    features.append({"type": "Feature", "properties": {"name": "field"},
                     "geometry": {"type": "Polygon", "coordinates": [ring]}})
    fc = {"type": "FeatureCollection", "features": features}
    if crs != "EPSG:4326":
        fc["crs"] = {"type": "name", "properties": {"name": crs}}
    (tmp_path / "f.geojson").write_text(json.dumps(fc))

    from_file = sample_embeddings(tmp_path / "e.zarr", tmp_path / "f.geojson", series=True, progress=False)
    from_gdf = sample_embeddings(tmp_path / "e.zarr", gdf, tmp_path / "o.parquet", series=True, progress=False)
    pd.testing.assert_frame_equal(from_gdf, from_file)
    assert len(from_gdf) == 21 * 3 and from_gdf["name"].tolist()[::3] == names
    np.testing.assert_array_equal(from_gdf["fused_2"].to_numpy()[:60].reshape(20, 3), ds["embedding"].values[:, 2, r, c].T)
    assert (from_gdf.loc[from_gdf["name"] == "field", "n_pixels"] == 6).all()
    back = gpd.read_parquet(tmp_path / "o.parquet")  # written with the GeoDataFrame's geometry and CRS
    assert back.crs == gdf.crs and back.geometry.iloc[0].equals(gdf.geometry.iloc[0])
    # a GeoSeries: the same rows without the attribute column
    from_series = sample_embeddings(tmp_path / "e.zarr", gdf.geometry, series=True, progress=False)
    pd.testing.assert_frame_equal(from_series, from_file.drop(columns="name"))


def test_geodataframe_without_crs_and_other_types_are_clear_errors(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import Point

    from latentcube.errors import LatentcubeError

    store(tmp_path / "e.zarr")
    gdf = gpd.GeoDataFrame({"name": ["a"]}, geometry=[Point(X0 + 15, Y0 - 25)])
    with pytest.raises(SampleError, match=r"^the GeoDataFrame has no CRS\. Fix: set it, e\.g\. gdf = "
                                          r"gdf\.set_crs\('EPSG:4326'\) for lon/lat degrees"):
        sample_embeddings(tmp_path / "e.zarr", gdf, series=True)
    # crs= stands in for a missing CRS (as for files); it must not contradict one that is set
    got = sample_embeddings(tmp_path / "e.zarr", gdf, crs="EPSG:32632", series=True, progress=False)
    assert got["store_x"].tolist() == [X0 + 15] * 3
    with pytest.raises(SampleError, match=r"the GeoDataFrame is in EPSG:32632 but crs='EPSG:4326'\. Fix: drop crs="):
        sample_embeddings(tmp_path / "e.zarr", gdf.set_crs("EPSG:32632"), crs="EPSG:4326", series=True)
    for wrong, kind in (([(9.0, 45.0)], "list"), (pd.DataFrame({"lon": [9.0]}), "DataFrame")):
        with pytest.raises(LatentcubeError) as err:
            sample_embeddings(tmp_path / "e.zarr", wrong, series=True)
        assert str(err.value) == (f"points is a {kind}. Fix: pass a file path (GeoJSON, CSV, GeoParquet or shapefile), "
                                  "a geopandas GeoDataFrame or GeoSeries, or latentcube.sample_points.Points.")


def test_window_store_columns_and_cli(tmp_path, monkeypatch):
    from latentcube.aggregate import aggregate_embeddings
    from latentcube.cli import main

    store(tmp_path / "e.zarr")
    aggregate_embeddings(tmp_path / "e.zarr", tmp_path / "w.zarr", windows="2019-05-01/2019-07-31,season",
                         progress=False)
    win = xr.open_zarr(tmp_path / "w.zarr")
    pd.DataFrame({"lon": to_crs(X0 + 15, Y0 - 25, "EPSG:4326")[0:1], "lat": to_crs(X0 + 15, Y0 - 25, "EPSG:4326")[1:2]}
                 ).to_csv(tmp_path / "p.csv", index=False)
    monkeypatch.chdir(tmp_path)  # relative paths, as a user types them
    with pytest.raises(SystemExit) as exc:
        main(["sample", "w.zarr", "--points", "p.csv", "--series", "--out", "s.csv"])
    assert exc.value.code == 0
    table = pd.read_csv(tmp_path / "s.csv")
    assert table["window"].tolist() == ["season 2019", "2019-05-01/2019-07-31"]
    assert table["window_end"].tolist() == ["2019-09-30", "2019-07-31"]
    np.testing.assert_allclose(table["fused_0"], win["embedding"].values[:, 0, 2, 1], rtol=1e-6)
    np.testing.assert_array_equal(table["valid_count"], win["valid_count"].values[:, 2, 1])
    with pytest.raises(SystemExit) as exc:
        main(["sample", "w.zarr", "--points", "p.csv", "--series", "--out", "s.csv"])
    assert exc.value.code == 1  # exists: --overwrite needed


@pytest.mark.slow  # every verb of the page once: ~25 s on a busy 2-core machine
def test_docs_use_snippets_run(tmp_path, monkeypatch):
    """docs/use.md promises that its snippets run as written, in order, in an empty folder."""
    import re
    import shlex
    from pathlib import Path

    pytest.importorskip("geopandas")
    from latentcube.cli import main

    text = (Path(__file__).resolve().parents[1] / "docs" / "use.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(python|bash)\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for kind, code in blocks:
        if kind == "python":
            exec(compile(code, "docs/use.md", "exec"), namespace)
            continue
        for line in code.splitlines():
            if line.startswith("latentcube "):
                with pytest.raises(SystemExit) as exc:
                    main(shlex.split(line)[1:])
                assert exc.value.code == 0, line
    assert len(pd.read_csv(tmp_path / "sites_series.csv")) == 3
    assert (tmp_path / "tifs" / "embedding_2019-07-13.tif").exists()
    assert list(namespace["season"]["window"].values) == ["season 2019", "season 2020"]


@pytest.mark.slow  # scipy, pyproj and two stores: ~10 s on a busy 2-core machine
def test_demo_section_of_windows_and_points(tmp_path):
    """The demo's step: season store, points per class in lon/lat, a report section with their values."""
    from latentcube.cube import new_cube, save_cube
    from latentcube.demo import DEMO_SCENE, _windows_and_points

    rng = np.random.default_rng(6)
    h = w = 24
    t2 = pd.date_range("2020-01-05 10:30", "2020-12-30", freq="10D")
    lab = np.where(np.arange(w)[None] < 12, 3, 6).repeat(h, 0).astype("uint8")  # grassland | water
    cube = new_cube(s2=rng.random((len(t2), 10, h, w)).astype("float32"), time=t2, y=Y0 - 10 * np.arange(h) - 5,
                    x=X0 + 10 * np.arange(w) + 5, crs="EPSG:32632", layers={"landcover": lab})
    save_cube(cube, tmp_path / "cube.zarr")
    v = rng.normal(size=(len(t2), 7, h, w)).astype("float32")
    emb = xr.Dataset({"embedding": (("time", "feature", "y", "x"), v)},
                     coords={"time": t2.values, "feature": [f"fused_{i}" for i in range(7)], "y": cube["y"].values,
                             "x": cube["x"].values}, attrs={"conventions": "latentcube embedding cube v1"})
    (tmp_path / "embeddings").mkdir()
    write_zarr(set_crs(emb, "EPSG:32632"), tmp_path / "embeddings" / "e.zarr")
    timings: dict = {}
    _windows_and_points(tmp_path, tmp_path / "cube.zarr", tmp_path / "embeddings" / "e.zarr", lab, lambda m: None, timings)
    assert set(timings) == {"aggregate", "sample"}
    assert (tmp_path / "embeddings" / f"{DEMO_SCENE}_season.zarr").exists()
    doc = json.loads(next((tmp_path / "sections").glob("*windows_points.json")).read_text())
    rows = doc["tables"][0]["rows"]
    assert [r[0] for r in rows] == ["grassland", "water"]
    season = (v[(t2.month >= 4) & (t2.month <= 9)]).mean(0)
    for row, k, c_range in ((rows[0], 3, (0, 12)), (rows[1], 6, (12, 24))):
        x, y = Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True).transform(*row[1:3])
        r, c = int((Y0 - y) // 10), int((x - X0) // 10)
        assert lab[r, c] == k
        assert min(c - c_range[0] + 1, c_range[1] - c, r + 1, h - r) == 6  # as far from the class edge as can be
        np.testing.assert_allclose(row[5:8], season[:3, r, c], rtol=1e-5)
    assert rows[0][3] == 18  # every season date valid: 18 10-day dates in April .. September

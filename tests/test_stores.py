"""Zarr stores (latentcube.stores): new stores are Zarr v3 with consolidated metadata and no warnings; the
metadata readers and chunk keys of both formats; format-2 stores written before still read, gap-fill,
aggregate and sample to the same numbers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import latentcube.stores
from latentcube.chunks import chunk_problems, expected_chunk_keys
from latentcube.cube import set_crs
from latentcube.embed import INT8_INVALID, open_embedding, quantize_int8
from latentcube.stores import array_layout, array_layouts, root_attrs, store_format, write_zarr

TIMES = pd.DatetimeIndex(["2019-03-02", "2019-05-11", "2019-07-20", "2019-09-28", "2020-01-06"])
X0, Y0 = 600_000.0, 5_000_000.0


def embedding_store(seed: int = 0, h: int = 9, w: int = 7) -> tuple[xr.Dataset, dict]:
    """An int8 embedding store as `latentcube embed` lays it out (codes, scale, quality layer, text feature
    names, CRS, nested attributes), with its encoding: 2 dates x 4 x 4 pixels per chunk."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(TIMES), 3, h, w)).astype("float32")
    v[rng.random((len(TIMES), h, w))[:, None].repeat(3, 1) < 0.25] = np.nan
    q, scale = quantize_int8(v)
    ds = xr.Dataset(
        {"embedding": (("time", "feature", "y", "x"), q, {"scale_variable": "embedding_scale"}),
         "embedding_scale": (("time", "y", "x"), scale),
         "quality_s2": (("time", "y", "x"), rng.random((len(TIMES), h, w)).astype("float32"))},
        coords={"time": TIMES.values, "feature": [f"fused_{i}" for i in range(3)],
                "y": Y0 - 10 * np.arange(h) - 5, "x": X0 + 10 * np.arange(w) + 5},
        attrs={"conventions": "latentcube embedding cube v1 (docs/embed.md)", "latentcube_version": "test",
               "latentcube:time": {"dimension": "time", "n_dates": len(TIMES)}},
    )
    ds = set_crs(ds, "EPSG:32632")
    encoding = {"embedding": {"chunks": (2, 3, 4, 4), "_FillValue": INT8_INVALID},
                "embedding_scale": {"chunks": (2, 4, 4), "_FillValue": np.nan},
                "quality_s2": {"chunks": (2, 4, 4), "_FillValue": np.nan}}
    return ds, encoding


@pytest.fixture
def stores(tmp_path, monkeypatch) -> dict[int, object]:
    """The same embedding store written by today's writer (v3) and by the writer as it was before (format 2:
    ZARR_FORMAT set back to 2)."""
    ds, encoding = embedding_store()
    out = {}
    for fmt in (3, 2):
        with monkeypatch.context() as m:
            m.setattr(latentcube.stores, "ZARR_FORMAT", fmt)
            out[fmt] = tmp_path / f"v{fmt}.zarr"
            write_zarr(ds, out[fmt], encoding=encoding)
    return out


def test_new_stores_are_v3_with_consolidated_metadata_blosc_and_no_warnings(tmp_path):
    import zarr

    ds, encoding = embedding_store()
    path = tmp_path / "e.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr's v3 notes (consolidated metadata, fixed-width text) stay inside
        write_zarr(ds, path, encoding=encoding)
        back = xr.open_zarr(path, consolidated=True)
        group = zarr.open_group(path, mode="r")
        decoded = open_embedding(path).values
    assert store_format(path) == 3 and group.metadata.zarr_format == 3
    root = json.loads((path / "zarr.json").read_text())
    nodes = root["consolidated_metadata"]["metadata"]
    assert {"embedding", "embedding_scale", "feature", "spatial_ref"} <= set(nodes)
    assert nodes["feature"]["data_type"] == "string"  # v3 variable-length strings
    assert [c["name"] for c in nodes["embedding"]["codecs"]] == ["bytes", "blosc"]
    assert nodes["embedding"]["codecs"][1]["configuration"]["cname"] == "lz4"
    assert root_attrs(path)["latentcube:time"] == {"dimension": "time", "n_dates": 5}  # nested attributes kept
    assert back.attrs["latentcube:time"]["n_dates"] == 5
    assert [str(f) for f in back["feature"].values] == ["fused_0", "fused_1", "fused_2"]
    layout = array_layout(path, "embedding")
    assert (layout.zarr_format, layout.dims, layout.chunks, layout.itemsize, layout.blosc) == (
        3, ("time", "feature", "y", "x"), (2, 3, 4, 4), 1, True)
    assert layout.keys()[:2] == ["c/0/0/0/0", "c/0/0/0/1"] and len(layout.keys()) == 3 * 1 * 3 * 2
    assert (path / "embedding" / "c" / "0" / "0" / "0" / "0").is_file()
    q = ds["embedding"].values.astype("float32")
    expect = np.where(q == INT8_INVALID, np.nan, q) * ds["embedding_scale"].values[:, None]
    np.testing.assert_array_equal(decoded, expect)


def test_metadata_readers_and_chunk_keys_of_both_formats(stores):
    assert store_format(stores[3]) == 3 and store_format(stores[2]) == 2
    assert store_format(stores[3] / "embedding") == 3 and store_format(stores[3].parent) is None
    assert root_attrs(stores[2]) == root_attrs(stores[3])
    v2 = {layout.name: layout for layout in array_layouts(stores[2])}
    v3 = {layout.name: layout for layout in array_layouts(stores[3])}
    assert set(v2) == set(v3) and {"embedding", "embedding_scale", "quality_s2", "feature", "time"} <= set(v3)
    for name in ("embedding", "quality_s2"):
        assert v2[name].dims == v3[name].dims and v2[name].chunks == v3[name].chunks and v2[name].blosc
        assert [k.replace(".", "/") for k in v2[name].keys()] == [k.removeprefix("c/") for k in v3[name].keys()]
    assert v2["embedding"].keys()[-1] == "2.0.2.1" and v3["embedding"].keys()[-1] == "c/2/0/2/1"
    data = ["embedding", "embedding_scale", "quality_s2"]  # spatial_ref's one chunk is its fill value: not written
    assert chunk_problems(stores[2], variables=data) == [] and chunk_problems(stores[3], variables=data) == []
    # the raw metadata documents
    v2_meta = {"zarr_format": 2, "shape": [3, 5], "chunks": [2, 5], "dtype": "<f4", "compressor": None}
    v3_meta = {"zarr_format": 3, "node_type": "array", "shape": [3, 5], "data_type": "float32",
               "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 5]}},
               "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
               "codecs": [{"name": "bytes"}]}
    assert expected_chunk_keys(v2_meta) == ["0.0", "1.0"]
    assert expected_chunk_keys({**v2_meta, "dimension_separator": "/"}) == ["0/0", "1/0"]
    assert expected_chunk_keys(v3_meta) == ["c/0/0", "c/1/0"]
    assert expected_chunk_keys({**v3_meta, "chunk_key_encoding": {"name": "v2", "configuration": {"separator": "."}}}) \
        == ["0.0", "1.0"]
    assert expected_chunk_keys({**v2_meta, "shape": [], "chunks": []}) == ["0"]
    assert expected_chunk_keys({**v3_meta, "shape": [], "chunk_grid": {"configuration": {"chunk_shape": []}}}) == ["c"]


def test_a_truncated_or_lost_chunk_is_found_in_both_formats(stores):
    for fmt, path in stores.items():
        layout = array_layout(path, "quality_s2")
        first, second = (path / "quality_s2" / k for k in layout.keys()[:2])
        first.write_bytes(first.read_bytes()[:20])
        second.unlink()
        found = {(p.path.relative_to(path).as_posix(), p.kind) for p in chunk_problems(path, variables=["quality_s2"])}
        key = "c/0/0/0" if fmt == 3 else "0.0.0"
        assert (f"quality_s2/{key}", "truncated") in found and len(found) == 2, fmt


def test_format_2_stores_give_every_reader_the_same_numbers(stores, tmp_path):
    """Stores written before Zarr v3 open, gap-fill, aggregate and sample as today's stores do (the
    outputs written from them are v3)."""
    from latentcube.aggregate import aggregate_embeddings
    from latentcube.gapfill import gapfill_embeddings
    from latentcube.sample_points import sample_embeddings

    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 9, 20), rng.integers(0, 7, 20)
    pd.DataFrame({"x": X0 + 10 * cols + 5, "y": Y0 - 10 * rows - 5}).to_csv(tmp_path / "p.csv", index=False)
    got = {}
    for fmt, path in stores.items():
        emb = open_embedding(path, as_dataset=True)
        filled = gapfill_embeddings(path, tmp_path / f"filled{fmt}.zarr", freq="30D", progress=False)
        windows = aggregate_embeddings(path, tmp_path / f"windows{fmt}.zarr", windows="season",
                                       stats=["mean", "p90"], progress=False)
        points = sample_embeddings(path, tmp_path / "p.csv", crs="EPSG:32632", series=True, progress=False)
        assert store_format(tmp_path / f"filled{fmt}.zarr") == 3 == store_format(tmp_path / f"windows{fmt}.zarr")
        got[fmt] = (emb.load(), filled.load(), windows.load(), points)
    for old, new in zip(got[2], got[3], strict=True):
        if isinstance(old, pd.DataFrame):
            pd.testing.assert_frame_equal(old, new)
        else:
            xr.testing.assert_identical(old.drop_attrs(), new.drop_attrs())
    assert np.isfinite(got[3][0]["embedding"].values).mean() > 0.5


def test_datasets_read_from_one_format_are_written_in_the_other(stores, tmp_path):
    """Codec settings a Dataset carries from the store it was read from belong to that format: dropped."""
    for fmt, path in stores.items():
        ds = xr.open_zarr(path)
        other = 2 if fmt == 3 else 3
        write_zarr(ds, tmp_path / f"to{other}.zarr", zarr_format=other)
        assert store_format(tmp_path / f"to{other}.zarr") == other
        xr.testing.assert_identical(xr.open_zarr(tmp_path / f"to{other}.zarr").load(), ds.load())


def test_block_encoding_shards_each_write_block_into_8_date_inner_chunks():
    from latentcube.stores import block_encoding

    assert block_encoding((64, 7, 256, 256)) == {"chunks": (8, 7, 256, 256), "shards": (64, 7, 256, 256)}
    assert block_encoding((20, 7, 16, 16)) == {"chunks": (8, 7, 16, 16), "shards": (24, 7, 16, 16)}  # a whole shard
    assert block_encoding((20, 16, 16), zarr_format=2) == {"chunks": (20, 16, 16)}  # format 2: no sharding
    assert block_encoding((5, 16, 16)) == {"chunks": (5, 16, 16)}  # a single inner chunk: nothing to shard


def test_sharded_stores_read_back_and_bad_shards_are_found(tmp_path):
    from latentcube.stores import block_encoding

    rng = np.random.default_rng(1)
    v = rng.normal(size=(20, 3, 10, 12)).astype("float32")
    v[:, :, :3] = np.nan  # the top row of blocks: no chunk at all
    ds = xr.Dataset({"e": (("time", "feature", "y", "x"), v)})
    path = tmp_path / "s.zarr"
    write_zarr(ds, path, encoding={"e": {**block_encoding((20, 3, 8, 8)), "_FillValue": np.nan}})
    layout = array_layout(path, "e")
    assert layout.sharded and layout.chunks == (24, 3, 8, 8) and layout.inner == (8, 3, 8, 8) and layout.blosc
    assert [k for k in layout.keys() if (path / "e" / k).exists()] == ["c/0/0/0/0", "c/0/0/0/1", "c/0/0/1/0", "c/0/0/1/1"]
    back = xr.open_zarr(path)["e"]
    assert back.chunks[0] == (8, 8, 4)  # Dask reads 8-date inner chunks
    np.testing.assert_array_equal(back.values, v)
    assert chunk_problems(path) == []
    shard = path / "e" / "c" / "0" / "0" / "1" / "0"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # cut: the index at the end is gone
    other = path / "e" / "c" / "0" / "0" / "1" / "1"
    garbled = bytearray(other.read_bytes())
    garbled[0] ^= 0xFF  # the first inner chunk's Blosc header
    other.write_bytes(bytes(garbled))
    found = {(p.path.relative_to(path / "e").as_posix(), p.kind) for p in chunk_problems(path)}
    assert found == {("c/0/0/1/0", "truncated"), ("c/0/0/1/1", "corrupt")}

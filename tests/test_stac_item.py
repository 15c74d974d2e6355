"""STAC Items beside embedding stores (issue 26): written by embed, gapfill and aggregate; read back with pystac;
bbox against the grid's corners transformed by hand; core schema validation offline; extensions read back."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pystac
import pytest
import torch
from pyproj import Transformer
from pystac.extensions.datacube import DatacubeExtension
from pystac.extensions.mlm import MLMExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from latentcube.aggregate import aggregate_embeddings
from latentcube.constants import S2_BANDS
from latentcube.cube import new_cube, save_cube
from latentcube.embed import embed_cube
from latentcube.gapfill import gapfill_embeddings
from latentcube.nn import SensorAutoencoder, s2_config
from latentcube.preprocess import Normalization
from latentcube.stac_item import build_stac_item, stac_item_path, write_stac_item
from latentcube.train import save_model

H, W, T = 20, 24, 14
X0, Y0 = 600_000.0, 5_600_000.0  # the grid's north-west corner (pixel edges), EPSG:32632
SMALL = dict(widths=(8, 12, 16), multiscale_branch_ch=4, d_model=16, n_heads=2, ffn_dim=16, decoder_d_model=16,
             decoder_ffn_dim=16, decoder_widths=(16, 8, 8), decoder_branch_ch=4)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to fetch a schema (or anything) over the network fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """A float32 and an int8 store embedded with a tiny S2 autoencoder, then gap-filled and aggregated."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("stac")
    rng = np.random.default_rng(0)
    s2 = (rng.random((T, 10, H, W)) * 0.4 + 0.02).astype("float32")
    s2[4, :, :8, :8] = np.nan
    times = pd.Timestamp("2021-05-03T10:30") + pd.to_timedelta(7 * np.arange(T), "D")
    cube = save_cube(new_cube(s2=s2, time=times, y=Y0 - 10 * np.arange(H) - 5, x=X0 + 10 * np.arange(W) + 5,
                              crs="EPSG:32632"), d / "site.zarr")
    torch.manual_seed(0)
    model = save_model(d / "runs" / "s2" / "model.pt", SensorAutoencoder(replace(s2_config(), **SMALL)).eval(),
                       normalization=Normalization())
    emb = embed_cube(cube, model, d / "emb" / "site.zarr", block_px=16, scheduler="synchronous", progress=False)
    q8 = embed_cube(cube, model, d / "emb" / "site_int8.zarr", block_px=16, dtype="int8", scheduler="synchronous",
                    progress=False)
    gapfill_embeddings(emb, d / "emb" / "site_filled.zarr", freq="5D", progress=False)
    aggregate_embeddings(emb, d / "emb" / "site_season.zarr", windows=["2021-05-01/2021-06-30", "2021-07-01/2021-07-31"],
                         stats=["mean", "p90"], progress=False)
    torch.set_num_threads(before)
    return {"model": model, "emb": emb, "int8": q8, "filled": d / "emb" / "site_filled.zarr",
            "season": d / "emb" / "site_season.zarr", "times": times}


def _read(store: Path) -> pystac.Item:
    path = stac_item_path(store)
    assert path == store.parent / f"{store.name}.stac.json" and path.is_file()
    return pystac.Item.from_file(str(path))


def test_embed_writes_an_item_with_the_grid_time_and_model(stores):
    item = _read(stores["emb"])
    assert item.id == "site"
    # bbox by hand: the four corners of the pixel grid (edges, not centres) in lon/lat; on 200 x 240 m the
    # densified edges add nothing beyond the corners' extremes (UTM lines are straight to < 1e-9 degrees here).
    to_ll = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform([X0, X0 + 10 * W, X0, X0 + 10 * W], [Y0, Y0, Y0 - 10 * H, Y0 - 10 * H])
    np.testing.assert_allclose(item.bbox, [min(lon), min(lat), max(lon), max(lat)], atol=1e-9)
    ring = np.array(item.geometry["coordinates"][0])
    assert ring[0].tolist() == ring[-1].tolist() and ring.shape[1] == 2
    np.testing.assert_allclose(ring.min(0), [min(lon), min(lat)], atol=1e-9)
    assert item.datetime is None
    assert item.common_metadata.start_datetime == stores["times"][0].tz_localize("UTC").to_pydatetime()
    assert item.common_metadata.end_datetime == stores["times"][-1].tz_localize("UTC").to_pydatetime()
    assert item.properties["latentcube:store_kind"] == "embedding" and item.properties["gsd"] == 10.0
    assert item.properties["latentcube:zarr_format"] == 3

    data = item.assets["embeddings"]
    assert data.href == "./site.zarr" and data.roles == ["data"] and data.media_type == "application/vnd.zarr"
    assert (stac_item_path(stores["emb"]).parent / data.href).resolve() == stores["emb"].resolve()
    proj = ProjectionExtension.ext(data)
    assert proj.code == "EPSG:32632" and proj.shape == [H, W]
    assert proj.transform == [10.0, 0.0, X0, 0.0, -10.0, Y0]
    assert proj.bbox == [X0, Y0 - 10 * H, X0 + 10 * W, Y0]
    bands = RasterExtension.ext(data).bands
    assert len(bands) == 9 and {b.data_type for b in bands} == {"float32"} and bands[0].to_dict()["nodata"] == "nan"
    assert [b["name"] for b in data.extra_fields["bands"]] == [f"s2_{i}" for i in range(9)]

    cube = DatacubeExtension.ext(item)
    assert set(cube.dimensions) == {"x", "y", "time", "feature"}
    assert cube.dimensions["x"].extent == [X0 + 5, X0 + 10 * W - 5] and cube.dimensions["y"].step == -10.0
    assert cube.dimensions["x"].reference_system == 32632
    assert cube.dimensions["time"].to_dict()["values"][0] == "2021-05-03T10:30:00Z"
    assert cube.dimensions["time"].to_dict()["step"] == "P7D"
    assert cube.dimensions["feature"].to_dict()["values"] == [f"s2_{i}" for i in range(9)]
    assert cube.variables["embedding"].dimensions == ["time", "feature", "y", "x"]

    mlm = MLMExtension.ext(item)
    assert mlm.mlm_name == "latentcube-autoencoder" and mlm.framework == "PyTorch"
    assert list(mlm.input[0].bands) == list(S2_BANDS) and mlm.input[0].input.shape == [-1, 11, 10, 15, 15]
    assert mlm.output[0].result.shape == [-1, 9]
    assert item.properties["latentcube:latent_size"] == 9
    model = item.assets["model"]
    assert model.roles == ["mlm:model"]
    sha = hashlib.sha256(stores["model"].read_bytes()).hexdigest()
    assert model.extra_fields["file:checksum"] == "1220" + sha
    assert (stac_item_path(stores["emb"]).parent / model.href).resolve() == stores["model"].resolve()


def test_core_schema_validates_offline_and_extensions_are_declared(stores):
    """pystac ships the STAC 1.1 core schemas (item, bands, data values...): validated here without the network.
    The extension schemas are not shipped by any installed package, so each extension is checked by reading
    its fields back through pystac's extension classes (the test above) and by its declared schema URI."""
    for key in ("emb", "int8", "filled", "season"):
        doc = json.loads(stac_item_path(stores[key]).read_text())
        JsonSchemaSTACValidator().validate_core(doc, pystac.STACObjectType.ITEM, doc["stac_version"])
        item = pystac.Item.from_dict(doc)
        for ext in (DatacubeExtension, ProjectionExtension, RasterExtension, MLMExtension):
            assert ext.has_extension(item), (key, ext.__name__)


def test_int8_store_bands_say_codes_and_invalid_code(stores):
    item = _read(stores["int8"])
    band = item.assets["embeddings"].extra_fields["bands"][0]
    assert band["data_type"] == "int8" and band["nodata"] == -128 and "embedding_scale" in band["description"]
    assert "embedding_scale" in item.properties["latentcube:decoding"]
    assert "embedding_scale" in DatacubeExtension.ext(item).variables


def test_gapfilled_and_window_stores_get_their_items(stores):
    filled = _read(stores["filled"])
    assert filled.properties["latentcube:store_kind"] == "gapfill"
    assert DatacubeExtension.ext(filled).dimensions["time"].to_dict()["step"] == "P5D"
    assert filled.properties["latentcube:gapfill"]["freq"] == "5D"
    assert "filled" in DatacubeExtension.ext(filled).variables

    season = _read(stores["season"])
    assert season.properties["latentcube:store_kind"] == "aggregate"
    # The window store covers its windows, not only the dates inside them: May 1 to the end of July 31.
    assert season.common_metadata.start_datetime.isoformat() == "2021-05-01T00:00:00+00:00"
    assert season.common_metadata.end_datetime.isoformat() == "2021-07-31T23:59:59+00:00"
    assert [w["label"] for w in season.properties["latentcube:windows"]] == ["2021-05-01/2021-06-30",
                                                                            "2021-07-01/2021-07-31"]
    variables = DatacubeExtension.ext(season).variables
    assert {"embedding", "embedding_p90", "valid_count"} <= set(variables)
    assert variables["window_start"].var_type == "auxiliary"
    assert MLMExtension.ext(season).mlm_name == "latentcube-autoencoder"  # the model behind the inputs


def test_a_store_without_model_provenance_gets_an_item_without_mlm(stores, tmp_path):
    """A hand-made store (no checkpoint attributes): data, grid and time only; rewriting replaces the item."""
    import xarray as xr

    from latentcube.cube import set_crs
    from latentcube.stores import write_zarr

    ds = xr.open_zarr(stores["filled"]).load()
    ds.attrs = {"conventions": "latentcube embedding cube v1"}
    store = tmp_path / "hand.zarr"
    write_zarr(set_crs(ds, "EPSG:32632"), store)
    item = build_stac_item(store)
    assert not MLMExtension.has_extension(item) and "model" not in item.assets
    path = write_stac_item(store)
    assert write_stac_item(store) == path and pystac.Item.from_file(str(path)).id == "hand"

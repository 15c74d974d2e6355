"""The product chain on real data: the WorldCereal chip (real S2 L2A with clouds, real S1 GRD, UTM 31N)
goes through import -> embed (fusion model, int8 and float32) -> gap filling -> PCA map -> GeoTIFF export.

The model has seeded random weights (no training: this checks plumbing, georeferencing and the NaN
layout on real acquisitions, not embedding quality). Skips when ../shared/data is absent.
"""

from __future__ import annotations

import glob
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from conftest import SHARED_DATA

DATA = SHARED_DATA  # $LATENTCUBE_SHARED_DATA or ../shared/data (tests/conftest.py)
WC = DATA / "worldcereal_chip_31UES_2018_2019"
SMALL = dict(widths=(8, 8, 8), multiscale_branch_ch=4, d_model=8, n_heads=2, ffn_dim=8, decoder_d_model=8,
             decoder_heads=2, decoder_ffn_dim=8, decoder_widths=(8, 8, 8), decoder_branch_ch=4)

pytestmark = pytest.mark.skipif(not WC.exists(), reason=f"real data folder {DATA} absent")


@pytest.fixture(scope="module")
def chip(tmp_path_factory) -> tuple[Path, xr.Dataset]:
    from latentcube.cube import save_cube
    from latentcube.sources.importers import import_cube

    def one(pattern: str) -> str:
        return glob.glob(str(WC / pattern))[0]

    ds = import_cube([one("S2_L2A_10m_*.nc"), one("S2_L2A_20m_*.nc")], one("S1_GRD-*.nc"), preset="worldcereal")
    return save_cube(ds, tmp_path_factory.mktemp("chip") / "chip.zarr"), ds


@pytest.fixture(scope="module")
def fusion_model(tmp_path_factory) -> Path:
    from latentcube.nn import FusionConfig, FusionModel, SensorAutoencoder, s1_config, s2_config
    from latentcube.preprocess import Normalization
    from latentcube.train import save_model

    torch.manual_seed(0)
    sensors = {"s1": SensorAutoencoder(replace(s1_config(), **SMALL)), "s2": SensorAutoencoder(replace(s2_config(), **SMALL))}
    fused = FusionModel(sensors, FusionConfig(proj_dim=8, d_model=16, ffn_dim=16)).freeze_sensor_models().eval()
    return save_model(tmp_path_factory.mktemp("model") / "fusion.pt", fused, normalization=Normalization())


@pytest.mark.slow
def test_real_chip_embeds_gapfills_maps_and_exports(chip, fusion_model, tmp_path):
    from latentcube.embed import embed_cube, open_embedding
    from latentcube.evaluate.maps import fit_pca, pca_figure, pca_rgb
    from latentcube.export import export_geotiff
    from latentcube.gapfill import gapfill_embeddings

    cube_path, ds = chip
    emb_path = embed_cube(cube_path, fusion_model, tmp_path / "emb.zarr", block_px=32, scheduler="synchronous",
                          progress=False)
    emb = open_embedding(emb_path)
    assert emb.dims == ("time", "feature", "y", "x")
    assert emb.shape == (ds.sizes["time"], 7, ds.sizes["y"], ds.sizes["x"])
    np.testing.assert_array_equal(emb["time"].values, ds["time"].values)
    np.testing.assert_array_equal(emb["x"].values, ds["x"].values)
    # NaN exactly where every S2 band of the pixel is missing (clouds, nodata), finite elsewhere
    s2_missing = ~np.isfinite(ds["s2"].values).any(axis=1)
    assert 0.05 < s2_missing.mean() < 0.95, "the chip should have both clear and masked pixel-dates"
    np.testing.assert_array_equal(~np.isfinite(emb.values).any(axis=1), s2_missing)
    assert np.isfinite(emb.values).all(axis=1)[~s2_missing].all()
    assert emb.rio.crs.to_epsg() == 32631

    # int8 storage decodes to the float32 embedding within half a step of the per-pixel scale
    i8 = embed_cube(cube_path, fusion_model, tmp_path / "i8.zarr", block_px=32, dtype="int8", scheduler="synchronous",
                    progress=False)
    scale = xr.open_zarr(i8)["embedding_scale"].values[:, None]
    err = np.abs(open_embedding(i8).values - emb.values)
    ok = np.isfinite(emb.values)
    assert (err[ok] <= 0.5 * np.broadcast_to(scale, err.shape)[ok] * (1 + 1e-5) + 1e-7).all()

    # gap filling to a 5-day axis: observed values pass through, gaps within 30 days filled and flagged
    filled = gapfill_embeddings(emb_path, tmp_path / "filled.zarr", freq="5D", max_gap_days=30, progress=False)
    assert filled["embedding"].dims == ("time", "feature", "y", "x")
    assert filled.sizes["y"] == ds.sizes["y"] and filled["filled"].values.any()
    assert not filled["filled"].values[np.isnan(filled["embedding"].values[:, 0])].any()
    days = (filled["time"].values - filled["time"].values[0]) / np.timedelta64(1, "D")
    np.testing.assert_array_equal(np.diff(days), 5)

    # PCA map of the clearest date beside its true colour
    fit = fit_pca(emb_path, progress=False)
    clearest = ds["time"].values[int(np.argmin(s2_missing.mean(axis=(1, 2))))]
    rgb = pca_rgb(emb_path, date=clearest, fit=fit, nan_colour=None)
    assert rgb.shape == (ds.sizes["y"], ds.sizes["x"], 3)
    assert np.nanmin(rgb) >= 0 and np.nanmax(rgb) <= 1 and np.nanstd(rgb) > 0.05
    png = pca_figure(emb_path, cube_path, clearest, tmp_path / "pca.png", fit=fit)
    assert Path(png).stat().st_size > 10_000

    # GeoTIFF per date with the cube's CRS and pixel grid (x, y are pixel centres, 10 m)
    day = str(clearest)[:10]
    (tif,) = export_geotiff(emb_path, tmp_path / "tif", dates=[day], progress=False)
    with rasterio.open(tif) as src:
        assert src.crs.to_epsg() == 32631 and src.count == 7 and (src.height, src.width) == emb.shape[2:]
        assert src.transform.a == pytest.approx(10.0) and src.transform.e == pytest.approx(-10.0)
        assert src.transform.c == pytest.approx(float(ds["x"][0]) - 5.0)
        assert src.transform.f == pytest.approx(float(ds["y"][0]) + 5.0)
        np.testing.assert_array_equal(src.read(), emb.sel(time=clearest).values)

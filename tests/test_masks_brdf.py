"""Cloud masks (SCL, model plug-in) and the sen2nbar NBAR adapter, on small hand-made cubes.

sen2nbar is not installed in CI (and needs network access for the angle XML), so the adapter is tested
against sen2nbar's documented contract -- ``sen2nbar.c_factor.c_factor_from_item(item, to_epsg)`` returns
a (band, y, x) DataArray on the coarse angle grid, bands B02..B12 without B8A -- with a fake module.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pandas as pd
import pystac
import pytest
import xarray as xr
from stac_fixtures import DN_DEFAULT, center_lonlat, s2_item

from latentcube.constants import S2_BANDS
from latentcube.cube import CubeError, new_cube
from latentcube.sources.brdf import NbarUnavailableError, apply_nbar
from latentcube.sources.masks import (
    CLOUDSEN12_L2A_BANDS,
    CLOUDSEN12_WEIGHTS_ENV,
    CloudMask,
    MaskModelError,
    ModelMask,
    SCLMask,
    apply_mask,
    valid_fraction,
)

# odc-geo/shapely deprecation chatter (library internals), not our behaviour
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")

TIMES = ["2021-05-01T10:30:00", "2021-05-11T10:30:00", "2021-05-21T10:30:00"]
Y = 5000195.0 - 10 * np.arange(4)
X = 500005.0 + 10 * np.arange(5)


def _cube(scl: np.ndarray | None = None) -> xr.Dataset:
    s2 = np.full((3, 10, 4, 5), 0.2, "float32") + np.arange(10, dtype="float32")[None, :, None, None] / 100
    if scl is None:
        scl = np.full((3, 4, 5), 4, "uint8")
        scl[0, 0, 0], scl[0, 1, 1], scl[0, 2, 2], scl[0, 3, 3] = 3, 8, 9, 10  # shadow, cloud med/high, cirrus
        scl[0, 3, 4] = 11  # snow
        scl[1, :2, :] = 9  # half the scene cloudy
        scl[2, :, 4] = 0  # no data column
    return new_cube(s2=s2, time=TIMES, y=Y, x=X, crs="EPSG:32632", s2_scl=scl)


# ------------------------------------------------------------------------------------------ SCL


def test_scl_mask_exact_pixels_and_snow_option():
    ds = _cube()
    m = SCLMask()(ds)
    assert m.dims == ("time", "y", "x") and m.dtype == bool
    expected = np.zeros((3, 4, 5), bool)
    expected[0, 0, 0] = expected[0, 1, 1] = expected[0, 2, 2] = expected[0, 3, 3] = True
    expected[1, :2, :] = True
    np.testing.assert_array_equal(m.values, expected)
    expected[0, 3, 4] = True
    np.testing.assert_array_equal(SCLMask(mask_snow=True)(ds).values, expected)
    assert SCLMask(classes=(9,)).masked_classes == (9,)
    assert isinstance(SCLMask(), CloudMask)
    with pytest.raises(ValueError, match=r"unknown SCL classes \[12\]"):
        SCLMask(classes=(3, 12))
    with pytest.raises(CubeError, match="SCLMask needs the 's2_scl'"):
        SCLMask()(ds.drop_vars("s2_scl"))


def test_apply_mask_sets_nan_and_drops_dates():
    ds = _cube()
    out = apply_mask(ds, SCLMask())
    s2 = out["s2"].values
    assert out["s2"].dtype == np.float32
    assert np.isnan(s2[0, :, 1, 1]).all() and np.isnan(s2[1, :, :2, :]).all()
    assert np.isfinite(s2[0, :, 3, 4]).all()  # snow kept by default
    assert np.isnan(s2).sum() == 10 * (4 + 10)
    np.testing.assert_array_equal(out["s2_scl"].values, ds["s2_scl"].values)  # classification untouched
    # valid fraction: date 0 16/20, date 1 10/20, date 2 16/20 (SCL 0 = not observed)
    np.testing.assert_allclose(valid_fraction(ds, SCLMask()(ds)).values, [0.8, 0.5, 0.8])
    kept = apply_mask(ds, None, min_valid_fraction=0.6)  # None -> SCLMask()
    assert pd.DatetimeIndex(kept.time.values).day.tolist() == [1, 21]
    assert kept.attrs["min_valid_fraction"] == 0.6
    with pytest.raises(CubeError, match=r"no date has a valid fraction >= 0.9 \(best 0.80\)"):
        apply_mask(ds, SCLMask(), min_valid_fraction=0.9)
    with pytest.raises(ValueError, match="min_valid_fraction must be within"):
        apply_mask(ds, SCLMask(), min_valid_fraction=1.5)


def test_apply_mask_rejects_bad_mask_output():
    with pytest.raises(CubeError, match=r"must return a bool DataArray with dims \(time, y, x\)"):
        apply_mask(_cube(), lambda ds: ds["s2"] > 0)


# ---------------------------------------------------------------------------------- model mask


def test_model_mask_without_weights_says_how_to_provide_them(monkeypatch, tmp_path):
    monkeypatch.delenv(CLOUDSEN12_WEIGHTS_ENV, raising=False)
    with pytest.raises(MaskModelError, match=rf"never downloads.*{CLOUDSEN12_WEIGHTS_ENV}=/path/to/it.*weights_path"):
        ModelMask()
    monkeypatch.setenv(CLOUDSEN12_WEIGHTS_ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(MaskModelError, match=rf"missing.pt does not exist \(from {CLOUDSEN12_WEIGHTS_ENV}\)"):
        ModelMask()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(MaskModelError, match="cannot load .*bad.pt as a TorchScript model"):
        ModelMask(weights_path=bad, bands=S2_BANDS)(_cube())


def test_model_mask_with_predictor_and_band_check():
    ds = _cube()
    ds["s2"][2, 0, 1, 3] = 0.9  # a bright B02 pixel on the last date

    def predictor(img):  # (band, y, x) -> classes; 1 = thick cloud where B02 > 0.5
        assert img.shape == (10, 4, 5) and img.dtype == np.float32
        return np.where(img[0] > 0.5, 1, 0)

    m = ModelMask(predictor=predictor, bands=S2_BANDS)(ds)
    expected = np.zeros((3, 4, 5), bool)
    expected[2, 1, 3] = True
    np.testing.assert_array_equal(m.values, expected)
    np.testing.assert_array_equal(ModelMask(predictor=predictor, bands=S2_BANDS)(ds.chunk({"time": 1})).values, expected)
    with pytest.raises(CubeError, match=r"needs bands \['B01', 'B09'\] that the cube lacks"):
        ModelMask(predictor=predictor)(ds)  # default CloudSEN12 L2A bands include B01, B09


def test_model_mask_runs_a_local_torchscript_model(tmp_path):
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # 4 CloudSEN12 classes; class 3 (shadow) wins where B04 (channel 2) < 0.1
            shadow = (x[:, 2:3] < 0.1).float() * 10.0
            zeros = torch.zeros_like(shadow)
            return torch.cat([zeros + 1.0, zeros, zeros, shadow], dim=1)

    path = tmp_path / "tiny.pt"
    torch.jit.script(Tiny()).save(str(path))
    ds = _cube()
    ds["s2"][1, 2, 3, 0] = 0.05  # dark pixel -> "shadow"
    m = ModelMask(weights_path=path, bands=S2_BANDS)(ds)  # 4 x 5 scene: padded to 32 x 32 internally
    expected = np.zeros((3, 4, 5), bool)
    expected[1, 3, 0] = True
    np.testing.assert_array_equal(m.values, expected)


def test_fetch_loads_extra_bands_for_a_model_mask(tmp_path):
    from latentcube.sources.stac import fetch_cube

    b01 = np.full((10, 10), 1000, "uint16")
    b01[0, 0] = 5000
    items = [s2_item(tmp_path, "S2_X", "2021-06-05T10:30:21Z", "03.01", dn={"B01": b01}, extra_bands=True)]
    seen = {}

    def predictor(img):
        seen["shape"] = img.shape
        return np.where(img[0] > 0.3, 1, 0)  # channel 0 is B01 in CLOUDSEN12_L2A_BANDS order

    ds = fetch_cube(center=center_lonlat(), edge_m=200, start="2021-06-01", end="2021-06-30", catalog=items,
                    sign=False, include_s1=False, mask=ModelMask(predictor=predictor)).compute()
    assert seen["shape"] == (len(CLOUDSEN12_L2A_BANDS), 20, 20)
    assert "s2_extra" not in ds and [str(b) for b in ds.band.values] == list(S2_BANDS)
    expected = np.zeros((20, 20), bool)
    expected[0:2, 0:2] = True  # the bright 20 m B01 pixel, bilinear onto 10 m: > 0.3 in its 2 x 2 block
    np.testing.assert_array_equal(np.isnan(ds["s2"].isel(time=0)).all("band").values, expected)


# ------------------------------------------------------------------------------------------ NBAR


SEN2NBAR_BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]  # sen2nbar axioms: no B8A


def _c_expected(x: np.ndarray, band: str, scale: float = 1.0) -> np.ndarray:
    """The fake's c-factor: linear in x (so linear interpolation is exact) and distinct per band."""
    b = "B08" if band == "B8A" else band
    return scale * (1.0 + (x - 500000.0) * 1e-5 + SEN2NBAR_BANDS.index(b) * 0.01)


@pytest.fixture
def fake_sen2nbar(monkeypatch):
    calls = []

    def c_factor_from_item(item, to_epsg):
        calls.append((item.id, to_epsg, item.properties.get("proj:epsg")))
        x = np.array([497500.0, 502500.0])  # 5 km angle grid around the cube
        y = np.array([5002500.0, 4997500.0])
        scale = float(item.properties.get("test:scale", 1.0))
        data = np.stack([np.broadcast_to(_c_expected(x, b, scale), (2, 2)) for b in SEN2NBAR_BANDS])
        return xr.DataArray(data, dims=("band", "y", "x"), coords={"band": SEN2NBAR_BANDS, "y": y, "x": x})

    pkg = types.ModuleType("sen2nbar")
    mod = types.ModuleType("sen2nbar.c_factor")
    mod.c_factor_from_item = c_factor_from_item
    pkg.c_factor = mod
    monkeypatch.setitem(sys.modules, "sen2nbar", pkg)
    monkeypatch.setitem(sys.modules, "sen2nbar.c_factor", mod)
    return calls


def _nbar_items(times=TIMES, **props):
    out = []
    for i, t in enumerate(times):
        item = pystac.Item(f"S2_{i}", None, None, pd.Timestamp(t, tz="UTC").to_pydatetime(),
                           {"proj:code": "EPSG:32632", **props}, collection="sentinel-2-l2a")
        item.add_asset("granule-metadata", pystac.Asset(f"/nowhere/{i}/MTD_TL.xml", roles=["metadata"]))
        out.append(item)
    return out


def test_apply_nbar_multiplies_by_interpolated_c_factor(fake_sen2nbar):
    ds = _cube()
    out = apply_nbar(ds, _nbar_items())
    assert out["s2"].dtype == np.float32 and out.attrs["nbar"] == 1
    for band in S2_BANDS:
        c = _c_expected(X, band)[None, None, :]
        np.testing.assert_allclose(out["s2"].sel(band=band).values, ds["s2"].sel(band=band).values * c, rtol=1e-6)
    # B8A borrows B08's c-factor
    np.testing.assert_allclose(out["s2"].sel(band="B8A").values / ds["s2"].sel(band="B8A").values,
                               out["s2"].sel(band="B08").values / ds["s2"].sel(band="B08").values, rtol=1e-6)
    # one call per item, in the cube's EPSG; proj:code items get the proj:epsg sen2nbar reads
    assert fake_sen2nbar == [(f"S2_{i}", "epsg:32632", 32632) for i in range(3)]
    with pytest.raises(CubeError, match="already NBAR-corrected"):
        apply_nbar(out, _nbar_items())


def test_apply_nbar_lazy_matches_eager_and_averages_same_day_tiles(fake_sen2nbar):
    ds = _cube().chunk({"time": 1})
    items = _nbar_items() + [_nbar_items(times=[TIMES[0]], **{"test:scale": 1.1})[0]]
    items[-1].id = "S2_0_tile2"
    out = apply_nbar(ds, items)
    assert out["s2"].chunks is not None and fake_sen2nbar == []  # nothing computed yet
    vals = out["s2"].values
    c0 = (_c_expected(X, "B02") + _c_expected(X, "B02", 1.1)) / 2  # two tiles on date 0: mean c-factor
    np.testing.assert_allclose(vals[0, 0], ds["s2"].values[0, 0] * c0[None, :], rtol=1e-6)
    np.testing.assert_allclose(vals[1, 0], ds["s2"].values[1, 0] * _c_expected(X, "B02")[None, :], rtol=1e-6)


def test_apply_nbar_errors(fake_sen2nbar, monkeypatch):
    ds = _cube()
    items = _nbar_items()
    del items[1].assets["granule-metadata"]
    with pytest.raises(NbarUnavailableError, match="S2_1 has no 'granule-metadata' asset"):
        apply_nbar(ds, items)
    with pytest.raises(NbarUnavailableError, match="no STAC item for cube date 2021-05-21"):
        apply_nbar(ds, _nbar_items(times=TIMES[:2]))
    monkeypatch.setitem(sys.modules, "sen2nbar", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "sen2nbar.c_factor")
    with pytest.raises(NbarUnavailableError, match=r"pip install 'latentcube\[nbar\]'"):
        apply_nbar(ds, _nbar_items())


def test_fetch_with_nbar(fake_sen2nbar, tmp_path):
    from latentcube.sources.stac import fetch_cube

    items = [s2_item(tmp_path, "S2_N", "2021-06-05T10:30:21Z", "03.01")]
    kw = dict(center=center_lonlat(), edge_m=200, start="2021-06-01", end="2021-06-30", catalog=items, sign=False,
              include_s1=False, mask=None)
    ds = fetch_cube(nbar=True, **kw).compute()
    x = ds.x.values
    assert ds.attrs["nbar"] == 1
    np.testing.assert_allclose(ds["s2"].sel(band="B04").values[0],
                               np.broadcast_to(DN_DEFAULT["B04"] / 1e4 * _c_expected(x, "B04"), (20, 20)), rtol=1e-6)

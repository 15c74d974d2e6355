"""PCA maps: against scikit-learn, robust scaling by hand, class colours, the two-panel figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.decomposition import PCA

from latentcube.cube import new_cube, set_crs
from latentcube.evaluate.maps import class_colours, fit_pca, pca_figure, pca_rgb, robust_scale
from latentcube.gapfill import EmbeddingCubeError

TIMES = pd.to_datetime(["2019-07-09 10:30", "2019-07-14 10:30", "2019-07-19 10:30"])


def emb_cube(seed: int = 0, h: int = 6, w: int = 5, f: int = 4) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(3, f, h, w)).astype("float32") * np.array([3.0, 2.0, 1.0, 0.5][:f])[None, :, None, None]
    v[0, :, 0, :2] = np.nan  # two invalid pixels on the first date
    ds = xr.Dataset({"embedding": (("time", "feature", "y", "x"), v)},
                    coords={"time": TIMES.values, "feature": [f"fused_{i}" for i in range(f)],
                            "y": 1000.0 - 10 * np.arange(h), "x": 10.0 * np.arange(w)})
    return set_crs(ds, "EPSG:32632")


def test_robust_scale_by_hand():
    scores = np.array([[0.0, 10.0, 5.0], [2.0, 30.0, 5.0], [4.0, -10.0, 5.0], [np.nan, 20.0, 5.0]])
    out = robust_scale(scores, low=[0.0, 10.0, 5.0], high=[4.0, 20.0, 5.0])
    np.testing.assert_allclose(out[:3], [[0.0, 0.0, 0.5], [0.5, 1.0, 0.5], [1.0, 0.0, 0.5]])  # clipped; constant -> 0.5
    assert np.isnan(out[3, 0]) and out[3, 1] == 1.0


def test_pca_rgb_equals_sklearn_on_a_tiny_cube():
    ds = emb_cube()
    v = ds["embedding"].values
    rows = np.moveaxis(v, 1, -1).reshape(-1, 4)
    rows = rows[np.isfinite(rows).all(axis=1)]  # all 28 + 30 + 30 valid pixel-dates
    ref = PCA(n_components=3, svd_solver="full").fit(rows.astype("float64"))
    fit = fit_pca(ds, progress=False)
    assert fit.n_samples == 88
    np.testing.assert_allclose(np.abs(fit.pca.components_), np.abs(ref.components_), rtol=1e-5, atol=1e-6)
    scores_all = ref.transform(rows)
    lo, hi = np.percentile(scores_all, [2, 98], axis=0)
    # Same sign convention (sklearn's svd_flip), so the scaled images agree exactly.
    day = np.moveaxis(v[1], 0, -1).reshape(-1, 4)
    expected = np.clip((ref.transform(day) - lo) / (hi - lo), 0, 1).reshape(6, 5, 3)
    rgb = pca_rgb(ds, date="2019-07-14")
    assert rgb.shape == (6, 5, 3) and rgb.dtype == np.float64
    np.testing.assert_allclose(rgb, expected, rtol=1e-5, atol=1e-6)
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0 and (rgb == 0.0).any()  # clipped below the 2nd percentile


def test_nan_pixels_get_the_neutral_colour_and_default_date():
    ds = emb_cube()
    rgb = pca_rgb(ds, date="2019-07-09", nan_colour=(0.5, 0.5, 0.5))
    np.testing.assert_array_equal(rgb[0, :2], 0.5)
    assert np.isnan(pca_rgb(ds, date="2019-07-09", nan_colour=None)[0, :2]).all()
    # Default date = the most valid pixels = 2019-07-14 (first of the two complete dates).
    np.testing.assert_allclose(pca_rgb(ds), pca_rgb(ds, date="2019-07-14"))


def test_sampling_is_seeded_and_bounded():
    ds = emb_cube(h=20, w=20)
    a, b = fit_pca(ds, sample=300, seed=3, progress=False), fit_pca(ds, sample=300, seed=3, progress=False)
    assert 290 <= a.n_samples <= 310
    np.testing.assert_array_equal(a.pca.components_, b.pca.components_)
    only = fit_pca(ds, fit_dates=["2019-07-19"], progress=False)
    assert only.n_samples == 400
    # Read chunk by chunk (a Dask-backed cube): the same fit when every valid pixel-date is used.
    whole = fit_pca(ds, progress=False)
    chunked = fit_pca(ds.chunk({"time": 2, "y": 7, "x": 9}), progress=False)
    assert chunked.n_samples == whole.n_samples == 3 * 400 - 2
    np.testing.assert_allclose(chunked.pca.components_, whole.pca.components_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(chunked.low, whole.low, rtol=1e-6)


def test_errors_name_the_nearest_dates():
    ds = emb_cube()
    with pytest.raises(EmbeddingCubeError, match=r"no date 2019-07-15 .*nearest: 2019-07-09, 2019-07-14, 2019-07-19"):
        pca_rgb(ds, date="2019-07-15")
    with pytest.raises(EmbeddingCubeError, match="at least 3 embedding features"):
        pca_rgb(ds.isel(feature=[0, 1]))
    with pytest.raises(EmbeddingCubeError, match="no valid pixel-dates"):
        pca_rgb(ds.where(ds["embedding"] > 1e9))


def test_class_colours_by_hand():
    rgb = np.zeros((2, 3, 3))
    rgb[0] = [1.0, 0.0, 0.0]
    rgb[1, :2] = [0.0, 0.5, 1.0]
    rgb[1, 2] = np.nan
    labels = np.array([[6, 6, 6], [5, 5, 5]])
    cols = class_colours(rgb, labels)
    np.testing.assert_allclose(cols[6], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(cols[5], [0.0, 0.5, 1.0])  # the NaN pixel is excluded
    with pytest.raises(ValueError, match="do not match"):
        class_colours(rgb, labels[:1])


def test_pca_figure_two_panels(tmp_path):
    import matplotlib.image as mpimg

    ds = emb_cube(h=16, w=16)
    s2 = np.full((3, 10, 16, 16), 0.05, "float32")
    s2[:, 2, :, 8:] = 0.3  # right half red
    cube = new_cube(s2=s2, time=TIMES, y=ds["y"].values, x=ds["x"].values, crs="EPSG:32632")
    path = pca_figure(ds, cube, "2019-07-14", tmp_path / "fig" / "pca.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert w > 1.6 * h  # two square panels side by side
    left, right = img[:, : w // 2, :3], img[:, w // 2 :, :3]
    assert left.std() > 0.05 and right.std() > 0.05  # both panels drawn, neither blank
    # The right panel holds many distinct colours (the PCA map), the left few (the flat S2 scene).
    assert len(np.unique(right.reshape(-1, 3), axis=0)) > 50
    with pytest.raises(EmbeddingCubeError, match="no date 2019-07-15"):
        pca_figure(ds, cube, "2019-07-15", tmp_path / "x.png")
    with pytest.raises(EmbeddingCubeError, match="--cube"):
        pca_figure(ds, None, "2019-07-14", tmp_path / "x.png")
    with pytest.raises(EmbeddingCubeError, match="no date 2019-07-14 in the S2 cube"):
        pca_figure(ds, cube.isel(time=[0, 2]), "2019-07-14", tmp_path / "x.png")


def test_pca_figure_without_b02_b03_shows_a_titled_false_colour(tmp_path, monkeypatch):
    """An openEO-style cube of B04 B08 B11 only: the left panel is the B11/B08/B04 composite, titled as such."""
    from matplotlib.figure import Figure

    from latentcube.plots import reference_rgb

    ds = emb_cube(h=8, w=8)
    rng = np.random.default_rng(1)
    s2 = rng.uniform(0.02, 0.5, size=(3, 3, 8, 8)).astype("float32")
    cube = new_cube(s2=s2, time=TIMES, y=ds["y"].values, x=ds["x"].values, crs="EPSG:32632",
                    bands=("B04", "B08", "B11"))
    drawn = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), save(fig, *a, **k))[1])
    pca_figure(ds, cube, "2019-07-14", tmp_path / "pca.png")
    left = drawn[0].axes[0]
    assert left.get_title() == "Sentinel-2 false colour B11/B08/B04 2019-07-14"
    expected, _ = reference_rgb(cube, 1)
    np.testing.assert_array_equal(np.asarray(left.images[0].get_array()), expected)
    manual = s2[1, [2, 1, 0]].transpose(1, 2, 0).astype("float64")  # B11, B08, B04 as R, G, B
    lo, hi = np.percentile(manual.reshape(-1, 3), [2, 98], axis=0)
    np.testing.assert_allclose(expected, np.clip((manual - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_cli_pca_on_a_three_band_cube_with_and_without_cube(tmp_path, capsys):
    from latentcube.cli import main

    ds = emb_cube(h=8, w=8)
    cube = new_cube(s2=np.full((3, 3, 8, 8), 0.1, "float32"), time=TIMES, y=ds["y"].values, x=ds["x"].values,
                    crs="EPSG:32632", bands=("B04", "B08", "B11"))
    cube.to_zarr(tmp_path / "c.zarr", zarr_format=2, consolidated=True)
    ds.attrs["source_cube"] = str(tmp_path / "c.zarr")  # what embed records: --cube may be left out
    ds.to_zarr(tmp_path / "e.zarr", zarr_format=2, consolidated=True)
    for extra, out in ((["--cube", str(tmp_path / "c.zarr")], "p.png"), ([], "q.png")):
        with pytest.raises(SystemExit) as exc:
            main(["pca", str(tmp_path / "e.zarr"), "--date", "2019-07-19", *extra, "--out", str(tmp_path / out)])
        assert exc.value.code == 0, capsys.readouterr().err
        assert (tmp_path / out).read_bytes()[:4] == b"\x89PNG"


def test_cli_pca(tmp_path, capsys):
    from latentcube.cli import main

    ds = emb_cube(h=8, w=8)
    ds.to_zarr(tmp_path / "e.zarr", zarr_format=2, consolidated=True)
    cube = new_cube(s2=np.full((3, 10, 8, 8), 0.1, "float32"), time=TIMES, y=ds["y"].values, x=ds["x"].values,
                    crs="EPSG:32632")
    cube.to_zarr(tmp_path / "c.zarr", zarr_format=2, consolidated=True)
    with pytest.raises(SystemExit) as exc:
        main(["pca", str(tmp_path / "e.zarr"), "--date", "2019-07-19", "--cube", str(tmp_path / "c.zarr"),
              "--out", str(tmp_path / "p.png")])
    assert exc.value.code == 0 and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as exc:
        main(["pca", str(tmp_path / "e.zarr"), "--date", "2019-07-20", "--out", str(tmp_path / "q.png")])
    assert exc.value.code == 1 and "nearest: 2019-07-09, 2019-07-14, 2019-07-19" in capsys.readouterr().err

"""Quick looks: date choice, RGB scaling, per-class series on a hand-made cube."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from latentcube.constants import S2_BANDS
from latentcube.cube import CubeError, new_cube
from latentcube.plots import class_timeseries, clearest_date, ndvi, reference_rgb, true_colour_rgb


def cube():
    s2 = np.full((3, 10, 4, 4), 0.1, "float32")
    s2[:, S2_BANDS.index("B08")] = 0.5  # NDVI = (0.5 - 0.1) / 0.6
    s2[0, :, :2] = np.nan  # date 0 half cloudy
    scl = np.full((3, 4, 4), 4, "uint8")
    scl[1] = 11  # date 1 fully valid but snow
    return new_cube(s2=s2, time=pd.date_range("2020-01-01", periods=3, freq="5D"), y=100.0 - 10 * np.arange(4),
                    x=10.0 * np.arange(4), crs="EPSG:32632", s2_scl=scl,
                    layers={"landcover": np.array([[1] * 4, [1] * 4, [6] * 4, [6] * 4], "uint8")})


def test_clearest_date_skips_clouds_and_snow():
    assert clearest_date(cube()) == 2


def test_true_colour_scales_and_whitens_invalid():
    rgb = true_colour_rgb(cube(), 0, gain=3.0)
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_allclose(rgb[3, 3], 0.3, rtol=1e-6)
    assert (rgb[0, 0] == 1.0).all()


def test_class_timeseries_means_valid_pixels_only():
    ds = cube()
    series = class_timeseries(ds)["ndvi"]
    np.testing.assert_allclose(float(ndvi(ds)[2, 0, 0]), 0.4 / 0.6, rtol=1e-6)
    assert np.isnan(series.loc["2020-01-01", "needleleaf_forest"])  # all its pixels cloudy that day
    np.testing.assert_allclose(series.loc["2020-01-01", "water"], 0.4 / 0.6, rtol=1e-6)


def few_bands_cube(bands=("B04", "B08", "B11")):
    """Two dates of 4 x 4 px with only ``bands``: B04 constant, B08 = 0.1 + 0.01 * pixel (one NaN), B11 = pixel."""
    pix = np.arange(16, dtype="float32").reshape(4, 4)
    planes = {"B04": np.full((4, 4), 0.05, "float32"), "B08": 0.1 + 0.01 * pix, "B11": pix / 100}
    planes["B08"][0, 1] = np.nan
    s2 = np.stack([np.stack([planes[b] for b in bands])] * 2)
    return new_cube(s2=s2, time=pd.date_range("2023-04-01", periods=2, freq="5D"), y=100.0 - 10 * np.arange(4),
                    x=10.0 * np.arange(4), crs="EPSG:32631", bands=bands)


def test_reference_rgb_true_colour_when_the_bands_are_there():
    rgb, name = reference_rgb(cube(), 0, gain=3.0)
    assert name == "true colour"
    np.testing.assert_array_equal(rgb, true_colour_rgb(cube(), 0, gain=3.0))


def test_reference_rgb_false_colour_from_b04_b08_b11_by_hand():
    rgb, name = reference_rgb(few_bands_cube(), 1, gain=3.0)
    assert name == "false colour B11/B08/B04" and rgb.shape == (4, 4, 3)
    pix = np.arange(16.0).reshape(4, 4)
    # B11 (red): the 16 values 0..15 (/100) stretched from their 2nd to 98th percentile, 0.3 .. 14.7 (/100).
    np.testing.assert_allclose(rgb[..., 0], np.clip((pix - 0.3) / 14.4, 0, 1), atol=1e-5)
    # B08 (green): 15 finite values (pixel 1 is NaN, drawn white); percentiles of 0, 2, 3, ..., 15 (x 0.01 + 0.1).
    finite = np.delete(pix.ravel(), 1)
    lo, hi = np.percentile(finite, [2, 98])
    assert (lo, hi) == pytest.approx((0.56, 14.72))
    expected = np.clip((pix - lo) / (hi - lo), 0, 1)
    expected[0, 1] = 1.0
    np.testing.assert_allclose(rgb[..., 1], expected, atol=1e-4)
    np.testing.assert_array_equal(rgb[..., 2], 0.5)  # B04 constant: mid-grey, not a division by zero
    with pytest.raises(CubeError, match=r"lack B03, B02.*Fix: .*reference_rgb"):
        true_colour_rgb(few_bands_cube(), 0)


def test_reference_rgb_greyscale_from_one_band_and_error_without_s2():
    rgb, name = reference_rgb(few_bands_cube(("B11",)), 0)
    assert name == "B11 greyscale"
    np.testing.assert_allclose(rgb, np.repeat(np.clip((np.arange(16.0).reshape(4, 4, 1) - 0.3) / 14.4, 0, 1), 3, -1),
                               atol=1e-5)
    rgb, name = reference_rgb(few_bands_cube(("B04", "B08")), 0)  # no triple: B08 preferred
    assert name == "B08 greyscale" and (rgb[0, 1] == 1.0).all()
    with pytest.raises(CubeError, match="no Sentinel-2 variable"):
        reference_rgb(few_bands_cube().drop_vars("s2"), 0)

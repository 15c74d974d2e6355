"""Quick looks: date choice, RGB scaling, per-class series on a hand-made cube."""

from __future__ import annotations

import numpy as np
import pandas as pd

from latentcube.constants import S2_BANDS
from latentcube.cube import new_cube
from latentcube.plots import class_timeseries, clearest_date, ndvi, true_colour_rgb


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

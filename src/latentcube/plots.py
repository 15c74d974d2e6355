"""Quick looks of cubes: true-colour images and per-class NDVI / VV time series (matplotlib, no display)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry to leave behind

from latentcube.constants import LANDCOVER_CLASSES

__all__ = ["clearest_date", "class_timeseries", "ndvi", "plot_class_timeseries", "save_true_colour", "true_colour_rgb"]


def ndvi(ds: xr.Dataset) -> xr.DataArray:
    """NDVI (B08 − B04)/(B08 + B04) per ``(time, y, x)``; NaN where either band is invalid."""
    nir, red = ds["s2"].sel(band="B08"), ds["s2"].sel(band="B04")
    return ((nir - red) / (nir + red)).rename("ndvi")


def clearest_date(ds: xr.Dataset) -> int:
    """Index of the S2 date with the largest fraction of valid, snow-free pixels (first one on ties).

    Snow (SCL 11, when ``s2_scl`` is present) counts as not clear: a snow-covered date is valid data
    but a poor picture of the landscape.
    """
    clear = np.isfinite(ds["s2"]).all("band")
    if "s2_scl" in ds:
        clear = clear & (ds["s2_scl"] != 11)
    return int(np.argmax(clear.mean(("y", "x")).values))


def true_colour_rgb(ds: xr.Dataset, time_index: int, *, gain: float = 3.0) -> np.ndarray:
    """``(y, x, 3)`` float RGB in 0–1 from B04/B03/B02 × ``gain``; invalid pixels are white."""
    rgb = ds["s2"].isel(time=time_index).sel(band=["B04", "B03", "B02"]).transpose("y", "x", "band").values
    rgb = np.clip(rgb * gain, 0.0, 1.0)
    return np.where(np.isfinite(rgb), rgb, 1.0)


def save_true_colour(ds: xr.Dataset, path: str | Path, *, time_index: int | None = None, title: str = "") -> Path:
    """Write a true-colour PNG of one date (default: the clearest) and return its path."""
    t = clearest_date(ds) if time_index is None else time_index
    date = pd.Timestamp(ds["time"].values[t]).date()
    fig = Figure(figsize=(5, 5), dpi=110)
    ax = fig.subplots()
    ax.imshow(true_colour_rgb(ds, t), interpolation="nearest")
    ax.set_title(f"{title} Sentinel-2 true colour {date}".strip())
    ax.set_axis_off()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def class_timeseries(ds: xr.Dataset, *, layer: str = "landcover") -> dict[str, pd.DataFrame]:
    """Per land-cover class means: ``{"ndvi": DataFrame(time × class)}`` and ``"vv_db"`` over S1 dates.

    NDVI means use valid pixels only; dates where a class has under 5 % valid pixels are NaN so that
    cloudy dates do not show as dips.
    """
    classes = ds[layer].values
    out: dict[str, pd.DataFrame] = {}
    nd = ndvi(ds).values  # (time, y, x)
    cols = {}
    for code in np.unique(classes):
        sel = classes == code
        vals = nd[:, sel]
        frac = np.isfinite(vals).mean(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN dates give NaN, as intended
            mean = np.nanmean(vals, axis=1)
        cols[LANDCOVER_CLASSES.get(int(code), str(code))] = np.where(frac >= 0.05, mean, np.nan)
    out["ndvi"] = pd.DataFrame(cols, index=pd.DatetimeIndex(ds["time"].values, name="time"))
    if "s1" in ds:
        vv = ds["s1"].sel(band_s1="VV").values
        cols = {}
        for code in np.unique(classes):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                cols[LANDCOVER_CLASSES.get(int(code), str(code))] = 10 * np.log10(np.nanmean(vv[:, classes == code], axis=1))
        out["vv_db"] = pd.DataFrame(cols, index=pd.DatetimeIndex(ds["time_s1"].values, name="time_s1"))
    return out


def plot_class_timeseries(ds: xr.Dataset, path: str | Path, *, layer: str = "landcover", title: str = "") -> Path:
    """Two panels: mean NDVI per class over S2 dates and mean VV (dB) per class over S1 dates."""
    series = class_timeseries(ds, layer=layer)
    n = len(series)
    fig = Figure(figsize=(9, 3.2 * n), dpi=110)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)
    for ax, (name, df) in zip(axes[:, 0], series.items(), strict=True):
        for col in df.columns:
            s = df[col].dropna()
            ax.plot(s.index, s.values, marker=".", ms=3, lw=1, label=col)
        ax.set_ylabel({"ndvi": "NDVI (clear pixels)", "vv_db": "VV backscatter (dB)"}[name])
        ax.grid(alpha=0.3)
    axes[0, 0].legend(ncol=4, fontsize=7, loc="lower center")
    axes[0, 0].set_title(f"{title} per land-cover class".strip())
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path

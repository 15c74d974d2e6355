"""Quick looks of cubes: true-colour (or false-colour) images and per-class NDVI / VV time series
(matplotlib, no display)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry to leave behind

from latentcube.constants import LANDCOVER_CLASSES
from latentcube.cube import CubeError

__all__ = ["REFERENCE_COMPOSITES", "clearest_date", "class_timeseries", "ndvi", "plot_class_timeseries",
           "reference_rgb", "save_true_colour", "true_colour_rgb"]

TRUE_COLOUR_BANDS = ("B04", "B03", "B02")
#: The (R, G, B) band triples :func:`reference_rgb` tries, in order, with their names: true colour first,
#: then false-colour composites for cubes that lack the visible bands (an openEO export of B04 B08 B11...).
REFERENCE_COMPOSITES: tuple[tuple[tuple[str, str, str], str], ...] = (
    (TRUE_COLOUR_BANDS, "true colour"),
    (("B08", "B04", "B03"), "false colour B08/B04/B03"),
    (("B11", "B08", "B04"), "false colour B11/B08/B04"),
    (("B12", "B08", "B04"), "false colour B12/B08/B04"),
)
#: Single bands for the greyscale fallback, in order of preference (else the cube's first band).
GREYSCALE_BANDS = ("B08", "B04", "B03", "B02", "B8A", "B11", "B12", "B05", "B06", "B07")
#: Percentiles of the linear stretch of false-colour and greyscale images.
STRETCH_PERCENTILES = (2.0, 98.0)


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


def _s2_bands(ds: xr.Dataset) -> list[str]:
    if "s2" not in ds.data_vars:
        raise CubeError("the cube has no Sentinel-2 variable `s2`, so there is no image to draw. Fix: pass a "
                        "latentcube cube with S2 reflectance (latentcube import / latentcube cube).")
    return [str(b) for b in ds["band"].values]


def true_colour_rgb(ds: xr.Dataset, time_index: int, *, gain: float = 3.0) -> np.ndarray:
    """``(y, x, 3)`` float RGB in 0–1 from B04/B03/B02 × ``gain``; invalid pixels are white.

    Raises :class:`~latentcube.cube.CubeError` when the cube lacks one of B02, B03, B04 (use
    :func:`reference_rgb` for a false-colour or greyscale fallback).
    """
    bands = _s2_bands(ds)
    missing = [b for b in TRUE_COLOUR_BANDS if b not in bands]
    if missing:
        raise CubeError(f"the cube's S2 bands ({', '.join(bands)}) lack {', '.join(missing)}, needed for a true-colour "
                        "image. Fix: import B02, B03 and B04, or draw a false-colour image with "
                        "latentcube.plots.reference_rgb.")
    rgb = ds["s2"].isel(time=time_index).sel(band=list(TRUE_COLOUR_BANDS)).transpose("y", "x", "band").values
    rgb = np.clip(rgb * gain, 0.0, 1.0)
    return np.where(np.isfinite(rgb), rgb, 1.0)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Each channel of ``(y, x, c)`` linearly from its 2nd..98th percentile of finite values to 0..1 (clipped);
    a constant channel is mid-grey (0.5); NaN stays NaN."""
    out = np.full(values.shape, np.nan)
    for c in range(values.shape[-1]):
        v = values[..., c].astype("float64")
        ok = np.isfinite(v)
        if not ok.any():
            continue
        lo, hi = np.percentile(v[ok], STRETCH_PERCENTILES)
        out[..., c] = np.clip((v - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.where(ok, 0.5, np.nan)
    return out


def reference_rgb(ds: xr.Dataset, time_index: int, *, gain: float = 3.0) -> tuple[np.ndarray, str]:
    """``(y, x, 3)`` float RGB in 0–1 of one S2 date and its name, from the bands the cube has.

    The first of :data:`REFERENCE_COMPOSITES` whose three bands are all present is drawn:

    - true colour (B04/B03/B02): reflectance × ``gain``, clipped to 1, as :func:`true_colour_rgb`;
    - else a false-colour composite (B08/B04/B03, B11/B08/B04 or B12/B08/B04 as R/G/B): NIR and SWIR
      reflectance is several times the visible one, so one gain would saturate or darken a channel; each
      channel is instead stretched linearly from its 2nd to its 98th percentile on that date (``gain``
      is not used);
    - else (fewer bands) one band as greyscale (B08 first, see :data:`GREYSCALE_BANDS`, else the cube's
      first band), stretched the same way.

    Invalid pixels are white. The name (``"true colour"``, ``"false colour B11/B08/B04"``,
    ``"B08 greyscale"``) is meant for the panel's title, so that a false-colour image is never shown as
    true colour. A cube without S2 bands raises :class:`~latentcube.cube.CubeError`.
    """
    bands = _s2_bands(ds)
    if not bands:
        raise CubeError("the cube's S2 variable has no bands, so there is no image to draw. Fix: import at least "
                        "one S2 band (B04, B08...).")
    for triple, name in REFERENCE_COMPOSITES:
        if all(b in bands for b in triple):
            if triple == TRUE_COLOUR_BANDS:
                return true_colour_rgb(ds, time_index, gain=gain), name
            rgb = _stretch(ds["s2"].isel(time=time_index).sel(band=list(triple)).transpose("y", "x", "band").values)
            return np.where(np.isfinite(rgb), rgb, 1.0), name
    band = next((b for b in GREYSCALE_BANDS if b in bands), bands[0])
    grey = _stretch(ds["s2"].isel(time=time_index).sel(band=band).transpose("y", "x").values[..., None])
    grey = np.where(np.isfinite(grey), grey, 1.0)
    return np.repeat(grey, 3, axis=-1), f"{band} greyscale"


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

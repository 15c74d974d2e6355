"""Embedding maps: the first three principal components of an embedding cube as an RGB image (paper Fig. 6).

``pca_rgb(emb, date=...)`` fits a 3-component PCA (scikit-learn) over valid pixel-dates of the cube (a
seeded random sample when the cube is large), projects one date and scales each component robustly
(its 2nd..98th percentile over the fit sample -> 0..1, clipped), so one fit gives the same colour to the
same embedding on every date. ``pca_figure`` puts that image beside the Sentinel-2 true colour of the same
date; ``class_colours`` gives the mean colour per land-cover class (the "water, urban and forest get
clearly different colours" check). See docs/products.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.embed import dates_with_data
from latentcube.gapfill import EmbeddingCubeError, as_embedding, match_dates

__all__ = ["PCAFit", "class_colours", "fit_pca", "pca_figure", "pca_rgb", "robust_scale"]

#: Pixel-dates used to fit the PCA by default (a seeded random sample when the cube has more).
DEFAULT_SAMPLE = 200_000
#: Colour of pixels without an embedding on the date (white, as invalid pixels of the true-colour panel).
NAN_COLOUR = (1.0, 1.0, 1.0)


@dataclass
class PCAFit:
    """A fitted 3-component PCA and the robust range of each component over the fit sample."""

    pca: Any  # sklearn.decomposition.PCA
    low: np.ndarray  # (3,) 2nd percentile of each component's scores
    high: np.ndarray  # (3,) 98th percentile
    n_samples: int
    features: list[str]

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        return np.asarray(self.pca.explained_variance_ratio_)


def _as_da(emb: str | Path | xr.Dataset | xr.DataArray) -> xr.DataArray:
    if isinstance(emb, xr.DataArray):
        da = emb
        if da.dims != ("time", "feature", "y", "x"):
            raise EmbeddingCubeError(f"embedding has dimensions {da.dims}; expected ('time', 'feature', 'y', 'x').")
        return da
    return as_embedding(emb)["embedding"].transpose("time", "feature", "y", "x")


def robust_scale(scores: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``(scores - low) / (high - low)`` per last-axis component, clipped to [0, 1]; NaN stays NaN.

    A component with ``high == low`` (constant) maps to 0.5.
    """
    low, high = np.asarray(low, "float64"), np.asarray(high, "float64")
    span = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 0.5)
    return np.clip(out, 0.0, 1.0)


def _date_rows(da: xr.DataArray, t: int) -> np.ndarray:
    """One date's embeddings as ``(H * W, F)`` float32 rows (NaN rows = invalid pixels)."""
    m = np.asarray(da.isel(time=t).values, dtype="float32")  # (F, H, W)
    return m.reshape(m.shape[0], -1).T


def fit_pca(
    emb: str | Path | xr.Dataset | xr.DataArray,
    *,
    fit_dates: Sequence[Any] | None = None,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    percentiles: tuple[float, float] = (2.0, 98.0),
    progress: bool = True,
) -> PCAFit:
    """Fit a 3-component PCA over valid pixel-dates of an embedding cube.

    Args:
        emb: embedding cube (path, Dataset or ``(time, feature, y, x)`` DataArray).
        fit_dates: dates (``YYYY-MM-DD``) to fit on; default all dates. Read one storage chunk at a
            time, so memory is one chunk plus the sample.
        sample: at most this many pixel-dates enter the fit: each date contributes a seeded random subset
            of its valid pixels in proportion to its share of all pixels (``sample / (dates x pixels)``);
            with fewer valid pixel-dates, all are used (then equal to sklearn's PCA on all of them).
        seed: random seed of the subsample.
        percentiles: the robust range of each component over the fit sample (used by :func:`robust_scale`).

    Raises :class:`latentcube.gapfill.EmbeddingCubeError` when there is no valid pixel-date or fewer than 3 features.
    """
    from sklearn.decomposition import PCA

    da = _as_da(emb)
    if da.sizes["feature"] < 3:
        raise EmbeddingCubeError(f"PCA-RGB needs at least 3 embedding features; this cube has {da.sizes['feature']}.")
    idx = list(range(da.sizes["time"])) if fit_dates is None else match_dates(da["time"].values, fit_dates)
    n_pix = da.sizes["y"] * da.sizes["x"]
    frac = min(1.0, sample / max(1, n_pix * len(idx)))
    rng = np.random.default_rng(seed)
    parts = []
    blocks = _blocks(da, idx)
    iterator: Any = blocks
    if progress and len(blocks) > 1:
        from tqdm.auto import tqdm

        iterator = tqdm(blocks, desc="PCA sample", unit="block", leave=False)
    for times, ys, xs in iterator:
        m = np.asarray(da.isel(time=times, y=ys, x=xs).values, dtype="float32")  # (t, F, h, w)
        rows = np.moveaxis(m, 1, -1).reshape(-1, m.shape[1])
        rows = rows[np.isfinite(rows).all(axis=1)]
        if frac < 1.0 and len(rows):
            k = int(round(frac * len(rows)))
            rows = rows[rng.choice(len(rows), size=k, replace=False)]
        parts.append(rows)
    x = np.concatenate(parts) if parts else np.empty((0, da.sizes["feature"]), "float32")
    if len(x) < 3:
        raise EmbeddingCubeError("no valid pixel-dates to fit the PCA on (every embedding is NaN on the chosen dates).")
    pca = PCA(n_components=3, svd_solver="full", random_state=seed).fit(x.astype("float64"))
    scores = pca.transform(x.astype("float64"))
    low, high = np.percentile(scores, percentiles, axis=0)
    return PCAFit(pca=pca, low=low, high=high, n_samples=len(x), features=[str(f) for f in da["feature"].values])


def _blocks(da: xr.DataArray, times: list[int]) -> list[tuple[list[int], slice, slice]]:
    """The wanted dates grouped by the array's (Dask = storage) chunks: each chunk is read once, and
    memory holds one chunk, never the cube."""
    chunks = da.chunksizes if da.chunks is not None else {}
    edges = {}
    for dim in ("time", "y", "x"):
        sizes = chunks.get(dim, (da.sizes[dim],))
        edges[dim] = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for t0, t1 in zip(edges["time"][:-1], edges["time"][1:], strict=True):
        sel = [t for t in times if t0 <= t < t1]
        if not sel:
            continue
        for y0, y1 in zip(edges["y"][:-1], edges["y"][1:], strict=True):
            for x0, x1 in zip(edges["x"][:-1], edges["x"][1:], strict=True):
                out.append((sel, slice(int(y0), int(y1)), slice(int(x0), int(x1))))
    return out


def _date_index(da: xr.DataArray, date: Any) -> int:
    if date is None:
        # Most valid pixels (first on ties): the most informative single map.
        valid = da.isel(feature=0).notnull().sum(("y", "x")).values
        return int(np.argmax(valid))
    return match_dates(da["time"].values, [date], usable=lambda: dates_with_data(da))[0]


def _s2_index(s2: xr.Dataset, da: xr.DataArray, t: int, day: pd.Timestamp) -> int:
    """The S2 date shown beside embedding date ``t``: the same day, or for a window store (latentcube
    aggregate) the S2 date inside the window with the most valid pixels."""
    if "window_end" not in da.coords:
        return match_dates(s2["time"].values, [day], what="the S2 cube")[0]
    days = pd.DatetimeIndex(s2["time"].values).floor("D")
    inside = np.flatnonzero((days >= day) & (days <= pd.Timestamp(da["window_end"].values[t]).floor("D")))
    if inside.size == 0:
        raise EmbeddingCubeError(f"the S2 cube has no date in the window {da['window'].values[t]}. Fix: pass the cube "
                                 "the window store was aggregated from (--cube).")
    valid = s2["s2"].isel(time=inside).notnull().all("band").sum(("y", "x")).values
    return int(inside[int(np.argmax(valid))])


def pca_rgb(
    emb: str | Path | xr.Dataset | xr.DataArray,
    *,
    date: Any = None,
    fit_dates: Sequence[Any] | None = None,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    fit: PCAFit | None = None,
    nan_colour: tuple[float, float, float] | None = NAN_COLOUR,
) -> np.ndarray:
    """``(H, W, 3)`` float image in [0, 1]: PC1..3 of one date's embeddings as R, G, B.

    Args:
        emb: embedding cube (path, Dataset or DataArray ``(time, feature, y, x)``).
        date: ``YYYY-MM-DD`` of an embedding date (matched by calendar day); default the date with the
            most valid pixels. An absent date is an error naming the nearest available dates.
        fit_dates, sample, seed: see :func:`fit_pca` (ignored when ``fit`` is given).
        fit: a :class:`PCAFit` to reuse (same colours across several dates or figures).
        nan_colour: RGB for pixels without an embedding on that date; ``None`` leaves them NaN.
    """
    da = _as_da(emb)
    t = _date_index(da, date)
    fit = fit or fit_pca(da, fit_dates=fit_dates, sample=sample, seed=seed, progress=False)
    rows = _date_rows(da, t)
    ok = np.isfinite(rows).all(axis=1)
    scores = np.full((len(rows), 3), np.nan)
    if ok.any():
        scores[ok] = fit.pca.transform(rows[ok].astype("float64"))
    rgb = robust_scale(scores, fit.low, fit.high)
    rgb[~ok] = np.nan
    if nan_colour is not None:
        rgb[~ok] = nan_colour
    return rgb.reshape(da.sizes["y"], da.sizes["x"], 3)


def class_colours(rgb: np.ndarray, labels: np.ndarray, *, valid: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Mean RGB ``(3,)`` of each label in ``labels (H, W)`` over pixels with a finite colour (and ``valid``).

    Use ``pca_rgb(..., nan_colour=None)`` so that pixels without an embedding are excluded. Labels with no
    such pixel are left out. Compare classes with Euclidean distances in RGB (0..sqrt(3)).
    """
    rgb = np.asarray(rgb, "float64")
    labels = np.asarray(labels)
    if rgb.shape[:2] != labels.shape or rgb.shape[-1] != 3:
        raise ValueError(f"rgb {rgb.shape} and labels {labels.shape} do not match: expected (H, W, 3) and (H, W).")
    ok = np.isfinite(rgb).all(axis=-1)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    return {int(c): rgb[ok & (labels == c)].mean(axis=0) for c in np.unique(labels[ok])}


def _source_cube(emb: xr.Dataset | None, cube: Any) -> xr.Dataset:
    from latentcube.cube import open_cube

    if isinstance(cube, xr.Dataset):
        return cube
    if cube is None:
        src = (emb.attrs.get("source_cube") if emb is not None else None) or ""
        if not src or not Path(src).exists():
            raise EmbeddingCubeError(
                f"the S2 cube of this embedding is not known or not found (source_cube={src!r}). "
                "Fix: pass the cube (--cube CUBE.zarr)."
            )
        cube = src
    return open_cube(cube)


def pca_figure(
    emb: str | Path | xr.Dataset,
    cube: str | Path | xr.Dataset | None,
    date: Any,
    out_png: str | Path,
    *,
    fit_dates: Sequence[Any] | None = None,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    fit: PCAFit | None = None,
    gain: float = 3.0,
    title: str = "",
) -> Path:
    """Write a two-panel PNG: a Sentinel-2 image (left) and the embedding PCA-RGB (right) of ``date``.

    The left panel is true colour (B04/B03/B02) when the cube has those bands, else a false-colour
    composite or one band in greyscale from the bands it has (an openEO export of B04 B08 B11 gives
    B11/B08/B04), titled with what it shows: see :func:`latentcube.plots.reference_rgb`.

    Args:
        emb: embedding cube.
        cube: the S2 cube (path or Dataset); ``None`` = the embedding's ``source_cube`` attribute.
        date: ``YYYY-MM-DD`` present in both the embedding and the cube's S2 dates (else an error with the
            nearest dates); ``None`` = the embedding date with the most valid pixels.
        out_png: the figure path (parent directories are created).
        gain: true-colour brightness factor (reflectance x gain, clipped to 1; invalid pixels white); false
            colour and greyscale are stretched per channel instead.
    Returns ``out_png`` as a Path.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    from latentcube.plots import reference_rgb

    ds = as_embedding(emb) if not isinstance(emb, xr.DataArray) else emb.to_dataset(name="embedding")
    da = ds["embedding"].transpose("time", "feature", "y", "x")
    t = _date_index(da, date)
    day = pd.Timestamp(da["time"].values[t]).floor("D")
    s2 = _source_cube(ds, cube)
    ts2 = _s2_index(s2, da, t, day)
    if s2.sizes["y"] != da.sizes["y"] or s2.sizes["x"] != da.sizes["x"]:
        raise EmbeddingCubeError(
            f"the cube ({s2.sizes['y']} x {s2.sizes['x']}) and the embedding ({da.sizes['y']} x {da.sizes['x']}) "
            "cover different grids. Fix: pass the cube the embedding was computed from."
        )
    fit = fit or fit_pca(da, fit_dates=fit_dates, sample=sample, seed=seed)
    rgb = pca_rgb(da, date=day, fit=fit)
    tc, tc_name = reference_rgb(s2, ts2, gain=gain)
    ev = fit.explained_variance_ratio
    h, w = rgb.shape[:2]
    fig = Figure(figsize=(10, 5.4 * h / w + 0.4), dpi=110)
    axes = fig.subplots(1, 2)
    axes[0].imshow(tc, interpolation="nearest")
    axes[0].set_title(f"Sentinel-2 {tc_name} {pd.Timestamp(s2['time'].values[ts2]).date()}")
    axes[1].imshow(rgb, interpolation="nearest")
    axes[1].set_title(f"embedding PC1-3 as RGB ({100 * ev.sum():.0f} % of variance)")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png

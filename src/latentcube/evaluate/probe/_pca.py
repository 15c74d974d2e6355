"""The PCA-code baseline: a per-pixel, per-date linear code of the same size as the embedding.

PCA-k (scikit-learn) of the clear spectra of a fit cube, as the embedding's model sees them (S2
reflectance; S1 smoothed, matched to the S2 dates, in dB; both normalised with the model's
normalisation: ``_inputs.model_inputs``), k = the embedding's size. Applied to every pixel-date, then
aggregated exactly like the embedding: the linear code a learned per-date embedding has to beat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from latentcube.evaluate.probe._inputs import ProbeError, StoreSettings, model_inputs

#: Default pixels read from the fit cube (a seeded subset beyond it) and clear pixel-dates fitted.
PCA_MAX_PIXELS = 4096
PCA_MAX_SAMPLES = 200_000


@dataclass
class PCACode:
    """A fitted PCA code of the model inputs ``bands`` (normalised units): ``transform`` gives the codes,
    ``reconstruct`` the inputs back, NaN wherever a band of the pixel-date is missing."""

    pca: Any  # sklearn.decomposition.PCA
    bands: list[str]
    sensors: tuple[str, ...]
    spans: np.ndarray  # physical units per normalised unit, per band
    settings: StoreSettings
    n_fit: int
    source: str

    @property
    def k(self) -> int:
        return int(self.pca.n_components_)

    def _rows(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if x.ndim != 3 or x.shape[1] != len(self.bands):
            raise ProbeError(f"PCA code of {len(self.bands)} bands given an array of shape {x.shape}; expected (T, bands, n).")
        flat = x.transpose(0, 2, 1).reshape(-1, x.shape[1])  # (T*n, B)
        return flat, np.isfinite(flat).all(1)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``(T, B, n)`` model inputs -> ``(T, k, n)`` float32 codes."""
        flat, ok = self._rows(x)
        codes = np.full((flat.shape[0], self.k), np.nan, dtype="float32")
        if ok.any():
            codes[ok] = self.pca.transform(flat[ok].astype("float64"))
        return codes.reshape(x.shape[0], x.shape[2], self.k).transpose(0, 2, 1)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """``(T, B, n)`` -> the PCA-k reconstruction, same shape (normalised units)."""
        flat, ok = self._rows(x)
        out = np.full(flat.shape, np.nan, dtype="float32")
        if ok.any():
            out[ok] = self.pca.inverse_transform(self.pca.transform(flat[ok].astype("float64")))
        return out.reshape(x.shape[0], x.shape[2], -1).transpose(0, 2, 1)

    def sensor_mae(self, x: np.ndarray, sensor: str = "s2") -> np.ndarray:
        """``(T, n)`` mean absolute reconstruction error over ``sensor``'s bands, in physical units
        (reflectance for S2, dB for S1); NaN where a band is missing."""
        pick = np.array([(b.endswith("_dB")) == (sensor == "s1") for b in self.bands])
        if not pick.any():
            raise ProbeError(f"the PCA code has no {sensor} band (it has {self.bands}).")
        err = np.abs(self.reconstruct(x) - x)[:, pick] * self.spans[pick][None, :, None]
        return err.mean(axis=1)


def fit_pca_code(
    cube: str | Path | xr.Dataset,
    k: int,
    sensors: Sequence[str],
    *,
    settings: StoreSettings | None = None,
    spatial_split: Mapping[str, float] | None = None,
    max_gap_days: float = 6.0,
    max_pixels: int | None = PCA_MAX_PIXELS,
    max_samples: int | None = PCA_MAX_SAMPLES,
    seed: int = 0,
) -> PCACode:
    """Fit PCA-``k`` on the clear pixel-dates of ``cube`` (every band of ``sensors`` finite).

    Args:
        cube: the fit cube (path or dataset): the cube the model was trained on, or the probed one.
        k: code size (the embedding's; capped at the number of bands).
        sensors: ``("s2",)``, ``("s1",)`` or ``("s2", "s1")``: the model's inputs.
        settings: the model's normalisation and S1 preprocessing (from the embedding store).
        spatial_split: fit only on the training strip of this split, as ``data.spatial_split`` of the
            training configs (``{"val": 0.3}``: the west 70 % of the cube along x).
        max_pixels, max_samples: a seeded subset of pixels read and of clear pixel-dates fitted.
    """
    from sklearn.decomposition import PCA

    from latentcube.cube import open_cube

    ds = open_cube(cube) if isinstance(cube, (str, Path)) else cube
    settings = settings or StoreSettings()
    rng = np.random.default_rng(seed)
    rows_sl, cols_sl = slice(0, ds.sizes["y"]), slice(0, ds.sizes["x"])
    if spatial_split:
        from latentcube.splits import spatial_split as split_strips

        try:
            rows_sl, cols_sl = split_strips(ds.sizes["y"], ds.sizes["x"], dict(spatial_split), patch=1)["train"]
        except ValueError as err:
            raise ProbeError(f"PCA fit strip: {err}") from err
    rr, cc = np.mgrid[rows_sl, cols_sl]
    rows, cols = rr.ravel(), cc.ravel()
    if max_pixels is not None and rows.size > max_pixels:
        keep = np.sort(rng.choice(rows.size, max_pixels, replace=False))
        rows, cols = rows[keep], cols[keep]
    times = ds["time"].values if "s2" in sensors else ds["time_s1"].values
    x, bands, spans = model_inputs(ds, rows, cols, times, sensors, settings, max_gap_days)
    flat = x.transpose(0, 2, 1).reshape(-1, x.shape[1])
    flat = flat[np.isfinite(flat).all(1)].astype("float64")
    k = min(int(k), len(bands))
    if flat.shape[0] <= k:
        raise ProbeError(f"the PCA fit cube has {flat.shape[0]} clear pixel-dates of {bands}, too few for PCA-{k}. "
                         "Fix: fit on a larger or clearer cube (pca_fit=).")
    if max_samples is not None and flat.shape[0] > max_samples:
        flat = flat[np.sort(rng.choice(flat.shape[0], max_samples, replace=False))]
    pca = PCA(n_components=k, svd_solver="full").fit(flat)
    where = str(cube) if isinstance(cube, (str, Path)) else str(ds.attrs.get("title", "the probed cube"))
    strip = f", training strip of {dict(spatial_split)}" if spatial_split else ""
    return PCACode(pca=pca, bands=bands, sensors=tuple(sensors), spans=spans, settings=settings, n_fit=int(flat.shape[0]),
                   source=f"{where}{strip}")

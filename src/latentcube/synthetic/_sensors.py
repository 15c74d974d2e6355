"""Sentinel-2 reflectances and Sentinel-1 backscatter of the simulated surface."""

from __future__ import annotations

import numpy as np

from latentcube.synthetic._tables import (
    _BACKGROUND,
    _CANOPY,
    _S1_EXTINCTION,
    _S1_SOIL_DRY_DB,
    _S1_SOIL_WET_RISE_DB,
    _S1_VOLUME_DB,
    _SNOW,
    _SOIL_BACKGROUND,
    _WAI,
    DBF,
    ENF,
    URB,
    WAT,
    _smooth,
)
from latentcube.synthetic._vegetation import _canopy, _cover
from latentcube.synthetic._weather import _Weather
from latentcube.synthetic.config import WorldConfig

# ------------------------------------------------------------------------------------------ sensors


def _s2(
    rng: np.random.Generator, ph: dict[str, np.ndarray], lc: np.ndarray, t: np.ndarray, didx: np.ndarray,
    weather: _Weather, cloud_scl: np.ndarray, moist_px: np.ndarray, cfg: WorldConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S2 reflectance (T, 10, n, n) with NaN under clouds/shadows, SCL (T, n, n), and cover (T, n, n)."""
    n = lc.shape[0]
    T = len(t)
    fc = _cover(ph, _canopy(ph, t), slice(None)).reshape(T, n, n)
    # Per-pixel spectral variation: smooth (site quality, soil type) + iid, per stand/parcel for soils.
    v_can = 1 + 0.06 * _smooth(rng, (n, n), 5.0) + 0.03 * rng.standard_normal((n, n))
    v_nir = 1 + 0.05 * _smooth(rng, (n, n), 8.0)  # canopy structure: NIR plateau height
    v_bg = 1 + 0.10 * _smooth(rng, (n, n), 10.0) + 0.03 * rng.standard_normal((n, n))
    can = _CANOPY[lc].transpose(2, 0, 1) * v_can  # (B, n, n)
    can[4:8] *= v_nir
    bg = _BACKGROUND[lc].transpose(2, 0, 1) * v_bg
    wet = 1 - 0.25 * moist_px * _SOIL_BACKGROUND[lc]  # wet soil is darker: (T, n, n)
    refl = fc[:, None] * can[None] + ((1 - fc) * wet)[:, None] * bg[None]
    # Snow: open-land cover from the snow pack, seen through canopy gaps (partly hidden by stems).
    sc = weather.snow_cover[didx][:, None, None]
    gap = np.where(np.isin(lc, [ENF, DBF]), 0.6, np.where(lc == URB, 0.8, 1.0)) * (lc != WAT)
    vis = (sc * (1 - fc) * gap).astype(np.float32)
    refl = refl * (1 - vis[:, None]) + vis[:, None] * _SNOW[None, :, None, None]
    # Noise: per-date residual atmosphere (band gain) + per-observation multiplicative/additive.
    a_sd, m_sd = cfg.s2_noise
    gain = 1 + 0.015 * rng.standard_normal((T, 10, 1, 1))
    refl = refl * gain * (1 + m_sd * rng.standard_normal(refl.shape, dtype=np.float32))
    refl += a_sd * rng.standard_normal(refl.shape, dtype=np.float32)
    refl = np.clip(refl, 0, 1).astype(np.float32)

    b04, b08 = refl[:, 2], refl[:, 6]
    ndvi = (b08 - b04) / np.maximum(b08 + b04, 1e-6)
    scl = np.where(ndvi > 0.4, 4, 5).astype(np.uint8)
    scl[np.broadcast_to(lc == WAT, scl.shape)] = 6
    # Sen2Cor-like snow test: NDSI = (B03 - B11) / (B03 + B11) > 0.42 and bright green band.
    b03, b11 = refl[:, 1], refl[:, 8]
    scl[((b03 - b11) / np.maximum(b03 + b11, 1e-6) > 0.42) & (b03 > 0.15)] = 11
    cloudy = cloud_scl > 0
    scl[cloudy] = cloud_scl[cloudy]
    refl[np.broadcast_to(cloudy[:, None], refl.shape)] = np.nan
    return refl, scl, fc


def _s1(
    rng: np.random.Generator, ph: dict[str, np.ndarray], lc: np.ndarray, t: np.ndarray, moist_px: np.ndarray,
    cfg: WorldConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """S1 gamma0 linear (T, 2, n, n) with speckle and border NaNs, and the noise-free backscatter.

    Water-cloud model: sigma = V (1 - gamma^2) + gamma^2 S(m), gamma^2 = exp(-k (LAI + WAI)), V the
    class volume term, S the soil term rising with surface moisture m. Urban and water are fixed
    surfaces (water modulated by per-date wind roughening).
    """
    n = lc.shape[0]
    T = len(t)
    g = _canopy(ph, t).reshape(T, n, n)
    lai = ph["lai_max"].reshape(n, n) * g + _WAI[lc]
    gam2 = np.exp(-_S1_EXTINCTION * lai)[:, None]  # (T, 1, n, n)
    pix_db = 1.0 * _smooth(rng, (n, n), 4.0) + 0.5 * rng.standard_normal((n, n))  # local roughness/structure
    vol = 10 ** ((_S1_VOLUME_DB[lc].transpose(2, 0, 1)[None] + pix_db) / 10)  # (1, 2, n, n)
    soil_db = _S1_SOIL_DRY_DB[None, :, None, None] + _S1_SOIL_WET_RISE_DB[None, :, None, None] * moist_px[:, None]
    rough = 1.5 * _smooth(rng, (n, n), 10.0)  # ploughing/roughness differences between fields
    soil = 10 ** ((soil_db + rough) / 10)
    clean = vol * (1 - gam2) + gam2 * soil
    fixed = np.isin(lc, [URB, WAT])
    wind_db = np.where(lc == WAT, 2.5 * rng.standard_normal((T, 1, 1, 1)), 0.0)  # wind-roughened water
    clean = np.where(fixed, vol * 10 ** (wind_db / 10), clean).astype(np.float32)
    speckle = rng.gamma(cfg.enl, 1.0 / cfg.enl, clean.shape).astype(np.float32)
    s1 = clean * speckle
    for i in np.flatnonzero(rng.random(T) < cfg.s1_border_nan_prob):  # RTC swath/layover edge strips
        w = int(rng.integers(1, max(2, n // 16) + 1))
        if rng.random() < 0.5:
            s1[i, :, :, :w] = np.nan
        else:
            s1[i, :, :, -w:] = np.nan
    return s1, clean



"""Per-pixel phenology, crop calendars, mowing, and the canopy state they give."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

from latentcube.synthetic._tables import _LAI_MAX, _PHENO, CRO, GRA, URB, WAT, _doy_to_day, _smooth
from latentcube.synthetic._weather import _Weather

# -------------------------------------------------------------------------------------- phenology


def _phenology(
    rng: np.random.Generator, lc: np.ndarray, pid: np.ndarray, years: list[int], weather: _Weather
) -> dict[str, np.ndarray]:
    """Per-pixel phenology parameters (flattened pixels P) in absolute days since the epoch.

    Natural classes: a yearly double logistic with per-pixel dates = class date + year shift (warm
    springs earlier, -4 d per deg C of Mar-Apr anomaly) + patch/parcel offset + smooth and iid jitter.
    Grassland: meadows mown 2-3 times a year (per-parcel dates), pastures never. Cropland: per parcel
    and season one of winter cereal, spring cereal or maize, with sowing, green-up, senescence and
    harvest dates (bare soil outside the season).
    """
    n = lc.shape[0]
    P = lc.size
    lcf = lc.ravel()
    pidf = pid.ravel()
    npar = int(pid.max()) + 1
    ny = len(years)
    smooth = _smooth(rng, (n, n), 6.0).ravel()

    # Year shifts from the spring temperature anomaly.
    month = weather.dates.month
    yr = weather.dates.year
    spring = np.array([weather.ta[(yr == y) & ((month == 3) | (month == 4))].mean() for y in years])
    clim = np.array([weather.ta[(month == 3) | (month == 4)].mean()] * ny)
    shift = np.clip(-4.0 * (spring - clim), -12, 12)

    gmin, gmax = np.zeros(P, np.float32), np.zeros(P, np.float32)
    rs, re = np.ones(P, np.float32), np.ones(P, np.float32)
    sos, eos = np.full((ny, P), np.nan), np.full((ny, P), np.nan)
    par_off = rng.normal(0, 1, (ny, npar))
    for cls, (g0, g1, s, r1, e, r2) in _PHENO.items():
        m = lcf == cls
        if not m.any():
            continue
        gmin[m], gmax[m], rs[m], re[m] = g0, g1, r1, r2
        for k, y in enumerate(years):
            jit_s = 4.0 * par_off[k, pidf[m]] + 3.0 * smooth[m] + 1.5 * rng.standard_normal(m.sum())
            jit_e = 5.0 * par_off[k, pidf[m]] - 3.0 * smooth[m] + 2.0 * rng.standard_normal(m.sum())
            sos[k, m] = _doy_to_day(y, s + shift[k] + jit_s)
            eos[k, m] = _doy_to_day(y, e + jit_e)

    lai_max = _LAI_MAX[lcf].copy()
    urb = lcf == URB
    lai_max[urb] *= np.clip(0.2 + 0.1 * smooth[urb] + 0.05 * rng.standard_normal(urb.sum()), 0.02, 0.5)

    # Grassland mowing: meadows (70 % of parcels) cut 2-3 times; the pixel's g is multiplied by
    # 1 - 0.7 exp(-(t - t_cut)/12 d) after each cut (abrupt drop, regrowth over weeks).
    mow = np.full((ny, 3, P), np.nan)
    meadow = rng.random(npar) < 0.7
    ncut = rng.integers(2, 4, (ny, npar))
    gra = (lcf == GRA) & meadow[pidf]
    for k, y in enumerate(years):
        for j, doy in enumerate((145.0, 195.0, 245.0)):
            d = _doy_to_day(y, doy + shift[k] / 2 + rng.normal(0, 8, npar))
            use = gra & (ncut[k, pidf] > j)
            mow[k, j, use] = d[pidf[use]]

    # Crop seasons indexed by harvest year; winter cereal sown in the previous autumn.
    seasons = [*years, years[-1] + 1]
    ns = len(seasons)
    keys = ("sow", "greenup", "senesc", "harvest", "cmax", "floor")
    crop = {k: np.full((ns, npar), np.nan) for k in keys}
    ctype = np.zeros((ns, npar), np.int8)
    prev_harvest = np.full(npar, -np.inf)
    for k, y in enumerate(seasons):
        t = rng.choice([1, 2, 3], size=npar, p=[0.45, 0.20, 0.35])  # winter cereal, spring cereal, maize
        sow = np.select(
            [t == 1, t == 2, t == 3],
            [_doy_to_day(y - 1, 278 + rng.normal(0, 8, npar)), _doy_to_day(y, 90 + rng.normal(0, 8, npar)),
             _doy_to_day(y, 118 + rng.normal(0, 7, npar))],
        )
        sow = np.maximum(sow, prev_harvest + 10)  # rotation: the field must be free
        gu = np.select(
            [t == 1, t == 2, t == 3],
            [_doy_to_day(y, 95 + shift[min(k, ny - 1)] + rng.normal(0, 6, npar)), sow + 38 + rng.normal(0, 4, npar),
             sow + 52 + rng.normal(0, 5, npar)],
        )
        se = np.select(
            [t == 1, t == 2, t == 3],
            [_doy_to_day(y, 176 + rng.normal(0, 6, npar)), _doy_to_day(y, 185 + rng.normal(0, 6, npar)),
             _doy_to_day(y, 250 + rng.normal(0, 8, npar))],
        )
        hv = np.select([t == 1, t == 2, t == 3], [se + 28, se + 30, se + 28]) + rng.normal(0, 5, npar)
        crop["sow"][k], crop["greenup"][k], crop["senesc"][k], crop["harvest"][k] = sow, gu, se, hv
        crop["cmax"][k] = np.select([t == 1, t == 2, t == 3], [0.95, 0.85, 1.0]) * rng.uniform(0.9, 1.0, npar)
        crop["floor"][k] = np.where(t == 1, 0.18, 0.0)  # emerged winter cereal over winter
        ctype[k] = t
        prev_harvest = hv
    is_crop = lcf == CRO
    out: dict[str, np.ndarray] = {
        "lc": lcf, "lai_max": lai_max.astype(np.float32), "gmin": gmin, "gmax": gmax, "rs": rs, "re": re,
        "sos": sos, "eos": eos, "mow": mow, "is_crop": is_crop,
    }
    for k in keys:
        out["crop_" + k] = np.where(is_crop[None], crop[k][:, pidf], np.nan)
    out["crop_type"] = np.where(is_crop[None], ctype[:, pidf], 0).astype(np.int8)
    out["seasons"] = np.asarray(seasons)
    return out


def _canopy(ph: dict[str, np.ndarray], t: np.ndarray, idx: Any = slice(None)) -> np.ndarray:
    """Green canopy state g(t) in 0..1, shape (T, P'), at absolute days ``t`` for pixels ``idx``."""
    t = np.asarray(t, np.float64)[:, None]
    gmin, gmax = ph["gmin"][idx], ph["gmax"][idx]
    bump = np.zeros((t.shape[0], gmin.shape[0]))
    for k in range(ph["sos"].shape[0]):
        s, e = ph["sos"][k][idx], ph["eos"][k][idx]
        b = special.expit((t - s) / ph["rs"][idx]) - special.expit((t - e) / ph["re"][idx])
        bump = np.maximum(bump, np.nan_to_num(b))
    g = gmin + (gmax - gmin) * bump
    for k in range(ph["mow"].shape[0]):
        for j in range(ph["mow"].shape[1]):
            tm = ph["mow"][k, j][idx]
            dt = t - tm
            hit = np.isfinite(tm) & (dt >= 0)
            g = g * np.where(hit, 1 - 0.7 * np.exp(-np.where(hit, dt, 0) / 12.0), 1.0)
    is_crop = ph["is_crop"][idx]
    if is_crop.any():
        gc = np.zeros_like(g)
        for k in range(ph["crop_sow"].shape[0]):
            sow, hv = ph["crop_sow"][k][idx], ph["crop_harvest"][k][idx]
            inside = (t >= sow) & (t < hv)
            curve = ph["crop_cmax"][k][idx] * (
                special.expit((t - ph["crop_greenup"][k][idx]) / 7.0) - special.expit((t - ph["crop_senesc"][k][idx]) / 8.0)
            )
            val = np.maximum(np.where(t >= sow + 20, ph["crop_floor"][k][idx], 0.0), curve)
            gc = np.maximum(gc, np.where(inside, np.nan_to_num(val), 0.0))
        g = np.where(is_crop, gc, g)
    g = np.where(ph["lc"][idx] == WAT, 0.0, g)
    return np.clip(g, 0, 1).astype(np.float32)


def _cover(ph: dict[str, np.ndarray], g: np.ndarray, idx: Any = slice(None)) -> np.ndarray:
    """Fractional green cover = 1 - exp(-0.5 LAI) (Beer's law, nadir); fAPAR = 0.95 x this."""
    return (1 - np.exp(-0.5 * ph["lai_max"][idx] * g)).astype(np.float32)



"""Daily weather (clouds, temperature, rain, snow, soil water, radiation, VPD) and S2 cloud masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage, signal, stats

from latentcube.synthetic._tables import _days, _extraterrestrial_mj, _season_cos, _smooth
from latentcube.synthetic.config import WorldConfig

# ---------------------------------------------------------------------------------------- weather


def _cloudiness(rng: np.random.Generator, doy: np.ndarray, cfg: WorldConfig, z0: float) -> tuple[np.ndarray, float]:
    """Daily cloud fraction 0..1 from a persistent latent weather state mapped to seasonal mixtures.

    Each day is clear (0), overcast (1) or partly cloudy (Beta(1.2, 1.5)) with month-dependent
    probabilities; the AR(1) latent state makes cloudy and clear spells. Returns (c, last latent value).
    """
    phi = cfg.cloud_persistence
    e = rng.standard_normal(len(doy))
    z = signal.lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], e, zi=[phi * z0])[0]  # AR(1), unit variance
    u = stats.norm.cdf(z)
    s = (_season_cos(doy) + 1) / 2  # 0 winter .. 1 summer
    p_clear = cfg.clear_sky_prob[0] + (cfg.clear_sky_prob[1] - cfg.clear_sky_prob[0]) * s
    p_over = cfg.overcast_prob[0] + (cfg.overcast_prob[1] - cfg.overcast_prob[0]) * s
    mid = np.clip((u - p_clear) / np.maximum(1 - p_clear - p_over, 1e-6), 1e-6, 1 - 1e-6)
    c = np.where(u < p_clear, 0.0, np.where(u > 1 - p_over, 1.0, stats.beta.ppf(mid, 1.2, 1.5)))
    return c, float(z[-1])


def _sun_zenith_1030(doy: np.ndarray, lat_deg: float) -> np.ndarray:
    """Sun zenith angle (rad) at 10:30 local solar time (Sentinel-2 overpass)."""
    _, decl = _extraterrestrial_mj(doy, lat_deg)
    phi, h = np.deg2rad(lat_deg), np.deg2rad(-22.5)
    cosz = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(h)
    return np.arccos(np.clip(cosz, 0.05, 1.0))


def _cloud_scl(
    rng: np.random.Generator, cover: np.ndarray, sza: np.ndarray, n: int, cfg: WorldConfig
) -> np.ndarray:
    """Cloud/shadow SCL codes (T, n, n): 9 cloud core, 8 cloud edge, 10 cirrus, 3 shadow, 0 clear.

    Clouds are a two-scale smooth random field thresholded at the date's cloud fraction (exact within
    the scene); shadows are the cloud field displaced away from the sun (azimuth ~150 deg at 10:30) by
    cloud height x tan(zenith), so clouds outside the scene can shade it. The field is made on a 4x
    coarser grid and interpolated (clouds are smooth), which keeps it cheap for long offsets.
    """
    scl = np.zeros((len(cover), n, n), np.uint8)
    f = 4.0  # coarse grid factor
    az = np.deg2rad(150.0 + 180.0)  # shadow points away from the sun
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    for i, (c, z) in enumerate(zip(cover, sza, strict=True)):
        if c <= 0:
            continue
        if c >= 1:
            scl[i] = 9
            continue
        length_px = cfg.cloud_height_m * np.tan(z) / cfg.pixel_size_m
        drow, dcol = -length_px * np.cos(az), length_px * np.sin(az)  # north is -row
        pad = int(np.ceil(length_px / f)) + 4
        size = int(np.ceil(n / f)) + 2 * pad
        s = cfg.cloud_scale_px / f
        field_ = _smooth(rng, (size, size), s) + 0.6 * _smooth(rng, (size, size), 4 * s)
        here = ndimage.map_coordinates(field_, [yy / f + pad, xx / f + pad], order=1, mode="nearest")
        src = ndimage.map_coordinates(field_, [(yy - drow) / f + pad, (xx - dcol) / f + pad], order=1, mode="nearest")
        thr = np.quantile(here, 1 - c)
        cloud = here > thr
        cirrus = rng.random() < cfg.cirrus_prob
        if cirrus:
            scl[i][cloud] = 10
            continue
        scl[i][src > thr] = 3
        scl[i][cloud] = np.where(here[cloud] > thr + 0.3, 9, 8)
    return scl


@dataclass
class _Weather:
    days: np.ndarray  # absolute day numbers (float)
    dates: pd.DatetimeIndex
    cloud: np.ndarray
    ta: np.ndarray  # deg C
    rain: np.ndarray  # mm d-1 (liquid + solid)
    snow_cover: np.ndarray  # 0..1 open-land snow cover
    soil_moisture: np.ndarray  # surface 0..1
    root_zone: np.ndarray  # root-zone relative wetness 0..1
    sw_in: np.ndarray  # W m-2 daily mean
    sw_pot: np.ndarray  # W m-2 daily mean
    vpd: np.ndarray  # hPa daily mean


def _weather(
    rng: np.random.Generator,
    years: list[int],
    lat: float,
    cfg: WorldConfig,
    s2_dates: pd.DatetimeIndex,
    n: int,
    mask_rng: np.random.Generator,
) -> tuple[_Weather, np.ndarray]:
    """Daily weather for ``years`` and the S2 cloud/shadow SCL codes on ``s2_dates``.

    A year's cloud draw is redrawn while its clear pixel-date fraction is outside
    ``cfg.clear_fraction_range`` (the range is the climate's constraint, not a per-check tweak).
    """
    lo, hi = cfg.clear_fraction_range
    clouds, scls, z = [], [], 0.0
    for year in years:
        dates = pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
        doy = dates.day_of_year.values.astype(np.float64)
        on = s2_dates[(s2_dates.year == year)]
        idx = ((on.normalize() - dates[0]).days).values
        for _attempt in range(50):
            c, z_end = _cloudiness(rng, doy, cfg, z)
            scl = _cloud_scl(mask_rng, c[idx], _sun_zenith_1030(doy[idx], lat), n, cfg)
            clear = float((scl == 0).mean()) if len(idx) else (lo + hi) / 2
            if lo <= clear <= hi:
                break
        else:
            raise ValueError(
                f"could not draw a weather year with clear fraction in {cfg.clear_fraction_range}; "
                "the range is inconsistent with overcast_prob/clear_sky_prob"
            )
        z = z_end
        clouds.append(c)
        scls.append(scl)
    dates = pd.date_range(f"{years[0]}-01-01", f"{years[-1]}-12-31", freq="D")
    doy = dates.day_of_year.values.astype(np.float64)
    cloud = np.concatenate(clouds)
    season = _season_cos(doy)

    # Temperature: seasonal cycle, a site offset, persistent anomalies; clouds cool summer days and
    # keep winter days mild.
    a = 0.8  # lag-1 day autocorrelation of temperature anomalies
    anom = signal.lfilter([np.sqrt(1 - a**2)], [1.0, -a], rng.standard_normal(len(doy)))
    t_mean = 9.5 + rng.uniform(-1.5, 1.5)  # lowland Central Europe: Jan ~0.5, Jul ~18.5 deg C
    ta = t_mean + 9.0 * season + 3.0 * anom - 2.0 * (cloud - 0.5) * season

    # Rain only on cloudy days; heavier convective rain in summer.
    p_rain = 0.9 * np.clip((cloud - 0.5) / 0.5, 0, 1)
    rain = np.where(rng.random(len(doy)) < p_rain, rng.exponential(5.0 + 3.0 * (season + 1) / 2), 0.0)

    ra, _ = _extraterrestrial_mj(doy, lat)
    sw_mj = 0.75 * ra * (1 - 0.72 * cloud)  # clear-sky 75 % of TOA, overcast ~25 % of clear sky
    pet = np.maximum(0.185 * sw_mj * (ta > 0), 0.0)  # Priestley-Taylor-like, mm d-1

    # Daily water and snow balance: degree-day snow melt, a fast surface layer (radar, soil brightness)
    # and a 150 mm root-zone bucket (GPP water stress).
    swe, m, w = 0.0, 0.3, 0.8
    snow_cover, moist, root = (np.empty(len(doy)) for _ in range(3))
    tau = 3.0 + 4.0 * (1 - (season + 1) / 2)  # surface dries faster in summer
    for i in range(len(doy)):
        solid = rain[i] * min(1.0, max(0.0, (1.5 - ta[i]) / 3.0))  # snow/rain mix from -1.5 to 1.5 deg C
        swe += solid
        liquid = rain[i] - solid
        melt = min(swe, 3.0 * max(ta[i], 0.0))
        swe -= melt
        liquid += melt
        m = 0.1 + (m - 0.1) * np.exp(-1.0 / tau[i])
        m = m + (1 - m) * min(liquid / 15.0, 1.0)
        w = min(1.0, max(0.0, w + (liquid - pet[i] * min(1.0, w / 0.5)) / 150.0))
        snow_cover[i], moist[i], root[i] = min(1.0, swe / 15.0), m, w
    # Vapour pressure deficit from temperature and a relative humidity that is high on cloudy, rainy and
    # winter days (Magnus formula for the saturation pressure); no extra draws, so the rest is unchanged.
    es = 6.1078 * np.exp(17.27 * ta / (ta + 237.3))  # hPa
    rh = np.clip(0.62 + 0.28 * cloud + 0.05 * (rain > 0) - 0.07 * season, 0.35, 0.99)
    weather = _Weather(
        days=_days(dates.values), dates=dates, cloud=cloud, ta=ta, rain=rain, snow_cover=snow_cover,
        soil_moisture=moist, root_zone=root, sw_in=sw_mj * 1e6 / 86400, sw_pot=ra * 1e6 / 86400,
        vpd=es * (1 - rh),
    )
    return weather, np.concatenate(scls) if scls else np.zeros((0, n, n), np.uint8)



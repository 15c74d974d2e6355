"""Flux-tower series (light-use-efficiency GPP, respiration, QC) and FLUXNET2015 DD files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from latentcube.synthetic._tables import _LUE, FLUXNET_DD_COLUMNS, _season_cos
from latentcube.synthetic._vegetation import _canopy
from latentcube.synthetic._weather import _Weather
from latentcube.synthetic.config import WorldConfig

# --------------------------------------------------------------------------------------- flux site


def _flux_series(
    rng: np.random.Generator, veg: str, ph: dict[str, np.ndarray], p: int, weather: _Weather, cfg: WorldConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Daily FLUXNET-like series of the tower pixel ``p`` and its noise-free drivers.

    GPP = eps_max x fAPAR x PAR x f_T x f_W with fAPAR = 0.95 (1 - exp(-0.5 LAI)) from the pixel's
    simulated canopy, PAR = 0.48 SW_IN, f_T a ramp from 0 deg C to T_opt (decline above 30 deg C),
    f_W root-zone wetness / critical wetness. RECO Q10 = 2; NEE = RECO - GPP. QC = fraction of
    measured/good half-hours (k/48); instrument outages lower it and long ones leave -9999 gaps.
    """
    par = _LUE[veg]
    d = weather.days
    g = _canopy(ph, d, [p])[:, 0].astype(np.float64)
    lai = float(ph["lai_max"][p]) * g
    fapar = 0.95 * (1 - np.exp(-0.5 * lai))
    if veg in ("GRA", "CRO"):
        fapar = fapar * (1 - weather.snow_cover)  # snow buries low canopies
    par_mj = 0.48 * weather.sw_in * 86400 / 1e6
    ta = weather.ta
    f_t = np.clip(ta / par["topt"], 0, 1) * np.clip((40.0 - ta) / 10.0, 0, 1)
    f_w = np.clip(weather.root_zone / par["wcrit"], 0, 1)
    gpp = par["eps"] * fapar * par_mj * f_t * f_w
    reco = par["r10"] * 2.0 ** ((ta - 10) / 10) * (0.5 + 0.5 * g)
    nd = len(d)
    rel, add = cfg.gpp_noise
    gpp_obs = gpp * (1 + rel * rng.standard_normal(nd)) + add * rng.standard_normal(nd)
    reco_obs = reco * (1 + 0.08 * rng.standard_normal(nd)) + 0.15 * rng.standard_normal(nd)
    nee_obs = reco - gpp + (0.3 + 0.05 * gpp) * rng.standard_normal(nd)

    # QC: mostly good, lower in winter (stable nights, frost); outages ~1.5 per year of 2-30 days.
    s = (_season_cos(weather.dates.day_of_year.values) + 1) / 2
    good = rng.beta(6 + 6 * s, 2.5)
    missing = rng.random(nd) < cfg.flux_missing_prob
    years = weather.dates.year.values
    for y in np.unique(years):
        iy = np.flatnonzero(years == y)
        for _ in range(rng.poisson(1.5)):
            start, length = int(rng.choice(iy)), int(rng.integers(2, 31))
            sl = slice(start, min(start + length, nd))
            good[sl] = rng.uniform(0, 0.1, len(range(nd)[sl]))
            if length > 14:  # gap filling fails in the middle of long gaps
                missing[start + 7 : min(start + length - 7, nd)] = True
    qc = np.round(np.round(good * 48) / 48, 6)

    df = pd.DataFrame(
        {
            "TA_F": np.round(ta, 3),
            "TA_F_QC": np.round(np.round(rng.beta(20, 1.5, nd) * 48) / 48, 6),
            "SW_IN_POT": np.round(weather.sw_pot, 3),
            "SW_IN_F": np.round(weather.sw_in * (1 + 0.03 * rng.standard_normal(nd)), 3),
            "SW_IN_F_QC": np.round(np.round(rng.beta(20, 1.5, nd) * 48) / 48, 6),
            "VPD_F": np.round(weather.vpd, 3),
            "P_F": np.round(weather.rain, 3),
            "P_F_QC": np.ones(nd),
            "NEE_VUT_REF": np.round(nee_obs, 5),
            "NEE_VUT_REF_QC": qc,
            "RECO_NT_VUT_REF": np.round(reco_obs, 5),
            "GPP_NT_VUT_REF": np.round(gpp_obs, 5),
        },
        index=pd.DatetimeIndex(weather.dates, name="date"),
    )
    df["VPD_F_QC"] = df["TA_F_QC"]  # VPD is computed from TA and humidity: TA's gap-filling quality
    df = df[list(FLUXNET_DD_COLUMNS[1:])]
    df.loc[missing, ["NEE_VUT_REF", "NEE_VUT_REF_QC", "RECO_NT_VUT_REF", "GPP_NT_VUT_REF"]] = np.nan
    drivers = pd.DataFrame(
        {"gpp_true": gpp, "canopy": g, "fapar": fapar, "par_mj": par_mj, "f_t": f_t, "f_w": f_w, "reco_true": reco},
        index=df.index,
    )
    return df, drivers



# -------------------------------------------------------------------------------------------- files


def fluxnet_dd_filename(site_id: str, first_year: int, last_year: int) -> str:
    """FLUXNET2015 daily FULLSET file name, e.g. ``FLX_XS-DB1_FLUXNET2015_FULLSET_DD_2017-2020_beta-3.csv``."""
    return f"FLX_{site_id}_FLUXNET2015_FULLSET_DD_{first_year}-{last_year}_beta-3.csv"


def write_fluxnet_dd(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a daily series as a FLUXNET2015 DD CSV: ``TIMESTAMP`` YYYYMMDD first, -9999 for missing.

    ``df`` has a daily DatetimeIndex (or a ``TIMESTAMP`` column of dates or YYYYMMDD ints) and numeric
    columns in FLUXNET units (GPP/NEE/RECO g C m-2 d-1, TA_F deg C, SW_IN_* W m-2, P_F mm d-1, *_QC
    fraction 0..1). NaN is written as -9999; values are written exactly (shortest round-trip repr).
    """
    out = df.copy()
    if "TIMESTAMP" in out.columns:
        ts = out.pop("TIMESTAMP")
        if not np.issubdtype(np.asarray(ts).dtype, np.datetime64):
            ts = pd.to_datetime(ts.astype(str), format="%Y%m%d")
        index = pd.DatetimeIndex(ts)
    elif isinstance(out.index, pd.DatetimeIndex):
        index = out.index
    else:
        raise ValueError("df needs a DatetimeIndex or a TIMESTAMP column")
    if index.has_duplicates or not index.is_monotonic_increasing:
        raise ValueError("dates must be unique and increasing")
    if (index != index.normalize()).any():
        raise ValueError("daily (DD) files need dates at midnight; got times of day")
    bad = [c for c in out.columns if not pd.api.types.is_numeric_dtype(out[c])]
    if bad:
        raise ValueError(f"non-numeric columns {bad}")
    out = out.reset_index(drop=True)
    out.insert(0, "TIMESTAMP", index.strftime("%Y%m%d").astype(int))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False, na_rep="-9999")
    return path


"""Class codes, hand-set spectra, backscatter, phenology and light-use-efficiency tables, and small helpers."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from latentcube.constants import LANDCOVER_CLASSES
from latentcube.timeutils import days_since

# ------------------------------------------------------------------------------------------ classes

ENF, DBF, GRA, CRO, URB, WAT, BAR = 1, 2, 3, 4, 5, 6, 7
assert LANDCOVER_CLASSES[ENF] == "needleleaf_forest" and LANDCOVER_CLASSES[BAR] == "bare_soil"
_NCLS = 8  # tables below are indexed by class code 1..7; row 0 unused

#: FLUXNET/IGBP vegetation type of a tower -> land-cover class code of its parcel.
VEG_TYPE_CLASS: dict[str, int] = {"ENF": ENF, "DBF": DBF, "GRA": GRA, "CRO": CRO}
_VEG_CODE = {"ENF": "EN", "DBF": "DB", "GRA": "GR", "CRO": "CR"}

# S2 endmember reflectances, bands in S2_BANDS order (B02 B03 B04 B05 B06 B07 B08 B8A B11 B12).
# Canopy: full green cover (chlorophyll well in B04, red-edge rise B05->B07, NIR plateau B08/B8A, leaf
# water absorption lowering B11/B12). Needleleaf canopies are darker in the NIR than broadleaf.
_CANOPY = np.zeros((_NCLS, 10), np.float32)
_CANOPY[ENF] = [0.020, 0.040, 0.020, 0.065, 0.170, 0.220, 0.250, 0.265, 0.120, 0.050]
_CANOPY[DBF] = [0.025, 0.055, 0.028, 0.090, 0.280, 0.370, 0.410, 0.425, 0.190, 0.085]
_CANOPY[GRA] = [0.035, 0.075, 0.040, 0.110, 0.300, 0.380, 0.420, 0.430, 0.230, 0.115]
_CANOPY[CRO] = [0.030, 0.070, 0.030, 0.100, 0.330, 0.440, 0.480, 0.495, 0.220, 0.100]
_CANOPY[URB] = [0.030, 0.065, 0.035, 0.100, 0.290, 0.370, 0.410, 0.425, 0.210, 0.100]  # street trees, lawns
_CANOPY[BAR] = _CANOPY[GRA]  # sparse weeds
# Background seen through gaps: litter/understory (forests; leaf-off twigs and litter for broadleaf),
# soils on the soil line (reflectance rising with wavelength, high SWIR), dark water (NIR/SWIR absorbed),
# bright spectrally flat urban materials.
_BACKGROUND = np.zeros((_NCLS, 10), np.float32)
_BACKGROUND[ENF] = [0.025, 0.040, 0.035, 0.060, 0.120, 0.150, 0.170, 0.180, 0.150, 0.080]
_BACKGROUND[DBF] = [0.040, 0.055, 0.065, 0.080, 0.110, 0.125, 0.140, 0.150, 0.210, 0.150]
_BACKGROUND[GRA] = [0.060, 0.085, 0.100, 0.130, 0.170, 0.190, 0.210, 0.220, 0.300, 0.220]
_BACKGROUND[CRO] = [0.070, 0.095, 0.120, 0.140, 0.155, 0.165, 0.175, 0.182, 0.290, 0.250]
_BACKGROUND[URB] = [0.110, 0.125, 0.135, 0.145, 0.155, 0.160, 0.165, 0.170, 0.200, 0.185]
_BACKGROUND[WAT] = [0.045, 0.050, 0.030, 0.025, 0.018, 0.014, 0.012, 0.011, 0.005, 0.003]
_BACKGROUND[BAR] = [0.090, 0.120, 0.150, 0.170, 0.185, 0.195, 0.205, 0.212, 0.330, 0.290]
#: Fresh snow: bright in the visible/NIR, dark in the SWIR (ice absorption) - NDSI high.
_SNOW = np.array([0.90, 0.90, 0.88, 0.87, 0.86, 0.85, 0.83, 0.82, 0.10, 0.05], np.float32)
_SOIL_BACKGROUND = np.zeros(_NCLS, bool)
_SOIL_BACKGROUND[[GRA, CRO, BAR]] = True  # wet-soil darkening applies to these backgrounds

#: Maximum green leaf area index (m2 m-2) reached at g = 1; urban is scaled by its green fraction.
_LAI_MAX = np.array([0, 4.0, 5.0, 3.5, 5.0, 3.0, 0.0, 1.0], np.float32)
#: Woody area index: stems and branches still scatter C-band when leaves are off.
_WAI = np.array([0, 1.5, 1.2, 0, 0, 0, 0, 0], np.float32)

# Natural phenology (double logistic, day of year): g_min, g_max, start (mid green-up), rise e-fold
# days, end (mid senescence), fall e-fold days. Evergreen nearly flat; broadleaf fully leaf-off.
_PHENO = {
    ENF: (0.82, 0.95, 130.0, 15.0, 285.0, 20.0),
    DBF: (0.00, 0.95, 118.0, 5.0, 290.0, 8.0),
    GRA: (0.35, 0.90, 95.0, 12.0, 300.0, 15.0),
    URB: (0.40, 0.95, 110.0, 8.0, 290.0, 10.0),
    BAR: (0.00, 0.15, 120.0, 10.0, 260.0, 15.0),
}

# S1 C-band gamma0 in dB: canopy volume term (VV, VH), dry-soil term (VV, VH) and the soil's rise from
# dry to saturated (dB at moisture 1). Water is a specular (dark) surface, urban double-bounce (bright).
_S1_VOLUME_DB = np.zeros((_NCLS, 2), np.float32)
_S1_VOLUME_DB[ENF] = [-7.0, -12.5]
_S1_VOLUME_DB[DBF] = [-7.5, -13.0]
_S1_VOLUME_DB[GRA] = [-11.0, -17.0]
_S1_VOLUME_DB[CRO] = [-9.0, -15.0]
_S1_VOLUME_DB[URB] = [-3.0, -10.0]
_S1_VOLUME_DB[WAT] = [-21.0, -28.0]
_S1_VOLUME_DB[BAR] = [-11.0, -17.0]
_S1_SOIL_DRY_DB = np.array([-15.0, -23.0], np.float32)
_S1_SOIL_WET_RISE_DB = np.array([7.0, 6.0], np.float32)
_S1_EXTINCTION = 0.6  # two-way canopy transmissivity gamma^2 = exp(-k (LAI + WAI))

# Light-use efficiency model per tower vegetation type: eps_max (g C per MJ absorbed PAR),
# T_opt (deg C; f_T ramps 0 -> 1 from 0 deg C to T_opt), critical root-zone wetness for f_W,
# reference respiration at 10 deg C (g C m-2 d-1).
_LUE = {
    "DBF": dict(eps=1.30, topt=14.0, wcrit=0.25, r10=2.2),
    "ENF": dict(eps=0.85, topt=12.0, wcrit=0.25, r10=1.8),
    "GRA": dict(eps=1.30, topt=12.0, wcrit=0.40, r10=2.0),
    "CRO": dict(eps=1.60, topt=15.0, wcrit=0.40, r10=1.6),
}

#: Columns of the FLUXNET2015 DD files written, in the order of the real FULLSET files.
FLUXNET_DD_COLUMNS: tuple[str, ...] = (
    "TIMESTAMP", "TA_F", "TA_F_QC", "SW_IN_POT", "SW_IN_F", "SW_IN_F_QC", "VPD_F", "VPD_F_QC", "P_F", "P_F_QC",
    "NEE_VUT_REF", "NEE_VUT_REF_QC", "RECO_NT_VUT_REF", "GPP_NT_VUT_REF",
)

_EPOCH = np.datetime64("1970-01-01", "D")
_S2_TIME_OF_DAY = np.timedelta64(10 * 3600 + 30 * 60, "s")  # descending node, ~10:30 local
_S1_TIME_OF_DAY = np.timedelta64(17 * 3600 + 20 * 60, "s")  # ascending pass over Central Europe



# -------------------------------------------------------------------------------------- utilities


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent stream per (seed, cube, component): adding a cube does not change the others."""
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise, standardised to mean 0 and SD 1 (float32)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return ((f - f.mean()) / (f.std() + 1e-12)).astype(np.float32)


def _days(dates: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 (float64) of datetime64 values."""
    return days_since(dates)


def _doy_to_day(year: int | np.ndarray, doy: np.ndarray | float) -> np.ndarray:
    """Absolute day (since epoch) of a day-of-year (1 = Jan 1) in ``year``."""
    jan1 = (np.asarray(year, np.int64) - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    return (jan1 - _EPOCH).astype(np.float64) + np.asarray(doy, np.float64) - 1.0


def _season_cos(doy: np.ndarray) -> np.ndarray:
    """+1 in mid-July, -1 in mid-January (temperature/cloud seasonality)."""
    return -np.cos(2 * np.pi * (np.asarray(doy, np.float64) - 15.0) / 365.25)


def _extraterrestrial_mj(doy: np.ndarray, lat_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Daily top-of-atmosphere radiation (MJ m-2 d-1) and solar declination (rad), FAO-56 eq. 21-25."""
    phi = np.deg2rad(lat_deg)
    dr = 1 + 0.033 * np.cos(2 * np.pi * doy / 365)
    decl = 0.409 * np.sin(2 * np.pi * doy / 365 - 1.39)
    ws = np.arccos(np.clip(-np.tan(phi) * np.tan(decl), -1, 1))
    ra = 24 * 60 / np.pi * 0.0820 * dr * (ws * np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.sin(ws))
    return ra, decl



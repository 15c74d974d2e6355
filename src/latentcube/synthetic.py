"""A simulated Sentinel-1/Sentinel-2 world with flux towers: the project's embedded default dataset.

:func:`make_world` builds, from one seed, cubes in the data model (``latentcube.cube``) of landscapes in
parcels and patches, their optical and radar time series (phenology, crop calendars, mowing, clouds and
shadows, snow, soil moisture, speckle) and, for flux-tower sites, daily GPP from a light-use-efficiency
model driven by the *same* simulated canopy state. :func:`write_world` writes it as Zarr cubes,
FLUXNET2015 daily (DD) CSV files and ``towers.csv``. docs/synthetic.md gives every parameter and why.

Spectra, backscatter and flux magnitudes are hand-set to typical published values for Central Europe
(C-band gamma0 of water/grass/forest/urban, S2 signatures of vegetation, soil, water, snow; GPP peaks of
flux sites); they are plausible, not fitted to any one place.

This module imports only :mod:`latentcube.constants` and :mod:`latentcube.cube`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS, Transformer
from scipy import ndimage, signal, special, stats
from scipy.spatial import cKDTree

from latentcube.constants import LANDCOVER_CLASSES, S1_BANDS, S2_BANDS
from latentcube.cube import new_cube, save_cube

__all__ = [
    "FLUXNET_DD_COLUMNS",
    "VEG_TYPE_CLASS",
    "World",
    "WorldConfig",
    "fluxnet_dd_filename",
    "make_world",
    "write_fluxnet_dd",
    "write_world",
]

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


# ------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class WorldConfig:
    """Everything that shapes a synthetic world; equal configs give identical worlds."""

    seed: int = 0
    """Seed of every random draw (NumPy ``default_rng`` streams keyed by seed, cube and component)."""
    scene_size: int = 128
    """Side of the square scene cubes in pixels (10 m): 128 px = 1.28 km."""
    n_scenes: int = 3
    """Number of landscape (scene) cubes."""
    scene_years: tuple[int, ...] = (2018, 2019, 2020)
    """Calendar year covered by scene cube i is ``scene_years[i % len(scene_years)]`` (one full year
    each, like the paper's 12-month training cubes)."""
    n_towers: int = 6
    """Number of flux-tower sites, each with its own cube and FLUXNET file."""
    tower_veg_types: tuple[str, ...] = ("DBF", "ENF", "GRA", "CRO")
    """Vegetation types (IGBP) given to the towers in turn."""
    tower_size: int = 32
    """Side of the square tower cubes in pixels; the tower sits at the centre pixel."""
    tower_years: tuple[int, int] = (2017, 2020)
    """First and last calendar year of tower cubes and flux series (year split: 2017-2019 / 2020)."""
    s2_revisit_days: int = 5
    """Sentinel-2 revisit (S2A + S2B) in days."""
    s1_revisit_days: int = 6
    """Sentinel-1 revisit (S1A + S1B, one orbit) in days."""
    clear_fraction_range: tuple[float, float] = (0.25, 0.55)
    """Accepted range of the yearly fraction of cloud- and shadow-free S2 pixel-dates; a weather year
    whose cloud draw falls outside is redrawn (Central Europe: about a third of S2 pixels are clear)."""
    overcast_prob: tuple[float, float] = (0.55, 0.18)
    """Probability that a day is fully overcast, mid-winter and mid-summer (cosine in between)."""
    clear_sky_prob: tuple[float, float] = (0.10, 0.28)
    """Probability that a day is cloud-free, mid-winter and mid-summer."""
    cloud_persistence: float = 0.6
    """Lag-1 day autocorrelation of the latent weather state (weather comes in spells)."""
    cirrus_prob: float = 0.08
    """Probability that a partly cloudy date's clouds are thin cirrus (SCL 10, no shadow)."""
    cloud_height_m: float = 1200.0
    """Cloud height used to displace shadows: offset = height x tan(sun zenith at 10:30)."""
    cloud_scale_px: float = 25.0
    """Gaussian smoothing (pixels) of the cloud field's fine component; a 4x coarser one adds large cells."""
    enl: float = 4.4
    """Equivalent number of looks of S1 RTC speckle: Gamma(shape=ENL, scale=1/ENL) multiplicative."""
    s1_border_nan_prob: float = 0.05
    """Probability that an S1 date has a strip of invalid (NaN) pixels at the west or east edge."""
    crs: str = "EPSG:32632"
    """Projected CRS of all cubes (UTM 32N, Central Europe)."""
    pixel_size_m: float = 10.0
    """Pixel size in metres (north-up grid, y decreasing)."""
    landcover_fractions: tuple[float, ...] = (0.20, 0.20, 0.20, 0.26, 0.05, 0.04, 0.05)
    """Target area fractions of classes 1..7 (needleleaf, broadleaf, grassland, cropland, urban, water,
    bare soil) in scene cubes: the paper's Table I mix (20/20/20/5, others 35 %)."""
    parcel_size_px: float = 18.0
    """Mean spacing of field-parcel seeds in pixels (180 m: 2-4 ha fields)."""
    s2_noise: tuple[float, float] = (0.004, 0.02)
    """S2 per-observation noise: additive reflectance SD and multiplicative relative SD."""
    gpp_noise: tuple[float, float] = (0.08, 0.25)
    """GPP observation noise: relative SD and additive SD (g C m-2 d-1)."""
    flux_missing_prob: float = 0.01
    """Probability of an isolated missing (-9999) flux day, besides long instrument outages."""

    def __post_init__(self) -> None:
        lo, hi = self.clear_fraction_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"clear_fraction_range must satisfy 0 <= lo < hi <= 1, got {self.clear_fraction_range}")
        if self.scene_size < 8 or self.tower_size < 8:
            raise ValueError(f"scene_size and tower_size must be >= 8 px, got {self.scene_size}, {self.tower_size}")
        if self.n_scenes < 0 or self.n_towers < 0 or self.n_scenes + self.n_towers == 0:
            raise ValueError("n_scenes and n_towers must be >= 0 and not both 0")
        if self.n_scenes and not self.scene_years:
            raise ValueError("scene_years is empty")
        if self.tower_years[0] > self.tower_years[1]:
            raise ValueError(f"tower_years must be (first, last), got {self.tower_years}")
        bad = [v for v in self.tower_veg_types if v not in VEG_TYPE_CLASS]
        if bad or not self.tower_veg_types:
            raise ValueError(f"tower_veg_types {bad} not in {sorted(VEG_TYPE_CLASS)}")
        if len(self.landcover_fractions) != len(LANDCOVER_CLASSES) or abs(sum(self.landcover_fractions) - 1) > 1e-6:
            raise ValueError("landcover_fractions needs one fraction per class 1..7, summing to 1")
        if self.enl <= 0 or self.s2_revisit_days < 1 or self.s1_revisit_days < 1:
            raise ValueError("enl, s2_revisit_days and s1_revisit_days must be positive")
        if not CRS.from_user_input(self.crs).is_projected:
            raise ValueError(f"crs {self.crs!r} is not projected; the data model needs metres")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown WorldConfig keys {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class World:
    """A generated world.

    Attributes:
        cubes: cube name -> cube (``latentcube.cube`` data model) with ``landcover`` and ``parcel_id``.
        towers: one row per site: site_id, cube, row, col, x, y (tower pixel centre, CRS metres),
            lat, lon, veg_type (DBF/ENF/GRA/CRO), landcover (class code), landcover_name.
        gpp: site_id -> daily DataFrame (DatetimeIndex ``date``) with the FLUXNET DD columns
            (:data:`FLUXNET_DD_COLUMNS` less TIMESTAMP), NaN where missing.
        config: the :class:`WorldConfig` used.
        truth: only with ``keep_truth=True``: cube name -> noise-free state (canopy cover and S1
            backscatter on the acquisition dates, crop calendars, daily weather).
    """

    cubes: dict[str, xr.Dataset]
    towers: pd.DataFrame
    gpp: dict[str, pd.DataFrame]
    config: WorldConfig
    truth: dict[str, xr.Dataset] | None = field(default=None, repr=False)


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
    return (dates.astype("datetime64[s]") - _EPOCH).astype("timedelta64[s]").astype(np.float64) / 86400.0


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


# ------------------------------------------------------------------------------------- land cover


def _landcover(rng: np.random.Generator, n: int, cfg: WorldConfig, site_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Land cover (uint8 class codes) and parcel ids (int32) of an n x n grid.

    Fields and meadows are (anisotropic) Voronoi parcels, forests smooth-noise patches split into
    needle/broadleaf stands, water a meandering river or a lake, urban compact blobs. Tower cubes get a
    homogeneous stand/field of ``site_class`` around the centre pixel.
    """
    fr = np.asarray(cfg.landcover_fractions, np.float64)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    lc = np.zeros((n, n), np.uint8)

    # Water: river across the scene (2/3 of worlds) or a lake; width set to give the water fraction.
    if rng.random() < 0.67:
        amp, wl, ph = rng.uniform(0.05, 0.15) * n, rng.uniform(0.8, 1.6) * n, rng.uniform(0, 2 * np.pi)
        along, across = (xx, yy) if rng.random() < 0.5 else (yy, xx)  # flows west-east or north-south
        centre = rng.uniform(0.25, 0.75) * n + amp * np.sin(2 * np.pi * along / wl + ph) + 2.0 * _smooth(rng, (n, n), n / 8)
        water = np.abs(across - centre) < max(1.0, fr[WAT - 1] * n / 2)
    else:
        f = _smooth(rng, (n, n), n / 10) + 2.5 * np.exp(
            -(((yy - rng.uniform(0.2, 0.8) * n) ** 2 + (xx - rng.uniform(0.2, 0.8) * n) ** 2) / (0.15 * n) ** 2)
        )
        water = f > np.quantile(f, 1 - fr[WAT - 1])
    lc[water] = WAT

    # Forest patches: two-scale smooth noise thresholded to the forest share of the whole area.
    land = ~water
    ff = _smooth(rng, (n, n), 7.0) + 0.7 * _smooth(rng, (n, n), 20.0)
    forest_share = (fr[ENF - 1] + fr[DBF - 1]) / land.mean()
    forest = land & (ff >= np.quantile(ff[land], 1 - min(forest_share, 1.0)))
    ft = _smooth(rng, (n, n), 12.0)  # large stands of one leaf type
    needle = forest & (ft >= np.quantile(ft[forest], 1 - fr[ENF - 1] / (fr[ENF - 1] + fr[DBF - 1]))) if forest.any() else forest
    lc[forest & needle] = ENF
    lc[forest & ~needle] = DBF

    # Urban blobs (villages) in the remaining open land.
    open_ = lc == 0
    uf = _smooth(rng, (n, n), 4.0) + 1.2 * _smooth(rng, (n, n), 15.0)
    if open_.any():
        share = min(fr[URB - 1] / max(open_.mean(), 1e-6), 1.0)
        lc[open_ & (uf >= np.quantile(uf[open_], 1 - share))] = URB

    # Field parcels: jittered grid seeds, anisotropic distance (elongated fields), one class per parcel.
    step = cfg.parcel_size_px
    g = np.arange(step / 2, n + step, step) - step / 2
    sy, sx = np.meshgrid(g, g, indexing="ij")
    seeds = np.stack([sy.ravel(), sx.ravel()], 1) + rng.uniform(-0.4, 0.4, (sy.size, 2)) * step
    stretch = rng.uniform(1.4, 2.2)
    tree = cKDTree(seeds * [stretch, 1.0])
    pid = tree.query(np.stack([yy.ravel() * stretch, xx.ravel()], 1))[1].reshape(n, n).astype(np.int32)
    # Classes by largest remaining area deficit, parcels in random order: the scene's mix follows
    # the target fractions closely even with few parcels, and neighbours stay independent.
    open_ = lc == 0
    area = np.bincount(pid[open_], minlength=len(seeds)).astype(np.float64)
    cls3 = np.array([GRA, CRO, BAR])
    p_open = fr[cls3 - 1]
    deficit = p_open / p_open.sum() * area.sum()
    parcel_class = np.zeros(len(seeds), np.uint8)
    for k in rng.permutation(len(seeds)):
        j = int(np.argmax(deficit + rng.uniform(0, 1e-3, 3)))
        parcel_class[k] = cls3[j]
        deficit[j] -= area[k]
    lc[open_] = parcel_class[pid[open_]]

    if site_class is not None:  # homogeneous site stand/field centred on the tower pixel
        c = n // 2
        ang = rng.uniform(0, np.pi)
        u = (yy - c) * np.cos(ang) + (xx - c) * np.sin(ang)
        v = -(yy - c) * np.sin(ang) + (xx - c) * np.cos(ang)
        if site_class in (CRO, GRA):
            site = (np.abs(u) <= max(3.0, 0.30 * n)) & (np.abs(v) <= max(3.0, 0.20 * n))
        else:
            r = np.hypot(u, v) / (1 + 0.15 * _smooth(rng, (n, n), 3.0))
            site = r <= max(3.0, 0.32 * n)
        lc[site] = site_class
        pid[site] = len(seeds)

    # Parcel ids: Voronoi cells for fields/meadows/bare, connected patches elsewhere (unique per unit).
    out = np.where(np.isin(lc, [GRA, CRO, BAR]), pid, -1).astype(np.int32)
    nxt = int(pid.max()) + 1
    for cls in (ENF, DBF, URB, WAT):
        lab, k = ndimage.label(lc == cls)
        m = lab > 0
        out[m] = lab[m] + nxt - 1
        nxt += k
    # Renumber 0..K-1 in raster order for stable, compact ids.
    _, inv = np.unique(out, return_inverse=True)
    return lc, inv.reshape(n, n).astype(np.int32)


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


# ----------------------------------------------------------------------------------------- builder


def _acq_dates(rng: np.random.Generator, years: list[int], step: int, tod: np.timedelta64) -> pd.DatetimeIndex:
    start = np.datetime64(f"{years[0]}-01-01") + np.timedelta64(int(rng.integers(0, step)), "D")
    end = np.datetime64(f"{years[-1]}-12-31")
    d = np.arange(start, end + np.timedelta64(1, "D"), np.timedelta64(step, "D"))
    return pd.DatetimeIndex(d.astype("datetime64[s]") + tod)


def _locations(seed: int, k: int, crs: CRS) -> list[tuple[float, float]]:
    """Upper-left corners (x, y) of k cubes in Central Europe, at least 50 km apart (like the paper)."""
    rng = _rng(seed, 999)
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    pts: list[tuple[float, float]] = []
    tries = 0
    while len(pts) < k:
        lon, lat = rng.uniform(6.0, 13.0), rng.uniform(46.5, 51.0)
        x, y = to_utm.transform(lon, lat)
        tries += 1
        min_sep = 50_000 if tries < 5_000 else 2_000  # many cubes: the region fills up, relax
        if all(np.hypot(x - a, y - b) >= min_sep for a, b in pts):
            pts.append((float(np.round(x, -1)), float(np.round(y, -1))))
    return pts


def _build(
    cfg: WorldConfig, index: int, name: str, years: list[int], n: int, origin: tuple[float, float],
    veg: str | None, site_id: str | None, keep_truth: bool,
) -> tuple[xr.Dataset, xr.Dataset | None, dict[str, Any] | None, pd.DataFrame | None]:
    crs = CRS.from_user_input(cfg.crs)
    px = cfg.pixel_size_m
    x = origin[0] + px / 2 + px * np.arange(n)
    y = origin[1] - px / 2 - px * np.arange(n)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x.mean(), y.mean())

    site_class = VEG_TYPE_CLASS[veg] if veg else None
    lc, pid = _landcover(_rng(cfg.seed, index, 1), n, cfg, site_class)
    s2_t = _acq_dates(_rng(cfg.seed, index, 2), years, cfg.s2_revisit_days, _S2_TIME_OF_DAY)
    s1_t = _acq_dates(_rng(cfg.seed, index, 3), years, cfg.s1_revisit_days, _S1_TIME_OF_DAY)
    weather, cloud_scl = _weather(_rng(cfg.seed, index, 4), years, lat, cfg, s2_t, n, _rng(cfg.seed, index, 5))
    ph = _phenology(_rng(cfg.seed, index, 6), lc, pid, years, weather)

    wet_px = np.clip(1 + 0.25 * _smooth(_rng(cfg.seed, index, 7), (n, n), 12.0), 0.5, 1.5)  # wetter hollows
    day0 = weather.dates[0]
    i2 = (s2_t.normalize() - day0).days.values
    i1 = (s1_t.normalize() - day0).days.values
    m2 = np.clip(weather.soil_moisture[i2][:, None, None] * wet_px, 0, 1).astype(np.float32)
    m1 = np.clip(weather.soil_moisture[i1][:, None, None] * wet_px, 0, 1).astype(np.float32)
    s2, scl, fc = _s2(_rng(cfg.seed, index, 8), ph, lc, _days(s2_t.values), i2, weather, cloud_scl, m2, cfg)
    s1, s1_clean = _s1(_rng(cfg.seed, index, 9), ph, lc, _days(s1_t.values), m1, cfg)

    attrs = {
        "source": "latentcube.synthetic",
        "seed": int(cfg.seed),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "title": f"latentcube synthetic {'tower' if veg else 'scene'} cube {name}",
        "cube_kind": "tower" if veg else "scene",
        "center_lat": float(lat),
        "center_lon": float(lon),
    }
    if site_id:
        attrs.update({"site_id": site_id, "veg_type": veg})
    ds = new_cube(
        s2=s2, time=s2_t, y=y, x=x, crs=crs, bands=S2_BANDS, s1=s1, time_s1=s1_t, s2_scl=scl,
        layers={"landcover": lc.astype(np.uint8), "parcel_id": pid.astype(np.int32)}, attrs=attrs,
    )
    ds["landcover"].attrs.update(
        {"long_name": "land-cover class", "flag_values": list(LANDCOVER_CLASSES),
         "flag_meanings": " ".join(LANDCOVER_CLASSES.values())}
    )
    ds["parcel_id"].attrs["long_name"] = "management unit (field, stand, patch) id"
    ds["s2_scl"].attrs["long_name"] = "scene classification (ESA L2A SCL codes)"

    tower, flux = None, None
    if veg:
        r = c = n // 2
        p = r * n + c
        flux, drivers = _flux_series(_rng(cfg.seed, index, 10), veg, ph, p, weather, cfg)
        tower = {
            "site_id": site_id, "cube": name, "row": r, "col": c, "x": float(x[c]), "y": float(y[r]),
            "lat": float(lat), "lon": float(lon), "veg_type": veg, "landcover": int(lc[r, c]),
            "landcover_name": LANDCOVER_CLASSES[int(lc[r, c])],
        }
    truth = None
    if keep_truth:
        seasons = pd.Index(ph["seasons"], name="season")

        def _dt(a: np.ndarray) -> np.ndarray:
            out = np.full(a.shape, np.datetime64("NaT"), "datetime64[ns]")
            ok = np.isfinite(a)
            out[ok] = (_EPOCH + np.round(a[ok]).astype("timedelta64[D]")).astype("datetime64[ns]")
            return out

        cal = {
            k: (("season", "y", "x"), _dt(ph["crop_" + k]).reshape(len(seasons), n, n))
            for k in ("sow", "greenup", "senesc", "harvest")
        }
        truth = xr.Dataset(
            {
                "canopy_cover": (("time", "y", "x"), fc),
                "s1_clean": (("time_s1", "band_s1", "y", "x"), s1_clean),
                "crop_type": (("season", "y", "x"), ph["crop_type"].reshape(len(seasons), n, n)),
                **cal,
                "cloudiness": ("day", weather.cloud),
                "ta": ("day", weather.ta),
                "rain": ("day", weather.rain),
                "snow_cover": ("day", weather.snow_cover),
                "soil_moisture": ("day", weather.soil_moisture),
                "root_zone": ("day", weather.root_zone),
                "sw_in": ("day", weather.sw_in),
            },
            coords={"time": ds.time, "time_s1": ds.time_s1, "band_s1": list(S1_BANDS), "y": y, "x": x,
                    "season": seasons, "day": weather.dates},
        )
        truth["crop_type"].attrs["flag_meanings"] = "none winter_cereal spring_cereal maize"
        truth["mowing"] = (("year", "cut", "y", "x"), _dt(ph["mow"]).reshape(len(years), 3, n, n))
        truth = truth.assign_coords(year=list(years), cut=[1, 2, 3])
        if veg:
            for col in drivers.columns:
                truth["tower_" + col] = ("day", drivers[col].values)
    return ds, truth, tower, flux


def make_world(
    seed: int | None = None, *, config: WorldConfig | None = None, keep_truth: bool = False, **overrides: Any
) -> World:
    """Generate a synthetic world, deterministic from its configuration.

    Args:
        seed: seed of all random draws; ``None`` keeps ``config.seed`` (default 0).
        config: a :class:`WorldConfig`; defaults to ``WorldConfig()`` (3 scenes of 128 px over one year
            each, 6 tower cubes of 32 px over 2017-2020; a few seconds on 2 CPU cores).
        keep_truth: also return the noise-free state in ``World.truth`` (tests, diagnostics).
        **overrides: :class:`WorldConfig` fields to replace, e.g. ``scene_size=64``.

    Returns:
        A :class:`World`. Cube names: ``scene_000``... and ``tower_<SITE>``; site ids ``XS-DB1``...
    """
    cfg = config or WorldConfig()
    if seed is not None:
        overrides["seed"] = seed
    if overrides:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(WorldConfig)})
        if unknown:
            raise TypeError(f"unknown WorldConfig fields {unknown}")
        cfg = dataclasses.replace(cfg, **overrides)
    crs = CRS.from_user_input(cfg.crs)
    # Towers take the first locations so that adding scenes leaves the tower cubes unchanged.
    origins = _locations(cfg.seed, cfg.n_towers + cfg.n_scenes, crs)
    jobs = []  # (cube name, site id or None, _build arguments); each cube draws from its own random streams
    for i in range(cfg.n_scenes):
        jobs.append((f"scene_{i:03d}", None, (cfg, i, f"scene_{i:03d}", [cfg.scene_years[i % len(cfg.scene_years)]],
                                        cfg.scene_size, origins[cfg.n_towers + i], None, None, keep_truth)))
    counters: dict[str, int] = {}
    years = list(range(cfg.tower_years[0], cfg.tower_years[1] + 1))
    for j in range(cfg.n_towers):
        veg = cfg.tower_veg_types[j % len(cfg.tower_veg_types)]
        counters[veg] = counters.get(veg, 0) + 1
        site = f"XS-{_VEG_CODE[veg]}{counters[veg]}"
        # index 1000 + j: tower streams independent of the number of scenes
        jobs.append((f"tower_{site}", site, (cfg, 1000 + j, f"tower_{site}", years, cfg.tower_size, origins[j], veg, site,
                                       keep_truth)))
    # Cubes are independent: threads overlap the NumPy/SciPy work that releases the GIL (benchmarks/RESULTS.md);
    # the result does not depend on the order they finish in.
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1) or 1) as pool:
        built = list(pool.map(lambda job: _build(*job[2]), jobs))
    cubes: dict[str, xr.Dataset] = {}
    truths: dict[str, xr.Dataset] = {}
    rows, gpp = [], {}
    for (name, site, _), (ds, tr, row, flux) in zip(jobs, built, strict=True):
        cubes[name] = ds
        if tr is not None:
            truths[name] = tr
        if site is not None:
            rows.append(row)
            gpp[site] = flux
    towers = pd.DataFrame(
        rows, columns=["site_id", "cube", "row", "col", "x", "y", "lat", "lon", "veg_type", "landcover", "landcover_name"]
    )
    return World(cubes=cubes, towers=towers, gpp=gpp, config=cfg, truth=truths if keep_truth else None)


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


def write_world(world: World, out_dir: str | Path, *, overwrite: bool = True) -> dict[str, Path]:
    """Write a world: ``<out_dir>/<cube>.zarr``, ``fluxnet/FLX_*_DD_*.csv``, ``towers.csv``, ``world.json``.

    Returns a flat dict: cube name -> Zarr path, ``"fluxnet/<site_id>"`` -> CSV path, ``"towers"`` and
    ``"config"`` -> their paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, ds in world.cubes.items():
        paths[name] = save_cube(ds, out_dir / f"{name}.zarr", overwrite=overwrite)
    y0, y1 = world.config.tower_years
    for site, df in world.gpp.items():
        paths[f"fluxnet/{site}"] = write_fluxnet_dd(df, out_dir / "fluxnet" / fluxnet_dd_filename(site, y0, y1))
    paths["towers"] = out_dir / "towers.csv"
    world.towers.to_csv(paths["towers"], index=False)
    paths["config"] = out_dir / "world.json"
    paths["config"].write_text(json.dumps(world.config.to_dict(), indent=2, sort_keys=True) + "\n")
    return paths

"""The world's settings (:class:`WorldConfig`) and what :func:`make_world` returns (:class:`World`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import xarray as xr
from pyproj import CRS

from latentcube.constants import LANDCOVER_CLASSES
from latentcube.synthetic._tables import VEG_TYPE_CLASS

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



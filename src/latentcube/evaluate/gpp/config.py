"""Settings of the GPP evaluation, method and protocol names, and its error class."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from latentcube.errors import LatentcubeError

#: The paper's methods in report order: the per-date embeddings first, then the baselines (a)-(d).
PAPER_METHODS: tuple[str, ...] = ("embedding", "bands", "ndvi", "annual_embedding", "climatology")
#: With meteorological drivers from the tower file (``GPPConfig.meteo``): drivers alone and beside each input.
METEO_METHODS: tuple[str, ...] = ("meteo", "embedding_meteo", "bands_meteo", "ndvi_meteo")
#: What the demo compares: do the embeddings add to the weather (and beat the calendar)?
DEMO_METHODS: tuple[str, ...] = ("embedding", "climatology", "meteo", "embedding_meteo", "bands_meteo", "ndvi_meteo")
#: Every method in report order.
METHODS: tuple[str, ...] = PAPER_METHODS + METEO_METHODS
BASELINE_METHODS: tuple[str, ...] = METHODS[1:]
METHOD_LABELS: dict[str, str] = {
    "embedding": "per-date embeddings",
    "bands": "(a) raw S1+S2 bands",
    "ndvi": "(b) NDVI only",
    "annual_embedding": "(c) annual embedding",
    "climatology": "(d) day-of-year climatology",
    "meteo": "meteo only",
    "embedding_meteo": "embeddings + meteo",
    "bands_meteo": "raw bands + meteo",
    "ndvi_meteo": "NDVI + meteo",
}
#: Meteorological drivers the tower file can give (names of latentcube.sources.fluxnet.METEO_COLUMNS).
METEO_DRIVERS: tuple[str, ...] = ("sw_in", "ta", "vpd")
PROTOCOLS: tuple[str, ...] = ("year", "loso")
PROTOCOL_LABELS = {"year": "year split", "loso": "leave-one-site-out"}
#: Encoder halo in pixels (15 x 15 patches): the crop must carry this much real context around the
#: footprint so that its embeddings equal the whole-cube embeddings.
DEFAULT_HALO_PX = 7
#: Site-plan land-cover names (latentcube.sources.sites) -> IGBP vegetation type used in the tables.
LANDCOVER_TO_VEG = {"needleleaf_forest": "ENF", "broadleaf_forest": "DBF", "grassland": "GRA", "cropland": "CRO"}
CACHE_VERSION = 1


class GPPError(LatentcubeError, ValueError):
    """The GPP evaluation cannot run as asked; the message says what is wrong and how to fix it."""


class GPPWarning(UserWarning):
    """The GPP evaluation ran, but its setup makes the results say little (one site, no early-stopping
    split, few scored days); the message says what and what to add."""


def _years(years: tuple[int, ...] | list[int]) -> str:
    """Years as the CLI takes them: ``2019,2020``."""
    return ",".join(str(y) for y in years)


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class GPPConfig:
    """Settings of the GPP evaluation (defaults: the paper's protocol, a CPU-sized regressor)."""

    radius_px: int = 3
    """Footprint half-width in pixels: the site mean covers (2r+1)^2 pixels (3 -> 7 x 7 px = 70 m at 10 m;
    why in docs/gpp.md)."""
    weights: str = "uniform"
    """Footprint weights over the (2r+1)^2 pixels: ``"uniform"`` or ``"gaussian"`` (isotropic, ``sigma_px``)."""
    sigma_px: float | None = None
    """Gaussian footprint SD in pixels (default radius/2)."""
    min_valid_fraction: float = 0.5
    """A date's site mean is NaN when the valid pixels carry less than this fraction of the weight."""
    sensors: tuple[str, ...] = ("fused",)
    """Embeddings of a fusion model fed to the regressor (``fused``; ``s1``/``s2`` for per-sensor ones)."""
    max_gap_days: int = 60
    """Linear interpolation to daily only across gaps of at most this many days between valid dates;
    days inside longer gaps (and before the first / after the last valid date) stay NaN."""
    window_days: int = 90
    """Input window length in days (paper: 90)."""
    stride_days: int = 10
    """Step between training window starts in days (paper: 10)."""
    eval_stride_days: int = 1
    """Step between the windows whose predictions are averaged per day at evaluation. 1 = a window starts
    on every day, so each day is predicted at every position of the window (and of the 10-day token),
    which removes the token-phase saw-tooth that windows aligned to the token length leave."""
    sweep_windows: tuple[int, ...] = ()
    """Extra window lengths (e.g. 60, 75, 90, 105, 120 as in the paper) scored on the year split with the
    per-date embeddings; empty = no sweep."""
    train_years: tuple[int, ...] = (2017, 2018, 2019)
    """Year split: calendar years whose GPP days train (paper: 2017-2019)."""
    test_years: tuple[int, ...] = (2020,)
    """Year split: calendar years whose GPP days are scored (paper: 2020)."""
    protocols: tuple[str, ...] = PROTOCOLS
    """``"year"`` and/or ``"loso"`` (leave-one-site-out over all years)."""
    methods: tuple[str, ...] | None = None
    """Subset of :data:`METHODS`; ``embedding`` is always run. None: the paper's five
    (:data:`PAPER_METHODS`), plus :data:`METEO_METHODS` when ``meteo`` is set."""
    meteo: tuple[str, ...] = ()
    """Daily meteorological drivers read from the tower file (``sw_in``, ``ta``, ``vpd``: incoming shortwave,
    air temperature, vapour pressure deficit), given to the ``*_meteo`` methods; empty = none (the paper)."""
    flux_columns: str | None = None
    """Column names of the tower files: a preset (``fluxnet2015``, ``eth``, ``reddyproc``) and/or
    ``key=column`` items, e.g. ``"eth,ta=TA_T1_47_1"`` (see :func:`latentcube.sources.fluxnet.read_fluxnet`);
    None = FLUXNET2015 names."""
    min_qc_fraction: float = 0.7
    """FLUXNET day filter (paper): NEE_VUT_REF_QC >= 0.7 ..."""
    min_gpp: float = 0.0
    """... and GPP >= 0 (g C m-2 d-1); other days are not trained on and not scored."""
    climatology_smooth_days: int = 15
    """Width of the circular moving average smoothing the day-of-year climatology (days)."""
    climatology_by: str = "veg_type"
    """Climatology groups: ``"veg_type"`` (mean over training sites of the same type; all sites when the
    type has none) or ``"all"``."""
    patch_days: int = 10
    """Days per Transformer token: the linear input layer maps patch_days x features to one token and the
    head gives patch_days daily values. Daily inputs are interpolated between S2 dates (valid dates are
    ~15 days apart on average with clouds), so daily tokens would mostly repeat interpolated values;
    10-day tokens make training ~10x cheaper. Must divide the window lengths."""
    d_model: int = 32
    n_heads: int = 4
    n_layers: int = 4
    ffn_dim: int = 64
    dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 40
    patience: int = 5
    """Early stopping: stop after this many epochs without a better validation MAE; keep the best."""
    es_fraction: float = 0.2
    """Share of the training (site, year) pairs held out as the early-stopping validation part."""
    min_target_days: int = 5
    """A window joins a fit (or early-stopping) set when it has at least this many target days there."""
    doy_features: bool = False
    """Also give every regressor sin/cos of the day of year (off in the paper's setup; a diagnostic that
    shows what the satellite inputs add beyond the season)."""
    seed: int = 0
    device: str | None = None
    """``"cuda"``/``"cpu"``; default CUDA when available."""
    n_jobs: int | None = None
    """Regressor fits run in parallel in this many processes (one torch thread each); default: the CPU
    count (at most 4) on CPU, 1 with a GPU. 1 = in this process."""

    def __post_init__(self) -> None:
        if self.radius_px < 0:
            raise GPPError(f"radius_px={self.radius_px}: use a radius >= 0 pixels (0 = the tower pixel).")
        if self.weights not in ("uniform", "gaussian"):
            raise GPPError(f"weights={self.weights!r}: use 'uniform' or 'gaussian'.")
        if not 0 < self.min_valid_fraction <= 1:
            raise GPPError(f"min_valid_fraction={self.min_valid_fraction}: use a value in (0, 1].")
        bad = [m for m in self.methods or () if m not in METHODS]
        if bad:
            raise GPPError(f"unknown methods {bad}. Fix: choose from {list(METHODS)}.")
        badm = [m for m in self.meteo if m not in METEO_DRIVERS]
        if badm:
            raise GPPError(f"unknown meteorological drivers {badm}. Fix: choose from {list(METEO_DRIVERS)}.")
        need = [m for m in self.methods or () if m in METEO_METHODS]
        if need and not self.meteo:
            raise GPPError(f"methods {need} need meteorological drivers. Fix: meteo=('sw_in', 'ta', 'vpd') "
                           "(CLI: --meteo sw_in,ta,vpd).")
        badp = [p for p in self.protocols if p not in PROTOCOLS]
        if badp or not self.protocols:
            raise GPPError(f"unknown protocols {badp or 'none'}. Fix: choose from {list(PROTOCOLS)}, e.g. --protocols "
                           "year,loso (Python: GPPConfig(protocols=('year', 'loso'))).")
        for w in (self.window_days, *self.sweep_windows):
            if w < self.patch_days or w % self.patch_days:
                raise GPPError(f"window length {w} d is not a multiple of patch_days={self.patch_days}. "
                               "Fix: use e.g. 60, 70, ..., 120 with patch_days 10 (or patch_days=1 or 5).")
        if self.stride_days < 1 or self.eval_stride_days < 1 or self.max_gap_days < 1:
            raise GPPError("stride_days, eval_stride_days and max_gap_days must be >= 1 day.")
        both = sorted(set(self.train_years) & set(self.test_years))
        if both:
            rest = [y for y in self.train_years if y not in both]
            eg = (f"--train-years {_years(rest)} --test-years {_years(self.test_years)}" if rest else
                  f"--train-years {_years(self.train_years)} --test-years {max(self.train_years) + 1}")
            raise GPPError(f"training years {_years(self.train_years)} and test years {_years(self.test_years)} overlap "
                           f"({_years(both)}): a day cannot both train and score. Fix: disjoint years, e.g. {eg} "
                           "(Python: GPPConfig(train_years=..., test_years=...)).")
        if self.climatology_by not in ("veg_type", "all"):
            raise GPPError(f"climatology_by={self.climatology_by!r}: use 'veg_type' or 'all'.")
        if self.d_model % self.n_heads:
            raise GPPError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}.")

    @property
    def run_methods(self) -> list[str]:
        """The methods this config runs, in report order, ``embedding`` first."""
        chosen = self.methods if self.methods is not None else PAPER_METHODS + (METEO_METHODS if self.meteo else ())
        return ["embedding", *[m for m in METHODS[1:] if m in chosen]]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GPPConfig:
        """Inverse of ``asdict``; unknown keys are an error (lists become tuples)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise GPPError(f"unknown GPPConfig keys {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})



"""Daily GPP at flux towers from embedding series: the paper's downstream test (§IV-C) with baselines.

Pipeline (docs/gpp.md)::

    site cube --crop (tower ± radius + 7 px halo)--> embed_cube --> embeddings of the footprint pixels
      --site mean (NaN-aware, optional footprint weights)--> series on the S2 dates
      --linear interpolation to daily (max-gap rule)--> daily features
      --90-day windows, stride 10--> Transformer regressor (sequence to sequence: every day of a window)
      --overlapping predictions averaged per day--> daily GPP --> RMSE, R², NRMSE per site / type / all

Every method is scored on the same days: per-date embeddings, (a) raw S1+S2 bands, (b) NDVI only,
(c) annual embeddings (per pixel and calendar year), (d) day-of-year climatology; protocols: year split
and leave-one-site-out. :func:`evaluate_gpp` runs all of it and writes the report section.

Modules: ``config`` (settings, names, the error), ``series`` (footprint means, daily interpolation,
windows, climatology, metrics), ``sites`` (site tables, FLUXNET files, site inputs), ``regressor``,
``protocols`` (folds, jobs, scores), ``report`` (figures, report section), ``run`` (:func:`evaluate_gpp`).
"""


from latentcube.evaluate.gpp.config import (
    BASELINE_METHODS,
    DEMO_METHODS,
    METEO_DRIVERS,
    METEO_METHODS,
    METHOD_LABELS,
    METHODS,
    PAPER_METHODS,
    PROTOCOL_LABELS,
    PROTOCOLS,
    GPPConfig,
    GPPError,
    GPPWarning,
)
from latentcube.evaluate.gpp.regressor import fit_regressor, predict_daily
from latentcube.evaluate.gpp.run import evaluate_gpp
from latentcube.evaluate.gpp.series import (
    crop_window,
    doy_climatology,
    doy_index,
    footprint_weights,
    make_windows,
    metrics,
    nrmse,
    r2,
    rmse,
    site_mean,
    to_daily,
    window_starts,
)
from latentcube.evaluate.gpp.sites import SiteData, embed_site, load_site_data, read_sites

__all__ = [
    "BASELINE_METHODS",
    "DEMO_METHODS",
    "METEO_DRIVERS",
    "METEO_METHODS",
    "GPPConfig",
    "GPPError",
    "GPPWarning",
    "METHODS",
    "METHOD_LABELS",
    "PROTOCOLS",
    "PAPER_METHODS",
    "PROTOCOL_LABELS",
    "SiteData",
    "crop_window",
    "doy_climatology",
    "doy_index",
    "embed_site",
    "evaluate_gpp",
    "fit_regressor",
    "footprint_weights",
    "load_site_data",
    "make_windows",
    "metrics",
    "nrmse",
    "predict_daily",
    "r2",
    "read_sites",
    "rmse",
    "site_mean",
    "to_daily",
    "window_starts",
]

"""Probe: how much class information do the embeddings carry, next to the raw bands and a linear code
of the same size?

``run_probe(embedding, cube)`` takes every labelled pixel of a label raster in the cube (``landcover``
in the synthetic world; any integer ``(y, x)`` layer of a user's cube, e.g. WorldCereal ``LC``/``CT``)
and builds feature sets ``<source>_<protocol>`` on the *same* pixels and dates:

sources
    ``embedding`` (the chosen feature group), ``raw`` (the raw bands of the group's sensors: S2
    reflectance, S1 VV/VH in dB), ``pca`` (PCA-k of the model's inputs, k = the embedding's size,
    fitted on the training cube or the probed one; ``_pca``).
protocols (``_aggregate``)
    ``date`` (one date), ``seasonal`` (NaN-median per date window, default three equal thirds of the
    probe period), ``series`` (all dates), ``mean`` (annual NaN-mean).

Each set is scored by logistic regression and k-NN with the same spatially blocked folds
(``StratifiedGroupKFold`` over square blocks of ``block_px`` pixels); ``seeds`` repeats over CV
shuffles or over models trained with each seed (mean ± sd). Modules: ``_inputs`` (stores, labels,
pixels, per-date bands), ``_aggregate``, ``_pca``, ``_features`` (aligned feature sets), ``_cv`` (folds,
scores, seeds), ``_report`` (files and report section). docs/evaluation.md describes the protocols.
"""

from latentcube.evaluate.probe._aggregate import (
    PROTOCOLS,
    aggregate,
    equal_windows,
    parse_windows,
    window_members,
)
from latentcube.evaluate.probe._cv import (
    CLASSIFIERS,
    METRICS,
    make_classifier,
    parse_seeds,
    ratios,
    run_probe,
    seeded_embeddings,
)
from latentcube.evaluate.probe._features import (
    DEFAULT_FEATURE_SETS,
    DEFAULT_SEASON,
    DEFAULT_WINDOWS,
    FEATURE_SETS,
    SOURCES,
    ProbeData,
    probe_features,
)
from latentcube.evaluate.probe._inputs import (
    ProbeError,
    StoreSettings,
    block_offset,
    model_inputs,
    open_embedding_store,
    spatial_blocks,
)
from latentcube.evaluate.probe._pca import PCACode, fit_pca_code
from latentcube.evaluate.probe._report import feature_title, write_probe_report

__all__ = [
    "CLASSIFIERS",
    "DEFAULT_FEATURE_SETS",
    "DEFAULT_SEASON",
    "DEFAULT_WINDOWS",
    "FEATURE_SETS",
    "METRICS",
    "PROTOCOLS",
    "SOURCES",
    "PCACode",
    "ProbeData",
    "ProbeError",
    "StoreSettings",
    "aggregate",
    "block_offset",
    "equal_windows",
    "feature_title",
    "fit_pca_code",
    "make_classifier",
    "model_inputs",
    "open_embedding_store",
    "parse_seeds",
    "parse_windows",
    "probe_features",
    "ratios",
    "run_probe",
    "seeded_embeddings",
    "spatial_blocks",
    "window_members",
    "write_probe_report",
]

"""Blocked cross-validation of the feature sets, and repeats over seeds (CV shuffles, or models
trained with different seeds)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.evaluate.probe._features import DEFAULT_FEATURE_SETS, ProbeData, _check_sets, probe_features
from latentcube.evaluate.probe._inputs import ProbeError, block_offset, spatial_blocks

#: Fold seed of CV shuffle r of seed s: s + r * CV_REPEAT_OFFSET (r = 0: the seed itself).
CV_REPEAT_OFFSET = 1000

#: Classifiers scored on every feature set.
CLASSIFIERS: tuple[str, ...] = ("logreg", "knn")
#: Metrics (scikit-learn functions) reported per fold.
METRICS: tuple[str, ...] = ("balanced_accuracy", "macro_f1", "accuracy")


def make_classifier(name: str, *, n_neighbors: int = 10, seed: int = 0):
    """A scikit-learn pipeline: standardisation, then ``"logreg"`` (multinomial logistic regression,
    L2, C = 1) or ``"knn"`` (k-nearest neighbours, Euclidean in standardised units)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    if name == "knn":
        return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=n_neighbors))
    raise ProbeError(f"unknown classifier {name!r}; choose from {list(CLASSIFIERS)}.")


def _folds(data: ProbeData, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Blocked folds for ``seed``: the block grid shifted by :func:`block_offset`, then
    ``StratifiedGroupKFold`` shuffled by the seed."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = spatial_blocks(data.rows, data.cols, data.block_px, block_offset(seed, data.block_px))
    n_groups = np.unique(groups).size
    if folds < 2:
        raise ProbeError(f"folds must be >= 2, got {folds}.")
    if n_groups < folds:
        raise ProbeError(f"only {n_groups} spatial blocks hold labelled pixels, fewer than folds={folds}. "
                         "Fix: use a smaller block_px or fewer folds.")
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        return list(cv.split(np.zeros(data.y.size), data.y, groups))


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from one fold's test side is expected with blocks
        return {
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
            "accuracy": float(accuracy_score(y_true, y_pred)),
        }


def _cross_validate(data: ProbeData, splits: list, feature_sets: Sequence[str], classifiers: Sequence[str],
                    n_neighbors: int, seed: int) -> dict[tuple[str, str, str], list[float]]:
    """Per (features, classifier, metric), the per-fold values."""
    out: dict[tuple[str, str, str], list[float]] = {}
    # One BLAS thread: these fits are small, and a multi-threaded BLAS on a busy machine made logistic
    # regression several times slower (benchmarks/RESULTS.md).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        for fs in feature_sets:
            X = data.X[fs]
            for clf_name in classifiers:
                for train, test in splits:
                    clf = make_classifier(clf_name, n_neighbors=n_neighbors, seed=seed)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", category=UserWarning)
                        clf.fit(X[train], data.y[train])
                    for m, v in _scores(data.y[test], clf.predict(X[test])).items():
                        out.setdefault((fs, clf_name, m), []).append(v)
    return out


def seeded_embeddings(embedding: Any, seeds: Sequence[int]) -> dict[int, Any] | None:
    """Per-seed embedding stores, or ``None`` when ``embedding`` is one store (then seeds repeat the CV).

    Accepts a mapping ``{seed: store}``, a path holding ``{seed}`` (``runs/seed{seed}/emb.zarr``), or a
    run directory whose ``seed<N>`` sub-folders are embedding stores or hold exactly one (``*.zarr``
    with an ``embedding`` variable, searched recursively).
    """
    if isinstance(embedding, (xr.Dataset, xr.DataArray)):  # a Dataset is a Mapping too: one store
        return None
    if isinstance(embedding, Mapping):
        missing = [s for s in seeds if s not in embedding]
        if missing:
            raise ProbeError(f"no embedding given for seeds {missing} (have {sorted(embedding)}).")
        return {s: embedding[s] for s in seeds}
    if isinstance(embedding, (str, Path)) and "{seed}" in str(embedding):
        return {s: Path(str(embedding).format(seed=s)) for s in seeds}
    if isinstance(embedding, (str, Path)) and Path(embedding).is_dir() and not (Path(embedding) / "embedding").exists():
        root = Path(embedding)
        found = {}
        for s in seeds:
            folder = root / f"seed{s}"
            if not folder.is_dir():
                raise ProbeError(f"{root} holds no embedding store and no folder seed{s}/. Fix: pass an embedding store, "
                                 "a path with {seed}, or a run directory with seed<N>/ folders.")
            stores = [folder] if (folder / "embedding").exists() else sorted(
                p for p in folder.rglob("*.zarr") if (p / "embedding").exists())
            if len(stores) != 1:
                raise ProbeError(f"{folder} holds {len(stores)} embedding stores ({[str(p) for p in stores]}); expected one. "
                                 "Fix: pass a path with {seed}, e.g. RUN/seed{seed}/emb.zarr.")
            found[s] = stores[0]
        return found
    return None


def run_probe(
    embedding: str | Path | xr.Dataset | xr.DataArray | Mapping[int, Any],
    cube: str | Path | xr.Dataset,
    *,
    labels: str = "landcover",
    date: Any = None,
    block_px: int = 16,
    folds: int = 5,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    feature_sets: Sequence[str] = DEFAULT_FEATURE_SETS,
    classifiers: Sequence[str] = CLASSIFIERS,
    n_neighbors: int = 10,
    run_dir: str | Path | None = None,
    data: ProbeData | None = None,
    cv_repeats: int = 1,
    **feature_kwargs: Any,
) -> pd.DataFrame:
    """Blocked cross-validated probe of an embedding cube against the raw bands and the PCA code.

    Args:
        embedding, cube, labels, date, block_px: see :func:`probe_features` (``feature_kwargs`` passes
            its other options: ``year``, ``season``, ``windows``, ``embedding_features``, ``nodata``,
            ``min_samples``, ``max_pixels``, ``max_gap_days``, ``pca_fit``, ``pca_spatial_split``).
        folds: number of :class:`~sklearn.model_selection.StratifiedGroupKFold` folds (groups = blocks).
        seed: seed of the folds and the pixel subset (one run).
        seeds: repeat over these seeds and report mean ± sd over them. Each seed shifts the block grid
            (:func:`block_offset`; none for seed 0) and shuffles the folds. With one embedding store the
            pixels stay those of the first seed; with one store per seed (a mapping, a
            path with ``{seed}`` or a run directory of ``seed<N>/`` folders, see
            :func:`seeded_embeddings`) seed ``s`` probes model ``s`` with folds shuffled by ``s``.
        feature_sets: which of :data:`FEATURE_SETS` to score.
        classifiers: which of :data:`CLASSIFIERS` to score.
        n_neighbors: k of the k-NN classifier.
        run_dir: when given, writes ``run_dir/evaluation/probe/probe.json`` (+ ``probe.csv``,
            ``probe.png``) and the report section ``probe`` (order 70).
        data: precomputed :func:`probe_features` output (one run; the input arguments are then unused).
        cv_repeats: CV shuffles per seed (block grid and folds of seed ``s + r * CV_REPEAT_OFFSET``,
            r = 0..cv_repeats-1), averaged into that seed's score: on a small area one draw of blocks
            moves balanced accuracy by several points (docs/evaluation.md).

    Returns:
        A tidy table, one row per (feature set, classifier, metric): ``features``, ``classifier``,
        ``metric``, ``mean``, ``std``, ``spread`` (``"folds"``: sd over the folds of one run, ddof 0;
        ``"seeds"``: sd over the seeds' fold means, ddof 1; ``"cv_repeats"``: one seed, sd over its
        shuffles' fold means, ddof 1), ``per_seed`` (fold mean per seed, averaged over its shuffles),
        ``folds`` (every fold value), ``n_features``, ``n_pixels``, ``n_classes``, ``date``. Metrics are
        fractions in 0..1. ``table.attrs["probe"]`` holds the settings (dates, windows, pixels, classes...).
    """
    _check_sets(feature_sets)
    for c in classifiers:
        make_classifier(c)  # validates the name
    seed_list = [int(seed)] if seeds is None else [int(s) for s in seeds]
    if not seed_list:
        raise ProbeError("seeds is empty. Fix: pass e.g. seeds=(0, 1, 2).")
    if int(cv_repeats) < 1:
        raise ProbeError(f"cv_repeats must be >= 1, got {cv_repeats}. Fix: pass 1 (one CV draw per seed) or more.")
    per_model = seeded_embeddings(embedding, seed_list) if seeds is not None and data is None else None
    if per_model is None and not isinstance(embedding, (str, Path, xr.Dataset, xr.DataArray)) and data is None:
        raise ProbeError("a mapping of embeddings per seed needs seeds=. Fix: pass seeds=(0, 1, 2).")
    results: dict[tuple[str, str, str], list[list[list[float]]]] = {}  # key -> seed -> shuffle -> folds
    first: ProbeData | None = None
    for i, s in enumerate(seed_list):
        if data is not None:
            data_s = data
        elif per_model is not None:
            data_s = probe_features(per_model[s], cube, labels=labels, date=date, block_px=block_px, seed=s,
                                    feature_sets=feature_sets, **feature_kwargs)
        elif i == 0:  # one embedding: the same pixels for every seed, only the folds reshuffle
            data_s = probe_features(embedding, cube, labels=labels, date=date, block_px=block_px, seed=s,
                                    feature_sets=feature_sets, **feature_kwargs)
        first = first or data_s
        shuffles: dict[tuple[str, str, str], list[list[float]]] = {}
        for fold_seed in range(s, s + int(cv_repeats) * CV_REPEAT_OFFSET, CV_REPEAT_OFFSET):
            splits = _folds(data_s, folds, fold_seed)
            for key, vals in _cross_validate(data_s, splits, feature_sets, classifiers, n_neighbors, fold_seed).items():
                shuffles.setdefault(key, []).append(vals)
        for key, reps in shuffles.items():
            results.setdefault(key, []).append(reps)
    rows = []
    for (fs, clf, m), runs in results.items():
        draw_means = [np.array([np.mean(v) for v in reps]) for reps in runs]  # per seed, per CV draw
        means = np.array([d.mean() for d in draw_means])
        if len(runs) > 1:
            std, spread = float(means.std(ddof=1)), "seeds"
        elif len(draw_means[0]) > 1:
            std, spread = float(draw_means[0].std(ddof=1)), "cv_repeats"
        else:
            std, spread = float(np.std(runs[0][0])), "folds"
        rows.append({
            "features": fs, "classifier": clf, "metric": m, "mean": float(means.mean()), "std": std, "spread": spread,
            "per_seed": means.tolist(), "folds": [v for reps in runs for r in reps for v in r],
            "n_features": int(first.X[fs].shape[1]),
            "n_pixels": int(first.y.size), "n_classes": int(np.unique(first.y).size), "date": str(first.date.date()),
        })
    table = pd.DataFrame(rows)
    table.attrs["probe"] = _settings(first, labels, block_px, folds, seed_list, n_neighbors,
                                     "models" if per_model is not None else "cv", int(cv_repeats))
    if run_dir is not None:
        from latentcube.evaluate.probe._report import write_probe_report

        write_probe_report(table, run_dir)
    return table


def _settings(data: ProbeData, labels: str, block_px: int, folds: int, seeds: list[int], n_neighbors: int,
              seeds_over: str, cv_repeats: int = 1) -> dict[str, Any]:
    codes, counts = np.unique(data.y, return_counts=True)
    return {
        "labels": labels, "date": str(data.date.date()),
        "raw_s2_date": str(data.raw_date.date()) if data.raw_date is not None else None,
        "raw_s1_date": str(data.s1_date.date()) if data.s1_date is not None else None, "year": data.year,
        "n_period_dates": data.n_period_dates, "block_px": block_px, "folds": folds, "seed": seeds[0], "seeds": seeds,
        "seeds_over": {"cv": "cross-validation shuffles (one embedding)", "models": "models trained with each seed"}[seeds_over]
        if len(seeds) > 1 else None,
        "cv_repeats": cv_repeats,
        "n_neighbors": n_neighbors, "n_pixels": int(data.y.size), "n_labelled": data.n_labelled,
        "n_invalid_dropped": data.n_invalid, "n_blocks": int(np.unique(data.groups).size),
        "classes": {data.class_names[int(c)]: int(n) for c, n in zip(codes, counts, strict=True)},
        "dropped_classes": {str(k): v for k, v in data.dropped_classes.items()},
        "embedding_features": data.embedding_features, "raw_bands": data.raw_bands,
        "windows": [{"start": a, "end": b, "dates": n} for a, b, n in data.windows], "pca": data.pca,
        "series_nan_fill": "each pixel's missing dates filled with its own mean over the probe year (per feature)",
        "seasonal_nan_fill": "a window with no valid date takes the pixel's median over the whole period (per feature)",
    }


def ratios(table: pd.DataFrame, metric: str = "balanced_accuracy", *, numerator: str = "embedding_date",
           denominator: str = "raw_date") -> dict[str, float]:
    """Per classifier, ``mean(numerator) / mean(denominator)`` of ``metric`` (e.g. one date's embedding
    against the raw bands of the same date)."""
    sub = table[table["metric"] == metric].set_index(["features", "classifier"])["mean"]
    out = {}
    for clf in table["classifier"].unique():
        if (numerator, clf) in sub.index and (denominator, clf) in sub.index:
            out[str(clf)] = float(sub[(numerator, clf)] / sub[(denominator, clf)])
    return out


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (``None`` or empty: ``None``)."""
    if not text:
        return None
    try:
        return [int(s) for s in re.split(r"[,\s]+", text.strip()) if s]
    except ValueError as err:
        raise ProbeError(f"seeds {text!r}: expected comma-separated integers, e.g. 0,1,2.") from err

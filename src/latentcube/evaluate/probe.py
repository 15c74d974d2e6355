"""Land-cover probe: how much class information do the embeddings carry, next to the raw bands?

``run_probe(embedding, cube)`` takes every labelled pixel of a label raster in the cube (``landcover``
in the synthetic world; any integer ``(y, x)`` layer of a user's cube, e.g. WorldCereal ``LC``/``CT``)
and builds five feature sets on the *same* pixels:

==================== =====================================================================================
``embedding_date``   the embedding of one date (default: the clearest date of the growing season)
``embedding_series`` all dates' embeddings of the probe year, concatenated; a pixel's missing (NaN) dates
                     are filled with that pixel's own mean over its valid dates (per feature), pixels with
                     no valid date are dropped
``embedding_mean``   the annual mean embedding (NaN-aware mean over the probe year: what yearly products give)
``raw_date``         the raw bands of the same date: 10 S2 reflectances + S1 VV/VH in dB (the nearest S1
                     acquisition within ``max_gap_days``, unsmoothed) = "the raw 12 bands"
``raw_mean``         the annual mean of the raw bands (S2 reflectance mean; S1 mean in linear power, in dB)
==================== =====================================================================================

and scores two classifiers on each, with the same spatially blocked folds for all of them:
logistic regression and k-nearest neighbours, both after standardisation (scikit-learn pipelines).
Pixels are grouped into square blocks of ``block_px`` pixels and the folds are
:class:`sklearn.model_selection.StratifiedGroupKFold` over the blocks, so no block contributes to both
the training and the test side of a fold (neighbouring pixels of one field are strongly correlated; a
random split would mostly measure that). Metrics (scikit-learn): balanced accuracy, macro F1 and
accuracy, mean ± standard deviation over folds.

The probe year is the calendar year with the most embedding dates (or ``year=``, or the year of
``date=``); the growing season is the months ``season`` (default April–September).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.constants import LANDCOVER_CLASSES
from latentcube.cube import CubeError, open_cube
from latentcube.errors import LatentcubeError

__all__ = [
    "CLASSIFIERS",
    "FEATURE_SETS",
    "ProbeData",
    "ProbeError",
    "make_classifier",
    "probe_features",
    "ratios",
    "run_probe",
    "spatial_blocks",
    "write_probe_report",
]

#: Feature sets in report order (see the module docstring).
FEATURE_SETS: tuple[str, ...] = ("embedding_date", "embedding_series", "embedding_mean", "raw_date", "raw_mean")
#: Classifiers scored on every feature set.
CLASSIFIERS: tuple[str, ...] = ("logreg", "knn")
#: Metrics (scikit-learn functions) reported per fold.
METRICS: tuple[str, ...] = ("balanced_accuracy", "macro_f1", "accuracy")
#: Default growing season, months inclusive (northern hemisphere).
DEFAULT_SEASON: tuple[int, int] = (4, 9)


class ProbeError(LatentcubeError, ValueError):
    """The embedding, the cube or the options cannot give a probe; the message says why and how to fix it."""


@dataclass
class ProbeData:
    """The probe's inputs: one row per labelled pixel, aligned across all feature sets.

    ``X[name]`` is ``(n_pixels, n_features)`` float32 without NaN; ``y`` the class codes, ``groups`` the
    spatial block of each pixel, ``rows``/``cols`` its position in the cube.
    """

    X: dict[str, np.ndarray]
    y: np.ndarray
    groups: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    date: pd.Timestamp
    raw_date: pd.Timestamp
    s1_date: pd.Timestamp | None
    year: int
    n_period_dates: int
    class_names: dict[int, str]
    dropped_classes: dict[int, int] = field(default_factory=dict)
    n_labelled: int = 0
    n_invalid: int = 0
    embedding_features: list[str] = field(default_factory=list)
    raw_bands: list[str] = field(default_factory=list)
    valid_fraction: float = float("nan")


# ------------------------------------------------------------------------------------------ inputs


def _open_embedding(embedding: str | Path | xr.Dataset | xr.DataArray) -> xr.DataArray:
    if isinstance(embedding, xr.DataArray):
        da = embedding
    elif isinstance(embedding, (str, Path)):
        from latentcube.embed import EmbedError, open_embedding

        path = Path(embedding)
        if not path.exists():
            raise FileNotFoundError(f"no such embedding cube: {path}. Fix: run `latentcube embed CUBE ... --out {path}`.")
        try:
            da = open_embedding(path)  # float32 whatever the storage (float16, int8 x scale)
        except EmbedError as err:
            raise ProbeError(str(err)) from err
    else:
        if "embedding" not in embedding:
            raise ProbeError(f"the dataset has no 'embedding' variable (it has {sorted(embedding.data_vars)}); "
                             "Fix: pass the output of `latentcube embed`.")
        da = embedding["embedding"]
        if "embedding_scale" in embedding:  # int8 storage: codes x per-pixel scale (latentcube.embed.open_embedding)
            da = (da.astype("float32") * embedding["embedding_scale"].astype("float32")).transpose(*da.dims)
    if tuple(da.dims) != ("time", "feature", "y", "x"):
        raise ProbeError(f"embedding dims are {da.dims}, expected ('time', 'feature', 'y', 'x') (latentcube embed output).")
    return da


def _select_features(da: xr.DataArray, which: str | Sequence[str] | None) -> xr.DataArray:
    """The embedding's features to probe: a group prefix (``fused``, ``s2``...), explicit names, or by
    default the first group, so that a ``fused,s1,s2`` store is probed on the fused embedding alone."""
    names = [str(f) for f in da["feature"].values]
    groups = list(dict.fromkeys(n.rsplit("_", 1)[0] for n in names))
    if which is None:
        which = groups[0]
    if isinstance(which, str):
        chosen = [n for n in names if n.rsplit("_", 1)[0] == which]
        if not chosen:
            raise ProbeError(f"embedding features {which!r}: none in this store; its groups are {groups}.")
    else:
        chosen = list(which)
        missing = [n for n in chosen if n not in names]
        if missing:
            raise ProbeError(f"embedding features {missing} not in the store (it has {names}).")
    return da.sel(feature=chosen)


def _same_grid(a: xr.DataArray, ds: xr.Dataset) -> None:
    for dim in ("y", "x"):
        if a.sizes[dim] != ds.sizes[dim] or not np.allclose(a[dim].values, ds[dim].values, rtol=0, atol=1e-6):
            raise ProbeError(
                f"the embedding and the cube are on different grids (along {dim}: {a.sizes[dim]} vs {ds.sizes[dim]} "
                "pixels or different coordinates). Fix: probe the cube the embedding was computed from."
            )


def _label_names(ds: xr.Dataset, labels: str, codes: Sequence[int]) -> dict[int, str]:
    """Class names: CF ``flag_values``/``flag_meanings`` when the layer has them, the synthetic world's
    classes for its ``landcover`` layer, else the codes themselves."""
    attrs = ds[labels].attrs
    if "flag_values" in attrs and "flag_meanings" in attrs:
        vals = np.atleast_1d(attrs["flag_values"]).tolist()
        means = str(attrs["flag_meanings"]).split()
        table = {int(v): m for v, m in zip(vals, means, strict=False)}
        return {int(c): table.get(int(c), str(c)) for c in codes}
    if labels == "landcover" and str(ds.attrs.get("source", "")).startswith("latentcube.synthetic"):
        return {int(c): LANDCOVER_CLASSES.get(int(c), str(c)) for c in codes}
    return {int(c): str(int(c)) for c in codes}


def _read_labels(ds: xr.Dataset, labels: str, nodata: Sequence[int] | None) -> tuple[np.ndarray, tuple[int, ...]]:
    if labels not in ds.data_vars:
        layers = [str(n) for n, v in ds.data_vars.items() if v.dims == ("y", "x")]
        raise ProbeError(
            f"the cube has no label layer {labels!r}; its (y, x) layers are {layers}. Fix: pass --labels NAME, or import "
            "a label raster with `latentcube import ... --layer landcover=labels.nc:LC`."
        )
    lab = ds[labels]
    if lab.dims != ("y", "x"):
        raise ProbeError(f"label layer {labels!r} has dims {lab.dims}; a label raster must be (y, x).")
    values = np.asarray(lab.values)
    if not np.issubdtype(values.dtype, np.integer):
        finite = values[np.isfinite(values)]
        if finite.size and not np.all(finite == np.round(finite)):
            raise ProbeError(f"label layer {labels!r} holds non-integer values ({values.dtype}); a probe needs class codes.")
        values = np.where(np.isfinite(values), values, 0).astype("int64")
    ignore = {0} if nodata is None else {int(v) for v in nodata}
    for key in ("_FillValue", "missing_value", "nodata", "NoData"):
        if key in lab.attrs and nodata is None:
            ignore.update(int(v) for v in np.atleast_1d(lab.attrs[key]))
        if key in lab.encoding and nodata is None:
            ignore.update(int(v) for v in np.atleast_1d(lab.encoding[key]) if np.isfinite(v))
    return values.astype("int64"), tuple(sorted(ignore))


def spatial_blocks(rows: np.ndarray, cols: np.ndarray, block_px: int) -> np.ndarray:
    """Block id of each pixel: square blocks of ``block_px`` pixels, numbered row-major from the
    grid origin (the groups of the blocked cross-validation)."""
    if block_px < 1:
        raise ProbeError(f"block_px must be a positive number of pixels, got {block_px}.")
    rows, cols = np.asarray(rows), np.asarray(cols)
    n_cols = int(cols.max()) // block_px + 1 if cols.size else 1
    return (rows // block_px) * n_cols + cols // block_px


def _pick(da: xr.DataArray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values at the given pixels, ``(..., n_pixels)``: pointwise (vectorised) indexing, so only the
    needed chunks are read from a lazy store."""
    sel = da.isel(y=xr.DataArray(rows, dims="pixel"), x=xr.DataArray(cols, dims="pixel"))
    return np.asarray(sel.values, dtype="float32")


def _nearest(times: np.ndarray, t: np.datetime64, max_gap_days: float) -> int | None:
    gaps = np.abs((pd.DatetimeIndex(times) - pd.Timestamp(t)).total_seconds().values) / 86400.0
    if gaps.size == 0:
        return None
    i = int(np.argmin(gaps))
    return i if gaps[i] <= max_gap_days + 1e-9 else None


def _to_db(linear: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10.0 * np.log10(linear)
    return np.where(np.isfinite(db), db, np.nan).astype("float32")


def _series_filled(series: np.ndarray) -> np.ndarray:
    """``(T, F, n)`` -> ``(n, T*F)`` with each pixel's NaN dates filled by its own mean per feature."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: mean NaN, dropped later
        mean = np.nanmean(series, axis=0, keepdims=True)
    filled = np.where(np.isfinite(series), series, mean)
    return filled.transpose(2, 0, 1).reshape(series.shape[2], -1)


def probe_features(
    embedding: str | Path | xr.Dataset | xr.DataArray,
    cube: str | Path | xr.Dataset,
    *,
    labels: str = "landcover",
    date: Any = None,
    year: int | None = None,
    season: tuple[int, int] = DEFAULT_SEASON,
    block_px: int = 16,
    embedding_features: str | Sequence[str] | None = None,
    nodata: Sequence[int] | None = None,
    min_samples: int = 20,
    max_pixels: int | None = 20_000,
    max_gap_days: float = 6.0,
    seed: int = 0,
) -> ProbeData:
    """Features of every labelled pixel for the five feature sets (module docstring), aligned.

    Args:
        embedding: an embedding cube (Zarr path or dataset with ``embedding (time, feature, y, x)``).
        cube: the cube it was computed from (path or dataset): raw bands and the label layer.
        labels: the ``(y, x)`` integer layer holding class codes.
        date: the date of ``embedding_date``/``raw_date`` (anything ``pandas.Timestamp`` reads; the
            nearest embedding date is used). Default: the date of the probe year's growing season with
            the largest fraction of labelled pixels valid in both the embedding and all raw bands.
        year: the probe year (series and annual means). Default: the year of ``date``, else the
            calendar year with the most embedding dates.
        season: first and last month (inclusive) of the growing season for the default date;
            ``(10, 3)`` wraps over the new year.
        block_px: edge of the spatial cross-validation blocks in pixels (10 m pixels: 16 px = 160 m).
        embedding_features: feature group (``"fused"``, ``"s2"``...) or names; default the first group.
        nodata: label codes to ignore; default 0 and the layer's ``_FillValue``/``nodata`` attributes.
        min_samples: classes with fewer labelled pixels, or present in fewer than 2 blocks, are dropped
            (with a warning).
        max_pixels: at most this many labelled pixels are used (a seeded random subset, every class
            keeping its share); ``None`` = all.
        max_gap_days: largest gap in days between the probe date and the S1 acquisition (and S2 date,
            when the embedding's dates are not the cube's S2 dates) that is still "the same date".
        seed: seed of the subset.

    Returns:
        :class:`ProbeData`; the pixels are those labelled and finite in every feature set.
    """
    emb = _select_features(_open_embedding(embedding), embedding_features)
    ds = open_cube(cube) if isinstance(cube, (str, Path)) else cube
    if "s2" not in ds:
        raise CubeError("the cube has no 's2' variable; the raw-band features need Sentinel-2. Fix: pass the cube the "
                        "embedding was computed from.")
    _same_grid(emb, ds)
    lab, ignore = _read_labels(ds, labels, nodata)

    # -- labelled pixels, rare classes, subset
    rows, cols = np.nonzero(~np.isin(lab, ignore))
    y = lab[rows, cols]
    n_labelled = int(y.size)
    if n_labelled == 0:
        raise ProbeError(f"label layer {labels!r} has no labelled pixel (codes {list(ignore)} are ignored as nodata).")
    groups = spatial_blocks(rows, cols, block_px)
    frame = pd.DataFrame({"y": y, "g": groups})
    counts = frame.groupby("y").size()
    n_blocks = frame.groupby("y")["g"].nunique()
    rare = sorted(int(c) for c in counts.index if counts[c] < min_samples or n_blocks[c] < 2)
    dropped = {c: int(counts[c]) for c in rare}
    if rare:
        warnings.warn(
            f"probe: dropped classes {dropped} (code: labelled pixels) with fewer than {min_samples} pixels or in fewer "
            f"than 2 blocks of {block_px} px; lower min_samples or block_px to keep them.", stacklevel=2,
        )
    keep = ~np.isin(y, rare)
    rows, cols, y, groups = rows[keep], cols[keep], y[keep], groups[keep]
    if np.unique(y).size < 2:
        raise ProbeError(f"label layer {labels!r}: fewer than 2 classes left after dropping rare ones ({dropped}); "
                         "a probe needs at least two classes.")
    if max_pixels is not None and y.size > max_pixels:
        from sklearn.model_selection import train_test_split

        idx, _ = train_test_split(np.arange(y.size), train_size=max_pixels, stratify=y, random_state=seed)
        idx = np.sort(idx)
        rows, cols, y, groups = rows[idx], cols[idx], y[idx], groups[idx]

    # -- probe year and period
    etimes = pd.DatetimeIndex(emb["time"].values)
    if date is not None:
        want = pd.Timestamp(date)
        t_emb = _nearest(etimes.values, np.datetime64(want), np.inf)
        if t_emb is None or abs((etimes[t_emb] - want).days) > max(max_gap_days, 1):
            raise ProbeError(f"no embedding date near {want.date()} (the store has {etimes[0].date()} .. {etimes[-1].date()}). "
                             "Fix: choose a date inside that range.")
        year = etimes[t_emb].year if year is None else year
    if year is None:
        year = int(pd.Series(etimes.year).value_counts().sort_index().idxmax())
    in_year = np.flatnonzero(etimes.year == year)
    if in_year.size == 0:
        raise ProbeError(f"no embedding date in {year} (the store covers {etimes[0].date()} .. {etimes[-1].date()}).")

    # -- raw bands
    s2_times = ds["time"].values
    s2_bands = [str(b) for b in ds["band"].values]
    has_s1 = "s1" in ds and ds.sizes.get("time_s1", 0) > 0
    s1_bands = [str(b) for b in ds["band_s1"].values] if has_s1 else []
    emb_all = _pick(emb, rows, cols)  # (T, F, n)
    s2_all = _pick(ds["s2"], rows, cols)  # (T2, B, n)
    s1_all = _pick(ds["s1"], rows, cols) if has_s1 else None  # (T1, 2, n) linear power

    def raw_at(t_e: int) -> tuple[np.ndarray | None, int | None, int | None]:
        t2 = _nearest(s2_times, etimes.values[t_e], max_gap_days)
        if t2 is None:
            return None, None, None
        parts = [s2_all[t2]]
        t1 = None
        if has_s1:
            t1 = _nearest(ds["time_s1"].values, s2_times[t2], max_gap_days)
            if t1 is None:
                return None, t2, None
            parts.append(_to_db(s1_all[t1]))
        return np.concatenate(parts, axis=0), t2, t1  # (B, n)

    # -- the probe date: clearest in the season (valid in the embedding and in every raw band)
    if date is None:
        months = etimes.month[in_year]
        lo, hi = season
        in_season = (months >= lo) & (months <= hi) if lo <= hi else (months >= lo) | (months <= hi)
        candidates = in_year[in_season] if in_season.any() else in_year
        fractions = []
        for t_e in candidates:
            raw, _, _ = raw_at(t_e)
            ok = np.isfinite(emb_all[t_e]).all(0)
            ok &= np.isfinite(raw).all(0) if raw is not None else False
            fractions.append(float(ok.mean()))
        t_emb = int(candidates[int(np.argmax(fractions))])  # first on ties
        if max(fractions) == 0:
            raise ProbeError(f"no date of {year} has a labelled pixel valid in the embedding and the raw bands. "
                             "Fix: check the S1 coverage (raw bands need S1 within max_gap_days) or pass date=.")
    raw_date, t2, t1 = raw_at(t_emb)
    if raw_date is None:
        what = "S2 date" if t2 is None else "S1 acquisition"
        raise ProbeError(f"no {what} within {max_gap_days:g} days of {etimes[t_emb].date()}; the raw-band features need one. "
                         "Fix: pass another date.")

    # -- feature sets
    period = emb_all[in_year]  # (Ty, F, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels -> NaN -> dropped below
        emb_mean = np.nanmean(period, axis=0).T
        s2_year = np.flatnonzero(pd.DatetimeIndex(s2_times).year == year)
        raw_mean_parts = [np.nanmean(s2_all[s2_year], axis=0)]
        if has_s1:
            s1_year = np.flatnonzero(pd.DatetimeIndex(ds["time_s1"].values).year == year)
            raw_mean_parts.append(_to_db(np.nanmean(s1_all[s1_year], axis=0)))
    X = {
        "embedding_date": emb_all[t_emb].T,
        "embedding_series": _series_filled(period),
        "embedding_mean": emb_mean,
        "raw_date": raw_date.T,
        "raw_mean": np.concatenate(raw_mean_parts, axis=0).T,
    }
    ok = np.ones(y.size, bool)
    for v in X.values():
        ok &= np.isfinite(v).all(1)
    n_invalid = int((~ok).sum())
    if not ok.any():
        raise ProbeError(f"no labelled pixel is valid in every feature set on {etimes[t_emb].date()}. Fix: pass another date.")
    X = {k: np.ascontiguousarray(v[ok], dtype="float32") for k, v in X.items()}
    rows, cols, y, groups = rows[ok], cols[ok], y[ok], groups[ok]
    codes = np.unique(y)
    return ProbeData(
        X=X, y=y, groups=groups, rows=rows, cols=cols,
        date=etimes[t_emb], raw_date=pd.Timestamp(s2_times[t2]),
        s1_date=pd.Timestamp(ds["time_s1"].values[t1]) if t1 is not None else None,
        year=int(year), n_period_dates=int(in_year.size), class_names=_label_names(ds, labels, codes),
        dropped_classes=dropped, n_labelled=n_labelled, n_invalid=n_invalid,
        embedding_features=[str(f) for f in emb["feature"].values],
        raw_bands=s2_bands + [f"{b}_dB" for b in s1_bands], valid_fraction=float(ok.mean()),
    )


# ---------------------------------------------------------------------------------- classifiers


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
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = np.unique(data.groups).size
    if folds < 2:
        raise ProbeError(f"folds must be >= 2, got {folds}.")
    if n_groups < folds:
        raise ProbeError(f"only {n_groups} spatial blocks hold labelled pixels, fewer than folds={folds}. "
                         "Fix: use a smaller block_px or fewer folds.")
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        return list(cv.split(np.zeros(data.y.size), data.y, data.groups))


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from one fold's test side is expected with blocks
        return {
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
            "accuracy": float(accuracy_score(y_true, y_pred)),
        }


def run_probe(
    embedding: str | Path | xr.Dataset | xr.DataArray,
    cube: str | Path | xr.Dataset,
    *,
    labels: str = "landcover",
    date: Any = None,
    block_px: int = 16,
    folds: int = 5,
    seed: int = 0,
    feature_sets: Sequence[str] = FEATURE_SETS,
    classifiers: Sequence[str] = CLASSIFIERS,
    n_neighbors: int = 10,
    run_dir: str | Path | None = None,
    data: ProbeData | None = None,
    **feature_kwargs: Any,
) -> pd.DataFrame:
    """Blocked cross-validated land-cover probe of an embedding cube against the raw bands.

    Args:
        embedding, cube, labels, date, block_px, seed: see :func:`probe_features` (``feature_kwargs``
            passes its other options: ``year``, ``season``, ``embedding_features``, ``nodata``,
            ``min_samples``, ``max_pixels``, ``max_gap_days``).
        folds: number of :class:`~sklearn.model_selection.StratifiedGroupKFold` folds (groups = blocks).
        feature_sets: which of :data:`FEATURE_SETS` to score.
        classifiers: which of :data:`CLASSIFIERS` to score.
        n_neighbors: k of the k-NN classifier.
        run_dir: when given, writes ``run_dir/evaluation/probe/probe.json`` (+ ``probe.csv``,
            ``probe.png``) and the report section ``probe`` (order 70).
        data: precomputed :func:`probe_features` output (the other input arguments are then unused).

    Returns:
        A tidy table, one row per (feature set, classifier, metric): ``features``, ``classifier``,
        ``metric``, ``mean``, ``std`` (over folds, ddof 0), ``folds`` (list of per-fold values),
        ``n_features``, ``n_pixels``, ``n_classes``, ``date``. Metrics are fractions in 0..1.
        ``table.attrs["probe"]`` holds the probe's settings (date, year, pixels, classes...).
    """
    bad = [f for f in feature_sets if f not in FEATURE_SETS]
    if bad:
        raise ProbeError(f"unknown feature sets {bad}; choose from {list(FEATURE_SETS)}.")
    for c in classifiers:
        make_classifier(c)  # validates the name
    if data is None:
        data = probe_features(embedding, cube, labels=labels, date=date, block_px=block_px, seed=seed, **feature_kwargs)
    splits = _folds(data, folds, seed)
    rows = []
    # One BLAS thread: these fits are small, and a multi-threaded BLAS on a busy machine made logistic
    # regression ~7x slower (measured: 3.7 s vs 0.5 s per fold, 13k pixels x 9 features, 2 cores).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        rows = _cross_validate(data, splits, feature_sets, classifiers, n_neighbors, seed)
    table = pd.DataFrame(rows)
    table.attrs["probe"] = _settings(data, labels, block_px, folds, seed, n_neighbors)
    if run_dir is not None:
        write_probe_report(table, run_dir)
    return table


def _cross_validate(data: ProbeData, splits: list, feature_sets: Sequence[str], classifiers: Sequence[str],
                    n_neighbors: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for fs in feature_sets:
        X = data.X[fs]
        for clf_name in classifiers:
            per_fold: dict[str, list[float]] = {m: [] for m in METRICS}
            for train, test in splits:
                clf = make_classifier(clf_name, n_neighbors=n_neighbors, seed=seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", category=UserWarning)
                    clf.fit(X[train], data.y[train])
                for m, v in _scores(data.y[test], clf.predict(X[test])).items():
                    per_fold[m].append(v)
            for m in METRICS:
                vals = np.asarray(per_fold[m])
                rows.append({
                    "features": fs, "classifier": clf_name, "metric": m, "mean": float(vals.mean()),
                    "std": float(vals.std()), "folds": vals.tolist(), "n_features": int(X.shape[1]),
                    "n_pixels": int(data.y.size), "n_classes": int(np.unique(data.y).size),
                    "date": str(data.date.date()),
                })
    return rows


def _settings(data: ProbeData, labels: str, block_px: int, folds: int, seed: int, n_neighbors: int) -> dict[str, Any]:
    codes, counts = np.unique(data.y, return_counts=True)
    return {
        "labels": labels, "date": str(data.date.date()), "raw_s2_date": str(data.raw_date.date()),
        "raw_s1_date": str(data.s1_date.date()) if data.s1_date is not None else None, "year": data.year,
        "n_period_dates": data.n_period_dates, "block_px": block_px, "folds": folds, "seed": seed,
        "n_neighbors": n_neighbors, "n_pixels": int(data.y.size), "n_labelled": data.n_labelled,
        "n_invalid_dropped": data.n_invalid, "n_blocks": int(np.unique(data.groups).size),
        "classes": {data.class_names[int(c)]: int(n) for c, n in zip(codes, counts, strict=True)},
        "dropped_classes": {str(k): v for k, v in data.dropped_classes.items()},
        "embedding_features": data.embedding_features, "raw_bands": data.raw_bands,
        "series_nan_fill": "each pixel's missing dates filled with its own mean over the probe year (per feature)",
    }


def ratios(table: pd.DataFrame, metric: str = "balanced_accuracy", *, numerator: str = "embedding_date",
           denominator: str = "raw_date") -> dict[str, float]:
    """Per classifier, ``mean(numerator) / mean(denominator)`` of ``metric`` (issue 7: one date's
    embedding against the raw 12 bands of the same date; the acceptance target is >= 0.9)."""
    sub = table[table["metric"] == metric].set_index(["features", "classifier"])["mean"]
    out = {}
    for clf in table["classifier"].unique():
        if (numerator, clf) in sub.index and (denominator, clf) in sub.index:
            out[str(clf)] = float(sub[(numerator, clf)] / sub[(denominator, clf)])
    return out


# --------------------------------------------------------------------------------------- report

_TITLES = {
    "embedding_date": "embedding, one date", "embedding_series": "embedding, all dates",
    "embedding_mean": "embedding, annual mean", "raw_date": "raw bands, same date", "raw_mean": "raw bands, annual mean",
}


def _figure(table: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = table[table["metric"] == "balanced_accuracy"]
    feats = list(dict.fromkeys(sub["features"]))
    clfs = list(dict.fromkeys(sub["classifier"]))
    width = 0.8 / max(len(clfs), 1)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    for j, clf in enumerate(clfs):
        s = sub[sub["classifier"] == clf].set_index("features").reindex(feats)
        ax.bar(np.arange(len(feats)) + (j - (len(clfs) - 1) / 2) * width, s["mean"], width, yerr=s["std"],
               capsize=3, label=clf)
    chance = 1.0 / max(int(sub["n_classes"].iloc[0]), 1)
    ax.axhline(chance, color="grey", lw=1, ls=":", label="chance")
    ax.set_xticks(np.arange(len(feats)), [_TITLES.get(f, f) for f in feats], rotation=20, ha="right")
    ax.set_ylabel("balanced accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"land-cover probe, {sub['date'].iloc[0]} (mean ± sd over blocked folds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_probe_report(table: pd.DataFrame, run_dir: str | Path) -> Path:
    """Write ``run_dir/evaluation/probe/{probe.json,probe.csv,probe.png}`` and the report section
    ``probe`` (order 70); returns the JSON path."""
    from latentcube.evaluate.sections import table as section_table
    from latentcube.evaluate.sections import write_section

    run_dir = Path(run_dir)
    folder = run_dir / "evaluation" / "probe"
    folder.mkdir(parents=True, exist_ok=True)
    settings = dict(table.attrs.get("probe", {}))
    ratio = ratios(table)
    doc = {"settings": settings, "ratio_embedding_date_over_raw_date": ratio,
           "results": json.loads(table.to_json(orient="records"))}
    (folder / "probe.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    flat = table.copy()
    flat["folds"] = flat["folds"].map(lambda v: " ".join(f"{x:.4f}" for x in v))
    flat.to_csv(folder / "probe.csv", index=False)
    fig = _figure(table, folder / "probe.png")

    wide = table.pivot_table(index=["features", "classifier"], columns="metric", values=["mean", "std"], sort=False)
    rows = []
    for (fs, clf), r in wide.iterrows():
        n_feat = int(table[(table["features"] == fs) & (table["classifier"] == clf)]["n_features"].iloc[0])
        rows.append([_TITLES.get(fs, fs), clf, n_feat,
                     f"{r[('mean', 'balanced_accuracy')]:.3f} ± {r[('std', 'balanced_accuracy')]:.3f}",
                     f"{r[('mean', 'macro_f1')]:.3f} ± {r[('std', 'macro_f1')]:.3f}"])
    s = settings
    text = [
        f"Label layer `{s.get('labels')}`: {s.get('n_pixels')} pixels of {len(s.get('classes', {}))} classes "
        f"({', '.join(f'{k} {v}' for k, v in s.get('classes', {}).items())}); spatially blocked "
        f"{s.get('folds')}-fold cross-validation over {s.get('n_blocks')} blocks of {s.get('block_px')} px "
        "(scikit-learn StratifiedGroupKFold), standardised features.",
        f"One date: {s.get('date')} (raw S2 {s.get('raw_s2_date')}, S1 {s.get('raw_s1_date')}); series and annual "
        f"means over the {s.get('n_period_dates')} embedding dates of {s.get('year')}; missing dates of the series "
        "are filled with the pixel's own mean.",
    ]
    if ratio:
        text.append("One-date embedding vs the raw bands of the same date (balanced accuracy ratio): "
                    + ", ".join(f"{k} {v:.1%}" for k, v in ratio.items()) + ".")
    if s.get("dropped_classes"):
        text.append(f"Dropped rare classes (code: pixels): {s['dropped_classes']}.")
    write_section(
        run_dir, "probe", order=70, title="Land-cover probe", text=text,
        tables=[section_table("Balanced accuracy and macro F1 (mean ± sd over folds)",
                              ["features", "classifier", "n features", "balanced accuracy", "macro F1"], rows)],
        figures=[(fig, "Balanced accuracy per feature set and classifier; error bars: sd over folds.")],
        data={"settings": settings, "ratios": ratio,
              "results": json.loads(table.drop(columns="folds").to_json(orient="records"))},
    )
    return folder / "probe.json"

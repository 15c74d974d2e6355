"""Features of every labelled pixel, aligned across feature sets: sources (embedding, raw bands, PCA
codes) x temporal protocols (``_aggregate``), on the same pixels and the same dates."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.cube import CubeError, open_cube
from latentcube.evaluate.probe._aggregate import (
    PROTOCOLS,
    aggregate,
    equal_windows,
    parse_windows,
    window_members,
)
from latentcube.evaluate.probe._inputs import (
    ProbeError,
    group_sensors,
    label_names,
    model_inputs,
    open_embedding_store,
    pick,
    raw_series,
    read_labels,
    same_grid,
    select_features,
    spatial_blocks,
)
from latentcube.evaluate.probe._pca import PCA_MAX_PIXELS, fit_pca_code

#: Feature sources: the embedding, the raw bands of its sensors, the PCA code of its size.
SOURCES: tuple[str, ...] = ("embedding", "raw", "pca")
#: Every feature set, ``<source>_<protocol>``, in report order.
FEATURE_SETS: tuple[str, ...] = tuple(f"{s}_{p}" for p in PROTOCOLS for s in SOURCES)
#: Feature sets scored by default: every source, one date, seasonal medians and annual mean (the
#: series protocol is opt-in: dates x bands features make its fits the slowest by far).
DEFAULT_FEATURE_SETS: tuple[str, ...] = tuple(f"{s}_{p}" for p in ("date", "seasonal", "mean") for s in SOURCES)
#: Default growing season, months inclusive (northern hemisphere).
DEFAULT_SEASON: tuple[int, int] = (4, 9)
#: Default number of seasonal windows (equal thirds of the probe period).
DEFAULT_WINDOWS = 3


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
    raw_date: pd.Timestamp | None
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
    windows: list[tuple[str, str, int]] = field(default_factory=list)
    pca: dict[str, Any] = field(default_factory=dict)
    block_px: int = 16


def _check_sets(feature_sets: Sequence[str]) -> None:
    bad = [f for f in feature_sets if f not in FEATURE_SETS]
    if bad:
        raise ProbeError(f"unknown feature sets {bad}; choose from {list(FEATURE_SETS)}.")


def _pixels(lab: np.ndarray, ignore: tuple[int, ...], labels: str, block_px: int, min_samples: int,
            max_pixels: int | None, seed: int) -> tuple[np.ndarray, ...]:
    """Labelled pixels (rare classes dropped with a warning, a stratified seeded subset)."""
    rows, cols = np.nonzero(~np.isin(lab, ignore))
    y = lab[rows, cols]
    if y.size == 0:
        raise ProbeError(f"label layer {labels!r} has no labelled pixel (codes {list(ignore)} are ignored as nodata).")
    n_labelled = int(y.size)
    groups = spatial_blocks(rows, cols, block_px)
    frame = pd.DataFrame({"y": y, "g": groups})
    counts = frame.groupby("y").size()
    n_blocks = frame.groupby("y")["g"].nunique()
    rare = sorted(int(c) for c in counts.index if counts[c] < min_samples or n_blocks[c] < 2)
    dropped = {c: int(counts[c]) for c in rare}
    if rare:
        warnings.warn(
            f"probe: dropped classes {dropped} (code: labelled pixels) with fewer than {min_samples} pixels or in fewer "
            f"than 2 blocks of {block_px} px; lower min_samples or block_px to keep them.", stacklevel=3,
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
    return rows, cols, y, groups, n_labelled, dropped


def probe_features(
    embedding: str | Path | xr.Dataset | xr.DataArray,
    cube: str | Path | xr.Dataset,
    *,
    labels: str = "landcover",
    feature_sets: Sequence[str] = DEFAULT_FEATURE_SETS,
    date: Any = None,
    year: int | None = None,
    season: tuple[int, int] = DEFAULT_SEASON,
    windows: int | Sequence[Any] = DEFAULT_WINDOWS,
    block_px: int = 16,
    embedding_features: str | Sequence[str] | None = None,
    nodata: Sequence[int] | None = None,
    min_samples: int = 20,
    max_pixels: int | None = 20_000,
    max_gap_days: float = 6.0,
    pca_fit: str | Path | xr.Dataset | None = None,
    pca_spatial_split: Mapping[str, float] | None = None,
    pca_max_pixels: int | None = PCA_MAX_PIXELS,
    baseline_sensors: Sequence[str] | None = None,
    seed: int = 0,
) -> ProbeData:
    """Features of every labelled pixel for ``feature_sets`` (``<source>_<protocol>``), aligned.

    Sources: ``embedding`` (the chosen feature group), ``raw`` (the raw bands of the group's sensors: S2
    reflectance, S1 VV/VH in dB of the nearest unsmoothed acquisition within ``max_gap_days``), ``pca``
    (PCA-k of the model's inputs, k = the embedding's size, see :func:`fit_pca_code`). All three are
    read on the embedding's date axis and aggregated by the same protocol (``latentcube.evaluate.probe``).

    Args:
        embedding: an embedding cube (Zarr path or dataset with ``embedding (time, feature, y, x)``).
        cube: the cube it was computed from (path or dataset): raw bands and the label layer.
        labels: the ``(y, x)`` integer layer holding class codes.
        feature_sets: which sets to build (:data:`FEATURE_SETS`); the pixels are those valid in all.
        date: the date of the ``date`` protocol (nearest embedding date). Default: the date of the
            probe year's growing season with the largest fraction of labelled pixels valid in every
            requested one-date set.
        year: the probe year (the period of ``series``, ``mean`` and default seasonal windows). Default:
            the year of ``date``, else the calendar year with the most embedding dates.
        season: first and last month (inclusive) of the growing season for the default date;
            ``(10, 3)`` wraps over the new year.
        windows: seasonal windows: a number of equal-duration windows over the probe year's dates, or
            ``(start, end)`` pairs / ``"START:END"`` strings (inclusive).
        block_px: edge of the spatial cross-validation blocks in pixels (10 m pixels: 16 px = 160 m).
        embedding_features: feature group (``"fused"``, ``"s2"``...) or names; default the first group.
        nodata: label codes to ignore; default 0 and the layer's ``_FillValue``/``nodata`` attributes.
        min_samples: classes with fewer labelled pixels, or present in fewer than 2 blocks, are dropped
            (with a warning).
        max_pixels: at most this many labelled pixels are used (a seeded random subset, every class
            keeping its share); ``None`` = all.
        max_gap_days: largest gap in days between an embedding date and the raw S2 date / S1
            acquisition read for it.
        pca_fit: the cube the PCA code is fitted on (the model's training cube); default ``cube``.
        pca_spatial_split: fit the PCA on the training strip of this split only (``{"val": 0.3}``, as
            ``data.spatial_split`` of the one-area training configs).
        pca_max_pixels: pixels of the fit cube read for the PCA (a seeded subset beyond it).
        baseline_sensors: the sensors whose bands the ``raw`` and ``pca`` baselines read, e.g. ``("s2",)``
            to hold a fused embedding against S2 alone (S1's speckle can weaken the S2+S1 baselines).
            Default: the sensors the embedding group was computed from.
        seed: seed of the pixel subsets.

    Returns:
        :class:`ProbeData`; the pixels are those labelled and finite in every requested feature set.
    """
    feature_sets = list(dict.fromkeys(feature_sets))
    _check_sets(feature_sets)
    if not feature_sets:
        raise ProbeError("no feature set requested. Fix: pass feature_sets, e.g. ('embedding_seasonal', 'raw_seasonal').")
    emb_da, settings = open_embedding_store(embedding)
    emb, group = select_features(emb_da, embedding_features)
    ds = open_cube(cube) if isinstance(cube, (str, Path)) else cube
    if "s2" not in ds and "s1" not in ds:
        raise CubeError("the cube has no 's2' or 's1' variable; the raw-band features need them. Fix: pass the cube the "
                        "embedding was computed from.")
    same_grid(emb, ds)
    sensors = group_sensors(group, ds, baseline_sensors)
    lab, ignore = read_labels(ds, labels, nodata)
    rows, cols, y, groups, n_labelled, dropped = _pixels(lab, ignore, labels, block_px, min_samples, max_pixels, seed)
    sources = {f.rsplit("_", 1)[0] for f in feature_sets}
    protocols = {f.rsplit("_", 1)[1] for f in feature_sets}

    # -- probe year and period
    etimes = pd.DatetimeIndex(emb["time"].values)
    t_emb = None
    if date is not None:
        want = pd.Timestamp(date)
        gaps = np.abs((etimes - want).total_seconds().values) / 86400.0
        t_emb = int(np.argmin(gaps))
        if gaps[t_emb] > max(max_gap_days, 1):
            raise ProbeError(f"no embedding date near {want.date()} (the store has {etimes[0].date()} .. {etimes[-1].date()}). "
                             "Fix: choose a date inside that range.")
        year = etimes[t_emb].year if year is None else year
    if year is None:
        year = int(pd.Series(etimes.year).value_counts().sort_index().idxmax())
    in_year = np.flatnonzero(etimes.year == year)
    if in_year.size == 0:
        raise ProbeError(f"no embedding date in {year} (the store covers {etimes[0].date()} .. {etimes[-1].date()}).")

    # -- per-date series of every source on the embedding's date axis, at the chosen pixels
    series: dict[str, np.ndarray] = {"embedding": pick(emb, rows, cols)}  # (T, F, n)
    raw, raw_names, raw_index = raw_series(ds, rows, cols, etimes.values, sensors, max_gap_days)
    series["raw"] = raw
    pca_info: dict[str, Any] = {}
    if "pca" in sources:
        fit_on = pca_fit if pca_fit is not None else ds
        code = fit_pca_code(fit_on, emb.sizes["feature"], sensors, settings=settings, spatial_split=pca_spatial_split,
                            max_gap_days=max_gap_days, max_pixels=pca_max_pixels, seed=seed)
        x, _, _ = model_inputs(ds, rows, cols, etimes.values, sensors, settings, max_gap_days)
        series["pca"] = code.transform(x)
        pca_info = {"k": code.k, "bands": code.bands, "fit": code.source, "n_fit_pixel_dates": code.n_fit,
                    "explained_variance_ratio": [float(v) for v in code.pca.explained_variance_ratio_]}

    # -- the one date: clearest in the season (valid in every requested one-date set)
    date_sets = [s for s in sources if f"{s}_date" in feature_sets]
    if t_emb is None:
        months = etimes.month[in_year]
        lo, hi = season
        in_season = (months >= lo) & (months <= hi) if lo <= hi else (months >= lo) | (months <= hi)
        candidates = in_year[in_season] if in_season.any() else in_year
        checked = date_sets or ["embedding"]
        fractions = [float(np.all([np.isfinite(series[s][t]).all(0) for s in checked], axis=0).mean()) for t in candidates]
        t_emb = int(candidates[int(np.argmax(fractions))])  # first on ties
        if date_sets and max(fractions) == 0:
            raise ProbeError(f"no date of {year} has a labelled pixel valid in the embedding and the raw bands. "
                             "Fix: check the S1 coverage (raw bands need S1 within max_gap_days) or pass date=.")
    elif "raw" in date_sets:
        for sensor, what in (("s2", "S2 date"), ("s1", "S1 acquisition")):
            if sensor in raw_index and raw_index[sensor][t_emb] < 0:
                raise ProbeError(f"no {what} within {max_gap_days:g} days of {etimes[t_emb].date()}; the raw-band features "
                                 "need one. Fix: pass another date.")

    # -- seasonal windows
    members: list[np.ndarray] = []
    window_list: list[tuple[str, str, int]] = []
    if "seasonal" in protocols:
        bounds = equal_windows(etimes[in_year], windows) if isinstance(windows, int) else parse_windows(windows)
        members = window_members(etimes, bounds)
        window_list = [(str(a.date()), str(b.date()), int(m.size)) for (a, b), m in zip(bounds, members, strict=True)]
        empty = [f"{a}..{b}" for a, b, n in window_list if n == 0]
        if empty:
            raise ProbeError(f"seasonal windows {empty} hold no embedding date. Fix: give windows that cover the store's "
                             f"dates ({etimes[0].date()} .. {etimes[-1].date()}).")

    # -- feature sets
    X = {}
    for fs in feature_sets:
        source, protocol = fs.rsplit("_", 1)
        period = series[source] if protocol in ("date", "seasonal") else series[source][in_year]
        X[fs] = aggregate(period, protocol, date_index=t_emb, members=members)
    ok = np.ones(y.size, bool)
    for v in X.values():
        ok &= np.isfinite(v).all(1)
    n_invalid = int((~ok).sum())
    if not ok.any():
        raise ProbeError(f"no labelled pixel is valid in every feature set ({feature_sets}). Fix: pass another date "
                         "or fewer feature sets.")
    X = {k: np.ascontiguousarray(v[ok], dtype="float32") for k, v in X.items()}
    rows, cols, y, groups = rows[ok], cols[ok], y[ok], groups[ok]
    t2 = raw_index.get("s2", np.array([-1] * len(etimes)))[t_emb]
    t1 = raw_index.get("s1", np.array([-1] * len(etimes)))[t_emb]
    return ProbeData(
        X=X, y=y, groups=groups, rows=rows, cols=cols, date=etimes[t_emb],
        raw_date=pd.Timestamp(ds["time"].values[t2]) if t2 >= 0 else None,
        s1_date=pd.Timestamp(ds["time_s1"].values[t1]) if t1 >= 0 else None,
        year=int(year), n_period_dates=int(in_year.size), class_names=label_names(ds, labels, np.unique(y)),
        dropped_classes=dropped, n_labelled=n_labelled, n_invalid=n_invalid,
        embedding_features=[str(f) for f in emb["feature"].values], raw_bands=raw_names,
        valid_fraction=float(ok.mean()), windows=window_list, pca=pca_info, block_px=block_px,
    )

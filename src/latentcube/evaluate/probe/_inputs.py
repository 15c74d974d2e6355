"""The probe's inputs: the embedding store and its settings, the label layer, the labelled pixels and
their blocks, and the per-date raw bands and model inputs read at those pixels."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from latentcube.constants import LANDCOVER_CLASSES
from latentcube.errors import LatentcubeError
from latentcube.timeutils import linear_to_db, nearest_index

#: Sensors whose inputs each embedding feature group was computed from (unknown groups: every sensor).
GROUP_SENSORS: dict[str, tuple[str, ...]] = {"fused": ("s2", "s1"), "s2": ("s2",), "s1": ("s1",)}
#: S1 frames smoothed by the models when the store does not record it (latentcube.embed's default).
DEFAULT_S1_SMOOTHING = 3


class ProbeError(LatentcubeError, ValueError):
    """The embedding, the cube or the options cannot give a probe; the message says why and how to fix it."""


@dataclass(frozen=True)
class StoreSettings:
    """How the embedding's model saw its inputs (from the store's attributes; defaults when absent)."""

    normalization: dict[str, Any] | None = None
    s1_smoothing: int = DEFAULT_S1_SMOOTHING
    max_gap_days: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def open_embedding_store(embedding: str | Path | xr.Dataset | xr.DataArray) -> tuple[xr.DataArray, StoreSettings]:
    """``embedding (time, feature, y, x)`` float32 and the model's preprocessing settings."""
    from latentcube.embed import EmbedError, open_embedding  # the one reader of embedding stores

    try:
        ds = open_embedding(embedding, as_dataset=True)  # float32 whatever the storage (float16, int8 x scale)
    except EmbedError as err:
        raise ProbeError(str(err)) from err
    da, attrs = ds["embedding"], dict(embedding.attrs if isinstance(embedding, xr.DataArray) else ds.attrs)
    return da, _store_settings(attrs)


def _store_settings(attrs: dict[str, Any]) -> StoreSettings:
    def js(key: str) -> Any:
        value = attrs.get(key)
        return json.loads(value) if isinstance(value, str) else value

    pre = js("preprocessing") or {}
    smoothing = pre.get("s1_smoothing_frames")
    gap = pre.get("s1_max_gap_days")
    return StoreSettings(normalization=js("normalization"),
                         s1_smoothing=int(smoothing) if smoothing else DEFAULT_S1_SMOOTHING,
                         max_gap_days=float(gap) if gap is not None else None)


def select_features(da: xr.DataArray, which: str | Sequence[str] | None) -> tuple[xr.DataArray, str]:
    """The embedding's features to probe and their group: a group prefix (``fused``, ``s2``...), explicit
    names, or by default the first group, so that a ``fused,s1,s2`` store is probed on the fused embedding."""
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
    chosen_groups = list(dict.fromkeys(n.rsplit("_", 1)[0] for n in chosen))
    return da.sel(feature=chosen), chosen_groups[0] if len(chosen_groups) == 1 else "mixed"


def group_sensors(group: str, ds: xr.Dataset, chosen: Sequence[str] | None = None) -> tuple[str, ...]:
    """The sensors of the cube that the feature group was computed from (raw bands and PCA inputs), or
    ``chosen`` ones (``baseline_sensors``), each of which the cube must hold."""
    def held(s: str) -> bool:
        return s in ds and ds.sizes.get("time" if s == "s2" else "time_s1", 0) > 0

    if chosen is not None:
        chosen = tuple(dict.fromkeys(str(s) for s in ([chosen] if isinstance(chosen, str) else chosen)))
        bad = [s for s in chosen if s not in ("s2", "s1")] or ([] if chosen else ["(none)"])
        if bad:
            raise ProbeError(f"baseline sensors must be among s2, s1, got {bad}. Fix: pass e.g. ('s2',) or ('s2', 's1').")
        missing = [s for s in chosen if not held(s)]
        if missing:
            raise ProbeError(f"the cube has no {missing} data for the baselines. Fix: pass baseline sensors the cube holds.")
        return chosen
    wanted = GROUP_SENSORS.get(group, ("s2", "s1"))
    have = tuple(s for s in wanted if held(s))
    if not have:
        raise ProbeError(f"the cube has none of the sensors {list(wanted)} the {group!r} embedding was computed from. "
                         "Fix: pass the cube the embedding was computed from.")
    return have


def same_grid(a: xr.DataArray, ds: xr.Dataset) -> None:
    for dim in ("y", "x"):
        if a.sizes[dim] != ds.sizes[dim] or not np.allclose(a[dim].values, ds[dim].values, rtol=0, atol=1e-6):
            raise ProbeError(
                f"the embedding and the cube are on different grids (along {dim}: {a.sizes[dim]} vs {ds.sizes[dim]} "
                "pixels or different coordinates). Fix: probe the cube the embedding was computed from."
            )


def label_names(ds: xr.Dataset, labels: str, codes: Sequence[int]) -> dict[int, str]:
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


def read_labels(ds: xr.Dataset, labels: str, nodata: Sequence[int] | None) -> tuple[np.ndarray, tuple[int, ...]]:
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


def block_offset(seed: int, block_px: int) -> tuple[int, int]:
    """Shift (rows, columns) of the block grid for a seed: none for seed 0, else seeded in ``[0, block_px)``.

    scikit-learn's ``StratifiedGroupKFold`` shuffle only breaks ties between blocks of equal class mix,
    so on a small area every seed gave the same folds; shifting the grid gives each seed other blocks."""
    if seed == 0:
        return 0, 0
    oy, ox = np.random.default_rng(seed).integers(0, block_px, size=2)
    return int(oy), int(ox)


def spatial_blocks(rows: np.ndarray, cols: np.ndarray, block_px: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Block id of each pixel: square blocks of ``block_px`` pixels, numbered row-major from the grid
    origin shifted by ``offset`` (rows, columns) pixels (the groups of the blocked cross-validation)."""
    if block_px < 1:
        raise ProbeError(f"block_px must be a positive number of pixels, got {block_px}.")
    rows, cols = np.asarray(rows) + offset[0], np.asarray(cols) + offset[1]
    n_cols = int(cols.max()) // block_px + 1 if cols.size else 1
    return (rows // block_px) * n_cols + cols // block_px


def pick(da: xr.DataArray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values at the given pixels, ``(..., n_pixels)``: pointwise (vectorised) indexing, so only the
    needed chunks are read from a lazy store."""
    sel = da.isel(y=xr.DataArray(rows, dims="pixel"), x=xr.DataArray(cols, dims="pixel"))
    return np.asarray(sel.values, dtype="float32")


def to_db(linear: np.ndarray) -> np.ndarray:
    """float32 dB; NaN where the power is not positive or not finite."""
    db = linear_to_db(linear)
    return np.where(np.isfinite(db), db, np.nan).astype("float32")


def _on_axis(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` along the first axis, NaN where ``index`` is -1."""
    out = np.full((index.size, *values.shape[1:]), np.nan, dtype="float32")
    out[index >= 0] = values[index[index >= 0]]
    return out


def raw_series(ds: xr.Dataset, rows: np.ndarray, cols: np.ndarray, times: Any, sensors: Sequence[str],
               max_gap_days: float) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """The raw bands on the axis ``times``: S2 reflectance of the nearest S2 date and S1 VV/VH in dB of the
    nearest (unsmoothed) S1 acquisition, each within ``max_gap_days`` (else NaN).

    Returns ``(T, B, n)`` float32, the band names and ``{sensor: (T,) index into the cube's axis or -1}``.
    """
    parts, names, index = [], [], {}
    if "s2" in sensors:
        index["s2"] = nearest_index(ds["time"].values, times, max_gap_days)
        parts.append(_on_axis(pick(ds["s2"], rows, cols), index["s2"]))
        names += [str(b) for b in ds["band"].values]
    if "s1" in sensors:
        index["s1"] = nearest_index(ds["time_s1"].values, times, max_gap_days)
        parts.append(to_db(_on_axis(pick(ds["s1"], rows, cols), index["s1"])))
        names += [f"{b}_dB" for b in ds["band_s1"].values]
    return np.concatenate(parts, axis=1), names, index


def model_inputs(ds: xr.Dataset, rows: np.ndarray, cols: np.ndarray, times: Any, sensors: Sequence[str],
                 settings: StoreSettings, max_gap_days: float) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The inputs as the embedding's model sees them, on the axis ``times``: S2 reflectance and S1
    smoothed over ``settings.s1_smoothing`` consecutive acquisitions in linear power, matched to the
    nearest acquisition within the store's S1 gap (else NaN), both normalised with the model's
    normalisation (latentcube.preprocess; the default one when the store records none).

    Returns ``(T, B, n)`` float32 normalised values, the band names, and per band the physical units per
    normalised unit (reflectance for S2, dB for S1: ``hi - lo`` of the normalisation).
    """
    from latentcube.preprocess import Normalization, smooth_s1

    norm = Normalization.from_dict(settings.normalization) if settings.normalization else Normalization()
    gap = settings.max_gap_days if settings.max_gap_days is not None else max_gap_days
    parts, names, spans = [], [], []
    for sensor in sensors:
        if sensor == "s2":
            bands = [str(b) for b in ds["band"].values]
            values = _on_axis(pick(ds["s2"], rows, cols), nearest_index(ds["time"].values, times, max_gap_days))
        else:
            bands = [str(b) for b in ds["band_s1"].values]
            sub = ds[["s1"]].isel(y=xr.DataArray(rows, dims="pixel"), x=xr.DataArray(cols, dims="pixel"))
            if settings.s1_smoothing > 1:
                sub = smooth_s1(sub, window=settings.s1_smoothing)
            s1 = np.asarray(sub["s1"].transpose("time_s1", "band_s1", "pixel").values, dtype="float32")
            values = _on_axis(s1, nearest_index(ds["time_s1"].values, times, gap))
        parts.append(norm.normalize_array(values, bands, sensor, axis=1))  # checks the bands have bounds
        table = norm.s2 if sensor == "s2" else norm.s1_db
        names += bands if sensor == "s2" else [f"{b}_dB" for b in bands]
        spans.append(np.array([table[b][1] - table[b][0] for b in bands], dtype="float64"))
    return np.concatenate(parts, axis=1), names, np.concatenate(spans).astype("float32")

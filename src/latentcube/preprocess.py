"""Pure preprocessing functions on the cube data model (paper §II):

* dB <-> linear conversion of backscatter;
* :func:`smooth_s1`: the paper's three-frame rolling mean of the S1 series in linear scale (per orbit
  direction when the cube has both);
* :class:`Normalization`: the invertible 0-1 scaling of S2 reflectance and S1 backscatter, storable in
  cube attributes and model checkpoints so reconstructions can be reported in physical units; every
  pixel-date with a value no sensor can measure (infinite, or outside
  :data:`~latentcube.cube.S2_PHYSICAL_RANGE` / :data:`~latentcube.cube.S1_PHYSICAL_RANGE`) becomes NaN like
  a cloud, counted and logged;
* :func:`match_s1_to_s2`: S1 on the S2 time axis (nearest acquisition within a maximum gap), used to
  build the aligned radar-optical pairs of the fusion stage (§III-C).

None of these functions modifies its input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import xarray as xr

from latentcube.constants import S2_BANDS
from latentcube.cube import S1_PHYSICAL_RANGE, S2_PHYSICAL_RANGE, impossible_values
from latentcube.timeutils import db_to_linear, linear_to_db, nearest_index

__all__ = [
    "DEFAULT_S1_BOUNDS_DB",
    "DEFAULT_S2_BOUNDS",
    "Normalization",
    "db_to_linear",
    "fit_normalization",
    "linear_to_db",
    "match_s1_to_s2",
    "smooth_s1",
]

#: S2 reflectance bounds per band: the physical 0-1 range, so normalised reflectance equals reflectance
#: (the paper normalises both sensors "to the same 0-1 range"; reflectance already is).
DEFAULT_S2_BOUNDS: dict[str, tuple[float, float]] = {b: (0.0, 1.0) for b in S2_BANDS}

#: S1 backscatter bounds in dB: (dB - lo) / (hi - lo). Our choice (the paper gives no values): they
#: cover C-band sigma0/gamma0 over land with margin — VV is mostly -20..-5 dB and VH -28..-12 dB
#: (water and radar shadow reach lower, urban double bounce higher; those values fall slightly outside
#: 0-1 unless ``clip``). Refit on your data with :func:`fit_normalization`.
DEFAULT_S1_BOUNDS_DB: dict[str, tuple[float, float]] = {"VV": (-25.0, 0.0), "VH": (-32.0, -5.0)}

_log = logging.getLogger(__name__)

#: Attribute key under which a normalised cube records its :class:`Normalization` (JSON).
ATTR_KEY = "latentcube_normalization"


# ------------------------------------------------------------------------------------------ dB


# db_to_linear and linear_to_db live in latentcube.timeutils (one definition); imported above.


# ----------------------------------------------------------------------------------- smoothing


def smooth_s1(
    ds: xr.Dataset, window: int = 3, *, min_periods: int = 1, by_orbit: bool = True, orbit_coord: str = "orbit_state"
) -> xr.Dataset:
    """Centred rolling mean of ``s1`` over ``window`` consecutive acquisitions, in linear power.

    NaN-aware: each output is the mean of the valid frames in its window, NaN when fewer than
    ``min_periods`` are valid. Frames are consecutive acquisitions (not days). With ``by_orbit`` and an
    ``orbit_coord`` coordinate on ``time_s1`` holding both ascending and descending passes, each orbit
    direction is smoothed on its own (their geometries differ, so averaging across them would mix
    look angles). The paper applies "a three-frame rolling mean to the RTC time series in the linear scale".
    """
    if "s1" not in ds:
        raise ValueError("smooth_s1: the cube has no 's1'. Fix: fetch or import Sentinel-1 first.")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smooth_s1: window={window} must be a positive odd number of frames (centred).")
    if not 1 <= min_periods <= window:
        raise ValueError(f"smooth_s1: min_periods={min_periods} must be in 1..window ({window}).")
    s1 = ds["s1"]

    def roll(da: xr.DataArray) -> xr.DataArray:
        return da.rolling(time_s1=window, center=True, min_periods=min_periods).mean()

    groups = np.unique(ds[orbit_coord].values) if by_orbit and orbit_coord in ds.coords else np.array([])
    if groups.size > 1:
        parts = [roll(s1.where(s1[orbit_coord] == g, drop=True)) for g in groups]
        smoothed = xr.concat(parts, dim="time_s1").sortby("time_s1").reindex(time_s1=s1["time_s1"])
    else:
        smoothed = roll(s1)
    out = ds.copy()
    out["s1"] = smoothed.astype("float32").assign_attrs(s1.attrs)
    out.attrs["s1_smoothing"] = (
        f"centred rolling mean of {window} frames in linear power, min_periods={min_periods}"
        + (f", per {orbit_coord}" if groups.size > 1 else "")
    )
    return out


# ------------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normalization:
    """Invertible per-band scaling of a cube to 0-1.

    S2: ``(reflectance - lo) / (hi - lo)``. S1: ``(dB - lo) / (hi - lo)`` with dB = 10·log10(linear)
    (linear <= 0 -> NaN). ``clip`` clamps normalised values to [0, 1]; then only values inside the bounds
    round-trip exactly, so it is off by default.

    Values no sensor can measure (infinite, or outside :data:`~latentcube.cube.S2_PHYSICAL_RANGE` /
    :data:`~latentcube.cube.S1_PHYSICAL_RANGE`: fill values, corruption) become NaN, so every block that
    embed and train read treats them like clouds: a 1e30 would otherwise flow through the convolutions
    and turn every embedding it reaches NaN. One such band makes its whole pixel-date NaN. On the NumPy
    path (:meth:`normalize_array`, what embed and train use) ``masked`` counts those pixel-dates per
    sensor, and the first time a sensor has any, a warning is logged with the count.
    """

    s2: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_S2_BOUNDS))
    s1_db: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_S1_BOUNDS_DB))
    clip: bool = False
    masked: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    """Pixel-dates with impossible values set to NaN so far by this object, per sensor (not stored)."""

    def __post_init__(self) -> None:
        for what, table in (("s2", self.s2), ("s1_db", self.s1_db)):
            for band, (lo, hi) in table.items():
                if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                    raise ValueError(f"Normalization {what}[{band!r}] = ({lo}, {hi}): need finite lo < hi.")

    # ---- arrays
    def _bounds(self, bands: Sequence[str], sensor: str) -> tuple[np.ndarray, np.ndarray]:
        table = self.s2 if sensor == "s2" else self.s1_db
        missing = [b for b in bands if b not in table]
        if missing:
            raise ValueError(
                f"no {sensor} normalisation bounds for bands {missing} (known: {list(table)}). "
                "Fix: add them, or fit_normalization() on a cube with these bands."
            )
        lo = np.array([table[b][0] for b in bands], dtype="float64")
        hi = np.array([table[b][1] for b in bands], dtype="float64")
        return lo, hi

    def normalize_array(self, values: np.ndarray, bands: Sequence[str], sensor: Literal["s2", "s1"], *, axis: int = 1) -> np.ndarray:
        """Normalise a NumPy array whose ``axis`` indexes ``bands`` (S1 given in linear power)."""
        lo, hi = self._bounds(bands, sensor)
        shape = [1] * np.ndim(values)
        shape[axis] = len(bands)
        # one impossible band spoils its pixel-date: all its bands become NaN, as a cloud does
        bad = impossible_values(values, sensor).any(axis=axis, keepdims=True)
        v = linear_to_db(values) if sensor == "s1" else np.asarray(values, dtype="float64")
        out = (v - lo.reshape(shape)) / (hi - lo).reshape(shape)
        if self.clip:
            out = np.clip(out, 0.0, 1.0)
        n = int(np.count_nonzero(bad))
        if n:
            out[np.broadcast_to(bad, out.shape)] = np.nan
            self._count_masked(sensor, n, bad.size)
        return out.astype("float32")

    def _count_masked(self, sensor: str, n: int, size: int) -> None:
        first = not self.masked.get(sensor)
        self.masked[sensor] = self.masked.get(sensor, 0) + n
        lo, hi = S2_PHYSICAL_RANGE if sensor == "s2" else S1_PHYSICAL_RANGE
        # WARNING once per sensor and object (train reads thousands of patches), the rest at DEBUG.
        _log.log(
            logging.WARNING if first else logging.DEBUG,
            "%s: %d of %d pixel-dates read have values that are infinite or outside the physical range "
            "[%g, %g] (fill values or corrupt data); they were set to NaN like clouds (%d so far). Fix: mask the fill value on import "
            "(--%s-nodata VALUE)%s or re-create the cube; `latentcube validate` counts them.",
            sensor, n, size, lo, hi, self.masked[sensor], sensor,
            ", set the S1 encoding if the values are digital numbers or dB (--s1-encoding db|openeo_uint16)"
            if sensor == "s1" else "",
        )

    def denormalize_array(self, values: np.ndarray, bands: Sequence[str], sensor: Literal["s2", "s1"], *, axis: int = 1) -> np.ndarray:
        """Inverse of :meth:`normalize_array` (S1 returned in linear power)."""
        lo, hi = self._bounds(bands, sensor)
        shape = [1] * np.ndim(values)
        shape[axis] = len(bands)
        v = np.asarray(values, dtype="float64") * (hi - lo).reshape(shape) + lo.reshape(shape)
        return (db_to_linear(v) if sensor == "s1" else v).astype("float32")

    # ---- cubes
    def _bounds_da(self, da: xr.DataArray, band_dim: str, sensor: str) -> tuple[xr.DataArray, xr.DataArray]:
        bands = [str(b) for b in da[band_dim].values]
        lo, hi = self._bounds(bands, sensor)
        coords = {band_dim: da[band_dim].values}
        return xr.DataArray(lo, dims=band_dim, coords=coords), xr.DataArray(hi, dims=band_dim, coords=coords)

    def normalize(self, ds: xr.Dataset) -> xr.Dataset:
        """Return ``ds`` with ``s2`` and ``s1`` normalised (float32, lazy on Dask-backed cubes); the
        settings are recorded in ``attrs['latentcube_normalization']``."""
        if ATTR_KEY in ds.attrs:
            raise ValueError("the cube is already normalised (attrs has 'latentcube_normalization'). Fix: denormalize first.")
        out = ds.copy()
        for var, band_dim, sensor in (("s2", "band", "s2"), ("s1", "band_s1", "s1")):
            if var in ds:
                da = ds[var]
                lo, hi = self._bounds_da(da, band_dim, sensor)
                v = linear_to_db(da) if sensor == "s1" else da
                n = ((v - lo) / (hi - lo)).where(~impossible_values(da, sensor).any(band_dim))
                if self.clip:
                    n = n.clip(0.0, 1.0)
                out[var] = n.transpose(*da.dims).astype("float32").assign_attrs(da.attrs, units="normalised 0-1")
        out.attrs[ATTR_KEY] = json.dumps(self.to_dict())
        return out

    def denormalize(self, ds: xr.Dataset) -> xr.Dataset:
        """Inverse of :meth:`normalize`: reflectance and linear backscatter again."""
        out = ds.copy()
        for var, band_dim, sensor in (("s2", "band", "s2"), ("s1", "band_s1", "s1")):
            if var in ds:
                da = ds[var]
                lo, hi = self._bounds_da(da, band_dim, sensor)
                v = da.astype("float64") * (hi - lo) + lo
                v = db_to_linear(v) if sensor == "s1" else v
                out[var] = v.transpose(*da.dims).astype("float32").assign_attrs(da.attrs, units="1")
        out.attrs.pop(ATTR_KEY, None)
        return out

    # ---- storage
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for cube attrs and checkpoints)."""
        return {
            "version": 1,
            "s2": {b: [float(lo), float(hi)] for b, (lo, hi) in self.s2.items()},
            "s1_db": {b: [float(lo), float(hi)] for b, (lo, hi) in self.s1_db.items()},
            "clip": bool(self.clip),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str) -> Normalization:
        """Inverse of :meth:`to_dict` (also accepts the JSON string stored in cube attrs)."""
        if isinstance(d, str):
            d = json.loads(d)
        if d.get("version") != 1 or "s2" not in d or "s1_db" not in d:
            raise ValueError(f"not a latentcube Normalization dict (keys {sorted(d)}); expected version 1 with s2, s1_db.")
        return cls(
            s2={b: (float(v[0]), float(v[1])) for b, v in d["s2"].items()},
            s1_db={b: (float(v[0]), float(v[1])) for b, v in d["s1_db"].items()},
            clip=bool(d.get("clip", False)),
        )

    @classmethod
    def from_cube(cls, ds: xr.Dataset) -> Normalization:
        """The normalisation a normalised cube was made with."""
        if ATTR_KEY not in ds.attrs:
            raise ValueError("the cube records no normalisation (not normalised, or attrs were dropped).")
        return cls.from_dict(ds.attrs[ATTR_KEY])


def fit_normalization(ds: xr.Dataset, percentiles: tuple[float, float] = (1.0, 99.0), *, clip: bool = False) -> Normalization:
    """Bounds per band from the cube's own value distribution (S2 reflectance, S1 in dB), NaN ignored."""
    lo_p, hi_p = percentiles
    s2, s1 = dict(DEFAULT_S2_BOUNDS), dict(DEFAULT_S1_BOUNDS_DB)
    for var, band_dim, table, to in (("s2", "band", s2, np.asarray), ("s1", "band_s1", s1, linear_to_db)):
        if var not in ds:
            continue
        for b in ds[band_dim].values:
            v = to(ds[var].sel({band_dim: b}).values).ravel()
            v = v[np.isfinite(v)]
            if v.size < 2:
                raise ValueError(f"fit_normalization: band {b} of {var} has fewer than 2 valid values.")
            lo, hi = np.percentile(v, [lo_p, hi_p])
            if hi <= lo:
                hi = lo + 1e-6
            table[str(b)] = (float(lo), float(hi))
    return Normalization(s2=s2, s1_db=s1, clip=clip)


# ---------------------------------------------------------------------------------- matching


def match_s1_to_s2(ds: xr.Dataset, *, max_gap_days: float = 6.0) -> xr.DataArray:
    """Sentinel-1 on the Sentinel-2 time axis.

    For each S2 date the S1 acquisition nearest in time is taken when it is at most ``max_gap_days``
    away (inclusive); otherwise the result is NaN for that date. Ties (two acquisitions equally far)
    go to the earlier one. Returns a float32 DataArray ``(time, band_s1, y, x)`` in linear power with
    coordinates ``s1_time`` (matched acquisition, NaT if none) and ``s1_gap_days`` (S1 minus S2 in days,
    NaN if none) on ``time``.
    """
    if "s1" not in ds:
        raise ValueError("match_s1_to_s2: the cube has no 's1'. Fix: fetch or import Sentinel-1 first.")
    t2 = ds["time"].values.astype("datetime64[ns]").astype("int64").astype("float64")
    t1 = ds["time_s1"].values.astype("datetime64[ns]").astype("int64").astype("float64")
    if t1.size == 0:
        raise ValueError("match_s1_to_s2: 's1' has no acquisitions.")
    idx = nearest_index(ds["time_s1"].values, ds["time"].values, max_gap_days)
    ok = idx >= 0
    idx = np.where(ok, idx, 0)
    gap = (t1[idx] - t2) / 86400e9  # S1 minus S2 in days
    picked = ds["s1"].isel(time_s1=xr.DataArray(idx, dims="time"))
    # drop the per-acquisition coordinates (time_s1, orbit_state) that isel carried onto 'time'
    picked = picked.drop_vars([c for c in picked.coords if c not in ("band_s1", "y", "x", "spatial_ref")])
    picked = picked.assign_coords(time=ds["time"].values).where(xr.DataArray(ok, dims="time", coords={"time": ds["time"].values}))
    s1_time = np.where(ok, ds["time_s1"].values[idx], np.datetime64("NaT", "ns"))
    picked = picked.assign_coords(
        s1_time=("time", s1_time.astype("datetime64[ns]")), s1_gap_days=("time", np.where(ok, gap, np.nan))
    )
    picked.attrs.update(ds["s1"].attrs)
    picked.attrs["matching"] = f"nearest S1 acquisition within {max_gap_days:g} days of each S2 date; ties to the earlier"
    return picked.transpose("time", "band_s1", "y", "x").astype("float32").rename("s1_matched")

"""Checking a cube against the data model: dims, dates, grid, CRS, value ranges (:func:`validate_cube`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.constants import S1_BANDS, S1_DIMS, S2_BANDS, S2_DIMS
from latentcube.cube._model import (
    S1_PHYSICAL_RANGE,
    S2_PHYSICAL_RANGE,
    CubeError,
    cube_crs,
    impossible_values,
)
from latentcube.cube._sample import _SAMPLE_TARGET, _chunk_windows, _read, _sample

#: Share of sampled pixel-dates with every band exactly 0 above which a cube is refused (below: a warning).
ZERO_PIXEL_ERROR_FRACTION = 0.005


def _check_zero_pixels(da: xr.DataArray, name: str) -> None:
    """Pixel-dates whose every band is exactly 0 are nodata in disguise (no real reflectance or backscatter
    is 0 in all bands): they would train as real dark pixels. Refuse a cube with many, warn on a few."""
    da = _chunk_windows(da)
    band_dim = da.dims[1]
    other = [d for d in da.dims if d != band_dim]
    step = max(1, int(np.ceil((da.size / da.sizes[band_dim] / (_SAMPLE_TARGET // 10)) ** (1 / len(other)))))
    sub = _read(da.isel({d: slice(None, None, step) for d in other}))
    zero = (sub == 0).all(axis=1)
    n = int(zero.sum())
    if not n:
        return
    share = n / zero.size
    fix = (f"Fix: mask the nodata value as NaN, e.g. ds['{name}'] = ds['{name}'].where((ds['{name}'] != 0)"
           f".any('{band_dim}')) (importers do this with --{name}-nodata 0).")
    if share >= ZERO_PIXEL_ERROR_FRACTION:
        raise CubeError(f"{share:.1%} of the sampled {name} pixel-dates are 0 in every band: nodata stored as 0, "
                        f"not NaN. {fix}")
    import warnings

    warnings.warn(f"{n} sampled {name} pixel-dates ({share:.2%}) are 0 in every band, probably nodata. {fix}",
                  stacklevel=3)


#: Largest S2 L2A digital number (uint16): values far above it are fill values, not unscaled reflectance.
_MAX_DN = 65535.0
#: Values above 2 with a median in this range are the uint16 fill scaled to reflectance (65535 x 1e-4 =
#: 6.5535, 6.4535 with the -0.1 offset), not digital numbers (those have a median of hundreds to thousands).
_FILL_SCALED = (6.0, 7.0)


def _share_impossible(sample: np.ndarray, sensor: str) -> str:
    bad = impossible_values(sample, sensor)
    return f"{np.count_nonzero(bad):,} ({np.mean(bad):.2%})"


def _check_impossible(sample: np.ndarray, sensor: str) -> None:
    """Warn about sampled values no sensor can measure. Every read masks them (Normalization), so they
    do not stop a run, but they mean a fill value was not masked or the data is corrupt (a bulk of such
    S1 values is refused before, by :func:`_check_s1_encoding`)."""
    n = int(np.count_nonzero(impossible_values(sample, sensor)))
    if not n:
        return
    import warnings

    lo, hi = S2_PHYSICAL_RANGE if sensor == "s2" else S1_PHYSICAL_RANGE
    fix = f"Fix: mask the fill value on import (--{sensor}-nodata VALUE) or re-create the cube."
    if sensor == "s1" and _s1_looks_encoded(sample):
        fix = (f"Fix: mask the fill value on import (--s1-nodata VALUE); the values also look like digital numbers "
               f"or dB, not linear backscatter: {_S1_ENCODING_FIX}")
    warnings.warn(
        f"{_share_impossible(sample, sensor)} of the sampled {sensor} values are infinite or outside the "
        f"physical range [{lo:g}, {hi:g}]; embed and train read their pixel-dates as NaN (like clouds). {fix}",
        stacklevel=4,
    )


#: Median linear S1 backscatter above which S1 is refused: +10 dB. Land, water and even dense urban
#: sigma0 has its median far below (typically 1e-4..1, i.e. -40..0 dB); digital numbers (openEO uint16:
#: hundreds to thousands) and dB values read as linear power sit far above.
S1_MEDIAN_MAX = 10.0
#: Above this median (0 dB) S1 is suspicious but accepted: the out-of-range warning then names the encoding.
_S1_MEDIAN_TYPICAL_MAX = 1.0
#: Share of the sampled non-NaN S1 values that are infinite or outside S1_PHYSICAL_RANGE from which S1 is
#: refused (below: a warning about fill values): the bulk of the data is not linear backscatter.
S1_IMPOSSIBLE_ERROR_FRACTION = 0.5

_S1_ENCODING_FIX = (
    "re-import with the S1 encoding of your files: `latentcube import ... --s1-encoding db` (sigma0 in dB; "
    "--s1-scale for scaled integers) or `--s1-encoding openeo_uint16` (openEO/CDSE uint16, "
    "dB = 20*log10(DN) - 83; `--preset openeo` sets it), in Python "
    "import_cube(..., s1_encoding='db' | 'openeo_uint16'); or re-create the cube with s1 in linear power "
    "(ds['s1'] = 10 ** (dB / 10))."
)


def _s1_looks_encoded(sample: np.ndarray) -> bool:
    """Whether S1 values look like digital numbers or dB rather than linear power plus a few fill values:
    a median above 0 dB, where little land backscatter lies."""
    finite = sample[np.isfinite(sample)]
    return bool(finite.size) and float(np.median(finite)) > _S1_MEDIAN_TYPICAL_MAX


def _check_s1_encoding(ds: xr.Dataset, sample: np.ndarray) -> None:
    """Refuse S1 whose bulk is not linear backscatter: a median far above 1 (digital numbers, or dB
    read as linear power) or mostly infinite / out-of-range values (e.g. digital numbers decoded as dB,
    which overflow). A few out-of-range values are fill values: :func:`_check_impossible` warns."""
    present = sample[~np.isnan(sample)]
    if not present.size:
        return
    finite = present[np.isfinite(present)]
    imported = ds.attrs.get("import_s1_encoding")
    how = f" (imported with s1_encoding={imported!r})" if imported else ""
    median = float(np.median(finite)) if finite.size else np.nan
    share = float(np.mean(impossible_values(present, "s1")))
    if share >= S1_IMPOSSIBLE_ERROR_FRACTION:
        lo, hi = S1_PHYSICAL_RANGE
        n_inf = int(np.count_nonzero(np.isinf(present)))
        cause = ("values that overflow to inf when decoded from dB are digital numbers or scaled integers, not dB"
                 if imported == "db" else "they look like digital numbers or dB, not linear backscatter")
        raise CubeError(
            f"s1 is not linear backscatter{how}: {share:.0%} of the sampled s1 values are outside the physical "
            f"range [{lo:g}, {hi:g}] ({n_inf / present.size:.0%} infinite)"
            + (f" (median of the finite ones {median:.4g})" if finite.size else "")
            + f"; {cause}. Fix: {_S1_ENCODING_FIX}"
        )
    if finite.size and median > S1_MEDIAN_MAX:
        raise CubeError(
            f"s1 is not linear backscatter{how}: its median {median:.4g} ({10 * np.log10(median):+.0f} dB) is far "
            "above land sigma0 (about 1e-4..1, i.e. -40..0 dB); it looks like digital numbers or dB, not linear "
            f"backscatter. Fix: {_S1_ENCODING_FIX}"
        )


def _check_dims(ds: xr.Dataset, name: str, expected: tuple[str, ...]) -> None:
    dims = tuple(ds[name].dims)
    if dims == expected:
        return
    if set(dims) == set(expected):
        raise CubeError(
            f"'{name}' has dimensions {dims} in the wrong order. "
            f"Fix: ds['{name}'] = ds['{name}'].transpose{expected}."
        )
    renames = {d: e for d, e in zip(dims, expected, strict=False) if d != e and d not in expected}
    hint = f" e.g. ds = ds.rename({renames})" if renames and len(dims) == len(expected) else ""
    raise CubeError(
        f"'{name}' has dimensions {dims}; the data model needs {expected}. Fix: rename or transpose "
        f"the dimensions{hint} (importers: `latentcube import` handles 't'/'timestamp')."
    )


def _check_times(ds: xr.Dataset, dim: str) -> None:
    if dim not in ds.coords:
        raise CubeError(f"dimension '{dim}' has no coordinate. Fix: assign acquisition datetimes to '{dim}'.")
    values = ds[dim].values
    if not np.issubdtype(values.dtype, np.datetime64):
        raise CubeError(
            f"coordinate '{dim}' is {values.dtype}, not datetime64. Fix: ds['{dim}'] = pd.to_datetime(...)."
        )
    if np.isnat(values).any():
        raise CubeError(f"coordinate '{dim}' has missing (NaT) dates. Fix: drop those acquisitions.")
    index = pd.DatetimeIndex(values)
    if index.has_duplicates:
        dups = sorted({str(t)[:19] for t in index[index.duplicated()]})[:3]
        raise CubeError(
            f"duplicate dates in '{dim}': {dups}. Fix: merge them, e.g. ds.groupby('{dim}').mean() "
            "(same-day tiles: mosaic before building the cube)."
        )
    if not index.is_monotonic_increasing:
        raise CubeError(f"dates in '{dim}' are not sorted. Fix: ds = ds.sortby('{dim}').")


def _check_grid(ds: xr.Dataset) -> None:
    for dim in ("y", "x"):
        if dim not in ds.coords:
            raise CubeError(f"no '{dim}' coordinate. Fix: assign pixel-centre coordinates in metres.")
        coord = np.asarray(ds[dim].values, dtype="float64")
        bad = ~np.isfinite(coord)
        if bad.any():
            raise CubeError(
                f"coordinate '{dim}' has {int(bad.sum())} NaN or infinite value(s) (first at index "
                f"{int(np.argmax(bad))} of {coord.size}): every pixel needs its centre in metres. Fix: rebuild "
                f"'{dim}' from the grid's origin and pixel size, e.g. ds = ds.assign_coords({dim}=x0 + step * "
                f"np.arange(ds.sizes['{dim}'])), or re-import the files."
            )
        if coord.size < 2:
            continue
        steps = np.diff(coord)
        if not np.allclose(steps, steps[0], rtol=1e-6, atol=1e-6 * max(1.0, abs(steps[0]))) or steps[0] == 0:
            raise CubeError(
                f"irregular pixel spacing along '{dim}' (steps from {steps.min():g} to {steps.max():g} m). "
                "Fix: resample onto a regular grid (e.g. odc.geo xr_reproject or rioxarray reproject)."
            )
        # North-up like GeoTIFFs and STAC loads. The encoders' convolutions are not mirror-invariant, so a
        # flipped cube would give (slightly) different embeddings from the same ground.
        wrong = steps[0] > 0 if dim == "y" else steps[0] < 0
        if wrong:
            order, flip = ("south to north", "y") if dim == "y" else ("east to west", "x")
            raise CubeError(
                f"'{dim}' {'increases' if dim == 'y' else 'decreases'} (the {'rows' if dim == 'y' else 'columns'} run "
                f"{order}); the data model is north-up (y decreasing, x increasing), as the models were trained. "
                f"Fix: ds = ds.isel({flip}=slice(None, None, -1)) (`latentcube import` does this itself)."
            )
    crs = cube_crs(ds)
    if not crs.is_projected:
        raise CubeError(
            f"CRS {crs.name!r} is not projected; y/x must be metres. "
            "Fix: reproject to the local UTM zone, e.g. ds.rio.reproject(ds.rio.estimate_utm_crs())."
        )


def validate_cube(ds: xr.Dataset, *, require_s1: bool = False, require_s2: bool = True) -> xr.Dataset:
    """Check ``ds`` against the data model and return it unchanged; raise :class:`CubeError` otherwise.

    ``require_s2=False`` accepts a cube without ``s2`` (what an S1-only step reads); everything present is
    still checked.

    Range checks (DN vs reflectance, dB vs linear, nodata as 0) read a strided subsample of at most
    ``SAMPLE_CHUNKS_PER_AXIS``² spatial storage chunks, so validating a large lazy cube reads a small part of
    it; only a cube whose subsample has no valid S2 value is read in full.
    """
    if not isinstance(ds, xr.Dataset):
        raise CubeError(f"expected an xarray.Dataset, got {type(ds).__name__}. Fix: open it with open_cube().")
    if "s2" not in ds and "embedding" in ds:
        raise CubeError(
            "this is an embedding store (the output of `latentcube embed`), not an input cube: it has "
            f"variables {sorted(ds.data_vars)}. Fix: pass the S1/S2 cube it was made from; `latentcube info` "
            "describes embedding stores."
        )
    if "s2" not in ds:
        if require_s2 or "s1" not in ds:
            raise CubeError(
                f"missing 's2': the cube has variables {sorted(ds.data_vars)} but no Sentinel-2 reflectance. "
                "Fix: add s2 (time, band, y, x) or import your files with `latentcube import`."
            )
        _check_grid(ds)
    else:
        _check_s2(ds)
    _check_s1(ds, require_s1)
    if "s2_scl" in ds and tuple(ds["s2_scl"].dims) != ("time", "y", "x"):
        raise CubeError(f"'s2_scl' has dimensions {ds['s2_scl'].dims}; expected ('time', 'y', 'x').")
    return ds


def _check_s2(ds: xr.Dataset) -> None:
    _check_dims(ds, "s2", S2_DIMS)
    s2 = ds["s2"]
    bands = [str(b) for b in ds["band"].values] if "band" in ds.coords else []
    unknown = [b for b in bands if b not in S2_BANDS]
    if not bands or unknown:
        raise CubeError(
            f"S2 band names {unknown or 'missing'} are not Sentinel-2 L2A bands {list(S2_BANDS)}. "
            "Fix: label the 'band' coordinate with these names (importers take a band mapping)."
        )
    if bands != [b for b in S2_BANDS if b in bands]:
        raise CubeError(
            f"S2 bands {bands} are duplicated or out of the canonical order. "
            f"Fix: ds = ds.sel(band={[b for b in S2_BANDS if b in bands]})."
        )
    if s2.dtype != np.float32:
        raise CubeError(f"'s2' is {s2.dtype}, the data model stores float32. Fix: ds['s2'] = ds['s2'].astype('float32').")
    _check_times(ds, "time")
    _check_grid(ds)

    sample = _sample(s2)
    valid = sample[np.isfinite(sample)]
    if valid.size == 0 and not bool(_read(np.isfinite(s2).any())):
        raise CubeError(
            "no valid S2 observation: every s2 value is NaN. Fix: check the cloud mask, the nodata value "
            "and the date range."
        )
    if valid.size:
        p99 = float(np.percentile(valid, 99))
        big = valid[valid > S2_PHYSICAL_RANGE[1]]
        # Digital numbers of real reflectance stay far below 60000 (bright snow ~20000); above it are fill values
        # (65535, or 6.5535 once scaled by 1e-4) and absurd magnitudes (1e30).
        fill = big.size and (_FILL_SCALED[0] < np.median(big) < _FILL_SCALED[1] or np.median(big) > _MAX_DN)
        if p99 > S2_PHYSICAL_RANGE[1] and fill:
            values, counts = np.unique(big, return_counts=True)
            raise CubeError(
                f"s2 holds impossible reflectances (99th percentile {p99:.3g}, most often {values[counts.argmax()]:.6g}; "
                f"{_share_impossible(sample, 's2')} of the sampled values are infinite or outside the physical range "
                f"{list(S2_PHYSICAL_RANGE)}): a fill value stored as data, not digital numbers. Fix: mask it as NaN "
                "on import (--s2-nodata with the value the file stores, e.g. 65535 for 6.5535), or "
                "ds['s2'] = ds['s2'].where(abs(ds['s2']) <= 2)."
            )
        if p99 > S2_PHYSICAL_RANGE[1]:
            raise CubeError(
                f"s2 looks like unscaled digital numbers (99th percentile {p99:.0f}), not reflectance 0-1. "
                "Fix: divide by 10000 (after adding the -1000 offset for processing baseline >= 04.00): on "
                "`latentcube import` pass --s2-scale 1e-4 (and --s2-offset -0.1 for that offset) or the preset of a "
                "known export (--preset openeo or --preset worldcereal); in Python import_cube(..., s2_scale=1e-4, "
                "s2_offset=-0.1) or preset=...; in a cube built yourself ds['s2'] = ds['s2'] / 10000."
            )
        _check_zero_pixels(s2, "s2")
        if float(np.percentile(valid, 1)) < -0.2:
            raise CubeError(
                "s2 has many reflectances below -0.2. Fix: mask nodata/saturated pixels as NaN and check the "
                "baseline-04.00 offset (reflectance = (DN - 1000) / 10000)."
            )
    _check_impossible(sample, "s2")  # after the checks that name a better fix (digital numbers, offset)


def _check_s1(ds: xr.Dataset, require_s1: bool) -> None:
    if "s1" in ds:
        _check_dims(ds, "s1", S1_DIMS)
        _check_times(ds, "time_s1")
        bands_s1 = [str(b) for b in ds["band_s1"].values] if "band_s1" in ds.coords else []
        if not bands_s1 or any(b not in S1_BANDS for b in bands_s1) or bands_s1 != [b for b in S1_BANDS if b in bands_s1]:
            raise CubeError(
                f"S1 bands {bands_s1} must be a subset of {list(S1_BANDS)} in that order. "
                "Fix: label the 'band_s1' coordinate, e.g. ds.assign_coords(band_s1=['VV', 'VH'])."
            )
        if ds["s1"].dtype != np.float32:
            raise CubeError(f"'s1' is {ds['s1'].dtype}, the data model stores float32. Fix: .astype('float32').")
        s1_all = s1 = _sample(ds["s1"])
        s1 = s1[np.isfinite(s1)]
        if s1.size and (np.mean(s1 < 0) > 0.01 or np.median(s1) < 0):
            raise CubeError(
                f"s1 looks like decibels (median {np.median(s1):.1f}, {np.mean(s1 < 0):.0%} negative); the data "
                "model stores linear power. Fix: ds['s1'] = 10 ** (ds['s1'] / 10); on `latentcube import` pass "
                "--s1-encoding db, with --s1-scale for scaled integers (import_cube(..., s1_encoding='db'))."
            )
        _check_s1_encoding(ds, s1_all)  # before the zero-pixel and fill-value checks: their fixes would not help
        if s1.size:
            _check_zero_pixels(ds["s1"], "s1")
        _check_impossible(s1_all, "s1")
    elif require_s1:
        raise CubeError("missing 's1': this step needs Sentinel-1. Fix: fetch or import S1 (VV, VH) into the cube.")


"""import_cube: read S2/S1 files and layers, put them on the finest S2 grid, merge dates, build the cube."""

from __future__ import annotations

import glob
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from latentcube.constants import S1_BANDS, S2_BANDS, SCL_MASKED_DEFAULT
from latentcube.cube import CubeError, new_cube, validate_cube
from latentcube.cube_checks import check_s1_coverage
from latentcube.sources.importers._read import read_layer, read_source
from latentcube.sources.importers._regrid import _to_grid
from latentcube.sources.importers._settings import PRESETS, ImportSettings, PathLike, S1Encoding


def _combine(sources: list[xr.Dataset], what: str, duplicates: str) -> xr.Dataset:
    """Concatenate same-band files along time, merge different-band files (outer join on dates)."""
    groups: dict[tuple[str, ...], list[xr.Dataset]] = {}
    for ds in sources:
        groups.setdefault(tuple(sorted(map(str, ds.data_vars))), []).append(ds)
    parts = []
    for dss in groups.values():
        part = xr.concat(dss, dim="time") if len(dss) > 1 else dss[0]
        parts.append(_clean_times(part, what, duplicates))
    date_sets = [set(p["time"].values.tolist()) for p in parts]
    if len(parts) > 1 and any(s != date_sets[0] for s in date_sets):
        warnings.warn(
            f"{what} files have different dates ({[len(s) for s in date_sets]} dates); bands are NaN on the dates "
            "a file lacks.",
            stacklevel=3,
        )
    out = xr.merge(parts, join="outer", compat="override", combine_attrs="drop") if len(parts) > 1 else parts[0]
    if "SCL" in out:
        out["SCL"] = out["SCL"].fillna(0).astype("uint8")
    return out


def _clean_times(ds: xr.Dataset, what: str, duplicates: str) -> xr.Dataset:
    index = pd.DatetimeIndex(ds["time"].values)
    if not index.is_monotonic_increasing:
        warnings.warn(f"{what} dates were not sorted; sorted them.", stacklevel=4)
        ds = ds.sortby("time")
        index = pd.DatetimeIndex(ds["time"].values)
    if index.has_duplicates:
        dups = sorted({str(t)[:19] for t in index[index.duplicated()]})[:3]
        if duplicates == "error":
            raise CubeError(
                f"duplicate {what} dates {dups} (e.g. the same date in two files or two tiles). "
                "Fix: pass duplicates='first' or 'mean', or remove the overlapping file."
            )
        if duplicates == "first":
            ds = ds.isel(time=~index.duplicated())
        elif duplicates == "mean":
            scl = ds["SCL"].groupby("time").max() if "SCL" in ds else None
            ds = ds.drop_vars("SCL", errors="ignore").groupby("time").mean(skipna=True)
            if scl is not None:
                ds["SCL"] = scl
        else:
            raise CubeError(f"duplicates={duplicates!r}. Fix: use 'error', 'first' or 'mean'.")
    return ds


def _as_list(p: PathLike | Sequence[PathLike] | None) -> list[Path]:
    """Paths from a path, a list of paths, or glob patterns (``tifs/S2_*.tif``, expanded sorted)."""
    if p is None:
        return []
    items = [p] if isinstance(p, str | Path) else list(p)
    out: list[Path] = []
    for q in items:
        if isinstance(q, str) and any(ch in q for ch in "*?["):
            matches = sorted(glob.glob(q))
            if not matches:
                raise CubeError(f"no file matches {q!r}. Fix: check the pattern and the folder.")
            out.extend(Path(m) for m in matches)
        else:
            out.append(Path(q))
    return out


def _layer_files(layers: Mapping[str, PathLike | tuple[PathLike, str]] | None) -> dict[str, tuple[Path, str | None]]:
    """Each layer's file and variable; a glob pattern (as the S2/S1 files take) must match exactly one file."""
    out: dict[str, tuple[Path, str | None]] = {}
    for name, spec in (layers or {}).items():
        path, var = spec if isinstance(spec, tuple) else (spec, None)
        if isinstance(path, str) and any(ch in path for ch in "*?["):
            matches = sorted(glob.glob(path))
            if not matches:
                raise CubeError(f"layer {name}: no file matches {path!r} (relative to {Path.cwd()}). Fix: check the "
                                "pattern and the folder.")
            if len(matches) > 1:
                shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
                raise CubeError(f"layer {name}: {path!r} matches {len(matches)} files ({shown}); a layer is one file. "
                                f"Fix: narrow the pattern, or name the file, e.g. --layer "
                                f"{name}={matches[0]}{f':{var}' if var else ''} (Python: layers={{{name!r}: "
                                f"({matches[0]!r}, {var!r})}}).")
            path = matches[0]
        out[name] = (Path(path), var)
    return out


def _resolution(ds: xr.Dataset) -> float:
    return abs(float(ds["x"].values[1] - ds["x"].values[0])) if ds.sizes["x"] > 1 else np.inf


def import_cube(
    s2: PathLike | Sequence[PathLike],
    s1: PathLike | Sequence[PathLike] | None = None,
    *,
    preset: Literal["openeo", "worldcereal"] | None = None,
    band_map: Mapping[str, str] | None = None,
    s2_scale: float | None = None,
    s2_offset: float | None = None,
    s2_nodata: float | Sequence[float] | None = None,
    s1_encoding: S1Encoding | None = None,
    s1_scale: float | None = None,
    s1_offset: float | None = None,
    s1_nodata: float | Sequence[float] | None = None,
    time_dim: str | None = None,
    crs: Any = None,
    dates: Sequence[Any] | None = None,
    band_names: Sequence[str] | None = None,
    layers: Mapping[str, PathLike | tuple[PathLike, str]] | None = None,
    scl_mask: Sequence[int] | None = SCL_MASKED_DEFAULT,
    duplicates: Literal["error", "first", "mean"] = "error",
    validate: bool = True,
) -> xr.Dataset:
    """Import S2 (and optionally S1) files into one cube on the finest S2 grid.

    Args:
        s2: one or more S2 files (NetCDF ``.nc``, Zarr, GeoTIFF ``.tif``; glob patterns are expanded). Files with different bands
            (10 m and 20 m exports) are merged; files with the same bands are concatenated along time.
            A GeoTIFF holds one date (``dates=`` or a YYYYMMDD/YYYY-MM-DD in its name or a
            TIFFTAG_DATETIME tag); its raster bands are named by ``band_names`` or its band descriptions.
        s1: S1 files (VV/VH), kept on their own dates (``time_s1``) and put on the S2 grid (bilinear in
            linear power). A file name containing ASCENDING/DESCENDING sets an ``orbit_state`` coordinate.
        preset: ``"openeo"`` (openEO/CDSE exports) or ``"worldcereal"`` (WorldCereal/GEE extractions);
            explicit arguments override the preset.
        band_map: source variable -> ``B02``..``B12``, ``SCL``, ``VV``, ``VH`` (applies to all files).
        s2_scale, s2_offset: reflectance = DN × scale + offset (default: file attributes, else 1 and 0).
        s2_nodata, s1_nodata: raw values meaning nodata, besides the file's ``_FillValue``/``nodata``.
        s1_encoding: ``"linear"`` power, ``"db"`` (after scale/offset) or ``"openeo_uint16"``
            (dB = 20·log10(DN) − 83). Default ``"linear"`` unless the preset says otherwise.
        time_dim: the time dimension name (default: autodetect ``time``/``t``/``timestamp``/...).
        crs: CRS for files that record none (an error if it contradicts a file's own CRS).
        layers: extra ``(y, x)`` layers, ``{"landcover": path}`` or ``{"croptype": (path, "CT")}``;
            nearest-resampled onto the grid, values kept as stored.
        scl_mask: SCL classes set to NaN in ``s2`` (default 3, 8, 9, 10); ``None`` or ``()`` keeps all.
        duplicates: what to do with repeated dates: ``"error"``, keep the ``"first"``, or ``"mean"``.
        validate: run :func:`~latentcube.cube.validate_cube` on the result.

    Returns:
        A cube: ``s2`` float32 reflectance, optional ``s2_scl`` uint8, optional ``s1`` float32 linear
        power, layers; attrs record the source files and the settings used.
    """
    if preset is not None and preset not in PRESETS:
        raise CubeError(f"unknown preset {preset!r}. Fix: use one of {sorted(PRESETS)} or None.")
    settings = PRESETS[preset] if preset else ImportSettings()

    def tup(v: Any) -> tuple[float, ...] | None:
        return None if v is None else tuple(np.atleast_1d(v).tolist())

    overrides = {
        "s2_scale": s2_scale, "s2_offset": s2_offset, "s2_nodata": tup(s2_nodata), "s1_encoding": s1_encoding,
        "s1_scale": s1_scale, "s1_offset": s1_offset, "s1_nodata": tup(s1_nodata), "time_dim": time_dim,
        "band_map": dict(band_map) if band_map is not None else None,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})

    s2_paths, s1_paths = _as_list(s2), _as_list(s1)
    layer_files = _layer_files(layers)  # before any file is read: a bad pattern stops the import in a second
    if not s2_paths:
        raise CubeError("no S2 file given. Fix: pass s2=<path or list of paths>.")
    if dates is not None and len(dates) != len(s2_paths):
        raise CubeError(f"dates has {len(dates)} entries for {len(s2_paths)} S2 files. Fix: one date per GeoTIFF.")
    s2_src = [
        read_source(p, sensor="s2", settings=settings, crs=crs, band_names=band_names,
                    date=None if dates is None else dates[i])
        for i, p in enumerate(s2_paths)
    ]
    if s1_paths:
        s1_src = [read_source(p, sensor="s1", settings=settings, crs=crs) for p in s1_paths]
    else:
        s1_src = []
    seen = {v for src in s2_src + s1_src for v in src.variables}
    unused = [k for k in settings.band_map if k not in seen]
    if unused:
        raise CubeError(
            f"band_map names {unused}, found in none of the files (their variables: {sorted(seen)}). "
            "Fix: use the variable names as written in the files."
        )
    # Target grid: the finest S2 grid (first file among equals), in that file's CRS.
    ref = min(s2_src, key=lambda s: _resolution(s.ds))
    # North-up (the data model's orientation) whatever the file's: NetCDF exports often store y ascending.
    x, y, dst_crs = np.sort(ref.ds["x"].values), np.sort(ref.ds["y"].values)[::-1], ref.crs

    on_grid = []
    for src in s2_src:
        vars_ = {}
        for name, da in src.ds.data_vars.items():
            method = "nearest" if name == "SCL" else "bilinear"
            vars_[name] = _to_grid(da, src.crs, x, y, dst_crs, method)
        on_grid.append(xr.Dataset(vars_))
    merged = _combine(on_grid, "S2", duplicates)
    bands = [b for b in S2_BANDS if b in merged]
    if not bands:
        raise CubeError(f"the S2 files hold no reflectance band (only {sorted(merged.data_vars)}).")
    s2_arr = merged[bands].to_array("band").transpose("time", "band", "y", "x")
    scl = merged["SCL"] if "SCL" in merged else None
    if scl is not None and scl_mask:
        s2_arr = s2_arr.where(~scl.isin(list(scl_mask)))
    if scl is None and scl_mask and scl_mask != SCL_MASKED_DEFAULT:
        warnings.warn("scl_mask given but the S2 files have no SCL band; nothing masked.", stacklevel=2)

    s1_kwargs: dict[str, Any] = {}
    orbit = None
    if s1_paths:
        s1_on_grid = []
        for p, src in zip(s1_paths, s1_src, strict=True):
            ds1 = xr.Dataset({n: _to_grid(da, src.crs, x, y, dst_crs, "bilinear") for n, da in src.ds.data_vars.items()})
            state = re.search(r"(ASCENDING|DESCENDING)", p.name.upper())
            if state:
                ds1 = ds1.assign_coords(orbit_state=("time", [state.group(1).lower()] * ds1.sizes["time"]))
            s1_on_grid.append(ds1)
        s1_merged = _combine(s1_on_grid, "S1", duplicates)
        bands_s1 = [b for b in S1_BANDS if b in s1_merged]
        s1_arr = s1_merged[bands_s1].to_array("band_s1").transpose("time", "band_s1", "y", "x")
        s1_kwargs = {"s1": s1_arr.values, "time_s1": s1_merged["time"].values, "bands_s1": bands_s1}
        if "orbit_state" in s1_merged.coords:
            orbit = s1_merged["orbit_state"].values

    layer_arrays = {}
    for name, (lpath, lvar) in layer_files.items():
        da, lcrs = read_layer(lpath, lvar, crs=crs)
        layer_arrays[name] = _to_grid(da, lcrs, x, y, dst_crs, "nearest").values

    dropped = sorted({d for s in s2_src for d in s.dropped})
    attrs = {
        "source": "latentcube.sources.importers.import_cube",
        "import_preset": preset or "none",
        "import_s2_files": ", ".join(str(p) for p in s2_paths),
        "import_s1_files": ", ".join(str(p) for p in s1_paths),
        "import_s1_encoding": settings.s1_encoding,
        "import_scl_masked_classes": ", ".join(map(str, scl_mask or ())),
        "import_dropped_variables": ", ".join(dropped),
    }
    ds = new_cube(
        s2=s2_arr.values, time=merged["time"].values, y=y, x=x, crs=dst_crs, bands=bands,
        s2_scl=None if scl is None else scl.values, layers=layer_arrays, attrs=attrs, **s1_kwargs,
    )
    if orbit is not None:
        ds = ds.assign_coords(orbit_state=("time_s1", np.asarray(orbit, dtype=str)))
    if not validate:
        return ds
    validate_cube(ds)
    if s1_paths:  # S1 files on another grid or of other dates would import as all-NaN S1, silently
        check_s1_coverage(ds, what=f"S1 files {[p.name for p in s1_paths][:3]}",
                          fix="check their CRS, extent and dates against the S2 files', or import without them.")
    return ds

"""Import Sentinel-2 / Sentinel-1 time series from your own files into a latentcube cube.

Handles NetCDF, Zarr and GeoTIFF exports (openEO/CDSE, WorldCereal/Google Earth Engine, generic
stacks) with:

* a band mapping (source variable -> canonical S2 band, ``SCL``, ``VV`` or ``VH``); names such as
  ``S2-L2A-B04``, ``b4``, ``B8A`` or ``S1-SIGMA0-VV`` are recognised without one;
* scale/offset/nodata per sensor (explicit, from a preset, or from the file's CF attributes);
* Sentinel-1 encodings: linear power, dB, or openEO's uint16 dB (dB = 20·log10(DN) − 83);
* any time-dimension name (``t``, ``timestamp``, ``time``... autodetected);
* files at different resolutions (10 m and 20 m): everything is put on the finest S2 grid —
  bilinear (NaN-aware, as GDAL) for reflectance and backscatter, nearest for SCL and label layers;
* SCL cloud/shadow masking on import (classes :data:`~latentcube.constants.SCL_MASKED_DEFAULT`),
  keeping ``s2_scl`` in the cube;
* ``(y, x)`` label layers (e.g. WorldCereal ``LC``/``CT``/``IRR``).

Resampling on a shared CRS is done in coordinate space on pixel centres, so a 20 m pixel whose edges
coincide with 10 m edges covers exactly 2×2 10 m pixels: nearest copies the 20 m value into those four,
bilinear weights the two nearest 20 m centres 0.75/0.25 per axis (a 10 m centre is a quarter of a 20 m
pixel away from the nearest 20 m centre). Files in another CRS are warped with odc-geo.

The result passes :func:`latentcube.cube.validate_cube`; write it with :func:`latentcube.cube.save_cube`.
"""

from __future__ import annotations

import glob
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS

from latentcube.constants import S1_BANDS, S2_BANDS, SCL_MASKED_DEFAULT
from latentcube.cube import CubeError, new_cube, set_crs, validate_cube
from latentcube.cube_checks import check_s1_coverage

__all__ = [
    "PRESETS",
    "ImportSettings",
    "S1Encoding",
    "SourceFile",
    "canonical_band_name",
    "decode_openeo_s1",
    "import_cube",
    "parse_band_map",
    "parse_layers",
    "read_layer",
    "read_source",
]

PathLike = str | Path
S1Encoding = Literal["linear", "db", "openeo_uint16"]

#: Dimension names recognised as time, in order of preference.
TIME_DIM_NAMES: tuple[str, ...] = ("time", "t", "timestamp", "date", "dates", "time_s1", "datetime")

#: openEO/CDSE Sentinel-1 uint16 encoding (openeo-gfmap ``compress_backscatter_uint16``):
#: DN = 10^((dB + 83) / 20), i.e. dB = 20·log10(DN) − 83; DN 0 and 65535 are nodata.
OPENEO_S1_DB_OFFSET = 83.0
OPENEO_S1_NODATA: tuple[int, ...] = (0, 65535)
#: openEO/CDSE Sentinel-2 uint16 DN: 0 (no acquisition) and 65535 (the uint16 fill of composites) are nodata.
OPENEO_S2_NODATA: tuple[int, ...] = (0, 65535)

_TARGETS = frozenset(S2_BANDS) | frozenset(S1_BANDS) | {"SCL"}


@dataclass(frozen=True)
class ImportSettings:
    """How raw values become physical values. ``None`` fields fall back to the file's CF attributes.

    Physical value = raw × scale + offset (CF convention), after nodata values were set to NaN.
    For S2 L2A from processing baseline 04.00 on with the DN offset still applied, use
    ``s2_offset=-0.1`` (reflectance = (DN − 1000) / 10000).
    """

    s2_scale: float | None = None
    s2_offset: float | None = None
    s2_nodata: tuple[float, ...] | None = None
    s1_encoding: S1Encoding = "linear"
    s1_scale: float | None = None
    s1_offset: float | None = None
    s1_nodata: tuple[float, ...] | None = None
    time_dim: str | None = None
    band_map: Mapping[str, str] = field(default_factory=dict)


#: Presets for known export layouts (provenance: /work/shared/data/README.md and the exporters' code).
PRESETS: dict[str, ImportSettings] = {
    # openEO (CDSE) NetCDF exports: dimension 't', variables 'S2-L2A-B04', 'S2-L2A-SCL', 'S1-SIGMA0-VV';
    # S2 uint16 DN × 1e-4 with 0 and 65535 = nodata (monthly composites fill empty months with 65535);
    # S1 uint16 dB = 20·log10(DN) − 83, DN 0/65535 nodata. The file's _FillValue/nodata count too.
    "openeo": ImportSettings(
        s2_scale=1e-4, s2_offset=0.0, s2_nodata=OPENEO_S2_NODATA, s1_encoding="openeo_uint16", s1_nodata=OPENEO_S1_NODATA
    ),
    # WorldCereal / Google Earth Engine extractions: dimension 'timestamp', B02.. uint16 × 1e-4, 0 nodata;
    # S1 GRD 'VV'/'VH' int32 × 1e-4 = sigma0 in dB, 0 nodata.
    "worldcereal": ImportSettings(
        s2_scale=1e-4, s2_offset=0.0, s2_nodata=(0,), s1_encoding="db", s1_scale=1e-4, s1_offset=0.0,
        s1_nodata=(0,), time_dim="timestamp",
    ),
}


# ---------------------------------------------------------------------------------------- names


def canonical_band_name(name: str) -> str | None:
    """The canonical name (S2 band, ``SCL``, ``VV``, ``VH``) a source variable name denotes, else None.

    The last token after ``-``/``_``/``:``/``.``/space decides: ``S2-L2A-B04`` -> ``B04``, ``b4`` -> ``B04``,
    ``B8a`` -> ``B8A``, ``S1-SIGMA0-VV`` -> ``VV``, ``S2-L2A-SCL`` -> ``SCL``. ``B01`` maps to ``B01`` (not
    a model band; the importer drops it).
    """
    token = re.split(r"[-_:. ]", str(name).strip())[-1].upper()
    if token in ("VV", "VH", "SCL"):
        return token
    m = re.fullmatch(r"B0?(\d{1,2})(A?)", token)
    if m:
        return f"B{int(m.group(1)):02d}" if not m.group(2) else f"B{int(m.group(1))}A"
    return None


# ---------------------------------------------------------------------------------------- reading


def _crs_from_attrs(attrs: Mapping[str, Any]) -> CRS | None:
    for key in ("crs_wkt", "spatial_ref"):
        if attrs.get(key):
            return CRS.from_user_input(attrs[key])
    if "grid_mapping_name" in attrs:
        return CRS.from_cf(dict(attrs))
    return None


def _file_crs(ds: xr.Dataset, path: Path) -> CRS | None:
    """The CRS recorded in a NetCDF/Zarr dataset: grid_mapping variable, ``spatial_ref``/``crs``
    variable, or the global ``epsg``/``crs`` attributes (WorldCereal writes ``epsg='32631'``)."""
    candidates = [str(v.attrs["grid_mapping"]) for v in ds.data_vars.values() if "grid_mapping" in v.attrs]
    candidates += [str(v.encoding["grid_mapping"]) for v in ds.data_vars.values() if "grid_mapping" in v.encoding]
    candidates += ["spatial_ref", "crs"]
    for name in dict.fromkeys(candidates):
        if name in ds.variables:
            try:
                crs = _crs_from_attrs(ds[name].attrs)
            except Exception as err:
                raise CubeError(f"{path}: unreadable CRS in variable '{name}' ({err}). Fix: pass crs=.") from err
            if crs is not None:
                return crs
    for key in ("epsg", "EPSG"):
        if key in ds.attrs:
            return CRS.from_epsg(int(ds.attrs[key]))
    if "crs" in ds.attrs:
        text = str(ds.attrs["crs"]).replace("+init=", "")
        return CRS.from_user_input(text)
    return None


def _detect_time_dim(ds: xr.Dataset, time_dim: str | None, path: Path) -> str | None:
    if time_dim is not None:
        if time_dim not in ds.dims:
            raise CubeError(
                f"{path}: time dimension '{time_dim}' not found; the file has dimensions {list(ds.dims)}. "
                "Fix: pass time_dim= one of these (or leave it out to autodetect)."
            )
        return time_dim
    for name in TIME_DIM_NAMES:
        if name in ds.dims:
            return name
    for name in ds.dims:
        if name in ds.coords and np.issubdtype(ds[name].dtype, np.datetime64):
            return str(name)
    return None


def _spatial_dims(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """Rename lon/lat or easting/northing style dimension names to y/x."""
    renames = {}
    for cands, target in ((("x", "X", "easting", "lon", "longitude"), "x"), (("y", "Y", "northing", "lat", "latitude"), "y")):
        found = [c for c in cands if c in ds.dims]
        if not found:
            raise CubeError(f"{path}: no '{target}' dimension among {list(ds.dims)}. Fix: rename the spatial dimensions to y/x.")
        if found[0] != target:
            renames[found[0]] = target
    return ds.rename(renames) if renames else ds


def _dates_from_name(path: Path) -> pd.Timestamp | None:
    m = re.search(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)", path.stem)
    if not m:
        return None
    try:
        return pd.Timestamp(f"{m.group(1)}-{m.group(2)}-{m.group(3)}")
    except ValueError:
        return None


def _read_geotiff(path: Path, date: Any, band_names: Sequence[str] | None) -> tuple[xr.Dataset, CRS | None]:
    """One GeoTIFF = one date; raster bands = variables named by ``band_names`` or the band descriptions."""
    import rasterio

    with rasterio.open(path) as src:
        data = src.read()
        names = list(band_names) if band_names else [d or "" for d in src.descriptions]
        if len(names) != src.count or not all(names):
            raise CubeError(
                f"{path}: {src.count} raster bands but band names {names}. Fix: pass band_names=[...] "
                "(one name per raster band, in file order) or write band descriptions."
            )
        transform, crs = src.transform, (CRS.from_user_input(src.crs.to_wkt()) if src.crs else None)
        nodata = src.nodata
        if transform.b != 0 or transform.d != 0:
            raise CubeError(f"{path}: rotated GeoTIFF grids are not supported. Fix: warp to a north-up grid (gdalwarp).")
        x = transform.c + transform.a * (np.arange(src.width) + 0.5)
        y = transform.f + transform.e * (np.arange(src.height) + 0.5)
        tags = src.tags()
    if date is None:
        date = tags.get("TIFFTAG_DATETIME") or tags.get("date") or tags.get("time") or _dates_from_name(path)
        if isinstance(date, str) and re.fullmatch(r"\d{4}:\d{2}:\d{2} .*", date):
            date = date.replace(":", "-", 2)
    if date is None:
        raise CubeError(
            f"{path}: no acquisition date (no date in the file name, no TIFFTAG_DATETIME/date tag). "
            "Fix: pass dates=[...] with one date per GeoTIFF."
        )
    time = pd.DatetimeIndex([pd.Timestamp(date)])
    attrs = {} if nodata is None else {"_FillValue": nodata}
    ds = xr.Dataset(
        {n: (("time", "y", "x"), data[i][None], dict(attrs)) for i, n in enumerate(names)},
        coords={"time": time.values.astype("datetime64[ns]"), "y": y, "x": x},
    )
    return ds, crs


def _open(path: Path, *, time_dim: str | None, date: Any = None, band_names: Sequence[str] | None = None,
          crs: Any = None, need_time: bool = True) -> tuple[xr.Dataset, CRS, str | None]:
    """Open a file raw (no CF masking/scaling: we apply it once, explicitly) -> (ds, crs, time dim)."""
    if not path.exists():
        raise CubeError(f"no such file: {path}. Fix: check the path.")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        ds, file_crs = _read_geotiff(path, date, band_names)
        tdim = "time"
    else:
        try:
            if suffix == ".zarr" or path.is_dir():
                ds = xr.open_dataset(path, engine="zarr", mask_and_scale=False, decode_coords=False)
            else:
                # mask_and_scale=False: WorldCereal's int64 angle attributes break CF decoding, and we
                # must not apply scale factors twice.
                ds = xr.open_dataset(path, mask_and_scale=False, decode_coords=False)
        except Exception as err:
            raise CubeError(f"cannot read {path} as NetCDF/Zarr: {err}") from err
        ds = _spatial_dims(ds, path)
        file_crs = _file_crs(ds, path)
        tdim = _detect_time_dim(ds, time_dim, path)
        if tdim is None and need_time:
            raise CubeError(
                f"{path}: no time dimension among {list(ds.dims)} (looked for {list(TIME_DIM_NAMES)} or a datetime "
                "coordinate). Fix: pass time_dim='<name>'."
            )
        if tdim is not None and not np.issubdtype(ds[tdim].dtype, np.datetime64):
            try:
                ds = ds.assign_coords({tdim: pd.to_datetime(ds[tdim].values)})
            except Exception as err:
                raise CubeError(f"{path}: cannot read the dates of '{tdim}' ({err}). Fix: store CF time units.") from err
    given = CRS.from_user_input(crs) if crs is not None else None
    if file_crs is None and given is None:
        raise CubeError(
            f"missing CRS: {path} records none (no grid_mapping/spatial_ref/crs variable, no epsg attribute, "
            "no GeoTIFF CRS). Fix: pass crs='EPSG:<code>'."
        )
    if file_crs is not None and given is not None and not file_crs.equals(given):
        raise CubeError(
            f"{path}: file CRS {file_crs.to_string()} differs from crs={given.to_string()}. "
            "Fix: drop crs= (the file's CRS is used) or fix the file."
        )
    return ds, (file_crs or given), tdim


def _as_unsigned(raw: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    # NetCDF3-style unsigned storage: openEO writes uint16 as int16 with _Unsigned='true'.
    if str(attrs.get("_Unsigned", "")).lower() == "true" and np.issubdtype(raw.dtype, np.signedinteger):
        return raw.view(raw.dtype.str.replace("i", "u"))
    return raw


def _nodata_values(attrs: Mapping[str, Any], explicit: tuple[float, ...] | None) -> tuple[float, ...]:
    """The given nodata values and the file's own (``_FillValue``, ``missing_value``, ``nodata``): a value
    the file declares as fill is never a measurement, whatever else is given."""
    vals = list(explicit or ())
    for key in ("_FillValue", "missing_value", "nodata"):
        if key in attrs:
            vals.extend(np.atleast_1d(attrs[key]).tolist())
    return tuple(v for v in vals if v is not None)


def _decode(var: xr.DataArray, *, kind: str, settings: ImportSettings) -> xr.DataArray:
    """Raw -> physical float32 (S2 reflectance, S1 linear power) or uint8 (SCL), NaN/0 for nodata."""
    raw = _as_unsigned(np.asarray(var.values), var.attrs)
    if kind == "SCL":
        nod = _nodata_values(var.attrs, None)
        out = raw.astype("uint8")
        out[np.isin(raw, nod)] = 0  # SCL 0 = no_data
        return var.copy(data=out)
    if kind == "s2":
        scale, offset, nod = settings.s2_scale, settings.s2_offset, settings.s2_nodata
    else:
        scale, offset, nod = settings.s1_scale, settings.s1_offset, settings.s1_nodata
    nodata = _nodata_values(var.attrs, nod)
    if np.issubdtype(raw.dtype, np.unsignedinteger):  # a signed fill of _Unsigned storage (-1) means 65535
        nodata = tuple(v + 2 ** (8 * raw.dtype.itemsize) if v < 0 else v for v in nodata)
    invalid = np.isin(raw, nodata) if nodata else np.zeros(raw.shape, bool)
    values = raw.astype("float64")
    if kind == "s1" and settings.s1_encoding == "openeo_uint16":
        with np.errstate(divide="ignore", invalid="ignore"):
            db = 20.0 * np.log10(values) - OPENEO_S1_DB_OFFSET
        db[invalid] = np.nan
        lin = 10.0 ** (db / 10.0)
        return var.copy(data=lin.astype("float32"))
    scale = float(var.attrs.get("scale_factor", 1.0)) if scale is None else float(scale)
    offset = float(var.attrs.get("add_offset", 0.0)) if offset is None else float(offset)
    values = values * scale + offset
    values[invalid | ~np.isfinite(values)] = np.nan
    if kind == "s1" and settings.s1_encoding == "db":
        values = 10.0 ** (values / 10.0)
    elif kind == "s1" and settings.s1_encoding != "linear":
        raise CubeError(f"unknown s1_encoding {settings.s1_encoding!r}. Fix: use 'linear', 'db' or 'openeo_uint16'.")
    return var.copy(data=values.astype("float32"))


@dataclass
class SourceFile:
    """One file decoded to physical units on its own grid: ``ds`` has one ``(time, y, x)`` variable per
    canonical band, ``crs`` is the file's CRS, ``dropped`` lists the variables that are not model bands."""

    path: Path
    ds: xr.Dataset
    crs: CRS
    dropped: list[str]
    variables: list[str] = field(default_factory=list)


def read_source(
    path: PathLike,
    *,
    sensor: Literal["s2", "s1"],
    settings: ImportSettings = ImportSettings(),
    crs: Any = None,
    date: Any = None,
    band_names: Sequence[str] | None = None,
) -> SourceFile:
    """Read one S2 or S1 file and decode its bands to physical units on the file's own grid.

    Returns a small record with ``ds`` (variables named by canonical band, dims ``(time, y, x)``),
    its ``crs`` and the names of ``dropped`` variables (not model bands: B01, AOT, angles...).
    """
    path = Path(path)
    raw, file_crs, tdim = _open(path, time_dim=settings.time_dim, date=date, band_names=band_names, crs=crs)
    if tdim != "time":
        raw = raw.rename({tdim: "time"})
    explicit = dict(settings.band_map)
    bad_targets = {k: v for k, v in explicit.items() if v not in _TARGETS}
    if bad_targets:
        raise CubeError(
            f"unknown band name(s) in band_map: {bad_targets}. Fix: map to Sentinel-2 bands {list(S2_BANDS)}, "
            f"'SCL', or Sentinel-1 {list(S1_BANDS)}."
        )
    candidates = [str(n) for n, v in raw.data_vars.items() if set(v.dims) == {"time", "y", "x"}]
    wanted = set(S2_BANDS) | {"SCL"} if sensor == "s2" else set(S1_BANDS)
    mapping: dict[str, str] = {}
    for name in candidates:
        target = explicit.get(name, canonical_band_name(name) if name not in explicit else None)
        if target in wanted and target not in mapping.values():
            mapping[name] = target
    if not mapping:
        missing_src = [k for k in explicit if k not in raw.variables]
        if missing_src:
            raise CubeError(
                f"{path}: band_map names {missing_src} but the file's variables are "
                f"{sorted(map(str, raw.data_vars))}. Fix: use the variable names as written in the file."
            )
        raise CubeError(
            f"{path}: no {'Sentinel-2 band' if sensor == 's2' else 'Sentinel-1 VV/VH'} variable recognised among "
            f"{sorted(map(str, candidates))}. Fix: pass band_map={{'<variable>': '<band>'}} "
            f"(targets {[b for b in (*S2_BANDS, 'SCL', *S1_BANDS) if b in wanted]})."
        )
    out = {}
    for name, target in mapping.items():
        kind = "SCL" if target == "SCL" else sensor
        da = raw[name].transpose("time", "y", "x")
        out[target] = _decode(da, kind=kind, settings=settings).drop_vars(
            [c for c in da.coords if c not in ("time", "y", "x")]
        )
    ds = xr.Dataset(out).assign_coords(
        time=raw["time"].values.astype("datetime64[ns]"),
        y=np.asarray(raw["y"].values, "float64"),
        x=np.asarray(raw["x"].values, "float64"),
    )
    dropped = sorted(str(n) for n in raw.data_vars if n not in mapping and n not in ("crs", "spatial_ref"))
    return SourceFile(path, ds, file_crs, dropped, [str(n) for n in raw.variables])


# ------------------------------------------------------------------------------------ resampling


def _edges(c: np.ndarray) -> tuple[float, float, float]:
    step = float(c[1] - c[0]) if c.size > 1 else 1.0
    return float(min(c[0], c[-1]) - abs(step) / 2), float(max(c[0], c[-1]) + abs(step) / 2), step


def _pad_edge(da: xr.DataArray, dim: str) -> xr.DataArray:
    """Replicate the edge rows/columns one step outwards so that targets between the outermost source
    centre and the source edge get the edge value (GDAL-like clamping) instead of NaN."""
    c = da[dim].values
    if c.size < 2:
        return da
    step = c[1] - c[0]
    first = da.isel({dim: [0]}).assign_coords({dim: [c[0] - step]})
    last = da.isel({dim: [-1]}).assign_coords({dim: [c[-1] + step]})
    return xr.concat([first, da, last], dim=dim)


def _same_or_reversed(source: np.ndarray, target: np.ndarray) -> slice | None:
    """The slice putting ``source`` coordinates in ``target``'s order when they are the same grid in the
    same or reversed order (a south-up file onto its own north-up grid), else None."""
    if source.shape != target.shape:
        return None
    # Absolute tolerance of a thousandth of a pixel: numpy's default rtol would accept shifts of ~50 m at
    # UTM northings (a half-pixel-shifted file taken as the same grid).
    atol = 1e-3 * abs(float(target[1] - target[0])) if target.size > 1 else 1e-6
    if np.allclose(source, target, rtol=0.0, atol=atol):
        return slice(None)
    return slice(None, None, -1) if np.allclose(source[::-1], target, rtol=0.0, atol=atol) else None


def _to_grid_same_crs(da: xr.DataArray, x: np.ndarray, y: np.ndarray, method: str) -> xr.DataArray:
    sx, sy = da["x"].values, da["y"].values
    order_x, order_y = _same_or_reversed(sx, x), _same_or_reversed(sy, y)
    if order_x is not None and order_y is not None:  # the same pixels: reorder exactly, no resampling
        return da.isel(x=order_x, y=order_y).assign_coords(x=x, y=y)
    if method == "nearest":
        # Half a source pixel of tolerance: targets outside the source footprint get nodata.
        tol_x, tol_y = abs(_edges(sx)[2]) / 2 * (1 + 1e-9), abs(_edges(sy)[2]) / 2 * (1 + 1e-9)
        fill = 0 if np.issubdtype(da.dtype, np.integer) else np.nan
        out = da.reindex(x=x, method="nearest", tolerance=tol_x, fill_value=fill)
        return out.reindex(y=y, method="nearest", tolerance=tol_y, fill_value=fill)
    # NaN-aware bilinear, GDAL's semantics with a nodata value (checked against rasterio.warp in the
    # tests): a target whose covering source pixel is NaN stays NaN (no values invented inside masked
    # pixels); otherwise values (NaN -> 0) and validity weights are interpolated separately and divided,
    # so a NaN neighbour drops its weight instead of spreading NaN.
    valid = np.isfinite(da)
    num = _pad_edge(_pad_edge(da.where(valid, 0.0), "x"), "y").interp(x=x, y=y, method="linear")
    den = _pad_edge(_pad_edge(valid.astype("float64"), "x"), "y").interp(x=x, y=y, method="linear")
    covering_valid = _to_grid_same_crs(valid.astype("uint8"), x, y, "nearest") == 1  # 0 outside footprint
    out = (num / den).where((den > 1e-9) & covering_valid)
    return out.astype(da.dtype)


def _to_grid(da: xr.DataArray, src_crs: CRS, x: np.ndarray, y: np.ndarray, dst_crs: CRS, method: str) -> xr.DataArray:
    """Put ``da`` (``(..., y, x)``) on the target pixel centres ``x``/``y`` of ``dst_crs``."""
    if src_crs.equals(dst_crs):
        return _to_grid_same_crs(da, x, y, method)
    from odc.geo.xr import xr_reproject

    template = set_crs(xr.Dataset(coords={"y": y, "x": x}), dst_crs)
    src = set_crs(da.to_dataset(name="v"), src_crs)["v"]
    is_int = np.issubdtype(da.dtype, np.integer)
    out = xr_reproject(
        src if not is_int else src, template.odc.geobox, resampling=method,
        dst_nodata=0 if is_int else np.nan,
    )
    out = out.rename({d: n for d, n in zip(out.dims[-2:], ("y", "x"), strict=True)})
    out = out.assign_coords(y=y, x=x)
    return out.drop_vars([c for c in out.coords if c not in da.dims and c not in ("y", "x")]).astype(da.dtype)


# ---------------------------------------------------------------------------------------- combine


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


def _resolution(ds: xr.Dataset) -> float:
    return abs(float(ds["x"].values[1] - ds["x"].values[0])) if ds.sizes["x"] > 1 else np.inf


# ----------------------------------------------------------------------------------------- layers


def read_layer(path: PathLike, variable: str | None = None, *, crs: Any = None) -> tuple[xr.DataArray, CRS]:
    """Read a ``(y, x)`` raster layer (labels, land cover) raw, with its CRS.

    NetCDF/Zarr: ``variable`` names the variable (optional when the file has exactly one ``(y, x)``
    variable). GeoTIFF: ``variable`` is the 1-based band number as a string (default "1").
    Values are kept as stored (integer class codes stay integers; nodata values are kept as stored).
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        if not path.exists():
            raise CubeError(f"no such file: {path}. Fix: check the path.")
        with rasterio.open(path) as src:
            band = int(variable or 1)
            data = src.read(band)
            t = src.transform
            x = t.c + t.a * (np.arange(src.width) + 0.5)
            y = t.f + t.e * (np.arange(src.height) + 0.5)
            file_crs = CRS.from_user_input(src.crs.to_wkt()) if src.crs else None
        da = xr.DataArray(data, dims=("y", "x"), coords={"y": y, "x": x})
        if file_crs is None and crs is None:
            raise CubeError(f"missing CRS: {path} records none. Fix: pass crs='EPSG:<code>'.")
        return da, file_crs or CRS.from_user_input(crs)
    ds, file_crs, _ = _open(path, time_dim=None, crs=crs, need_time=False)
    layers = [str(n) for n, v in ds.data_vars.items() if set(v.dims) == {"y", "x"}]
    if variable is None:
        if len(layers) != 1:
            raise CubeError(
                f"{path}: {len(layers)} (y, x) variables {layers}; say which one. Fix: layers={{'name': (path, '<var>')}}."
            )
        variable = layers[0]
    if variable not in ds:
        raise CubeError(f"{path}: no variable '{variable}'; (y, x) variables are {layers}.")
    da = ds[variable].transpose("y", "x")
    da = da.copy(data=_as_unsigned(np.asarray(da.values), da.attrs))
    return da.drop_vars([c for c in da.coords if c not in ("y", "x")]), file_crs


# ----------------------------------------------------------------------------------------- import


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
    for name, spec in (layers or {}).items():
        lpath, lvar = (spec if isinstance(spec, tuple) else (spec, None))
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


def decode_openeo_s1(dn: np.ndarray) -> np.ndarray:
    """openEO uint16 backscatter DN -> dB (20·log10(DN) − 83), NaN for DN 0 and 65535."""
    dn = np.asarray(dn, dtype="float64")
    with np.errstate(divide="ignore"):
        db = 20.0 * np.log10(dn) - OPENEO_S1_DB_OFFSET
    db[np.isin(dn, OPENEO_S1_NODATA)] = np.nan
    return db


# ------------------------------------------------------------------------------------ CLI helpers


def parse_band_map(items: Sequence[str] | None) -> dict[str, str] | None:
    """``["red=B04", "nir=B08"]`` (the CLI's repeated ``--band-map``) -> ``{"red": "B04", "nir": "B08"}``."""
    if not items:
        return None
    out = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise CubeError(f"--band-map {item!r}: expected SOURCE=BAND, e.g. red=B04 or S1-SIGMA0-VV=VV.")
        out[src.strip()] = dst.strip()
    return out


def parse_layers(items: Sequence[str] | None) -> dict[str, str | tuple[str, str]] | None:
    """``["landcover=labels.nc:LC", "mask=mask.tif"]`` (repeated ``--layer NAME=PATH[:VARIABLE]``) ->
    ``{"landcover": ("labels.nc", "LC"), "mask": "mask.tif"}``. The text after the last ``:`` is a
    variable name only when it contains no path separator or dot (so ``C:\\x.tif`` stays a path)."""
    if not items:
        return None
    out: dict[str, str | tuple[str, str]] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise CubeError(f"--layer {item!r}: expected NAME=PATH or NAME=PATH:VARIABLE, e.g. landcover=labels.nc:LC.")
        path, colon, var = spec.rpartition(":")
        if colon and path and var and not any(ch in var for ch in "/\\.") and len(path) > 1:
            out[name.strip()] = (path, var)
        else:
            out[name.strip()] = spec
    return out

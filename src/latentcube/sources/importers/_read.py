"""Reading one exported file (NetCDF, Zarr, GeoTIFF): its bands decoded to physical units on its own grid."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS

from latentcube.constants import S1_BANDS, S2_BANDS
from latentcube.cube import CubeError
from latentcube.sources.importers._settings import (
    _TARGETS,
    OPENEO_S1_DB_OFFSET,
    ImportSettings,
    PathLike,
    canonical_band_name,
)

#: Dimension names recognised as time, in order of preference.
TIME_DIM_NAMES: tuple[str, ...] = ("time", "t", "timestamp", "date", "dates", "time_s1", "datetime")


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
        # Values that are not dB (digital numbers: hundreds to thousands) overflow to inf here; they are kept
        # as inf, without a RuntimeWarning, so that validate_cube refuses them with the encoding to use.
        with np.errstate(over="ignore"):
            values = 10.0 ** (values / 10.0)
    elif kind == "s1" and settings.s1_encoding != "linear":
        raise CubeError(f"unknown s1_encoding {settings.s1_encoding!r}. Fix: use 'linear', 'db' or 'openeo_uint16'.")
    with np.errstate(over="ignore"):  # beyond float32 -> inf, refused by validate_cube as impossible values
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

"""Putting a file's bands on the cube's grid: exact reorder, NaN-aware bilinear, nearest, or odc-geo warp."""

from __future__ import annotations

import numpy as np
import xarray as xr
from pyproj import CRS

from latentcube.cube import set_crs


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

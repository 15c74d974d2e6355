"""The cube data model: one ``xarray.Dataset`` per area, its validation and its Zarr/NetCDF I/O.

Convention (docs/data-model.md):

* ``s2``: float32 ``(time, band, y, x)``, surface reflectance 0-1, NaN where invalid; bands a subset of
  :data:`latentcube.constants.S2_BANDS` in that order (models need all ten).
* ``s1``: float32 ``(time_s1, band_s1, y, x)``, backscatter in linear power (gamma0 or sigma0), NaN invalid.
* ``y``/``x``: pixel-centre coordinates in metres of a projected CRS, regular spacing, recorded CF-style in
  a scalar ``spatial_ref`` coordinate (read by rioxarray and odc-geo) that every spatial variable names
  in its ``grid_mapping`` attribute.
* optional ``s2_scl`` ``(time, y, x)`` uint8 scene classes, ``landcover`` ``(y, x)``, other ``(y, x)`` layers.
* attrs: ``latentcube_version``, ``source`` (provenance) and free-form provenance keys.

Modules, in the order data meets them: ``_model`` (value ranges, CRS, :func:`new_cube`), ``_sample`` (cheap
strided reads), ``_validate`` (:func:`validate_cube`), ``_store`` (:func:`open_cube`, :func:`save_cube`),
``_summary`` (:func:`cube_summary`). Import from ``latentcube.cube``; the submodules are private.
"""

from __future__ import annotations

from latentcube.cube._model import (
    S1_PHYSICAL_RANGE,
    S2_PHYSICAL_RANGE,
    CubeError,
    cube_crs,
    impossible_values,
    new_cube,
    set_crs,
)
from latentcube.cube._sample import SAMPLE_CHUNKS_PER_AXIS
from latentcube.cube._store import ALL_CHUNKS_ATTR, is_cube_store, open_cube, save_cube
from latentcube.cube._summary import cube_summary, default_model_bands_note, pixel_size_m
from latentcube.cube._validate import ZERO_PIXEL_ERROR_FRACTION, validate_cube

__all__ = [
    "ALL_CHUNKS_ATTR",
    "SAMPLE_CHUNKS_PER_AXIS",
    "ZERO_PIXEL_ERROR_FRACTION",
    "S1_PHYSICAL_RANGE",
    "S2_PHYSICAL_RANGE",
    "CubeError",
    "cube_crs",
    "impossible_values",
    "is_cube_store",
    "cube_summary",
    "default_model_bands_note",
    "new_cube",
    "open_cube",
    "pixel_size_m",
    "save_cube",
    "set_crs",
    "validate_cube",
]

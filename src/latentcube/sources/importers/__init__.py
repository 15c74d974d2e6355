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

Modules, in the order a file meets them: ``_settings`` (presets, band names, scale/offset/nodata, the CLI's
``--band-map``/``--layer`` syntax), ``_read`` (one file -> physical units on its own grid), ``_regrid``
(onto the cube's grid), ``_import`` (:func:`import_cube`). Import from ``latentcube.sources.importers``.
"""

from __future__ import annotations

from latentcube.sources.importers._import import import_cube
from latentcube.sources.importers._read import TIME_DIM_NAMES, SourceFile, read_layer, read_source
from latentcube.sources.importers._settings import (
    OPENEO_S1_DB_OFFSET,
    OPENEO_S1_NODATA,
    OPENEO_S2_NODATA,
    PRESETS,
    ImportSettings,
    S1Encoding,
    canonical_band_name,
    decode_openeo_s1,
    parse_band_map,
    parse_layers,
)

__all__ = [
    "OPENEO_S1_DB_OFFSET",
    "OPENEO_S1_NODATA",
    "OPENEO_S2_NODATA",
    "PRESETS",
    "TIME_DIM_NAMES",
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

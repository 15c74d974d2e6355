"""Fetch Sentinel-2 L2A + Sentinel-1 RTC cubes from a STAC API (Microsoft Planetary Computer by default).

The paper (§II Data) builds each training cube from Sentinel-2 L2A (ten 10/20 m bands, every acquisition
of a 12-month period) and the spatially and temporally aligned Sentinel-1 RTC gamma0 from Planetary
Computer. :func:`fetch_cube` does exactly that for one area:

1. search ``sentinel-2-l2a`` and ``sentinel-1-rtc`` with pystac-client (bbox, ``start/end``, optional
   ``eo:cloud_cover < max`` query), sign the items with :func:`planetary_computer.sign`;
2. load them lazily (Dask) with :func:`odc.stac.load` onto one UTM grid aligned to the pixel size
   (10 m): 20 m bands bilinear, SCL nearest, same-day tiles mosaicked (``groupby="solar_day"``);
3. convert digital numbers to reflectance per item *before* mosaicking, so the processing-baseline
   04.00 offset (-1000 DN, 25 Jan 2022 on) is never applied to a tile that does not have it:
   ``reflectance = (DN + offset) / 10000``, DN 0 -> NaN;
4. optionally mask clouds (:mod:`latentcube.sources.masks`) and apply the NBAR correction
   (:mod:`latentcube.sources.brdf`);
5. return a Dataset in the cube data model (:mod:`latentcube.cube`).

:func:`fetch_sites` runs :func:`fetch_cube` for every row of a site plan and writes one Zarr cube per
row, resumable: a cube counts as done only once it was written completely.

Nothing here touches the network at import time; tests pass a fake catalog or a list of local items.

Modules, in the order a fetch runs them: ``_search`` (grid, dates, item search), ``_load`` (odc-stac loads of
S2 and S1), ``_fetch`` (:func:`fetch_cube`), ``_sites`` (:func:`fetch_sites`). Import from
``latentcube.sources.stac``.
"""

from __future__ import annotations

from latentcube.sources.stac._fetch import DEFAULT_CHUNKS, Signer, fetch_cube
from latentcube.sources.stac._load import boa_offset, dedupe_s2_items
from latentcube.sources.stac._search import (
    PC_STAC_URL,
    S1_COLLECTION,
    S2_COLLECTION,
    Catalog,
    StacError,
    make_geobox,
    search_items,
    utm_crs,
)
from latentcube.sources.stac._sites import COMPLETE_MARKER, cube_is_complete, fetch_sites, read_plan

__all__ = [
    "COMPLETE_MARKER",
    "StacError",
    "Catalog",
    "Signer",
    "DEFAULT_CHUNKS",
    "PC_STAC_URL",
    "S1_COLLECTION",
    "S2_COLLECTION",
    "boa_offset",
    "cube_is_complete",
    "dedupe_s2_items",
    "fetch_cube",
    "fetch_sites",
    "make_geobox",
    "read_plan",
    "search_items",
    "utm_crs",
]

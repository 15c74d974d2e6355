"""fetch_cube: search, sign and lazily load one S2 L2A (+ S1 RTC) cube of an area, masked and described."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pystac
import xarray as xr

from latentcube import __version__
from latentcube.constants import S2_BANDS, S2_WAVELENGTH_NM
from latentcube.cube import CubeError, set_crs
from latentcube.sources.masks import CloudMask, SCLMask, apply_mask
from latentcube.sources.stac._load import _S1_ASSETS, _load_s1, _load_s2, dedupe_s2_items
from latentcube.sources.stac._search import (
    PC_STAC_URL,
    S1_COLLECTION,
    S2_COLLECTION,
    Catalog,
    _check_bbox,
    _datetime_range,
    _lonlat_bbox,
    make_geobox,
    search_items,
)

#: The package's logger: users configure "latentcube.sources.stac", not its private modules.
log = logging.getLogger("latentcube.sources.stac")

#: Dask chunks at load time: one date per chunk so a date can be dropped without reading others.
DEFAULT_CHUNKS: dict[str, int] = {"time": 1, "x": 512, "y": 512}

Signer = Callable[[pystac.Item], pystac.Item]


def _resolve_signer(sign: bool | Signer | None) -> Signer | None:
    if sign is True:
        import planetary_computer

        return planetary_computer.sign
    if sign in (False, None):
        return None
    if callable(sign):
        return sign
    raise TypeError(f"sign must be True, False or a callable Item -> Item, got {sign!r}.")


def _resolve_mask(mask: CloudMask | str | None) -> CloudMask | None:
    if mask is None or mask == "none":
        return None
    if mask == "scl":
        return SCLMask()
    if isinstance(mask, str):
        raise ValueError(f"unknown mask {mask!r}: use 'scl', 'none', None or a CloudMask such as ModelMask(...).")
    return mask


def fetch_cube(
    *,
    bbox: Sequence[float] | None = None,
    center: Sequence[float] | None = None,
    edge_m: float | None = None,
    start: Any,
    end: Any,
    crs: Any = None,
    resolution: float = 10.0,
    s2_bands: Sequence[str] = S2_BANDS,
    include_s1: bool = True,
    max_cloud_cover: float | None = None,
    mask: CloudMask | str | None = "scl",
    min_valid_fraction: float = 0.0,
    nbar: bool = False,
    chunks: Mapping[str, int] | None = None,
    catalog: Catalog = None,
    sign: bool | Signer | None = True,
    progress: bool = True,
) -> xr.Dataset:
    """Search, sign and lazily load one S2 L2A (+ S1 RTC) cube in the latentcube data model.

    Args:
        bbox: (west, south, east, north) in degrees; or ``center`` (lon, lat) with ``edge_m`` (metres).
        start, end: acquisition dates, both inclusive (STAC ``start/end`` semantics), e.g. "2020-01-01".
        crs: output CRS; default the UTM zone of the area's centre. resolution: pixel size in metres.
        s2_bands: subset of :data:`~latentcube.constants.S2_BANDS`, kept in canonical order.
        include_s1: also load Sentinel-1 RTC VV/VH gamma0 (linear) on the same grid.
        max_cloud_cover: scene cloud cover limit in percent, sent as ``query={"eo:cloud_cover": {"lt": ...}}``.
        mask: ``"scl"`` (default, :class:`~latentcube.sources.masks.SCLMask`), None/"none", or any
            :class:`~latentcube.sources.masks.CloudMask` (e.g. ``ModelMask``); masked S2 pixels become NaN.
        min_valid_fraction: drop dates whose fraction of valid (observed, unmasked) pixels is below it (0-1).
        nbar: apply the sen2nbar c-factor (needs ``pip install latentcube[nbar]``).
        chunks: Dask chunks at load (default :data:`DEFAULT_CHUNKS`).
        catalog: ``None`` (Planetary Computer), a URL, a ``pystac_client.Client``/object with ``.search``,
            or a list of :class:`pystac.Item` (offline).
        sign: ``True`` = :func:`planetary_computer.sign` each item; a callable Item -> Item; ``False`` = none.
            PC SAS tokens expire after a while: compute/save the cube soon after fetching.
        progress: log search results at INFO level and print a one-line summary.

    Returns:
        A lazy Dataset: ``s2`` (time, band, y, x) float32 reflectance, ``s2_scl`` (time, y, x) uint8,
        ``s1`` (time_s1, band_s1, y, x) float32 with ``orbit_state``/``relative_orbit`` on ``time_s1``,
        a ``spatial_ref`` CRS coordinate and provenance attributes.

    Raises:
        CubeError: no S2 (or, with include_s1, no S1) items match; ValueError: bad bbox/dates/bands.
    """
    bands = [str(b) for b in s2_bands]
    unknown = [b for b in bands if b not in S2_BANDS]
    if not bands or unknown:
        raise ValueError(f"unknown S2 bands {unknown or '(none given)'}; choose from {list(S2_BANDS)}.")
    bands = [b for b in S2_BANDS if b in bands]  # canonical order (the data model requires it)
    if not 0.0 <= float(min_valid_fraction) <= 1.0:
        raise ValueError(f"min_valid_fraction must be within [0, 1], got {min_valid_fraction}.")
    if max_cloud_cover is not None and not 0 < float(max_cloud_cover) <= 100:
        raise ValueError(f"max_cloud_cover is a percentage in (0, 100], got {max_cloud_cover}.")
    dt_range, _, _ = _datetime_range(start, end)
    gbox = make_geobox(bbox=bbox, center=center, edge_m=edge_m, crs=crs, resolution=resolution)
    search_bbox = list(_check_bbox(bbox)) if bbox is not None else _lonlat_bbox(gbox)
    chunks = dict(chunks or DEFAULT_CHUNKS)
    signer = _resolve_signer(sign)
    cloud_mask = _resolve_mask(mask)
    extra = [b for b in getattr(cloud_mask, "required_bands", ()) if b not in bands]
    unknown_extra = [b for b in extra if b not in S2_WAVELENGTH_NM and b not in ("B01", "B09")]
    if unknown_extra:
        raise ValueError(f"mask needs bands {unknown_extra} that Sentinel-2 L2A does not have.")

    query = {"eo:cloud_cover": {"lt": float(max_cloud_cover)}} if max_cloud_cover is not None else None
    s2_items = search_items(catalog, collections=[S2_COLLECTION], bbox=search_bbox, datetime=dt_range, query=query)
    where = f"bbox {[round(v, 5) for v in search_bbox]} between {dt_range.replace('/', ' and ')}"
    if not s2_items:
        cc = f" with eo:cloud_cover < {max_cloud_cover}" if max_cloud_cover is not None else ""
        raise CubeError(
            f"no Sentinel-2 items found in '{S2_COLLECTION}' for {where}{cc}; widen the dates or raise "
            "max_cloud_cover (and check the bbox is lon/lat: west, south, east, north)."
        )
    n_found = len(s2_items)
    s2_items = dedupe_s2_items(s2_items)
    if signer is not None:
        s2_items = [signer(it) for it in s2_items]
    log.info("found %d Sentinel-2 items (%d after removing reprocessed duplicates) for %s", n_found, len(s2_items), where)

    s1_items: list[pystac.Item] = []
    if include_s1:
        found = search_items(catalog, collections=[S1_COLLECTION], bbox=search_bbox, datetime=dt_range)
        s1_items = [it for it in found if all(a in it.assets for a in _S1_ASSETS.values())]
        if not s1_items:
            raise CubeError(
                f"no Sentinel-1 RTC items with VV and VH found in '{S1_COLLECTION}' for {where} "
                f"({len(found)} without both polarisations); widen the dates or pass include_s1=False."
            )
        if signer is not None:
            s1_items = [signer(it) for it in s1_items]
        log.info("found %d Sentinel-1 RTC items for %s", len(s1_items), where)

    if not isinstance(catalog, list | tuple | pystac.ItemCollection):
        import odc.stac

        # Remote COGs: GDAL's cloud settings (no directory listing, HTTP retries, merged range reads).
        odc.stac.configure_rio(cloud_defaults=True)
    ds = _load_s2(s2_items, gbox=gbox, bands=bands, extra_bands=extra, chunks=chunks)
    ds = ds.assign_coords(time=ds["time"].values.astype("datetime64[ns]"))
    if include_s1:
        s1 = _load_s1(s1_items, gbox=gbox, chunks=chunks)
        s1 = s1.assign_coords(time_s1=s1["time_s1"].values.astype("datetime64[ns]"))
        ds = ds.assign(s1=s1)
    if "band" in ds["s2"].dims and chunks:
        ds["s2"] = ds["s2"].chunk({"band": -1})
    if "s1" in ds and chunks:
        ds["s1"] = ds["s1"].chunk({"band_s1": -1})

    ds = set_crs(ds, gbox.crs.to_wkt())  # masks and NBAR read the CRS
    if cloud_mask is not None:
        ds = apply_mask(ds, cloud_mask, min_valid_fraction=min_valid_fraction)
    elif min_valid_fraction > 0:
        ds = apply_mask(ds, None, min_valid_fraction=min_valid_fraction)
    ds = ds.drop_vars(["s2_extra", "band_extra"], errors="ignore")
    if nbar:
        from latentcube.sources.brdf import apply_nbar

        ds = apply_nbar(ds, s2_items)

    ds.attrs.update(
        {
            "latentcube_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "conventions": "latentcube cube v1 (docs/data-model.md)",
            "source": "stac",
            "stac_api": catalog if isinstance(catalog, str) else (PC_STAC_URL if catalog is None else type(catalog).__name__),
            "stac_collections": json.dumps([S2_COLLECTION, *([S1_COLLECTION] if include_s1 else [])]),
            "stac_query": json.dumps({"bbox": search_bbox, "datetime": dt_range, "query": query}),
            "stac_s2_items": len(s2_items),
            "stac_s2_item_ids": json.dumps(sorted(it.id for it in s2_items)),
            "stac_s1_items": len(s1_items),
            "stac_s1_item_ids": json.dumps(sorted(it.id for it in s1_items)),
            "s2_reflectance": "(DN + offset) / 10000; offset -1000 for processing baseline >= 04.00, applied per item",
            "s2_resampling": "10 m grid; 20 m bands bilinear, SCL nearest; same solar day mosaicked",
            "cloud_mask": repr(cloud_mask) if cloud_mask is not None else "none",
            "nbar": int(bool(nbar)),
        }
    )
    ds["s2"].attrs.update({"long_name": "Sentinel-2 L2A surface reflectance", "units": "1"})
    ds["s2_scl"].attrs.update({"long_name": "Sentinel-2 L2A scene classification (SCL)", "flag_values": list(range(12))})
    if "s1" in ds:
        ds["s1"].attrs.update({"long_name": "Sentinel-1 RTC gamma0, linear power", "units": "1"})
    ds = set_crs(ds, gbox.crs.to_wkt())
    if progress:
        s1_msg = f", {ds.sizes.get('time_s1', 0)} S1 dates" if include_s1 else ""
        log.info("cube %s px, %d S2 dates%s (lazy)", f"{ds.sizes['y']}x{ds.sizes['x']}", ds.sizes["time"], s1_msg)
    return ds

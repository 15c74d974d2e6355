"""STAC Items for embedding stores: ``<store>.stac.json`` beside every store latentcube writes.

``write_stac_item(store)`` describes an embedding store (``latentcube embed``), a gap-filled store
(``gapfill``) or a window store (``aggregate``) as one STAC Item (pystac), written beside the store as
``<store name>.stac.json`` (``scene.zarr`` -> ``scene.zarr.stac.json``): a file next to the store is
what a STAC crawler or a person listing the folder finds, and the store stays a plain Zarr. It holds

- geometry and ``bbox`` in WGS84 (the store's grid edges from its CRS and transform, edges densified);
- ``start_datetime``/``end_datetime`` from the time axis (window stores: first window's first day to
  the last window's last day) and ``datetime`` null;
- datacube (``cube:dimensions`` x, y, time, feature; ``cube:variables``), projection (``proj:code``
  or ``proj:wkt2``, ``proj:shape``, ``proj:transform``, ``proj:bbox``) and raster (``raster:bands``,
  one per feature: data type, nodata, unit) extensions on the Zarr asset ``embeddings`` (roles
  ``data``), with the same bands in STAC 1.1's common ``bands`` field;
- the model that made it with the ML-model (mlm) extension: name, architecture, PyTorch, input
  (bands, patch series shape) and output (feature count), and a second asset ``model`` (the
  ``model.pt``, role ``mlm:model``) with its sha256 as ``file:checksum`` (multihash ``1220...``).

The eo extension is not used: embedding features have no wavelengths or common band names. An int8
store has no constant scale/offset: each pixel-date has its own scale (variable ``embedding_scale``),
said in the band description and ``latentcube:decoding``. See docs/use.md#stac.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from latentcube import __version__
from latentcube.cube import cube_crs
from latentcube.files import atomic_write_text
from latentcube.stores import store_format

__all__ = ["ITEM_SUFFIX", "build_stac_item", "stac_item_path", "write_stac_item"]

#: The item of ``scene.zarr`` is ``scene.zarr.stac.json``, beside it.
ITEM_SUFFIX = ".stac.json"
#: ``values`` of the time dimension are listed up to this many dates (the extent is always given).
MAX_LISTED_DATES = 2000
_KINDS = {"embedding": "embedding store (latentcube embed)", "gapfill": "gap-filled embedding store (latentcube gapfill)",
          "aggregate": "window store (latentcube aggregate)"}


def stac_item_path(store: str | Path) -> Path:
    """Where the item of ``store`` is written: ``<store>.stac.json`` in the same folder."""
    store = Path(store)
    return store.with_name(store.name + ITEM_SUFFIX)


def write_stac_item(store: str | Path) -> Path:
    """Write the STAC Item of the embedding store ``store`` beside it and return its path.

    The Item's asset hrefs are relative (``./scene.zarr``; the model file relative when it exists), so
    the store, its item and the model can move together. Overwrites an older item.
    """
    store = Path(store)
    path = stac_item_path(store)
    item = build_stac_item(store)
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def _transform(ds: xr.Dataset) -> list[float]:
    """Affine ``[a, b, c, d, e, f]`` (rasterio order) of the pixel grid: from the pixel centres, else from the
    ``GeoTransform`` of ``spatial_ref`` or the ``spatial:transform`` attribute (a one-pixel axis)."""
    x, y = ds["x"].values.astype("float64"), ds["y"].values.astype("float64")
    if len(x) > 1 and len(y) > 1:
        dx, dy = x[1] - x[0], y[1] - y[0]
        return [dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2]
    gt = ds["spatial_ref"].attrs.get("GeoTransform") if "spatial_ref" in ds.variables else None
    if gt:
        c, a, b, f, d, e = map(float, str(gt).split())
        return [a, b, c, d, e, f]
    return [float(v) for v in ds.attrs["spatial:transform"]]


def _footprint(crs: Any, bounds: tuple[float, float, float, float], n: int = 10) -> tuple[list[list[float]], list[float]]:
    """The grid's outline in WGS84 (each edge sampled at ``n`` points) and its bbox."""
    from pyproj import Transformer

    x0, y0, x1, y1 = bounds
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full(n, x1), x1 - (x1 - x0) * t, np.full(n, x0)])
    ys = np.concatenate([np.full(n, y0), y0 + (y1 - y0) * t, np.full(n, y1), y1 - (y1 - y0) * t])
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(xs, ys)
    ring = [[round(float(a), 9), round(float(b), 9)] for a, b in zip(lon, lat, strict=True)]
    bbox = list(to_wgs84.transform_bounds(x0, y0, x1, y1, densify_pts=21))
    return [*ring, ring[0]], [float(v) for v in bbox]


def _iso(t: Any) -> str:
    return pd.Timestamp(t).tz_localize(None).isoformat() + "Z"


def _json_attr(attrs: dict[str, Any], key: str) -> Any:
    value = attrs.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _kind(attrs: dict[str, Any]) -> str:
    return "aggregate" if "latentcube:aggregate" in attrs else "gapfill" if "latentcube:gapfill" in attrs else "embedding"


def _time_range(ds: xr.Dataset) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last instant the store covers: a window store from its first window's first day to the end
    of its last window's last day."""
    times = pd.DatetimeIndex(ds["time"].values)
    if "window_start" in ds.coords and "window_end" in ds.coords:
        start = pd.DatetimeIndex(ds["window_start"].values).min()
        end = pd.DatetimeIndex(ds["window_end"].values).max() + pd.Timedelta(days=1) - pd.Timedelta(seconds=1)
        return start, end
    return times.min(), times.max()


def _step(times: pd.DatetimeIndex) -> str | None:
    """ISO 8601 duration of a regular axis of whole days (``P5D``), else None."""
    if len(times) < 2:
        return None
    diffs = np.unique(np.diff(times.values).astype("timedelta64[s]").astype("int64"))
    return f"P{diffs[0] // 86400}D" if diffs.size == 1 and diffs[0] % 86400 == 0 and diffs[0] > 0 else None


def _dimensions(ds: xr.Dataset, crs: Any, transform: list[float], kind: str) -> dict[str, Any]:
    ref: Any = crs.to_epsg() or crs.to_wkt()
    dims: dict[str, Any] = {}
    for axis, step in (("x", transform[0]), ("y", transform[4])):
        values = ds[axis].values.astype("float64")
        dims[axis] = {"type": "spatial", "axis": axis, "extent": [float(values.min()), float(values.max())],
                      "step": float(step), "reference_system": ref, "unit": "m" if crs.is_projected else "degree",
                      "description": "pixel centres"}
    times = pd.DatetimeIndex(ds["time"].values)
    time: dict[str, Any] = {"type": "temporal", "extent": [_iso(times.min()), _iso(times.max())] if len(times) else [None, None]}
    if len(times) <= MAX_LISTED_DATES:
        time["values"] = [_iso(t) for t in times]
    step = _step(times)
    if step:
        time["step"] = step
    time["description"] = {"embedding": "acquisition dates", "gapfill": "regular gap-filled axis",
                           "aggregate": "date windows: time = first day of each window (coordinates window, "
                                        "window_start, window_end, n_dates)"}[kind]
    dims["time"] = time
    dims["feature"] = {"type": "bands", "values": [str(f) for f in ds["feature"].values],
                       "description": "embedding features"}
    return dims


def _variables(ds: xr.Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, var in ds.variables.items():
        if name in ds.dims or name == "spatial_ref":
            continue
        entry: dict[str, Any] = {"dimensions": [str(d) for d in var.dims],
                                 "type": "data" if name in ds.data_vars else "auxiliary"}
        text = var.attrs.get("long_name") or var.attrs.get("description")
        if text:
            entry["description"] = str(text)
        if var.attrs.get("units"):
            entry["unit"] = str(var.attrs["units"])
        out[str(name)] = entry
    return out


def _bands(ds: xr.Dataset, stored: np.dtype) -> list[dict[str, Any]]:
    """One band per feature (data type, nodata, unit) of the stored ``embedding``."""
    int8 = "embedding_scale" in ds.data_vars
    nodata: Any = int(_fill(ds["embedding"])) if int8 else "nan"
    note = (" (int8 code: value = code x embedding_scale of the pixel-date; -128 = invalid)" if int8 else "")
    return [{"name": str(f), "description": f"embedding feature {f}{note}", "data_type": str(stored),
             "nodata": nodata, "unit": "1"} for f in ds["feature"].values]


def _fill(var: xr.DataArray) -> Any:
    for where in (var.encoding, var.attrs):
        if "_FillValue" in where:
            return where["_FillValue"]
    return -128


def _model(attrs: dict[str, Any], item_dir: Path, n_feat: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(mlm properties, model asset dict) from the store's provenance attributes; None without a checkpoint."""
    ckpt, sha = attrs.get("checkpoint"), attrs.get("checkpoint_sha256")
    if not ckpt or not sha:
        return None
    kind = str(attrs.get("model_kind") or "model")
    args = _json_attr(attrs, "model_config") or {}
    bands = _json_attr(attrs, "band_order") or {}
    sensors = [str(s) for s in (_json_attr(attrs, "sensors") or [])]
    training = _json_attr(attrs, "training_config") or {}
    sensor_cfgs = ({"x": args.get("sensor", {})} if kind == "autoencoder" else dict(args.get("sensors", {}))) \
        if isinstance(args, dict) else {}
    inputs = []
    for name, cfg in sensor_cfgs.items():
        sensor = str(cfg.get("sensor", name))
        names = [str(b) for b in (bands.get(sensor) or cfg.get("band_names") or [])]
        patch, n_dates = int(cfg.get("patch_size", 15)), int(cfg.get("n_dates", 11))
        inputs.append({"name": f"{sensor} patch series", "bands": names,
                       "input": {"shape": [-1, n_dates, len(names), patch, patch],
                                 "dim_order": ["batch", "time", "channel", "height", "width"], "data_type": "float32"},
                       "description": f"{sensor.upper()} {'reflectance' if sensor == 's2' else 'backscatter'} "
                                      f"of {n_dates} dates around the target date, {patch} x {patch} pixels, normalised "
                                      "as the model file's normalization says"})
    props = {
        "mlm:name": f"latentcube-{kind}",
        "mlm:architecture": "latentcube fusion model (sensor autoencoder encoders + temporal fusion transformer)"
        if kind == "fusion" else "latentcube sensor autoencoder (multiscale CNN + temporal transformer)",
        "mlm:framework": "PyTorch",
        # The MLM task list has no 'embedding'/'feature extraction'; similarity search is what embeddings serve.
        "mlm:tasks": ["similarity-search"],
        "mlm:input": inputs,
        "mlm:output": [{"name": "embedding", "tasks": ["similarity-search"],
                        "result": {"shape": [-1, n_feat], "dim_order": ["batch", "embedding"], "data_type": "float32"},
                        "description": f"{n_feat} embedding features per pixel and date ({', '.join(sensors) or kind})"}],
        "mlm:pretrained": False,
        "mlm:pretrained_source": None,
        "latentcube:model_kind": kind,
        "latentcube:stage": (training.get("stage") if isinstance(training, dict) else None)
        or ("fusion" if kind == "fusion" else next(iter(sensor_cfgs.values()), {}).get("sensor", kind)),
        "latentcube:latent_size": n_feat,
    }
    path = Path(str(ckpt))
    href = os.path.relpath(path.resolve(), item_dir.resolve()) if path.exists() else str(ckpt)
    asset = {"href": href, "type": "application/octet-stream", "roles": ["mlm:model"],
             "title": f"latentcube {kind} model file (torch.save; latentcube.nn.model_file.load_model)",
             "mlm:artifact_type": "torch.save", "file:checksum": "1220" + str(sha)}
    if path.exists():
        asset["file:size"] = path.stat().st_size
    return props, asset


def build_stac_item(store: str | Path):
    """The :class:`pystac.Item` of an embedding, gap-filled or window store (see the module docstring)."""
    import pystac
    from pystac.extensions.datacube import DatacubeExtension, Dimension, Variable
    from pystac.extensions.file import FileExtension
    from pystac.extensions.mlm import MLMExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    store = Path(store)
    ds = xr.open_zarr(store, mask_and_scale=False, chunks=None)
    if "embedding" not in ds.data_vars:
        from latentcube.embed import EmbeddingCubeError

        raise EmbeddingCubeError(f"{store} has no 'embedding' variable: a STAC item describes an embedding store.")
    attrs = dict(ds.attrs)
    kind = _kind(attrs)
    crs = cube_crs(ds)
    transform = _transform(ds)
    height, width = int(ds.sizes["y"]), int(ds.sizes["x"])
    a, _, c, _, e, f = transform
    xs, ys = (c, c + a * width), (f, f + e * height)
    bounds = (min(xs), min(ys), max(xs), max(ys))
    ring, bbox = _footprint(crs, bounds)
    start, end = _time_range(ds) if ds.sizes["time"] else (None, None)
    stored = ds["embedding"].dtype
    item_id = store.name[:-5] if store.name.endswith(".zarr") else store.name
    props: dict[str, Any] = {
        "title": f"latentcube {_KINDS[kind]}: {item_id}",
        "description": f"{ds.sizes['feature']} embedding features per pixel and time step, {ds.sizes['time']} time "
                       f"steps, {height} x {width} pixels; embedding (time, feature, y, x) {stored}. Read with "
                       "latentcube.embed.open_embedding (docs/use.md).",
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds").replace("+00:00", "Z"),
        "gsd": abs(float(transform[0])),
        "latentcube:version": __version__,
        "latentcube:store_kind": kind,
        "latentcube:zarr_format": store_format(store),
    }
    if attrs.get("source_cube"):
        props["latentcube:source_cube"] = str(attrs["source_cube"])
    if "embedding_scale" in ds.data_vars:
        props["latentcube:decoding"] = "embedding (int8 code) x embedding_scale; -128 = invalid (open_embedding)"
    if kind == "aggregate":
        agg = _json_attr(attrs, "latentcube:aggregate") or {}
        props["latentcube:windows"] = [{"label": w[0], "start": w[1], "end": w[2], "n_dates": w[3]}
                                       for w in agg.get("windows", [])]
        props["latentcube:statistics"] = agg.get("statistics")
    if kind == "gapfill":
        fill = _json_attr(attrs, "latentcube:gapfill") or {}
        props["latentcube:gapfill"] = {k: fill.get(k) for k in ("method", "freq", "max_gap_days")}
    item = pystac.Item(id=item_id, geometry={"type": "Polygon", "coordinates": [ring]}, bbox=bbox, datetime=None,
                       properties=props, start_datetime=start.to_pydatetime() if start is not None else None,
                       end_datetime=end.to_pydatetime() if end is not None else None)
    if start is None:  # an empty time axis: STAC needs a datetime; the store's creation stands in
        item.datetime = pd.Timestamp.now(tz="UTC").to_pydatetime()

    bands = _bands(ds, stored)
    asset = pystac.Asset(href=f"./{store.name}", media_type=pystac.MediaType.VND_ZARR, roles=["data"],
                         title=f"{_KINDS[kind]} (Zarr)", extra_fields={"bands": bands})
    item.add_asset("embeddings", asset)
    proj = ProjectionExtension.ext(asset, add_if_missing=True)
    epsg = crs.to_epsg()
    if epsg:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = crs.to_wkt()
    proj.shape = [height, width]
    proj.transform = [float(v) for v in transform]
    proj.bbox = [float(v) for v in bounds]
    RasterExtension.ext(asset, add_if_missing=True)  # raster:bands as dicts: nodata "nan" is JSON, NaN is not
    asset.extra_fields["raster:bands"] = [{k: b[k] for k in ("data_type", "nodata", "unit")} for b in bands]
    DatacubeExtension.ext(item, add_if_missing=True).apply(
        dimensions={k: Dimension.from_dict(v) for k, v in _dimensions(ds, crs, transform, kind).items()},
        variables={k: Variable.from_dict(v) for k, v in _variables(ds).items()})

    model = _model(attrs, store.parent, int(ds.sizes["feature"]))
    if model is not None:
        mlm_props, model_asset = model
        MLMExtension.ext(item, add_if_missing=True)
        item.properties.update(mlm_props)
        item.add_asset("model", pystac.Asset.from_dict(model_asset))
        FileExtension.ext(item.assets["model"], add_if_missing=True)  # file:checksum, file:size
    return item

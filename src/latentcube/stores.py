"""Zarr stores: the format new stores get, the one function that writes them, and their metadata read
from disk in either format.

Every latentcube writer (cubes, embedding stores and their block writes, gap-filled and aggregated
stores, caches) goes through :func:`write_zarr`, so :data:`ZARR_FORMAT` is the one place that says
which Zarr format new stores get: **Zarr v3** (zarr-python 3), with consolidated metadata (inside the
root ``zarr.json``) and chunks compressed with Blosc LZ4 and byte shuffle, the codec of zarr-python's
format-2 stores (its v3 default would be Zstandard), so :mod:`latentcube.chunks` can check every chunk's
size against its 16-byte Blosc header in both formats. Text coordinates (band and feature names) are
stored as variable-length strings, the v3 ``string`` data type (fixed-length ones have no v3
specification yet and make zarr warn on every write). Arrays written block by block (embedding stores)
get one shard per block (:func:`block_encoding`).

Stores written in format 2 (every store before this change) keep working: readers take either format
(``xarray.open_zarr`` detects it), and writes into an existing store (an embedding run resumed) keep
that store's format.

Opening a store needs nothing special: ``xarray.open_zarr(path)`` reads the consolidated metadata of
either format; ``zarr.open_group(path, mode="r")`` opens it as a Zarr group.

The metadata readers (:func:`store_format`, :func:`root_attrs`, :func:`array_layouts`) use the standard
library and NumPy only, so that :mod:`latentcube.chunks` can stay at the bottom of the import graph.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SHARD_TIME_CHUNK", "ZARR_FORMAT", "ArrayLayout", "array_layout", "array_layouts", "block_encoding",
           "root_attrs", "store_format", "write_zarr"]

#: The Zarr format of every store latentcube writes (3; 2 was the format before 2026-12-07).
ZARR_FORMAT = 3

#: Dates per inner chunk of a sharded embedding store (:func:`block_encoding`): a one-date map or point
#: decompresses 8 dates instead of a whole 64-date chunk (benchmarks/RESULTS.md, "Zarr v3 stores").
SHARD_TIME_CHUNK = 8

#: Blosc settings of new v3 stores: zarr-python's format-2 default (LZ4, level 5, byte shuffle).
BLOSC = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle", "blocksize": 0}

#: Encoding keys that name codecs of the format a Dataset was read from; dropped before writing anew.
_CODEC_KEYS = ("compressor", "compressors", "filters", "serializer", "object_codec", "preferred_chunks")

#: What zarr says when consolidated metadata is written in format 3 (not yet in the v3 specification;
#: zarr-python and xarray read it). Silenced around our writes only, never globally.
_CONSOLIDATED_V3_WARNING = r"Consolidated metadata is currently not part in the Zarr format 3 specification"


# ------------------------------------------------------------------------------------------ metadata


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def store_format(path: str | os.PathLike[str]) -> int | None:
    """The Zarr format (2 or 3) of the store at ``path``, ``None`` when it is no Zarr store (from the files
    at its root: ``zarr.json`` for 3, ``.zgroup``/``.zmetadata``/``.zarray`` for 2)."""
    path = Path(path)
    if (path / "zarr.json").is_file():
        return 3
    if any((path / name).is_file() for name in (".zgroup", ".zmetadata", ".zarray")):
        return 2
    return None


def root_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The attributes of the store's root group, either format (empty when there are none or the store
    cannot be read): ``zarr.json`` ``attributes`` in v3, ``.zmetadata`` or ``.zattrs`` in v2."""
    path = Path(path)
    meta = _read_json(path / "zarr.json")
    if isinstance(meta, dict):
        attrs = meta.get("attributes")
        return attrs if isinstance(attrs, dict) else {}
    consolidated = _read_json(path / ".zmetadata")
    if isinstance(consolidated, dict) and isinstance(consolidated.get("metadata"), dict):
        attrs = consolidated["metadata"].get(".zattrs", {})
        return attrs if isinstance(attrs, dict) else {}
    attrs = _read_json(path / ".zattrs")
    return attrs if isinstance(attrs, dict) else {}


@dataclass(frozen=True)
class ArrayLayout:
    """Where and how one array's chunks are stored, from its metadata (either format).

    ``chunks`` is the grid of chunk *files* (the shard shape for a sharded v3 array, whose inner chunks
    are ``inner``); ``key(index)`` names the file of a chunk relative to the array's folder (``"0.1.0"``
    in v2, ``"c/0/1/0"`` in v3); ``blosc`` says that each chunk (each inner chunk of a shard) is one Blosc
    buffer of its shape's bytes (its 16-byte header can be checked); ``itemsize`` is 0 for types without a
    fixed size (strings). A shard's index (16 bytes per inner chunk: offset and length, all ones when the
    chunk is absent; plus a CRC32C checksum with ``index_crc``) sits at its end, or start."""

    name: str
    zarr_format: int
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dims: tuple[str, ...] | None
    itemsize: int
    blosc: bool
    sharded: bool
    prefix: str
    separator: str
    inner: tuple[int, ...] | None = None
    index_at_end: bool = True
    index_crc: bool = False

    def key(self, index: tuple[int, ...]) -> str:
        if not index:
            return self.prefix.rstrip("/") or "0"
        return self.prefix + self.separator.join(map(str, index))

    def grid(self) -> tuple[int, ...]:
        """Number of chunk files along each dimension (0 along an empty dimension)."""
        return tuple(max(1, math.ceil(s / c)) if s else 0 for s, c in zip(self.shape, self.chunks, strict=True))

    def keys(self) -> list[str]:
        """Every chunk file key the shape implies."""
        if not self.shape:
            return [self.key(())]
        counts = self.grid()
        if 0 in counts:
            return []
        return [self.key(idx) for idx in np.ndindex(*counts)]


def _itemsize(dtype: Any) -> int:
    try:
        return np.dtype(dtype).itemsize if isinstance(dtype, str) else 0
    except TypeError:
        return 0


def _codec_list(codecs: Any) -> list[dict[str, Any]]:
    return [c if isinstance(c, dict) else {"name": c} for c in codecs or []]


def layout_from_metadata(name: str, meta: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> ArrayLayout:
    """The :class:`ArrayLayout` of an array's metadata: a v3 ``zarr.json`` document or a v2 ``.zarray``
    (with its ``.zattrs`` as ``attrs`` for the dimension names)."""
    shape = tuple(int(s) for s in meta.get("shape") or ())
    if meta.get("zarr_format") == 3 or "chunk_grid" in meta:
        chunks = tuple(int(c) for c in (meta.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape", shape))
        encoding = meta.get("chunk_key_encoding") or {}
        config = encoding.get("configuration") or {}
        if encoding.get("name") == "v2":
            prefix, separator = "", config.get("separator", ".")
        else:
            prefix, separator = "c/", config.get("separator", "/")
        codecs = _codec_list(meta.get("codecs"))
        dims = tuple(meta.get("dimension_names") or ()) or None
        itemsize = _itemsize(meta.get("data_type"))
        if [c.get("name") for c in codecs] == ["sharding_indexed"]:
            config = codecs[0].get("configuration") or {}
            inner_codecs = _codec_list(config.get("codecs"))
            index_codecs = _codec_list(config.get("index_codecs"))
            return ArrayLayout(name, 3, shape, chunks, dims, itemsize,
                               blosc=[c.get("name") for c in inner_codecs] == ["bytes", "blosc"], sharded=True,
                               prefix=prefix, separator=separator,
                               inner=tuple(int(c) for c in config.get("chunk_shape") or chunks),
                               index_at_end=config.get("index_location", "end") == "end",
                               index_crc=any(c.get("name") == "crc32c" for c in index_codecs))
        return ArrayLayout(name, 3, shape, chunks, dims, itemsize,
                           blosc=[c.get("name") for c in codecs] == ["bytes", "blosc"], sharded=False, prefix=prefix,
                           separator=separator)
    chunks = tuple(int(c) for c in meta.get("chunks") or shape)
    dims = (attrs or {}).get("_ARRAY_DIMENSIONS")
    compressor = meta.get("compressor") or {}
    return ArrayLayout(name, 2, shape, chunks, tuple(dims) if dims else None, _itemsize(meta.get("dtype")),
                       blosc=compressor.get("id") == "blosc" and not meta.get("filters"), sharded=False, prefix="",
                       separator=meta.get("dimension_separator") or ".")


def array_layouts(store: str | os.PathLike[str]) -> Iterator[ArrayLayout]:
    """The layout of every array of a Zarr directory store (either format), from its consolidated metadata
    when there is some, else from each array's own metadata file."""
    store = Path(store)
    root = _read_json(store / "zarr.json")
    if isinstance(root, dict):
        nodes = (root.get("consolidated_metadata") or {}).get("metadata")
        if isinstance(nodes, dict):
            for name, meta in sorted(nodes.items()):
                if isinstance(meta, dict) and meta.get("node_type") == "array":
                    yield layout_from_metadata(name, meta)
            return
        for path in sorted(store.rglob("zarr.json")):
            meta = _read_json(path)
            if isinstance(meta, dict) and meta.get("node_type") == "array":
                yield layout_from_metadata(path.parent.relative_to(store).as_posix(), meta)
        return
    consolidated = _read_json(store / ".zmetadata")
    nodes = consolidated.get("metadata") if isinstance(consolidated, dict) else None
    if isinstance(nodes, dict):
        for key, meta in nodes.items():
            if key.endswith("/.zarray") and isinstance(meta, dict):
                name = key[: -len("/.zarray")]
                yield layout_from_metadata(name, meta, nodes.get(f"{name}/.zattrs"))
        return
    for path in sorted(store.rglob(".zarray")):
        meta = _read_json(path)
        if isinstance(meta, dict):
            yield layout_from_metadata(path.parent.relative_to(store).as_posix(), meta, _read_json(path.parent / ".zattrs"))


def array_layout(store: str | os.PathLike[str], name: str) -> ArrayLayout:
    """The layout of the array ``name`` of a store, from the array's own metadata file (either format)."""
    folder = Path(store) / name
    meta = _read_json(folder / "zarr.json")
    if isinstance(meta, dict):
        return layout_from_metadata(name, meta)
    meta = _read_json(folder / ".zarray")
    if not isinstance(meta, dict):
        raise FileNotFoundError(f"{folder} holds no Zarr array metadata (zarr.json or .zarray)")
    return layout_from_metadata(name, meta, _read_json(folder / ".zattrs"))


# --------------------------------------------------------------------------------------------- writing


def block_encoding(block: tuple[int, ...], *, time_axis: int = 0, zarr_format: int | None = None) -> dict[str, Any]:
    """``chunks`` (and ``shards``) encoding of an array written one ``block`` at a time, by one writer per
    block (embedding stores: every date, all features, one spatial block).

    In Zarr v3 each block is one shard (one file, written whole by its block's writer, so parallel
    writers never share a file) holding inner chunks of :data:`SHARD_TIME_CHUNK` dates: reading one date
    decompresses those dates only, where an unsharded chunk would decompress all of its (up to 64)
    dates. The shard's time extent is rounded up to a multiple of the inner chunk (a shard may reach past
    the last date). Format 2 has no sharding: the block is the chunk, as before; so is a block of at most
    :data:`SHARD_TIME_CHUNK` dates.
    """
    block = tuple(int(b) for b in block)
    t = block[time_axis]
    if (zarr_format or ZARR_FORMAT) < 3 or t <= SHARD_TIME_CHUNK:
        return {"chunks": block}
    shard, inner = list(block), list(block)
    shard[time_axis] = -(-t // SHARD_TIME_CHUNK) * SHARD_TIME_CHUNK
    inner[time_axis] = SHARD_TIME_CHUNK
    return {"chunks": tuple(inner), "shards": tuple(shard)}


def _prepared_for_v3(ds: Any, encoding: dict[str, dict[str, Any]]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """``ds`` with fixed-width text variables as variable-length strings and the Blosc compressor in the
    encoding of every other array (unless the caller set compressors)."""
    from zarr.codecs import BloscCodec

    text = [name for name, var in ds.variables.items() if var.dtype.kind in "US"]
    if text:
        ds = ds.copy()
        for name in text:
            var = ds[name].astype(object)
            var.encoding = {k: v for k, v in ds.variables[name].encoding.items() if k != "dtype"}
            ds[name] = var
            if name in encoding:
                encoding[name] = {k: v for k, v in encoding[name].items() if k != "dtype"}
    for name, var in ds.variables.items():
        if var.dtype.kind in "biufmM" and "compressors" not in encoding.get(name, {}):
            encoding[name] = {**encoding.get(name, {}), "compressors": (BloscCodec(**BLOSC),)}
    return ds, encoding


def write_zarr(ds: Any, path: str | os.PathLike[str], *, mode: str = "w", encoding: Mapping[str, Any] | None = None,
               region: Mapping[str, slice] | None = None, compute: bool = True, consolidated: bool | None = None,
               zarr_format: int | None = None, **kwargs: Any) -> Any:
    """``ds.to_zarr(path, ...)`` in latentcube's format; returns what ``to_zarr`` returns.

    A new store (``mode`` ``"w"`` or ``"w-"``) gets ``zarr_format`` (default :data:`ZARR_FORMAT`) with
    consolidated metadata; writes into an existing store (``region``, ``mode="r+"``/``"a"``) keep the
    store's own format and leave its metadata as it is (``consolidated=False`` unless asked). Codec
    settings that ``ds`` carries from the store it was read from are dropped (they belong to that store's
    format); ``encoding`` sets chunks, fill values and the like as in ``to_zarr``. zarr's warning that
    consolidated metadata is not yet part of the v3 specification is silenced for this call only.
    """
    path = Path(path)
    existing = region is not None or mode in ("r+", "a")
    fmt = zarr_format or ((store_format(path) if existing else None) or ZARR_FORMAT)
    if consolidated is None:
        consolidated = not existing
    enc: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (encoding or {}).items()}
    if not existing:
        stale = [name for name, var in ds.variables.items() if any(k in var.encoding for k in _CODEC_KEYS)]
        if stale:
            ds = ds.copy()
            for name in stale:
                var = ds.variables[name]
                var.encoding = {k: v for k, v in var.encoding.items() if k not in _CODEC_KEYS}
        if fmt == 3:
            ds, enc = _prepared_for_v3(ds, enc)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CONSOLIDATED_V3_WARNING)
        return ds.to_zarr(path, mode=mode, encoding=enc or None, region=region, compute=compute,
                          consolidated=consolidated, zarr_format=fmt, **kwargs)

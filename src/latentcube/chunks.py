"""Integrity of a Zarr store's chunk files (format 2 or 3), checked from the listing and 16-byte headers only.

A chunk file that was deleted reads silently as the fill value (NaN); one that is empty or cut short can
crash the interpreter inside the Blosc decompressor (it trusts the sizes in its header). Before any
value is read, :func:`chunk_problems` compares each array's chunk files with the grid its shape implies
and checks every Blosc file's size against the compressed size its header announces (``cbytes``), so
such a store gives an error naming the variable, the chunk file and the fix instead.

Cost: one directory listing per array and one 16-byte read per chunk file (a tile-year cube: a few
thousand reads, well under a second on a local disk); no chunk is decompressed.

Either Zarr format: the arrays, their chunk grids and chunk file names come from the metadata
(:func:`latentcube.stores.array_layouts`: ``.zmetadata``/``.zarray`` in v2, ``zarr.json`` in v3, where
chunk files are ``c/0/1/0`` instead of ``0.1.0``). The Blosc check applies to arrays whose only codec is
Blosc (latentcube's stores in both formats). A sharded v3 array's file (a shard) is checked through its
index: one read of the index, then one 16-byte read per inner chunk.

This module sits at the bottom of the import graph: it imports only the standard library, NumPy and
:mod:`latentcube.stores` (whose metadata readers need nothing else).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentcube.stores import ArrayLayout, array_layouts, layout_from_metadata

__all__ = ["ChunkProblem", "chunk_problems", "expected_chunk_keys"]

#: Blosc 1 header: version, versionlz, flags, typesize (1 byte each), then uint32 LE nbytes, blocksize,
#: cbytes (the whole compressed buffer, header included).
_BLOSC_HEADER = struct.Struct("<BBBBIII")


@dataclass(frozen=True)
class ChunkProblem:
    """One bad chunk: ``variable``, its file ``path`` and what is wrong (``missing``, ``empty``,
    ``truncated``, ``corrupt``) with a human ``detail``."""

    variable: str
    path: Path
    kind: str
    detail: str


def expected_chunk_keys(meta: dict) -> list[str]:
    """Chunk keys that an array's metadata implies: a v2 ``.zarray`` (``"0.1.0"``, or ``"0/1/0"`` with the
    ``/`` separator) or a v3 ``zarr.json`` (``"c/0/1/0"`` with the default key encoding)."""
    return layout_from_metadata("", meta).keys()


def _listing(array_dir: Path, layout: ArrayLayout) -> set[str]:
    if layout.separator == "." and not layout.prefix:
        try:
            return {e.name for e in os.scandir(array_dir) if e.is_file() and not e.name.startswith(".")}
        except FileNotFoundError:
            return set()
    return {p.relative_to(array_dir).as_posix() for p in array_dir.rglob("*") if p.is_file() and not p.name.startswith(".")}


def _check_blosc(path: Path, nbytes_expected: int) -> tuple[str, str] | None:
    size = path.stat().st_size
    if size == 0:
        return "empty", "is empty (0 bytes)"
    if size < _BLOSC_HEADER.size:
        return "truncated", f"is {size} bytes, shorter than a Blosc header ({_BLOSC_HEADER.size} bytes)"
    with path.open("rb") as fh:
        version, _, _, _, nbytes, _, cbytes = _BLOSC_HEADER.unpack(fh.read(_BLOSC_HEADER.size))
    if version not in (1, 2) or cbytes < _BLOSC_HEADER.size:
        return "corrupt", "does not start with a Blosc header"
    if cbytes != size:
        what = "truncated" if size < cbytes else "corrupt"
        return what, f"is {size:,} bytes but its Blosc header announces {cbytes:,}"
    if nbytes != nbytes_expected:
        return "corrupt", f"decompresses to {nbytes:,} bytes by its header, the array needs {nbytes_expected:,}"
    return None


def _check_shard(path: Path, layout: ArrayLayout) -> tuple[str, str] | None:
    """A v3 shard file: its index (one read) must place every inner chunk inside the file; with Blosc
    inner chunks, each one's 16-byte header must announce its length and the inner chunk's size."""
    size = path.stat().st_size
    if size == 0:
        return "empty", "is empty (0 bytes)"
    inner = layout.inner or layout.chunks
    n_inner = int(np.prod([max(1, math.ceil(s / c)) for s, c in zip(layout.chunks, inner, strict=True)]))
    index_bytes = 16 * n_inner + (4 if layout.index_crc else 0)
    if size < index_bytes:
        return "truncated", f"is {size:,} bytes, shorter than its shard index ({index_bytes:,} bytes)"
    with path.open("rb") as fh:
        fh.seek(size - index_bytes if layout.index_at_end else 0)
        index = np.frombuffer(fh.read(16 * n_inner), dtype="<u8").reshape(n_inner, 2)
        present = ~(index == np.iinfo("<u8").max).all(axis=1)
        lo, hi = (index_bytes, size) if not layout.index_at_end else (0, size - index_bytes)
        ends = index[present, 0] + index[present, 1]
        if present.any() and (int(index[present, 0].min()) < lo or int(ends.max()) > hi):
            return "truncated", (f"is {size:,} bytes but its shard index places chunk data up to byte "
                                 f"{int(ends.max()):,}")
        if layout.blosc and layout.itemsize:
            inner_bytes = int(np.prod(inner)) * layout.itemsize
            for offset, length in index[present]:
                fh.seek(int(offset))
                head = fh.read(_BLOSC_HEADER.size)
                if len(head) < _BLOSC_HEADER.size:
                    return "corrupt", "holds an inner chunk shorter than a Blosc header"
                version, _, _, _, nbytes, _, cbytes = _BLOSC_HEADER.unpack(head)
                if version not in (1, 2) or cbytes != int(length) or nbytes != inner_bytes:
                    return "corrupt", f"holds an inner chunk at byte {int(offset):,} whose Blosc header does not match"
    return None


def chunk_problems(store: str | os.PathLike[str], *, check_missing: bool = True,
                   variables: list[str] | None = None) -> list[ChunkProblem]:
    """Bad chunk files of a Zarr directory store, format 2 or 3 (empty list: none found).

    ``check_missing``: report chunk files the shape implies but the store lacks. Writers that skip chunks
    of fill values only (zarr's default) leave such gaps on purpose; latentcube's ``save_cube`` writes
    every chunk, so in its cubes a gap is a lost file. ``variables`` limits the check to these arrays.
    """
    store = Path(store)
    problems: list[ChunkProblem] = []
    for layout in array_layouts(store):
        name = layout.name
        if variables is not None and name not in variables:
            continue
        array_dir = store / name
        present = _listing(array_dir, layout)
        expected = layout.keys()
        if check_missing:
            problems += [ChunkProblem(name, array_dir / key, "missing", "is missing")
                         for key in expected if key not in present]
        chunk_bytes = int(np.prod(layout.chunks or (1,))) * layout.itemsize
        for key in expected:
            if key not in present:
                continue
            path = array_dir / key
            if layout.sharded:
                found = _check_shard(path, layout)
            elif layout.blosc and layout.itemsize:
                found = _check_blosc(path, chunk_bytes)
            else:  # other codecs raise on bad input; an empty file is still never a chunk
                found = ("empty", "is empty (0 bytes)") if path.stat().st_size == 0 else None
            if found:
                problems.append(ChunkProblem(name, path, *found))
    return problems

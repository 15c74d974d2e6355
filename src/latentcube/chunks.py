"""Integrity of a Zarr (v2) store's chunk files, checked from the listing and 16-byte headers only.

A chunk file that was deleted reads silently as the fill value (NaN); one that is empty or cut short can
crash the interpreter inside the Blosc decompressor (it trusts the sizes in its header). Before any
value is read, :func:`chunk_problems` compares each array's chunk files with the grid its shape implies
and checks every Blosc file's size against the compressed size its header announces (``cbytes``), so
such a store gives an error naming the variable, the chunk file and the fix instead.

Cost: one directory listing per array and one 16-byte read per chunk file (a tile-year cube: a few
thousand reads, well under a second on a local disk); no chunk is decompressed.

This module sits at the bottom of the import graph: it imports only the standard library and NumPy.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def _arrays(store: Path) -> Iterator[tuple[str, dict]]:
    """(name, .zarray metadata) of every array of a v2 store, from consolidated metadata when present."""
    consolidated = store / ".zmetadata"
    if consolidated.is_file():
        try:
            meta = json.loads(consolidated.read_text(encoding="utf-8"))["metadata"]
        except (OSError, ValueError, KeyError):
            meta = None
        if isinstance(meta, dict):
            for key, value in meta.items():
                if key.endswith("/.zarray") and isinstance(value, dict):
                    yield key[: -len("/.zarray")], value
            return
    for zarray in sorted(store.rglob(".zarray")):
        try:
            yield zarray.parent.relative_to(store).as_posix(), json.loads(zarray.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue


def expected_chunk_keys(meta: dict) -> list[str]:
    """Chunk keys (``"0.1.0"``, or ``"0/1/0"`` with the ``/`` separator) that an array's shape implies."""
    shape, chunks = meta.get("shape") or [], meta.get("chunks") or []
    sep = meta.get("dimension_separator") or "."
    if not shape:
        return ["0"]
    counts = [max(1, math.ceil(s / c)) if s else 0 for s, c in zip(shape, chunks, strict=True)]
    if 0 in counts:
        return []
    return [sep.join(str(i) for i in idx) for idx in np.ndindex(*counts)]


def _listing(array_dir: Path, sep: str) -> set[str]:
    if sep == ".":
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


def chunk_problems(store: str | os.PathLike[str], *, check_missing: bool = True,
                   variables: list[str] | None = None) -> list[ChunkProblem]:
    """Bad chunk files of a Zarr v2 directory store (empty list: none found; a v3 store: not checked).

    ``check_missing``: report chunk files the shape implies but the store lacks. Writers that skip chunks
    of fill values only (zarr's default) leave such gaps on purpose; latentcube's ``save_cube`` writes
    every chunk, so in its cubes a gap is a lost file. ``variables`` limits the check to these arrays.
    """
    store = Path(store)
    problems: list[ChunkProblem] = []
    for name, meta in _arrays(store):
        if variables is not None and name not in variables:
            continue
        sep = meta.get("dimension_separator") or "."
        array_dir = store / name
        present = _listing(array_dir, sep)
        expected = expected_chunk_keys(meta)
        if check_missing:
            problems += [ChunkProblem(name, array_dir / key, "missing", "is missing")
                         for key in expected if key not in present]
        compressor = meta.get("compressor") or {}
        itemsize = np.dtype(meta["dtype"]).itemsize if isinstance(meta.get("dtype"), str) else None
        chunk_bytes = int(np.prod(meta.get("chunks") or [1])) * (itemsize or 0)
        for key in expected:
            if key not in present:
                continue
            path = array_dir / key
            if compressor.get("id") == "blosc" and not meta.get("filters") and itemsize:
                found = _check_blosc(path, chunk_bytes)
            else:  # other codecs raise on bad input; an empty file is still never a chunk
                found = ("empty", "is empty (0 bytes)") if path.stat().st_size == 0 else None
            if found:
                problems.append(ChunkProblem(name, path, *found))
    return problems

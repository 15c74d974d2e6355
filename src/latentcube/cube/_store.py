"""Cube I/O: :func:`open_cube` (refuses non-cubes and broken chunk files) and atomic :func:`save_cube`."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import xarray as xr

from latentcube import __version__
from latentcube.cube._model import CubeError
from latentcube.cube._validate import validate_cube


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (path.is_dir() and any((path / m).exists() for m in (".zgroup", "zarr.json")))


_NOT_A_CUBE_FIX = ("Fix: pass a cube written by latentcube (`latentcube import`, `fetch` or `synth` make one: a *.zarr "
                   "folder or a *.nc file), or import your own files with `latentcube import`.")

#: First bytes of the files xarray reads as NetCDF: NetCDF-3 classic/64-bit/CDF-5 and HDF5 (NetCDF-4).
_NETCDF_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")


def _check_is_store(path: Path) -> None:
    """A clear error for a path that cannot be a cube (an ordinary folder, an empty or foreign file),
    before xarray's generic advice to install IO backends."""
    if path.is_dir():
        if any((path / m).exists() for m in (".zgroup", "zarr.json")):
            return
        entries = sorted(p.name for p in path.iterdir())
        if not entries:
            raise CubeError(f"{path} is an empty folder, not a cube. {_NOT_A_CUBE_FIX}")
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise CubeError(f"{path} is a folder but not a Zarr cube (no .zgroup or zarr.json; it holds {shown}). "
                        f"{_NOT_A_CUBE_FIX}")
    size = path.stat().st_size
    if size == 0:
        raise CubeError(f"{path} is an empty file (0 bytes), not a cube: an interrupted write? {_NOT_A_CUBE_FIX}")
    with path.open("rb") as fh:
        head = fh.read(8)
    if not any(head.startswith(m) for m in _NETCDF_MAGIC):
        raise CubeError(f"{path} is not a NetCDF file (it starts with {head[:4]!r}), so not a cube. {_NOT_A_CUBE_FIX}")


def _check_store_chunks(store: Path) -> None:
    """Refuse a store with empty, truncated or (in cubes that record writing every chunk) missing chunk
    files before anything is decompressed: they would read as NaN silently or crash the interpreter."""
    from latentcube.chunks import chunk_problems
    from latentcube.stores import root_attrs

    complete = bool(root_attrs(store).get(ALL_CHUNKS_ATTR))
    problems = chunk_problems(store)
    missing = [p for p in problems if p.kind == "missing"]
    broken = [p for p in problems if p.kind != "missing"]
    fix = ("Fix: re-create the cube (re-run the `latentcube import`, `fetch` or `synth` that made it, with "
           "--overwrite) or restore the file from a backup; the values of that chunk are lost.")
    if broken:
        p = broken[0]
        more = f" ({len(broken) - 1} more bad chunk files)" if len(broken) > 1 else ""
        raise CubeError(f"corrupt cube {store}: variable '{p.variable}', chunk file {p.path} {p.detail}{more}. {fix}")
    if missing and complete:
        p = missing[0]
        n_var = sum(q.variable == p.variable for q in missing)
        more = f" ({len(missing) - 1} more missing chunk files)" if len(missing) > 1 else ""
        raise CubeError(f"incomplete cube {store}: variable '{p.variable}', chunk file {p.path} is missing "
                        f"({n_var} chunk file(s) of '{p.variable}' missing{more}); its values would read as NaN. {fix}")
    data = [p for p in missing if p.variable in ("s2", "s1", "s2_scl")]
    if data:
        import warnings

        warnings.warn(
            f"{store}: {len(data)} chunk files of {sorted({p.variable for p in data})} are absent (first: {data[0].path}); "
            "they read as NaN. This cube does not record that every chunk was written (older writers skip "
            "all-NaN chunks), so they may be cloud-only chunks. Fix: if they should hold data, re-create the "
            "cube; saving it again with latentcube records complete chunks.",
            stacklevel=3,
        )


def open_cube(path: str | Path, *, chunks: Mapping[str, int] | str | None = None, validate: bool = False,
              check_chunks: bool = True) -> xr.Dataset:
    """Open a cube lazily (Dask) from Zarr (directory or ``*.zarr``) or NetCDF (``*.nc``).

    ``chunks`` defaults to the on-disk chunking. With ``validate=True`` the result is checked with
    :func:`validate_cube`. ``check_chunks`` refuses a Zarr store with missing, empty or truncated chunk
    files before anything is decompressed (a listing and one 16-byte read per chunk file); a worker
    reopening a store its parent process checked may pass False.
    """
    path = Path(path)
    if not path.exists():
        raise CubeError(f"no such cube: {path}. Fix: check the path (cubes are *.zarr directories or *.nc files).")
    _check_is_store(path)
    if path.is_dir() and check_chunks:
        _check_store_chunks(path)
    chunks = {} if chunks is None else chunks
    try:
        if _is_zarr(path):
            ds = xr.open_zarr(path, chunks=chunks, decode_coords="all")
        else:
            ds = xr.open_dataset(path, chunks=chunks, decode_coords="all")
    except Exception as err:
        raise CubeError(f"cannot read {path} as Zarr or NetCDF: {err}") from err
    ds.attrs.pop(ALL_CHUNKS_ATTR, None)  # a fact about this store, not the data: a copy written elsewhere sets its own
    # decode_coords moves grid_mapping to encoding; restore the attribute for downstream writers.
    for name in ds.data_vars:
        gm = ds[name].encoding.get("grid_mapping")
        if gm and "grid_mapping" not in ds[name].attrs:
            ds[name].attrs["grid_mapping"] = gm
    return validate_cube(ds) if validate else ds


def _storage_chunks(ds: xr.Dataset, name: str, spatial: int = 256, temporal: int = 64) -> tuple[int, ...]:
    """Chunks that serve both map reads (one date) and time-series reads (one pixel) reasonably."""
    sizes = []
    for dim in ds[name].dims:
        n = ds.sizes[dim]
        if dim in ("y", "x"):
            sizes.append(min(n, spatial))
        elif dim in ("time", "time_s1"):
            sizes.append(min(n, temporal))
        else:
            sizes.append(n)
    return tuple(sizes)


def is_cube_store(path: str | Path) -> bool:
    """Whether ``path`` is a latentcube output (a cube or an embedding store: Zarr or NetCDF whose
    attributes record ``latentcube_version``), i.e. something ``--overwrite`` may replace."""
    path = Path(path)
    try:
        if path.is_dir():
            from latentcube.stores import root_attrs

            return "latentcube_version" in root_attrs(path)
        if path.is_file() and path.stat().st_size > 0:
            with xr.open_dataset(path) as ds:
                return "latentcube_version" in ds.attrs
    except Exception:  # unreadable: not something we wrote, so never ours to delete
        return False
    return False


#: Root attribute of cubes written by :func:`save_cube`: every chunk file was written (empty ones too),
#: so a chunk file that is missing later was lost, not skipped.
ALL_CHUNKS_ATTR = "latentcube_all_chunks_written"


def save_cube(ds: xr.Dataset, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write a cube to Zarr (``*.zarr`` or any other name; :data:`latentcube.stores.ZARR_FORMAT`, v3) or
    NetCDF (``*.nc``); returns the path.

    An existing latentcube cube at ``path`` is replaced only with ``overwrite`` (the default, for library
    use; the CLI's default is to refuse); anything else at ``path`` (a folder of other files, another
    file) is never touched: :class:`~latentcube.files.OutputExistsError`. The cube is written under a
    temporary name beside ``path`` and renamed into place when complete, so a failed write leaves any old
    cube as it was.

    Attributes record the package version. Encodings inherited from the source files are dropped so
    that storage chunks follow :func:`_storage_chunks`. Zarr stores get every chunk file, all-NaN ones
    too, so that :func:`open_cube` can tell a lost chunk file from a skipped one.
    """
    from latentcube.files import atomic_path, check_output_path
    from latentcube.stores import write_zarr

    path = Path(path)
    replace = check_output_path(path, overwrite=overwrite, is_ours=is_cube_store, what="cube")
    out = ds.copy()
    out.attrs["latentcube_version"] = __version__
    for name in out.variables:
        out[name].encoding = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".nc", ".nc4", ".netcdf"):
        encoding = {
            name: {"zlib": True, "complevel": 4, "chunksizes": _storage_chunks(out, name)}
            for name in out.data_vars
            if out[name].ndim >= 2
        }
        with atomic_path(path) as tmp:
            out.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
        return path
    out.attrs[ALL_CHUNKS_ATTR] = 1
    encoding = {name: {"chunks": _storage_chunks(out, name)} for name in out.data_vars if out[name].ndim >= 2}
    # Align dask chunks with storage chunks so each task writes whole Zarr chunks (memory stays bounded).
    for name in out.data_vars:
        if out[name].chunks is not None and out[name].ndim >= 2:
            out[name] = out[name].chunk(dict(zip(out[name].dims, _storage_chunks(out, name), strict=True)))
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        # latentcube.stores.ZARR_FORMAT (v3) with consolidated metadata; band names as v3 strings.
        write_zarr(out, tmp, mode="w-", encoding=encoding, write_empty_chunks=True)
        if replace or path.exists():  # an old cube (or an empty folder) moves aside until the new one is in place
            aside = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, aside)
            os.replace(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


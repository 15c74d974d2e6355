"""Cheap reads of a cube: a strided sample of a few storage chunk windows; codec failures as CubeError."""

from __future__ import annotations

import numpy as np
import xarray as xr

from latentcube.cube._model import CubeError
from latentcube.errors import LatentcubeError

#: Values sampled per variable for the cheap range checks of :func:`validate_cube`.
_SAMPLE_TARGET = 2_000_000

#: Spatial storage chunks per axis that the validation sample of a lazy (Dask) cube reads: a stride over
#: every chunk would read the whole cube (a tile-year of S2 is ~350 GB); evenly spaced chunk windows keep
#: validating it to a few GB.
SAMPLE_CHUNKS_PER_AXIS = 4


def _chunk_windows(da: xr.DataArray) -> xr.DataArray:
    """``da`` restricted to at most ``SAMPLE_CHUNKS_PER_AXIS`` evenly spaced storage chunks along y and x
    when it is Dask-backed with more; unchanged otherwise (in memory, a stride costs nothing)."""
    chunks = da.chunks  # of the data only (DataArray.chunksizes also checks coordinates, e.g. orbit_state)
    if chunks is None:
        return da
    picks = {}
    for dim in ("y", "x"):
        sizes = chunks[da.dims.index(dim)] if dim in da.dims else ()
        if len(sizes) <= SAMPLE_CHUNKS_PER_AXIS:
            continue
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        chosen = np.unique(np.linspace(0, len(sizes) - 1, SAMPLE_CHUNKS_PER_AXIS).round().astype(int))
        picks[dim] = np.concatenate([np.arange(starts[i], starts[i] + sizes[i]) for i in chosen])
    return da.isel(picks) if picks else da


def _sample(da: xr.DataArray, target: int = _SAMPLE_TARGET) -> np.ndarray:
    """A strided subsample of ``da``'s values (of a few chunk windows on lazy arrays), flattened to float64."""
    da = _chunk_windows(da)
    step = max(1, int(np.ceil((da.size / max(target, 1)) ** (1 / max(da.ndim, 1)))))
    sub = da.isel({d: slice(None, None, step) for d in da.dims})
    return np.asarray(_read(sub), dtype="float64").ravel()


def _read(da: xr.DataArray) -> np.ndarray:
    """``da.values``, with a decode failure of a corrupt chunk turned into a :class:`CubeError` with the fix
    (the codecs' own messages, e.g. "error during blosc decompression: -1", name no file)."""
    try:
        return np.asarray(da.values)
    except LatentcubeError:
        raise
    except Exception as err:  # every codec raises its own type
        raise CubeError(
            f"cannot read '{da.name}': a chunk file does not decode ({type(err).__name__}: {err}). Fix: "
            "`latentcube validate --full CUBE` names the chunk file; re-create the cube or restore that file."
        ) from err


"""Dense embedding cubes: every pixel and every date of a cube through a trained encoder, out of core.

``embed_cube(cube, checkpoint, out)`` reads a cube (docs/data-model.md) block by block, preprocesses it
exactly as training does (checkpoint normalisation, S1 three-frame smoothing in linear power, S1 matched
to the S2 dates), runs the dense-exact encoder (``encode_scene``, docs/method.md) on each block plus a
7-pixel halo of real context, and writes ``embedding`` ``(time, feature, y, x)`` to a Zarr v3 store
(one shard per block; ``latentcube.stores``). The store is created as a template first; each block then writes its own region and, last,
an atomic marker ``<out>/.blocks/<iy>_<ix>.done``. A re-run skips blocks that have a marker, so a killed
run resumes where it stopped and never counts a half-written block as done. Blocks run in parallel
through Dask (a ``distributed.LocalCluster`` by default, any scheduler address, or in-process).
See docs/embed.md.
"""

from __future__ import annotations

from latentcube.embed._api import embed_cube, embed_pixels
from latentcube.embed._compute import embed_block
from latentcube.embed._plan import (
    DEFAULT_BLOCK_PX,
    DTYPES,
    MIN_BLOCK_PX,
    EmbedError,
    auto_tile,
    block_grid,
    default_workers,
    feature_names,
    file_sha256,
    worker_memory_estimate,
)
from latentcube.embed._quality import reconstruction_error
from latentcube.embed._store import (
    INT8_INVALID,
    EmbeddingCubeError,
    dates_with_data,
    dates_without_valid_pixel,
    embedding_summary,
    open_embedding,
    quantize_int8,
)

__all__ = [
    "DEFAULT_BLOCK_PX",
    "DTYPES",
    "INT8_INVALID",
    "MIN_BLOCK_PX",
    "EmbedError",
    "EmbeddingCubeError",
    "auto_tile",
    "block_grid",
    "default_workers",
    "embed_block",
    "embed_cube",
    "embed_pixels",
    "dates_with_data",
    "dates_without_valid_pixel",
    "embedding_summary",
    "feature_names",
    "file_sha256",
    "open_embedding",
    "quantize_int8",
    "reconstruction_error",
    "worker_memory_estimate",
]

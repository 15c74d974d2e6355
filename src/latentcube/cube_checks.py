"""Checks that read a cube's data across sensors and chunks, beyond :func:`~latentcube.cube.validate_cube`:

* :func:`check_s1_coverage`: does Sentinel-1 meet the Sentinel-2 dates and pixels a fusion model needs?
  (S1 on another grid, dates that never meet S2's or lost chunks used to fuse with S1 absent, silently);
* :func:`scan_cube`: every chunk of ``s2``/``s1`` read once: exact counts of missing and impossible
  values, and a decode failure named by variable and chunk file (``latentcube validate --full``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from latentcube.cube import CubeError, impossible_values
from latentcube.cube._sample import _SAMPLE_TARGET, _chunk_windows
from latentcube.timeutils import nearest_index

__all__ = ["S1_COVERAGE_WARN", "S1Coverage", "ValueScan", "check_s1_coverage", "s1_coverage", "scan_cube"]

# ---------------------------------------------------------------------------------- S1 coverage

#: Share of S2 dates (or of S2 pixels) with S1 below which :func:`check_s1_coverage` warns. With one
#: S1 orbit (12-day revisit) and matching within 6 days, every S2 date has an S1 acquisition; under half
#: means S1 is partly absent (another grid, other dates, lost chunks), not a revisit gap.
S1_COVERAGE_WARN = 0.5


@dataclass(frozen=True)
class S1Coverage:
    """How much of the S2 series has Sentinel-1 to fuse with (from a sample of pixels, every date)."""

    s2_dates: int
    dates_covered: int
    """S2 dates whose nearest S1 acquisition is within ``max_gap_days`` and holds valid data."""
    pixel_share: float
    """Of the sampled pixels with valid S2, the share with valid S1 on some date."""

    @property
    def date_share(self) -> float:
        return self.dates_covered / self.s2_dates if self.s2_dates else 0.0


def s1_coverage(ds: xr.Dataset, *, max_gap_days: float = 6.0) -> S1Coverage:
    """Measure :class:`S1Coverage` of a cube with ``s2`` (no ``s1``: zero coverage). Reads every date of
    a strided pixel sample within a few storage chunk windows, like the range checks of validation."""
    n2 = ds.sizes.get("time", 0)
    if "s1" not in ds or "s2" not in ds or ds.sizes.get("time_s1", 0) == 0 or n2 == 0:
        return S1Coverage(n2, 0, 0.0)

    # One spatial sample for both sensors (S2's chunk windows and stride; the grid is shared): per-sensor
    # strides would pick different pixels and the two masks could not be compared.
    s2 = _chunk_windows(ds["s2"])
    per_pixel = s2.size / max(s2.sizes["y"] * s2.sizes["x"], 1)
    step = max(1, int(np.ceil(np.sqrt(s2.sizes["y"] * s2.sizes["x"] * per_pixel / _SAMPLE_TARGET))))
    ys, xs = s2["y"].values[::step], s2["x"].values[::step]

    def pixels(da: xr.DataArray) -> xr.DataArray:
        return da.sel(y=ys, x=xs)

    s1_ok = np.isfinite(np.asarray(pixels(ds["s1"]).values)).any(axis=1)  # (time_s1, y, x)
    s2_ok = np.isfinite(np.asarray(pixels(ds["s2"]).values)).all(axis=1).any(axis=0)  # (y, x)
    idx = nearest_index(ds["time_s1"].values, ds["time"].values, max_gap_days)
    within, nearest = idx >= 0, np.maximum(idx, 0)
    dates = int(np.sum(within & s1_ok.any(axis=(1, 2))[nearest]))
    share = float(s1_ok.any(axis=0)[s2_ok].mean()) if s2_ok.any() else 0.0
    return S1Coverage(n2, dates, share)


def check_s1_coverage(ds: xr.Dataset, *, max_gap_days: float = 6.0, allow_missing: bool = False,
                      what: str = "this model", fix: str | None = None) -> S1Coverage:
    """Check that a cube has Sentinel-1 where a step that fuses S1 with S2 needs it; return the coverage.

    Raises :class:`CubeError` when S1 is absent or covers none of the S2 dates or pixels (S1 on another
    grid, dates that never meet S2's, lost chunks), unless ``allow_missing``; warns with the shares when
    it covers fewer than :data:`S1_COVERAGE_WARN` of them (or, with ``allow_missing``, none). ``what``
    names the step in messages; ``fix`` replaces the default fix of the error.
    """
    cov = s1_coverage(ds, max_gap_days=max_gap_days)
    where = (f"S1 covers {cov.dates_covered} of {cov.s2_dates} S2 dates ({cov.date_share:.0%}; nearest acquisition "
             f"within {max_gap_days:g} days holding data) and {cov.pixel_share:.0%} of the sampled S2 pixels")
    if "s1" not in ds:
        where = "the cube has no 's1'"
    causes = "S1 on another grid, S1 dates outside the S2 period, or lost S1 chunks"
    if cov.dates_covered == 0 or cov.pixel_share == 0:
        if not allow_missing:
            raise CubeError(
                f"{what}: {where}, so fusion would see S1 as absent everywhere ({causes}). Fix: "
                + (fix or "import or fetch S1 on the cube's grid and dates (`latentcube info` shows both date "
                           "ranges), or pass --allow-missing-s1 (allow_missing_s1=True) to accept S1 absent.")
            )
        warnings.warn(f"{what}: {where}; continuing with S1 absent as allowed (--allow-missing-s1).", stacklevel=2)
    elif cov.date_share < S1_COVERAGE_WARN or cov.pixel_share < S1_COVERAGE_WARN:
        warnings.warn(
            f"{what}: {where}; elsewhere fusion sees S1 as absent ({causes}). Fix: check the S1 import "
            "(`latentcube info` shows both date ranges and valid fractions).",
            stacklevel=2,
        )
    return cov


# ------------------------------------------------------------------------------------ full scan


@dataclass(frozen=True)
class ValueScan:
    """Counts over every value of one variable."""

    variable: str
    values: int
    missing: int
    """NaN values (clouds, nodata)."""
    impossible_pixel_dates: int
    """Pixel-dates with a value that is infinite or outside the sensor's physical range (read as NaN)."""
    pixel_dates: int


def _chunk_file(store: str | Path, var: str, idx: tuple[int, ...]) -> Path:
    """The file of chunk ``idx`` of ``var`` in a Zarr store of either format (``0.1.0`` or ``c/0/1/0``)."""
    from latentcube.stores import array_layout

    try:
        return Path(store) / var / array_layout(store, var).key(idx)
    except FileNotFoundError:
        return Path(store) / var / ".".join(map(str, idx))


def scan_cube(ds: xr.Dataset, store: str | Path | None = None) -> dict[str, ValueScan]:
    """Read every storage chunk of ``s2`` and ``s1`` once (one at a time: memory stays one chunk) and count
    missing and impossible values. A chunk that cannot be decoded raises :class:`CubeError` naming the
    variable and, with ``store`` (the Zarr path the cube was opened from), the chunk file.

    Open the cube with :func:`~latentcube.cube.open_cube` (on-disk chunking) so blocks are storage chunks.
    """
    out: dict[str, ValueScan] = {}
    for var in ("s2", "s1"):
        if var not in ds:
            continue
        data = ds[var].data
        if not isinstance(data, da.Array):  # an in-memory cube: one block
            data = da.from_array(data, chunks=data.shape)
        blocks = data.to_delayed()
        n = missing = bad = 0
        for idx in np.ndindex(blocks.shape):
            try:
                with dask.config.set(scheduler="synchronous"):
                    values = np.asarray(blocks[idx].compute())
            except Exception as err:  # every codec raises its own type
                where = f"chunk file {_chunk_file(store, var, idx)}" if store else f"chunk {idx}"
                raise CubeError(
                    f"cannot decode variable '{var}', {where} ({type(err).__name__}: {err}). Fix: re-create the cube "
                    "(re-run the `latentcube import`, `fetch` or `synth` that made it, with --overwrite) or restore "
                    "the file from a backup."
                ) from err
            n += values.size
            missing += int(np.count_nonzero(np.isnan(values)))
            bad += int(np.count_nonzero(impossible_values(values, var).any(axis=1)))
        out[var] = ValueScan(var, n, missing, bad, n // max(ds[var].shape[1], 1))
    return out

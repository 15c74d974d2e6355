"""Which data each split trains on: whole cubes by a site plan or name lists (:func:`assign_splits`), or
disjoint strips of one cube (:func:`spatial_split`, a spatial holdout for one area of interest).

Patches are then drawn inside their cubes or strips by :class:`latentcube.sampling.PatchDataset`, so no pixel
is in two splits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["assign_splits", "spatial_split"]


def spatial_split(
    height: int, width: int, fractions: Mapping[str, float], *, patch: int = 15, axis: str = "x",
) -> dict[str, tuple[slice, slice]]:
    """Cut one cube into disjoint strips for ``train`` and the held-out splits (a spatial holdout).

    ``fractions`` maps ``"val"`` and/or ``"test"`` to the share of the cube's extent along ``axis``
    (``"x"`` = columns, strips from west to east: train, val, test; ``"y"`` = rows, north to south);
    train gets the rest. Strip edges are rounded to whole pixels. Patches are then drawn inside their
    strip (``PatchDataset(regions=...)``), so no pixel is in patches of two splits. For a cube too
    small to fit one ``patch``-wide strip per split, raises ``ValueError`` with the fix.

    Returns ``{split: (rows slice, columns slice)}`` in pixels.
    """
    unknown = sorted(set(fractions) - {"val", "test"})
    if unknown:
        raise ValueError(f"spatial split fractions for {unknown}: only 'val' and 'test' are held out (train gets the rest)")
    if not fractions or any(not 0 < float(f) < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        raise ValueError(f"spatial split fractions {dict(fractions)}: each must be in (0, 1) and together below 1 "
                         "(train gets the rest), e.g. {val: 0.2}")
    if axis not in ("x", "y"):
        raise ValueError(f"spatial split axis must be 'x' (columns) or 'y' (rows), got {axis!r}")
    extent = width if axis == "x" else height
    order = ["train", *(s for s in ("val", "test") if s in fractions)]
    shares = [1 - sum(fractions.values()), *(float(fractions[s]) for s in order[1:])]
    edges = np.rint(np.concatenate([[0], np.cumsum(shares)]) * extent).astype(int)
    edges[-1] = extent
    out = {}
    for split, a, b in zip(order, edges[:-1], edges[1:], strict=True):
        if b - a < patch:
            raise ValueError(f"spatial split {dict(fractions)} of a {height} x {width} cube along {axis}: the {split} "
                             f"strip is {b - a} px wide, less than one {patch}-px patch. Fix: "
                             + _split_fixes(fractions, extent, patch, split, (height, width), axis))
        strip = slice(int(a), int(b))
        out[split] = (slice(0, height), strip) if axis == "x" else (strip, slice(0, width))
    return out


def _split_fixes(fractions: Mapping[str, float], extent: int, patch: int, split: str, shape: tuple[int, int],
                 axis: str) -> str:
    """The ways out of a strip narrower than one patch, most direct first, as one phrase."""
    fixes = []
    need = math.ceil(100 * (patch + 0.5) / extent) / 100  # the smallest share whose rounded strip holds a patch
    raised = {s: max(float(f), need) for s, f in fractions.items()}
    if split != "train" and sum(raised.values()) <= 1 - need:
        fixes.append(f"raise the held-out fractions to at least {need:.2f} each (data.spatial_split: "
                     "{" + ", ".join(f"{s}: {f:.2f}" for s, f in raised.items()) + "})")
    elif split == "train" and len(fractions) * need <= 1 - need:
        fixes.append(f"lower the held-out fractions (together at most {1 - need:.2f}, each at least {need:.2f})")
    other, across = ("y", shape[0]) if axis == "x" else ("x", shape[1])
    if across > extent:
        fixes.append(f"split along the other axis (data.spatial_split_axis: {other}: {across} px instead of {extent})")
    fixes.append("use more cubes with cube-level splits (data.splits or data.plan)")
    return ", ".join(fixes[:-1]) + (", or " if len(fixes) > 1 else "") + fixes[-1] + "."


def assign_splits(
    cubes: Sequence[str | Path],
    *,
    plan: pd.DataFrame | str | Path | None = None,
    splits: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[Path]]:
    """Group cube paths by split, from a site plan (``cube_id`` → ``split``) or explicit name lists.

    A cube's id is its file stem (``site_0001_p1.zarr`` → ``site_0001_p1``). Raises ``ValueError`` when a
    cube is in two splits or in none.
    """
    paths = [Path(c) for c in cubes]
    ids = {p.stem if p.suffix in (".zarr", ".nc") else p.name: p for p in paths}
    if (plan is None) == (splits is None):
        raise ValueError("give exactly one of plan= (a site plan with cube_id and split) or splits=")
    if plan is not None:
        table = pd.read_csv(plan) if isinstance(plan, str | Path) else plan
        missing_cols = {"cube_id", "split"} - set(table.columns)
        if missing_cols:
            raise ValueError(f"site plan lacks columns {sorted(missing_cols)}; it needs cube_id and split")
        doubled = table.groupby("cube_id")["split"].nunique()
        if (doubled > 1).any():
            raise ValueError(f"cubes in two splits in the plan: {list(doubled[doubled > 1].index)[:5]}")
        lookup = dict(zip(table["cube_id"].astype(str), table["split"].astype(str), strict=True))
    else:
        lookup = {}
        for split, names in splits.items():
            for name in names:
                name = Path(name).stem if Path(name).suffix in (".zarr", ".nc") else str(name)
                if name in lookup and lookup[name] != split:
                    raise ValueError(f"cube {name!r} is in two splits: {lookup[name]!r} and {split!r}. Fix: put each "
                                     "cube in one split; to hold out part of one cube, use a spatial split instead")
                lookup[name] = split
    unknown = sorted({v for v in lookup.values()} - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"unknown split name(s) {unknown}: the splits are train, val and test. Fix: rename them in "
                         "the plan's split column or in data.splits")
    out: dict[str, list[Path]] = {}
    unassigned = [cid for cid in ids if cid not in lookup]
    if unassigned:
        found = sum(cid in lookup for cid in ids)
        more = f" and {len(unassigned) - 5} more" if len(unassigned) > 5 else ""
        raise ValueError(f"{len(unassigned)} of {len(ids)} cubes have no split: {unassigned[:5]}{more} ({found} of the "
                         f"{len(lookup)} ids in the {'plan' if plan is not None else 'split lists'} match a cube; a "
                         "cube's id is its file name without .zarr). Fix: add them to the plan or the split lists.")
    for cid, path in ids.items():
        out.setdefault(lookup[cid], []).append(path)
    return out

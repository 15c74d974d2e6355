"""fetch_sites: one cube per site-plan row, resumable (a cube is done once its completion marker exists)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import xarray as xr

from latentcube import __version__
from latentcube.cube import open_cube, save_cube
from latentcube.sources.stac._fetch import fetch_cube

#: The package's logger: users configure "latentcube.sources.stac", not its private modules.
log = logging.getLogger("latentcube.sources.stac")

#: Name of the file written last into a finished cube directory by :func:`fetch_sites`.
COMPLETE_MARKER = ".latentcube_complete"

_PLAN_REQUIRED = ("cube_id", "lon", "lat", "edge_m", "start", "end")


def read_plan(plan: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A site plan as a DataFrame (columns ``cube_id, site_id, lon, lat, edge_m, start, end, split,
    landcover``; the first six are required) from a DataFrame, a ``.csv`` or a ``.geojson`` file
    (Point features; lon/lat taken from the geometry when not in the properties)."""
    if isinstance(plan, pd.DataFrame):
        df = plan.copy()
    else:
        path = Path(plan)
        if not path.exists():
            raise FileNotFoundError(f"site plan {path} not found. Fix: write one with `latentcube plan`.")
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path, dtype={"cube_id": str, "site_id": str})
        elif path.suffix.lower() in (".geojson", ".json"):
            data = json.loads(path.read_text())
            rows = []
            for feat in data.get("features", []):
                row = dict(feat.get("properties") or {})
                geom = feat.get("geometry") or {}
                if geom.get("type") == "Point":
                    row.setdefault("lon", geom["coordinates"][0])
                    row.setdefault("lat", geom["coordinates"][1])
                rows.append(row)
            df = pd.DataFrame(rows)
        else:
            raise ValueError(f"unsupported site plan format {path.suffix!r}: use .csv or .geojson.")
    missing = [c for c in _PLAN_REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"site plan lacks columns {missing}; it has {list(df.columns)}. Required: {list(_PLAN_REQUIRED)}.")
    df["cube_id"] = df["cube_id"].astype(str)
    dups = df["cube_id"][df["cube_id"].duplicated()].unique().tolist()
    if dups:
        raise ValueError(f"duplicate cube_id values in the site plan: {dups[:5]}. Fix: make cube_id unique.")
    bad = [c for c in df["cube_id"] if not c or any(ch in c for ch in "/\\") or c.startswith(".")]
    if bad:
        raise ValueError(f"cube_id values {bad[:5]} cannot be file names. Fix: use letters, digits, '-' and '_'.")
    return df.reset_index(drop=True)


def cube_is_complete(path: str | Path) -> bool:
    """True when ``path`` is a cube that :func:`fetch_sites` finished (its completion marker exists)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def fetch_sites(
    plan: pd.DataFrame | str | Path,
    out_dir: str | Path,
    *,
    skip_existing: bool = True,
    progress: bool = True,
    on_error: Literal["raise", "skip"] = "raise",
    fetch: Callable[..., xr.Dataset] | None = None,
    **fetch_kwargs: Any,
) -> list[Path]:
    """Fetch one cube per plan row into ``out_dir/<cube_id>.zarr``; returns the paths of finished cubes.

    Resumable: each cube is written to ``out_dir/.<cube_id>.zarr.partial``, re-opened and validated, marked
    complete (``.latentcube_complete``, written last) and renamed into place; with ``skip_existing`` a
    re-run skips cubes with the marker and redoes anything else (an interrupted or foreign directory).

    Args:
        plan: DataFrame or .csv/.geojson path (see :func:`read_plan`).
        fetch: the loader, default :func:`fetch_cube` (called with center=(lon, lat), edge_m, start, end).
        on_error: "raise" stops at the first failing site; "skip" logs it and goes on.
        **fetch_kwargs: passed to the loader (catalog, max_cloud_cover, mask, nbar, ...).
    """
    df = read_plan(plan)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loader = fetch or fetch_cube
    done: list[Path] = []
    from tqdm.auto import tqdm

    bar = tqdm(df.to_dict("records"), desc="fetch cubes", unit="cube", disable=not progress)
    for row in bar:
        cid = row["cube_id"]
        final = out / f"{cid}.zarr"
        bar.set_postfix_str(cid)
        tmp = out / f".{cid}.zarr.partial"
        if skip_existing and cube_is_complete(final):
            if tmp.exists():  # leftover of an earlier crash after this cube was finished
                shutil.rmtree(tmp, ignore_errors=True)
            done.append(final)
            continue
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            ds = loader(
                center=(float(row["lon"]), float(row["lat"])),
                edge_m=float(row["edge_m"]),
                start=row["start"],
                end=row["end"],
                progress=False,
                **fetch_kwargs,
            )
            for key in ("cube_id", "site_id", "split", "landcover"):
                if key in row and not (isinstance(row[key], float) and math.isnan(row[key])):
                    ds.attrs[key] = str(row[key])
            save_cube(ds, tmp)
            open_cube(tmp, validate=True)  # a cube that does not read back valid is not finished
            (tmp / COMPLETE_MARKER).write_text(
                json.dumps({"cube_id": cid, "latentcube_version": __version__,
                            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
            )
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except Exception as err:
            if on_error == "raise":
                raise
            log.error("cube %s failed (%s: %s); skipped", cid, type(err).__name__, err)
            continue
        done.append(final)
    return done

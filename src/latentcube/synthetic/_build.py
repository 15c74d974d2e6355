"""Building a world (:func:`make_world`) and writing it (:func:`write_world`)."""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS, Transformer

from latentcube.constants import LANDCOVER_CLASSES, S1_BANDS, S2_BANDS
from latentcube.cube import new_cube, save_cube
from latentcube.synthetic._flux import _flux_series, fluxnet_dd_filename, write_fluxnet_dd
from latentcube.synthetic._landscape import _landcover
from latentcube.synthetic._sensors import _s1, _s2
from latentcube.synthetic._tables import (
    _EPOCH,
    _S1_TIME_OF_DAY,
    _S2_TIME_OF_DAY,
    _VEG_CODE,
    VEG_TYPE_CLASS,
    _days,
    _rng,
    _smooth,
)
from latentcube.synthetic._vegetation import _phenology
from latentcube.synthetic._weather import _weather
from latentcube.synthetic.config import World, WorldConfig

# ----------------------------------------------------------------------------------------- builder


def _acq_dates(rng: np.random.Generator, years: list[int], step: int, tod: np.timedelta64) -> pd.DatetimeIndex:
    start = np.datetime64(f"{years[0]}-01-01") + np.timedelta64(int(rng.integers(0, step)), "D")
    end = np.datetime64(f"{years[-1]}-12-31")
    d = np.arange(start, end + np.timedelta64(1, "D"), np.timedelta64(step, "D"))
    return pd.DatetimeIndex(d.astype("datetime64[s]") + tod)


def _locations(seed: int, k: int, crs: CRS) -> list[tuple[float, float]]:
    """Upper-left corners (x, y) of k cubes in Central Europe, at least 50 km apart (like the paper)."""
    rng = _rng(seed, 999)
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    pts: list[tuple[float, float]] = []
    tries = 0
    while len(pts) < k:
        lon, lat = rng.uniform(6.0, 13.0), rng.uniform(46.5, 51.0)
        x, y = to_utm.transform(lon, lat)
        tries += 1
        min_sep = 50_000 if tries < 5_000 else 2_000  # many cubes: the region fills up, relax
        if all(np.hypot(x - a, y - b) >= min_sep for a, b in pts):
            pts.append((float(np.round(x, -1)), float(np.round(y, -1))))
    return pts


def _build(
    cfg: WorldConfig, index: int, name: str, years: list[int], n: int, origin: tuple[float, float],
    veg: str | None, site_id: str | None, keep_truth: bool,
) -> tuple[xr.Dataset, xr.Dataset | None, dict[str, Any] | None, pd.DataFrame | None]:
    crs = CRS.from_user_input(cfg.crs)
    px = cfg.pixel_size_m
    x = origin[0] + px / 2 + px * np.arange(n)
    y = origin[1] - px / 2 - px * np.arange(n)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x.mean(), y.mean())

    site_class = VEG_TYPE_CLASS[veg] if veg else None
    lc, pid = _landcover(_rng(cfg.seed, index, 1), n, cfg, site_class)
    s2_t = _acq_dates(_rng(cfg.seed, index, 2), years, cfg.s2_revisit_days, _S2_TIME_OF_DAY)
    s1_t = _acq_dates(_rng(cfg.seed, index, 3), years, cfg.s1_revisit_days, _S1_TIME_OF_DAY)
    weather, cloud_scl = _weather(_rng(cfg.seed, index, 4), years, lat, cfg, s2_t, n, _rng(cfg.seed, index, 5))
    ph = _phenology(_rng(cfg.seed, index, 6), lc, pid, years, weather)

    wet_px = np.clip(1 + 0.25 * _smooth(_rng(cfg.seed, index, 7), (n, n), 12.0), 0.5, 1.5)  # wetter hollows
    day0 = weather.dates[0]
    i2 = (s2_t.normalize() - day0).days.values
    i1 = (s1_t.normalize() - day0).days.values
    m2 = np.clip(weather.soil_moisture[i2][:, None, None] * wet_px, 0, 1).astype(np.float32)
    m1 = np.clip(weather.soil_moisture[i1][:, None, None] * wet_px, 0, 1).astype(np.float32)
    s2, scl, fc = _s2(_rng(cfg.seed, index, 8), ph, lc, _days(s2_t.values), i2, weather, cloud_scl, m2, cfg)
    s1, s1_clean = _s1(_rng(cfg.seed, index, 9), ph, lc, _days(s1_t.values), m1, cfg)

    attrs = {
        "source": "latentcube.synthetic",
        "seed": int(cfg.seed),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "title": f"latentcube synthetic {'tower' if veg else 'scene'} cube {name}",
        "cube_kind": "tower" if veg else "scene",
        "center_lat": float(lat),
        "center_lon": float(lon),
    }
    if site_id:
        attrs.update({"site_id": site_id, "veg_type": veg})
    ds = new_cube(
        s2=s2, time=s2_t, y=y, x=x, crs=crs, bands=S2_BANDS, s1=s1, time_s1=s1_t, s2_scl=scl,
        layers={"landcover": lc.astype(np.uint8), "parcel_id": pid.astype(np.int32)}, attrs=attrs,
    )
    ds["landcover"].attrs.update(
        {"long_name": "land-cover class", "flag_values": list(LANDCOVER_CLASSES),
         "flag_meanings": " ".join(LANDCOVER_CLASSES.values())}
    )
    ds["parcel_id"].attrs["long_name"] = "management unit (field, stand, patch) id"
    ds["s2_scl"].attrs["long_name"] = "scene classification (ESA L2A SCL codes)"

    tower, flux = None, None
    if veg:
        r = c = n // 2
        p = r * n + c
        flux, drivers = _flux_series(_rng(cfg.seed, index, 10), veg, ph, p, weather, cfg)
        tower = {
            "site_id": site_id, "cube": name, "row": r, "col": c, "x": float(x[c]), "y": float(y[r]),
            "lat": float(lat), "lon": float(lon), "veg_type": veg, "landcover": int(lc[r, c]),
            "landcover_name": LANDCOVER_CLASSES[int(lc[r, c])],
        }
    truth = None
    if keep_truth:
        seasons = pd.Index(ph["seasons"], name="season")

        def _dt(a: np.ndarray) -> np.ndarray:
            out = np.full(a.shape, np.datetime64("NaT"), "datetime64[ns]")
            ok = np.isfinite(a)
            out[ok] = (_EPOCH + np.round(a[ok]).astype("timedelta64[D]")).astype("datetime64[ns]")
            return out

        cal = {
            k: (("season", "y", "x"), _dt(ph["crop_" + k]).reshape(len(seasons), n, n))
            for k in ("sow", "greenup", "senesc", "harvest")
        }
        truth = xr.Dataset(
            {
                "canopy_cover": (("time", "y", "x"), fc),
                "s1_clean": (("time_s1", "band_s1", "y", "x"), s1_clean),
                "crop_type": (("season", "y", "x"), ph["crop_type"].reshape(len(seasons), n, n)),
                **cal,
                "cloudiness": ("day", weather.cloud),
                "ta": ("day", weather.ta),
                "rain": ("day", weather.rain),
                "snow_cover": ("day", weather.snow_cover),
                "soil_moisture": ("day", weather.soil_moisture),
                "root_zone": ("day", weather.root_zone),
                "sw_in": ("day", weather.sw_in),
            },
            coords={"time": ds.time, "time_s1": ds.time_s1, "band_s1": list(S1_BANDS), "y": y, "x": x,
                    "season": seasons, "day": weather.dates},
        )
        truth["crop_type"].attrs["flag_meanings"] = "none winter_cereal spring_cereal maize"
        truth["mowing"] = (("year", "cut", "y", "x"), _dt(ph["mow"]).reshape(len(years), 3, n, n))
        truth = truth.assign_coords(year=list(years), cut=[1, 2, 3])
        if veg:
            for col in drivers.columns:
                truth["tower_" + col] = ("day", drivers[col].values)
    return ds, truth, tower, flux


def make_world(
    seed: int | None = None, *, config: WorldConfig | None = None, keep_truth: bool = False, **overrides: Any
) -> World:
    """Generate a synthetic world, deterministic from its configuration.

    Args:
        seed: seed of all random draws; ``None`` keeps ``config.seed`` (default 0).
        config: a :class:`WorldConfig`; defaults to ``WorldConfig()`` (3 scenes of 128 px over one year
            each, 6 tower cubes of 32 px over 2017-2020; a few seconds on 2 CPU cores).
        keep_truth: also return the noise-free state in ``World.truth`` (tests, diagnostics).
        **overrides: :class:`WorldConfig` fields to replace, e.g. ``scene_size=64``.

    Returns:
        A :class:`World`. Cube names: ``scene_000``... and ``tower_<SITE>``; site ids ``XS-DB1``...
    """
    cfg = config or WorldConfig()
    if seed is not None:
        overrides["seed"] = seed
    if overrides:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(WorldConfig)})
        if unknown:
            raise TypeError(f"unknown WorldConfig fields {unknown}")
        cfg = dataclasses.replace(cfg, **overrides)
    crs = CRS.from_user_input(cfg.crs)
    # Towers take the first locations so that adding scenes leaves the tower cubes unchanged.
    origins = _locations(cfg.seed, cfg.n_towers + cfg.n_scenes, crs)
    jobs = []  # (cube name, site id or None, _build arguments); each cube draws from its own random streams
    for i in range(cfg.n_scenes):
        jobs.append((f"scene_{i:03d}", None, (cfg, i, f"scene_{i:03d}", [cfg.scene_years[i % len(cfg.scene_years)]],
                                        cfg.scene_size, origins[cfg.n_towers + i], None, None, keep_truth)))
    counters: dict[str, int] = {}
    years = list(range(cfg.tower_years[0], cfg.tower_years[1] + 1))
    for j in range(cfg.n_towers):
        veg = cfg.tower_veg_types[j % len(cfg.tower_veg_types)]
        counters[veg] = counters.get(veg, 0) + 1
        site = f"XS-{_VEG_CODE[veg]}{counters[veg]}"
        # index 1000 + j: tower streams independent of the number of scenes
        jobs.append((f"tower_{site}", site, (cfg, 1000 + j, f"tower_{site}", years, cfg.tower_size, origins[j], veg, site,
                                       keep_truth)))
    # Cubes are independent: threads overlap the NumPy/SciPy work that releases the GIL (benchmarks/RESULTS.md);
    # the result does not depend on the order they finish in.
    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1) or 1) as pool:
        built = list(pool.map(lambda job: _build(*job[2]), jobs))
    cubes: dict[str, xr.Dataset] = {}
    truths: dict[str, xr.Dataset] = {}
    rows, gpp = [], {}
    for (name, site, _), (ds, tr, row, flux) in zip(jobs, built, strict=True):
        cubes[name] = ds
        if tr is not None:
            truths[name] = tr
        if site is not None:
            rows.append(row)
            gpp[site] = flux
    towers = pd.DataFrame(
        rows, columns=["site_id", "cube", "row", "col", "x", "y", "lat", "lon", "veg_type", "landcover", "landcover_name"]
    )
    return World(cubes=cubes, towers=towers, gpp=gpp, config=cfg, truth=truths if keep_truth else None)




def write_world(world: World, out_dir: str | Path, *, overwrite: bool = True) -> dict[str, Path]:
    """Write a world: ``<out_dir>/<cube>.zarr``, ``fluxnet/FLX_*_DD_*.csv``, ``towers.csv``, ``world.json``.

    Returns a flat dict: cube name -> Zarr path, ``"fluxnet/<site_id>"`` -> CSV path, ``"towers"`` and
    ``"config"`` -> their paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, ds in world.cubes.items():
        paths[name] = save_cube(ds, out_dir / f"{name}.zarr", overwrite=overwrite)
    y0, y1 = world.config.tower_years
    for site, df in world.gpp.items():
        paths[f"fluxnet/{site}"] = write_fluxnet_dd(df, out_dir / "fluxnet" / fluxnet_dd_filename(site, y0, y1))
    paths["towers"] = out_dir / "towers.csv"
    world.towers.to_csv(paths["towers"], index=False)
    paths["config"] = out_dir / "world.json"
    paths["config"].write_text(json.dumps(world.config.to_dict(), indent=2, sort_keys=True) + "\n")
    return paths

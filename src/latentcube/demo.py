"""The end-to-end demo on the embedded synthetic world (``latentcube demo``).

Each stage of the pipeline adds its step here; the CLI only calls :func:`run_demo`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latentcube import __version__
from latentcube.cube import cube_summary, validate_cube
from latentcube.plots import class_timeseries, plot_class_timeseries, save_true_colour

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and how long each step took (seconds)."""

    out_dir: Path
    report: Path
    figures: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    reconstruction: dict[str, Any] = field(default_factory=dict)


def _noop(_message: str) -> None:
    return None


def run_demo(out_dir: str | Path, *, seed: int = 0, log: Callable[[str], None] = _noop, train: bool = True,
             epochs: int | None = None) -> DemoResult:
    """Make the synthetic world, validate it, write it and its quick looks and a Markdown report.

    Args:
        out_dir: output directory (created); cubes go to ``out_dir/world``.
        seed: seed of the synthetic world.
        log: called with a one-line message as each step starts (the CLI shows them).
        train: also train the three stages with the demo configs (:func:`demo_config_dir`) and score them against PCA baselines.
        epochs: override the demo configs' epoch count (tests use 1).
    """
    from latentcube.synthetic import make_world, write_world

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    figures: list[Path] = []

    log("simulating the synthetic world")
    t0 = time.perf_counter()
    world = make_world(seed=seed)
    timings["synthesise"] = time.perf_counter() - t0

    log(f"validating {len(world.cubes)} cubes")
    t0 = time.perf_counter()
    for cube in world.cubes.values():
        validate_cube(cube)
    timings["validate"] = time.perf_counter() - t0

    log("writing cubes and FLUXNET files")
    t0 = time.perf_counter()
    write_world(world, out_dir / "world")
    timings["write"] = time.perf_counter() - t0

    log("drawing quick looks")
    t0 = time.perf_counter()
    scene_name = next(iter(world.cubes))
    scene = world.cubes[scene_name]
    figures.append(save_true_colour(scene, out_dir / "s2_true_colour.png", title=scene_name))
    figures.append(plot_class_timeseries(scene, out_dir / "class_timeseries.png", title=scene_name))
    timings["plots"] = time.perf_counter() - t0

    _data_section(out_dir, world, scene_name, figures)

    recon: dict[str, Any] = {}
    if train:
        with _quiet_lightning():
            recon = _train_stages(out_dir, log, timings, figures, epochs=epochs)
            _recon_section(out_dir, recon)
            _products_and_evaluation(out_dir, world, log, timings)
            _catalogue_section(out_dir, recon)

    _timings_section(out_dir, timings)
    report = _build_report(out_dir)
    return DemoResult(out_dir=out_dir, report=report, figures=figures, timings=timings, reconstruction=recon)


def _build_report(out_dir: Path) -> Path:
    """The run's report (HTML + Markdown) from its sections; returns the HTML path."""
    from latentcube.report import build_report

    html, _md = build_report(out_dir, title="latentcube demo")
    return Path(html)


def demo_config_dir() -> Path:
    """The demo's stage configs, shipped inside the package (``latentcube/configs/demo/*.yaml``).

    Read from the installed package, so ``latentcube demo`` works from any folder and any install
    (``pip install .``, a wheel, editable). Relative paths in them are relative to the demo's ``--out``.
    """
    from latentcube.train.recipes import recipe_dir

    return recipe_dir("demo")


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's start-up banners, tips and two known warnings hidden for the demo, restored afterwards.

    The demo prints its own progress; the caller's logging levels and warning filters are as they were
    once the demo returns.
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*was configured so 100%.*")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _train_stages(out_dir: Path, log: Callable[[str], None], timings: dict[str, float], figures: list[Path],
                  *, epochs: int | None = None) -> dict[str, Any]:
    """Train S1, S2 and fusion with the demo configs; score each against the PCA baselines."""
    from dataclasses import replace

    from latentcube.evaluate.curves import plot_training
    from latentcube.evaluate.reconstruction import compare_with_baselines
    from latentcube.train import (
        CubeDataModule,
        load_model,
        load_train_config,
        loss_module,
        normalization_of,
        run_training,
    )

    results: dict[str, Any] = {}
    latent = {"s1": 2, "s2": 9, "fusion": 7}
    for stage in ("s1", "s2", "fusion"):
        cfg = load_train_config(demo_config_dir() / f"{stage}.yaml")
        trainer = replace(cfg.trainer, enable_progress_bar=False, **({"max_epochs": epochs} if epochs else {}))
        cfg = replace(cfg, trainer=trainer)
        log(f"training {stage} ({cfg.trainer.max_epochs} epochs)")
        t0 = time.perf_counter()
        data = CubeDataModule(cfg, normalization_of(cfg), base_dir=out_dir)  # indexed once: training, then scoring
        summary = run_training(cfg, base_dir=out_dir, test=False, data=data)
        timings[f"train {stage}"] = time.perf_counter() - t0
        run_dir = Path(summary["out_dir"])
        figures.append(plot_training(run_dir, out_dir / f"training_curves_{stage}.png"))
        log(f"scoring {stage} against PCA baselines")
        t0 = time.perf_counter()
        model, _ = load_model(run_dir / "model.pt")
        train_set, val_set = data.dataset("train"), data.dataset("val")
        train_set.set_epoch(0)  # score on the index-time frames, whatever epoch training ended in
        sensors = ("s1", "s2") if stage == "fusion" else ("x",)
        results[stage] = compare_with_baselines(model, loss_module(cfg), train_set, val_set,
                                                sensors=sensors, latent_size=latent[stage])
        timings[f"score {stage}"] = time.perf_counter() - t0
    return results


def _timed(timings: dict[str, float], name: str, log: Callable[[str], None], message: str):
    """Context manager: log ``message``, then record the step's wall time under ``name``."""
    @contextmanager
    def step():
        log(message)
        t0 = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - t0

    return step()


#: The demo embeds the validation scene (never seen in training) for maps, gap filling and the probe.
DEMO_SCENE = "scene_002"


def _products_and_evaluation(out_dir: Path, world, log: Callable[[str], None], timings: dict[str, float]) -> None:
    """Embed -> gap-fill -> PCA map -> GPP -> land-cover probe, each writing its report section."""
    from latentcube.embed import embed_cube
    from latentcube.evaluate.gpp import DEMO_METHODS, METEO_DRIVERS, GPPConfig, evaluate_gpp
    from latentcube.evaluate.maps import class_colours, fit_pca, pca_figure, pca_rgb
    from latentcube.evaluate.probe import run_probe
    from latentcube.evaluate.sections import table, write_section
    from latentcube.gapfill import gapfill_embeddings

    model = out_dir / "runs" / "fusion" / "model.pt"
    cube = out_dir / "world" / f"{DEMO_SCENE}.zarr"
    emb = out_dir / "embeddings" / f"{DEMO_SCENE}.zarr"
    with _timed(timings, "embed", log, f"embedding {DEMO_SCENE} (fused 7-d)"):
        embed_cube(cube, model, emb, progress=False, overwrite=True)
    with _timed(timings, "gap-fill", log, "gap-filling the embeddings to a 5-day axis"):
        filled = gapfill_embeddings(emb, out_dir / "embeddings" / f"{DEMO_SCENE}_filled.zarr", freq="5D",
                                    method="linear", max_gap_days=30, overwrite=True, progress=False)
        filled_frac = float(filled["filled"].mean())
        valid_frac = float(np.isfinite(filled["embedding"].isel(feature=0)).mean())
    with _timed(timings, "pca map", log, "drawing the PCA map (the paper's Fig. 6)"):
        fit = fit_pca(emb, progress=False)
        fig = pca_figure(emb, cube, None, out_dir / f"pca_{DEMO_SCENE}.png", fit=fit, title=DEMO_SCENE)
        labels = world.cubes[DEMO_SCENE]["landcover"].values
        rgb = pca_rgb(emb, fit=fit, nan_colour=None)
        colours = class_colours(rgb, labels, valid=np.isfinite(rgb).all(-1))
    from latentcube.constants import LANDCOVER_CLASSES

    write_section(
        out_dir, "embedding", order=40, title="Embedding cube and PCA map",
        text=[f"`{DEMO_SCENE}` (the validation scene) embedded with the fusion model: 7 numbers per pixel and S2 "
              "date (`latentcube embed --quality` adds per-sensor reconstruction errors). The map shows the first "
              "three principal components as RGB beside the S2 true colour of the clearest date.",
              f"Gap filling to a 5-day axis (linear, gaps up to 30 days): {valid_frac:.0%} of pixel-dates have a "
              f"value afterwards, {filled_frac:.0%} of them interpolated (flag `filled`)."],
        tables=[table("mean PCA colour per land-cover class", ["class", "R", "G", "B"],
                      [[LANDCOVER_CLASSES.get(int(k), str(k)), *map(float, v)] for k, v in sorted(colours.items())])],
        figures=[(fig, "S2 true colour (left) and embedding PCA-RGB (right)")],
    )
    _windows_and_points(out_dir, cube, emb, world.cubes[DEMO_SCENE]["landcover"].values, log, timings)
    with _timed(timings, "gpp", log, "GPP at the flux towers (embeddings, weather, climatology)"):
        world_dir = out_dir / "world"
        evaluate_gpp(world_dir / "towers.csv", out_dir, checkpoint=model, cubes=world_dir, fluxnet=world_dir / "fluxnet",
                     config=GPPConfig(meteo=METEO_DRIVERS, methods=DEMO_METHODS))
    with _timed(timings, "probe", log, "land-cover probe (embeddings vs raw bands)"):
        run_probe(emb, cube, run_dir=out_dir)


def _windows_and_points(out_dir: Path, cube: Path, emb: Path, labels: np.ndarray, log: Callable[[str], None],
                        timings: dict[str, float]) -> None:
    """`latentcube aggregate` (season mean) and `latentcube sample` (one interior pixel per class, in lon/lat)."""
    import pandas as pd
    from pyproj import Transformer
    from scipy.ndimage import distance_transform_edt

    from latentcube.aggregate import aggregate_embeddings
    from latentcube.constants import LANDCOVER_CLASSES
    from latentcube.cube import cube_crs, open_cube
    from latentcube.evaluate.sections import table, write_section
    from latentcube.sample_points import sample_embeddings

    season_path = out_dir / "embeddings" / f"{DEMO_SCENE}_season.zarr"
    with _timed(timings, "aggregate", log, "season mean of the embeddings (latentcube aggregate)"):
        season = aggregate_embeddings(emb, season_path, windows="season", stats=["mean", "p90"], overwrite=True,
                                      progress=False)
    with _timed(timings, "sample", log, "embeddings at one point per land-cover class (latentcube sample)"):
        ds = open_cube(cube)
        to_lonlat = Transformer.from_crs(cube_crs(ds), "EPSG:4326", always_xy=True)
        rows = []
        for k in sorted(int(v) for v in np.unique(labels) if int(v) in LANDCOVER_CLASSES):
            inside = distance_transform_edt(np.pad(labels == k, 1))[1:-1, 1:-1]  # the cube's edge is a border too
            r, c = np.unravel_index(int(np.argmax(inside)), labels.shape)  # the most interior pixel
            lon, lat = to_lonlat.transform(float(ds["x"].values[c]), float(ds["y"].values[r]))
            rows.append({"class": LANDCOVER_CLASSES[k], "lon": round(lon, 6), "lat": round(lat, 6)})
        points = out_dir / "embeddings" / "points.csv"
        pd.DataFrame(rows).to_csv(points, index=False)
        at = sample_embeddings(season_path, points, out_dir / "embeddings" / "points_season.csv", overwrite=True,
                               progress=False)
        series = sample_embeddings(emb, points, out_dir / "embeddings" / "points_series.parquet"
                                   if _has_geopandas() else out_dir / "embeddings" / "points_series.csv",
                                   series=True, overwrite=True, progress=False)
    window = str(season["window"].values[0])
    features = [str(f) for f in season["feature"].values[:3]]
    valid = series.groupby("class", sort=False)["n_valid"].sum()
    write_section(
        out_dir, "windows_points", order=45, title="Season embeddings and points",
        text=[f"`latentcube aggregate --windows season --stat mean --stat p90`: {window} "
              f"({pd.Timestamp(season['window_start'].values[0]).date()} .. "
              f"{pd.Timestamp(season['window_end'].values[0]).date()}, {int(season['n_dates'].values[0])} dates), "
              "per pixel over its valid dates (`valid_count`), written as an embedding store with one time step "
              "per window (docs/use.md).",
              f"`latentcube sample --points points.csv`: the most interior pixel of each land-cover class, given in "
              f"lon/lat and reprojected to the cube's CRS; the per-date series ({len(series)} rows) went to "
              "`embeddings/points_series.*`."],
        tables=[table(f"season mean at the points ({window}; first three features)",
                      ["class", "lon", "lat", "valid dates", "dates seen (series)", *features],
                      [[r["class"], r["lon"], r["lat"], int(r["valid_count"]), int(valid[r["class"]]),
                        *[float(r[f]) for f in features]] for _, r in at.iterrows()])],
    )


def _has_geopandas() -> bool:
    import importlib.util

    return importlib.util.find_spec("geopandas") is not None


def _catalogue_section(out_dir: Path, recon: dict[str, Any]) -> None:
    """Each model's card (rewritten with its PCA-baseline scores, and the probe for fusion) and each store's
    STAC item, linked from the report (order 85)."""
    import json

    import pystac

    from latentcube.evaluate.sections import write_section
    from latentcube.model_card import write_model_card

    text = ["Model cards (`MODEL_CARD.md` and `model_card.json` beside each `model.pt`; `latentcube model-info "
            "runs/<stage>` prints one):"]
    probe = out_dir / "evaluation" / "probe" / "probe.json"
    for stage in ("s1", "s2", "fusion"):
        model = out_dir / "runs" / stage / "model.pt"
        if not model.exists():
            continue
        rep = recon.get(stage)
        baselines = None if rep is None else {"model": rep.model, "patch_pca": rep.patch_pca,
                                              "center_pca": rep.center_pca, "date_pca": rep.date_pca}
        md, js = write_model_card(model, baselines=baselines, probe=probe if stage == "fusion" and probe.exists()
                                  else None, base_dir=out_dir)
        card = json.loads(js.read_text(encoding="utf-8"))
        val = card["metrics"].get("val", {})
        probe_rows = ((card["evaluation"].get("probe") or {}).get("rows") or [])
        best = max(probe_rows, key=lambda r: (r.get("balanced_accuracy") or {}).get("mean") or 0, default=None)
        text.append(f"- {stage}: [{md.relative_to(out_dir)}]({md.relative_to(out_dir)}): {card['model']['latent_size']}-d, "
                    f"{card['model']['parameters']['total']:,} parameters, sha256 `{card['model']['sha256'][:12]}…`"
                    + (f", validation objective {val['objective']:.4f}" if "objective" in val else "")
                    + (f", best probe features `{best['features']}` ({best['classifier']}) balanced accuracy "
                       f"{best['balanced_accuracy']['mean']:.3f}" if best else ""))
    text.append("STAC items (`<store>.stac.json` beside each store; `pystac.Item.from_file`, docs/use.md):")
    for path in sorted((out_dir / "embeddings").glob("*.stac.json")):
        item = pystac.Item.from_file(str(path))
        rel = path.relative_to(out_dir)
        n_time = len(item.properties["cube:dimensions"]["time"].get("values", []))
        text.append(f"- [{rel}]({rel}): {item.properties['latentcube:store_kind']}, "
                    f"{len(item.assets['embeddings'].extra_fields['bands'])} features x {n_time} time steps, "
                    f"{item.properties['start_datetime'][:10]} .. {item.properties['end_datetime'][:10]}, bbox "
                    f"{', '.join(f'{v:.4f}' for v in item.bbox)}" + (", model " + item.properties["mlm:name"]
                                                                   if "mlm:name" in item.properties else ""))
    write_section(out_dir, "catalogue", order=85, title="Model cards and STAC items", text=text)


def _recon_section(out_dir: Path, results: dict[str, Any]) -> None:
    from latentcube.evaluate.sections import table, write_section

    tables, verdicts, data = [], [], {}
    for stage, rep in results.items():
        rows = []
        for name, m in rep.rows():
            centre = m.get("center_mae", np.nan) if stage != "fusion" or "objective" not in m else np.mean(
                [m[k] for k in m if k.endswith("/center_mae")])
            ctx = [m[k] for k in m if k.endswith("context_mae")]
            rows.append([name, m.get("objective", np.nan), centre, np.mean(ctx) if ctx else np.nan])
        tables.append(table(f"{stage}: validation split, train {rep.n_train} / val {rep.n_val} patches",
                            ["method", "objective", "centre MAE", "context MAE"], rows))
        beats = rep.model["objective"] < rep.patch_pca["objective"]
        beats_c = rep.date_pca is not None and rep.model["objective"] < rep.date_pca["objective"]
        verdicts.append(f"The {stage} model {'beats' if beats else 'does NOT beat'} baseline (a) on its own objective "
                        f"({rep.model['objective']:.4f} vs {rep.patch_pca['objective']:.4f}) and "
                        f"{'beats' if beats_c else 'does NOT beat'} baseline (c) "
                        f"({rep.date_pca['objective'] if rep.date_pca else float('nan'):.4f}).")
        data[stage] = {"model": rep.model, "patch_pca": rep.patch_pca, "center_pca": rep.center_pca,
                       "date_pca": rep.date_pca, "beats_patch_pca": beats, "beats_date_pca": beats_c}
    text = ["Normalised units. Baseline (a): PCA of the context-weighted patches with the model's code size (close "
            "to the best linear autoencoder for the same objective, but a joint code of the whole 11-date patch). "
            "Baseline (b): PCA-k of the centre spectra with k = latent size (near-lossless, context only, not a "
            "target). Baseline (c): one weighted PCA basis applied to each date on its own with the latent size per "
            "date, the linear counterpart of a per-pixel-date embedding.", *verdicts]
    write_section(out_dir, "reconstruction", order=30, title="Reconstruction against PCA baselines", text=text,
                  tables=tables, data=data)


def _timings_section(out_dir: Path, timings: dict[str, float]) -> None:
    from latentcube.evaluate.sections import table, write_section

    rows = [[k, round(v, 1)] for k, v in timings.items()] + [["total", round(sum(timings.values()), 1)]]
    write_section(out_dir, "timings", order=90, title="Timings", tables=[table("wall-clock seconds", ["step", "s"], rows)],
                  data=dict(timings))


def _data_section(out_dir: Path, world, scene_name: str, figures: list[Path]) -> None:
    """Cubes and phenology of the synthetic world (report order 10)."""
    from latentcube.evaluate.sections import table, write_section

    cube_rows = []
    for name, ds in world.cubes.items():
        info = cube_summary(ds)
        cube_rows.append([name, f"{ds.sizes['y']}×{ds.sizes['x']}", info["s2"]["dates"], info.get("s1", {}).get("dates", 0),
                          info["s2"]["valid_fraction_mean"], f"{info['s2']['first']} – {info['s2']['last']}"])
    series = class_timeseries(world.cubes[scene_name])
    ndvi = series["ndvi"]
    summer = ndvi[ndvi.index.month.isin([6, 7, 8])].mean()
    winter = ndvi[ndvi.index.month.isin([12, 1, 2])].mean()
    vv = series["vv_db"].mean() if "vv_db" in series else None
    pheno_rows = [[cls, summer[cls], winter[cls], vv[cls] if vv is not None else None] for cls in ndvi.columns]
    write_section(
        out_dir, "data", order=10, title="Synthetic world",
        text=[f"latentcube {__version__}; {len(world.cubes)} cubes and {len(world.towers)} flux towers."],
        tables=[table("cubes", ["cube", "size (y×x)", "S2 dates", "S1 dates", "mean valid S2 fraction", "period"], cube_rows),
                table(f"phenology of {scene_name}", ["class", "NDVI June–August", "NDVI December–February", "mean VV (dB)"],
                      pheno_rows)],
        figures=[(p, p.stem.replace("_", " ")) for p in figures],
    )

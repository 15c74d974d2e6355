"""``latentcube`` commands for evaluation: evaluate gpp|probe, sweep alpha, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from latentcube.cli import _items, _table, app, console, out

evaluate_app = typer.Typer(help="Downstream evaluation of embedding cubes (GPP, land-cover probe).", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")
sweep_app = typer.Typer(help="Sensitivity studies (retrain with several settings, compare).", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")

@evaluate_app.command("gpp")
def evaluate_gpp_(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Fusion model file (runs/fusion/model.pt).")],
    sites: Annotated[Path, typer.Option("--sites", help="Site table CSV: site_id, cube (a name in --cubes or a path), "
        "the tower as row,col or lon,lat or x,y (cube CRS), and optionally veg_type (else 'unknown'); or a site plan.")],
    fluxnet: Annotated[Path, typer.Option("--fluxnet", help="Folder with FLX_<SITE>_*.csv files (DD, HH or HR).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory: writes OUT/evaluation/gpp/ and the report section.")],
    cubes: Annotated[Path | None, typer.Option("--cubes", help="Folder with the site cubes <cube>.zarr.")] = None,
    radius: Annotated[int, typer.Option("--radius", help="Footprint half-width in pixels ((2r+1)^2 px site mean).")] = 3,
    weights: Annotated[str, typer.Option(help="Footprint weights: uniform | gaussian.")] = "uniform",
    window: Annotated[int, typer.Option("--window", help="Input window length in days.")] = 90,
    stride: Annotated[int, typer.Option("--stride", help="Days between window starts.")] = 10,
    max_gap: Annotated[int, typer.Option("--max-gap", help="Longest gap (days) bridged by the daily interpolation.")] = 60,
    train_years: Annotated[str, typer.Option("--train-years", help="Year split: training years, comma-separated.")] = "2017,2018,2019",
    test_years: Annotated[str, typer.Option("--test-years", help="Year split: test years, comma-separated.")] = "2020",
    protocols: Annotated[str, typer.Option(help="Comma-separated: year,loso.")] = "year,loso",
    methods: Annotated[str | None, typer.Option(help="Comma-separated: embedding,bands,ndvi,annual_embedding,climatology and, "
        "with --meteo, meteo,embedding_meteo,bands_meteo,ndvi_meteo (default: all that apply).")] = None,
    meteo: Annotated[str | None, typer.Option("--meteo", help="Daily drivers from the tower files beside the inputs, "
        "e.g. sw_in,ta,vpd (adds meteo only and <input> + meteo).")] = None,
    flux_columns: Annotated[str | None, typer.Option("--flux-columns", help="Tower-file column names: a preset "
        "(fluxnet2015, eth, reddyproc) and/or key=column items, e.g. eth,ta=TA_T1_47_1.")] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Also score these window lengths (year split), e.g. 60,75,90,105,120.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the regressors and the early-stopping split.")] = 0,
    device: Annotated[str | None, typer.Option(help="cuda | cpu (default: cuda when available).")] = None,
) -> None:
    """Predict daily GPP at flux towers from per-date embeddings, against four baselines (paper §IV-C)."""
    import warnings

    from latentcube.evaluate.gpp import GPPConfig, GPPWarning, evaluate_gpp
    from latentcube.sources.fluxnet import FluxnetWarning

    cfg = GPPConfig(radius_px=radius, weights=weights, window_days=window, stride_days=stride, max_gap_days=max_gap,
                    train_years=_items(train_years, int), test_years=_items(test_years, int), protocols=_items(protocols),
                    methods=_items(methods) if methods else None, meteo=_items(meteo) if meteo else (),
                    flux_columns=flux_columns, sweep_windows=_items(sweep, int) if sweep else (), seed=seed, device=device)
    shown = warnings.showwarning

    def show(message, category, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - warnings.showwarning's signature
        if issubclass(category, (GPPWarning, FluxnetWarning)):  # said as a line, without a source path
            console.print(f"warning: {message}", highlight=False)
        else:
            shown(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.showwarning = show
        doc = evaluate_gpp(sites, out_dir, checkpoint=checkpoint, cubes=cubes, fluxnet=fluxnet, config=cfg,
                           log=lambda m: console.print(m, highlight=False))
    scores = {p: v["scores"] for p, v in doc["protocols"].items()}
    rows = [(m, *[f"{scores[p][m]['overall']['nrmse']:.3f}" for p in scores]) for m in next(iter(scores.values()))]
    out.print(_table("GPP NRMSE (RMSE / observed range), all sites", rows, header=("method", *scores)))
    out.print(str(Path(out_dir) / "evaluation" / "gpp"))


@evaluate_app.command("probe")
def evaluate_probe(
    embedding: Annotated[Path, typer.Argument(metavar="EMBEDDING", help="Embedding cube (Zarr from `latentcube embed`); with --seeds also a path with {seed} or a folder of seed<N>/ runs.")],
    cube: Annotated[Path, typer.Option("--cube", help="The cube the embedding was computed from (raw bands, label layer).")],
    labels: Annotated[str, typer.Option("--labels", help="(y, x) integer label layer of the cube; 0 = unlabelled.")] = "landcover",
    date: Annotated[str | None, typer.Option("--date", help="Probe date YYYY-MM-DD (default: clearest growing-season date).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory: writes evaluation/probe/ and the report section.")] = None,
    block_px: Annotated[int, typer.Option("--block-px", help="Edge of the cross-validation blocks in pixels.")] = 16,
    folds: Annotated[int, typer.Option("--folds", help="Blocked cross-validation folds.")] = 5,
    features: Annotated[str | None, typer.Option("--features", help="Embedding feature group: fused, s1, s2 (default: the first).")] = None,
    protocols: Annotated[str, typer.Option("--protocols", help="Temporal protocols, comma separated: date, seasonal, series, mean.")] = "date,seasonal,mean",
    sources: Annotated[str, typer.Option("--sources", help="Feature sources, comma separated: embedding, raw, pca.")] = "embedding,raw,pca",
    windows: Annotated[str, typer.Option("--windows", help="Seasonal windows: a number of equal windows over the probe year, or START:END,START:END...")] = "3",
    classifiers: Annotated[str, typer.Option("--classifiers", help="Comma separated: logreg, knn.")] = "logreg,knn",
    pca_fit: Annotated[Path | None, typer.Option("--pca-fit", help="Cube the PCA code is fitted on (the training cube; default --cube).")] = None,
    pca_holdout: Annotated[float | None, typer.Option("--pca-holdout", help="Fit the PCA on the training strip only: the share held out as data.spatial_split {val: F}.")] = None,
    baseline_sensors: Annotated[str | None, typer.Option("--baseline-sensors", help="Sensors of the raw and PCA baselines, e.g. s2 (default: those of the embedding group).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the folds and the pixel subset.")] = 0,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Repeat over seeds, e.g. 0,1,2: mean ± sd over models per seed or over CV shuffles.")] = None,
    cv_repeats: Annotated[int, typer.Option("--cv-repeats", help="CV shuffles per seed (blocks and folds redrawn), averaged: less fold noise on a small area.")] = 1,
) -> None:
    """Probe: logistic regression and k-NN on embeddings vs raw bands vs a PCA code, spatially blocked CV."""
    from latentcube.evaluate.probe import parse_seeds, ratios, run_probe

    sets = [f"{s}_{p}" for p in _items(protocols) for s in _items(sources)]
    win: int | list[str] = int(windows) if windows.strip().isdigit() else list(_items(windows))
    table = run_probe(str(embedding) if "{seed}" in str(embedding) else embedding, cube, labels=labels, date=date,
                      block_px=block_px, folds=folds, seed=seed, seeds=parse_seeds(seeds), feature_sets=sets,
                      classifiers=list(_items(classifiers)), windows=win, embedding_features=features, pca_fit=pca_fit,
                      pca_spatial_split={"val": pca_holdout} if pca_holdout else None, run_dir=out_dir,
                      cv_repeats=cv_repeats, baseline_sensors=list(_items(baseline_sensors)) if baseline_sensors else None)
    s = table.attrs["probe"]
    over = f"{len(s['seeds'])} seeds" if s.get("seeds_over") else f"{cv_repeats} CV shuffles" if cv_repeats > 1 else "folds"
    if cv_repeats > 1 and s.get("seeds_over"):
        over += f" (each the mean of {cv_repeats} CV shuffles)"
    wide = table.pivot_table(index=["features", "classifier"], columns="metric", values=["mean", "std"], sort=False)
    n_feat = table.groupby(["features", "classifier"], sort=False)["n_features"].first()
    rows = [(fs, clf, str(n_feat[(fs, clf)]), *[f"{r[('mean', m)]:.3f} ± {r[('std', m)]:.3f}" for m in ("balanced_accuracy", "macro_f1")])
            for (fs, clf), r in wide.iterrows()]
    out.print(_table(f"probe `{labels}`, one date {s['date']}: {s['n_pixels']} pixels, {len(s['classes'])} classes, "
                     f"{s['folds']} blocked folds, mean ± sd over {over}", rows,
                     header=("features", "classifier", "n feat.", "balanced accuracy", "macro F1")))
    for clf, v in ratios(table).items():
        out.print(f"one-date embedding / raw bands, {clf}: {v:.1%}")
    out.print(f"raw bands: {' '.join(s['raw_bands'])}" + (f"; PCA-{s['pca']['k']} of {' '.join(s['pca']['bands'])}"
                                                          if s.get("pca") else ""))
    if out_dir is not None:
        out.print(str(Path(out_dir) / "evaluation" / "probe" / "probe.json"))


@sweep_app.command("alpha")
def sweep_alpha(
    config: Annotated[Path, typer.Option("--config", help="Stage-1 training config (s2 or s1), e.g. runs/s2/config.yaml of a demo run.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory (runs/, sweep.json, sweep.csv, report section).")],
    alphas: Annotated[str | None, typer.Option("--alphas", help="Comma-separated α set as both spatial and temporal decay.")] = None,
    alpha_s: Annotated[str | None, typer.Option("--alpha-s", help="Comma-separated spatial decays (grid with --alpha-t).")] = None,
    alpha_t: Annotated[str | None, typer.Option("--alpha-t", help="Comma-separated temporal decays (grid with --alpha-s).")] = None,
    reference: Annotated[float, typer.Option("--reference", help="Fixed α (both decays) scoring context MAE across runs.")] = 1.0,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", help="Override the config's epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Override the config's step limit.")] = None,
    labels: Annotated[str, typer.Option("--labels", help="Label layer of the validation cube(s) for the probe.")] = "landcover",
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Embed the validation cube(s) and probe the labels.")] = True,
) -> None:
    """Context-decay sweep: train the autoencoder per α; centre/context MAE (fixed reference weights) and probe accuracy."""
    from latentcube.evaluate.sweep import parse_floats, run_sweep

    table = run_sweep(config, out_dir, alphas=parse_floats(alphas, what="--alphas"),
                      alpha_s=parse_floats(alpha_s, what="--alpha-s"), alpha_t=parse_floats(alpha_t, what="--alpha-t"),
                      reference=(reference, reference), max_epochs=max_epochs, max_steps=max_steps, probe=probe, labels=labels)
    probes = [c for c in table.columns if c.startswith("probe_")]
    rows = [(f"{r.alpha_s:g}", f"{r.alpha_t:g}", f"{r.objective_own:.4f}", f"{r.center_mae:.4f}", f"{r.context_mae_ref:.4f}",
             *[f"{getattr(r, c):.3f}" for c in probes]) for r in table.itertuples()]
    out.print(_table(f"context-decay sweep (MAE normalised; context MAE with α = {reference:g} weights)", rows,
                     header=("α_s", "α_t", "own objective", "centre MAE", "context MAE", *[c.removeprefix("probe_") for c in probes])))
    out.print(str(Path(out_dir) / "sweep.json"))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory (the --out folder of `latentcube demo`).")],
    title: Annotated[str | None, typer.Option(help="Page title (default: 'latentcube report: <folder name>').")] = None,
) -> None:
    """Build RUN_DIR/report.html (one self-contained page) and report.md from the run's configs, curves and sections."""
    from latentcube.report import build_report

    for path in build_report(run_dir, title=title):
        out.print(str(path))

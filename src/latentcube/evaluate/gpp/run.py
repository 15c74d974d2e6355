""":func:`evaluate_gpp`: the whole GPP evaluation of a run directory."""

from __future__ import annotations

import json
import os
import time as _time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from latentcube.embed import file_sha256
from latentcube.evaluate.gpp.config import PROTOCOL_LABELS, GPPConfig, GPPError, GPPWarning
from latentcube.evaluate.gpp.protocols import _check_folds, _run_protocols, _score
from latentcube.evaluate.gpp.regressor import _device
from latentcube.evaluate.gpp.report import _improvement, _plot_bars, _plot_series, _write_section
from latentcube.evaluate.gpp.sites import (
    SiteData,
    check_gpp_days,
    cube_days,
    load_site_data,
    read_site_flux,
    read_sites,
)


def evaluate_gpp(
    sites: str | Path | pd.DataFrame,
    out_dir: str | Path,
    *,
    checkpoint: str | Path,
    cubes: str | Path | None,
    fluxnet: str | Path | Mapping[str, str | Path],
    config: GPPConfig = GPPConfig(),
    write_report_section: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Predict daily GPP at flux sites from per-date embeddings and compare with the baselines (and, with
    ``config.meteo``, with and beside the tower's daily meteorological drivers).

    Args:
        sites: site table (``towers.csv``: site_id, cube, row, col, veg_type) or a site plan, or a DataFrame
            (:func:`read_sites`).
        out_dir: the run directory (``OUT``): files go to ``OUT/evaluation/gpp/`` (``metrics.json``,
            ``per_site.csv``, ``predictions.csv``, PNG figures, ``cache/`` with the per-site embeddings)
            and the report section to ``OUT/sections/060_gpp.json``.
        checkpoint: fusion (or autoencoder) model file, ``runs/fusion/model.pt``.
        cubes: folder with the site cubes ``<cube>.zarr`` (None when the table holds paths).
        fluxnet: folder with ``FLX_<SITE>_*.csv`` or ``.parquet`` files (DD, HH or HR; read by
            :func:`latentcube.sources.fluxnet.read_fluxnet` with ``config.flux_columns``, all before any
            embedding) or a mapping site_id -> file.
        config: :class:`GPPConfig`.
        write_report_section: also write the report section.
        log: progress messages (e.g. ``print``); default silent.

    Returns:
        The content of ``metrics.json``: per protocol and method the overall / per-type / per-site
        RMSE (g C m⁻² d⁻¹), R² and NRMSE (RMSE / observed range), the improvement of the embeddings (and of
        embeddings + meteo) over each other method, timings and the config.
    """
    t_start = _time.perf_counter()
    say = log or (lambda _m: None)
    cfg = config
    methods = cfg.run_methods
    out_dir = Path(out_dir)
    folder = out_dir / "evaluation" / "gpp"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise GPPError(f"no such model file: {checkpoint}. Fix: pass --checkpoint runs/fusion/model.pt.")
    table = read_sites(sites, cubes)
    sha = file_sha256(checkpoint)
    timings: dict[str, float] = {}

    t0 = _time.perf_counter()
    # Every tower file first (seconds): a wrong column name or file stops the run before any embedding.
    flux = {str(s): read_site_flux(fluxnet, str(s), cfg) for s in table["site_id"].unique()}
    # ... and each tower's filtered GPP days against its cube period (the cubes' time axes only).
    periods = {str(s): cube_days(list(rows["cube_path"])) for s, rows in table.groupby("site_id", sort=False)}
    for site_id, period in periods.items():
        check_gpp_days(site_id, flux[site_id], period, cfg)
    _check_folds(periods, {s: f.index[f["gpp"].notna()] for s, f in flux.items()}, cfg)
    if len(periods) == 1:
        warnings.warn(f"one site only ({next(iter(periods))}): the year split trains and scores on the same tower, so "
                      "the scores say nothing about other places. Fix: add sites to the site table (--sites).",
                      GPPWarning, stacklevel=2)
    data: dict[str, SiteData] = {}
    for site_id, rows in table.groupby("site_id", sort=False):
        t1 = _time.perf_counter()
        data[str(site_id)] = load_site_data(rows, checkpoint=checkpoint, fluxnet=fluxnet, cfg=cfg,
                                            cache_dir=folder / "cache", sha256=sha, flux=flux[str(site_id)])
        d = data[str(site_id)]
        n_gpp = int(np.isfinite(d.gpp).sum())
        say(f"  site {site_id}: {len(d.days)} days, {n_gpp} ({n_gpp / len(d.days):.0%}) with GPP passing the filter, "
            f"{_time.perf_counter() - t1:.1f} s")
    timings["site_series"] = _time.perf_counter() - t0

    results: dict[str, Any] = {}
    sweep: dict[str, Any] = {}
    n_jobs = cfg.n_jobs or (1 if _device(cfg).startswith("cuda") else min(os.cpu_count() or 1, 4))
    pool = None
    if n_jobs > 1:
        from joblib import Parallel

        # joblib's loky processes (spawned, not forked: forking a process whose torch thread pools ran can
        # deadlock; unlike multiprocessing's spawn, loky needs no __main__ guard in the user's script).
        pool = Parallel(n_jobs=n_jobs, backend="loky")
    t0 = _time.perf_counter()
    runs = {protocol: (protocol, cfg.window_days, methods) for protocol in cfg.protocols}
    runs.update({f"sweep {w} d": ("year", w, ["embedding"]) for w in cfg.sweep_windows})
    done = _run_protocols(data, runs, cfg, say, pool)
    for protocol in cfg.protocols:
        preds, info = done[protocol]
        results[protocol] = {"preds": preds, "scores": _score(data, preds), "training": info}
        _warn_degenerate(data, protocol, results[protocol], cfg)
    for w in cfg.sweep_windows:
        sweep[str(w)] = _score(data, done[f"sweep {w} d"][0])["embedding"]["overall"]
    timings["protocols" + (" and sweep" if cfg.sweep_windows else "")] = _time.perf_counter() - t0

    t0 = _time.perf_counter()
    figures = []
    for protocol, res in results.items():
        figures.append((_plot_series(data, res["preds"], res["scores"], protocol, folder / f"gpp_series_{protocol}.png"),
                        f"Observed (dots) and predicted daily GPP per site, {PROTOCOL_LABELS[protocol]} (the paper's Fig. 7)."))
    figures.insert(0, (_plot_bars(results, methods, folder / "gpp_nrmse.png"),
                       "Overall NRMSE per method and protocol (lower is better)."))
    timings["figures"] = _time.perf_counter() - t0

    rows, pred_rows = [], []
    for protocol, res in results.items():
        for m in methods:
            for s, d in data.items():
                sc = res["scores"][m]["by_site"][s]
                rows.append({"protocol": protocol, "method": m, "site_id": s, "veg_type": d.veg_type, **sc})
        frame = []
        for s, d in data.items():
            f = pd.DataFrame({"protocol": protocol, "site_id": s, "date": d.days, "gpp_obs": d.gpp,
                              **{f"pred_{m}": res["preds"][m][s] for m in methods}})
            frame.append(f[np.any([np.isfinite(res["preds"][m][s]) for m in methods], axis=0)])
        pred_rows.append(pd.concat(frame))
    pd.DataFrame(rows).to_csv(folder / "per_site.csv", index=False, float_format="%.5g")
    pd.concat(pred_rows).to_csv(folder / "predictions.csv", index=False, float_format="%.4g")

    improvement = {p: {b: _improvement(res["scores"], b) for b in methods[1:]} for p, res in results.items()}
    # With drivers, the question is whether the embeddings add to the weather: embeddings + meteo against the rest.
    improvement_meteo = ({p: {b: _improvement(res["scores"], b, "embedding_meteo") for b in methods
                              if b != "embedding_meteo"} for p, res in results.items()}
                         if "embedding_meteo" in methods else {})
    timings["total"] = _time.perf_counter() - t_start
    doc = {
        "config": asdict(cfg),
        "checkpoint": str(checkpoint), "checkpoint_sha256": sha,
        "sites": [{"site_id": s, "veg_type": d.veg_type, "n_days": len(d.days), "n_s2_dates": d.n_dates,
                   "n_gpp_days": int(np.isfinite(d.gpp).sum()), "first": str(d.days[0].date()), "last": str(d.days[-1].date())}
                  for s, d in data.items()],
        "nrmse_definition": "RMSE / (max - min of the observed daily GPP of the same group: site, vegetation type or all)",
        "protocols": {p: {"scores": res["scores"], "training": res["training"]} for p, res in results.items()},
        "improvement_over_baselines": improvement,
        "improvement_with_meteo": improvement_meteo,
        "sweep": sweep,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    from latentcube.evaluate.sections import _clean

    (folder / "metrics.json").write_text(json.dumps(_clean(doc), indent=1) + "\n", encoding="utf-8")
    if write_report_section:
        _write_section(out_dir, data, results, methods, improvement, sweep, figures, cfg, doc, improvement_meteo)
    say(f"GPP evaluation: {timings['total']:.1f} s -> {folder}")
    return doc


#: Fewer scored days than this (or than half of the test days with filtered GPP) give a :class:`GPPWarning`.
MIN_SCORED_DAYS = 100


def _warn_degenerate(data: Mapping[str, SiteData], protocol: str, res: Mapping[str, Any], cfg: GPPConfig) -> None:
    """Warn when a protocol's regressors had no early-stopping split or when few of its test days were scored."""
    label = PROTOCOL_LABELS[protocol]
    more = ("--train-years; Python: GPPConfig(train_years=...)" if protocol == "year" else "--sites")
    infos = res["training"]
    no_es = [k for k, fi in infos.items() if not fi.get("n_es_windows")]
    if no_es:
        warnings.warn(
            f"{label}: {len(no_es)} of {len(infos)} regressors had no early-stopping windows (n_es_windows 0 in "
            f"metrics.json): early stopping holds out whole site-years, which needs at least two training site-years "
            f"with {cfg.window_days}-day windows of GPP. They trained all {cfg.max_epochs} epochs, unchecked on "
            f"held-out data. Fix: more training sites or years ({more}).", GPPWarning, stacklevel=3)
    if protocol == "year":
        test = {s: np.isin(d.days.year, cfg.test_years) & np.isfinite(d.gpp) for s, d in data.items()}
    else:
        test = {s: np.isfinite(d.gpp) for s, d in data.items()}
    n_test = int(sum(m.sum() for m in test.values()))
    n = int(res["scores"]["embedding"]["overall"]["n"])
    if n_test and (n < MIN_SCORED_DAYS or n < 0.5 * n_test):
        cover = {m: int(sum((test[s] & np.isfinite(p[s])).sum() for s in data)) for m, p in res["preds"].items()}
        per = ", ".join(f"{m} {c}" for m, c in sorted(cover.items(), key=lambda kv: kv[1]))
        warnings.warn(
            f"{label}: scored on {n} of the {n_test} test days with filtered GPP (only days every method predicts "
            f"are scored; days each method predicts: {per}). A regressor needs a full {cfg.window_days}-day window "
            "of the site's series, the climatology training days on the same day of year. Metrics on so few days "
            f"are noisy. Fix: more sites or years ({more}), or leave out the method that covers fewest days "
            "(--methods; Python: GPPConfig(methods=...)).", GPPWarning, stacklevel=3)



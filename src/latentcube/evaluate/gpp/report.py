"""Figures and the report section of the GPP evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from latentcube.evaluate.gpp.config import METHOD_LABELS, PROTOCOL_LABELS, GPPConfig
from latentcube.evaluate.gpp.sites import SiteData

# ------------------------------------------------------------------------------------------ figures


def _plot_series(data: Mapping[str, SiteData], preds: Mapping[str, Mapping[str, np.ndarray]], scores: Mapping[str, Any],
                 protocol: str, path: Path) -> Path:
    """Observed vs predicted daily GPP per site (the paper's Fig. 7) on the scored days' period."""
    sites = list(data)
    fig = Figure(figsize=(11, 2.1 * len(sites)))
    axes = fig.subplots(len(sites), 1, squeeze=False)
    styles = {"embedding": dict(color="tab:blue", lw=1.3), "ndvi": dict(color="tab:green", lw=0.9, alpha=0.8),
              "climatology": dict(color="tab:red", lw=0.9, ls="--"), "meteo": dict(color="tab:orange", lw=0.9, alpha=0.8),
              "embedding_meteo": dict(color="tab:purple", lw=1.3)}
    for ax, s in zip(axes[:, 0], sites, strict=True):
        d = data[s]
        have = np.isfinite(preds["embedding"][s])
        if not have.any():
            continue
        lo, hi = np.flatnonzero(have)[[0, -1]]
        t = d.days[lo : hi + 1]
        ax.plot(t, d.gpp[lo : hi + 1], ".", ms=2.5, color="0.35", label="observed (QC-filtered)")
        for m, st in styles.items():
            if m in preds:
                nr = scores[m]["by_site"][s]["nrmse"]
                ax.plot(t, preds[m][s][lo : hi + 1], label=f"{METHOD_LABELS[m]} (NRMSE {nr:.3f})", **st)
        ax.set_title(f"{s} ({d.veg_type})", fontsize=9, loc="left")
        ax.set_ylabel("GPP (g C m⁻² d⁻¹)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="upper left", ncol=4, frameon=False)
    fig.suptitle(f"Daily GPP, observed vs predicted ({PROTOCOL_LABELS[protocol]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _plot_bars(results: Mapping[str, Any], methods: Sequence[str], path: Path) -> Path:
    protos = list(results)
    fig = Figure(figsize=(max(7.0, 0.85 * len(methods)), 3.2))
    ax = fig.subplots()
    width = 0.8 / len(protos)
    for i, p in enumerate(protos):
        vals = [results[p]["scores"][m]["overall"]["nrmse"] for m in methods]
        ax.bar(np.arange(len(methods)) + i * width, vals, width, label=PROTOCOL_LABELS[p])
    ax.set_xticks(np.arange(len(methods)) + width * (len(protos) - 1) / 2)
    ax.set_xticklabels([METHOD_LABELS[m] for m in methods], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("NRMSE (RMSE / range)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------------ entry point


def _fmt(v: Any, nd: int = 3) -> Any:
    return round(float(v), nd) if v is not None and np.isfinite(v) else None



def _improvement(scores: Mapping[str, Any], baseline: str, method: str = "embedding") -> dict[str, Any]:
    """``method`` (default the per-date embeddings) against ``baseline``: overall NRMSE of both and the relative
    reduction (the keys keep the ``embedding`` name for either method)."""
    e, b = scores[method]["overall"], scores[baseline]["overall"]
    rel = (b["nrmse"] - e["nrmse"]) / b["nrmse"] if b["nrmse"] else float("nan")
    return {"nrmse_embedding": e["nrmse"], "nrmse_baseline": b["nrmse"], "relative_reduction": rel,
            "embedding_better": bool(e["nrmse"] < b["nrmse"])}


def _write_section(out_dir: Path, data: Mapping[str, SiteData], results: Mapping[str, Any], methods: Sequence[str],
                   improvement: Mapping[str, Any], sweep: Mapping[str, Any], figures: list, cfg: GPPConfig,
                   doc: Mapping[str, Any], improvement_meteo: Mapping[str, Any] | None = None) -> Path:
    from latentcube.evaluate.sections import table, write_section

    n_sites = len(data)
    text = [
        f"Daily GPP at {n_sites} flux site(s) from site-mean series over a {2 * cfg.radius_px + 1} x "
        f"{2 * cfg.radius_px + 1} px footprint ({cfg.weights} weights), linearly interpolated to daily (gaps up to "
        f"{cfg.max_gap_days} d), {cfg.window_days}-day windows every {cfg.stride_days} d, a Transformer regressor "
        f"(linear input, {cfg.n_layers} encoder blocks, regression head, MAE loss) predicting every day of a window; "
        "overlapping predictions are averaged per day. GPP days with NEE QC < "
        f"{cfg.min_qc_fraction} or GPP < {cfg.min_gpp} are neither trained on nor scored; every method is scored on the same days.",
        "NRMSE = RMSE / (max − min of the observed GPP of the group); RMSE in g C m⁻² d⁻¹. Protocols: "
        + ", ".join(f"{PROTOCOL_LABELS[p]}" + (f" (train {list(cfg.train_years)}, test {list(cfg.test_years)})" if p == "year" else "")
                    for p in results) + ".",
    ]
    if cfg.meteo:
        text.append(f"Meteorological drivers: daily {', '.join(m.upper() for m in cfg.meteo)} from the tower file, "
                    "alone (meteo only) and beside each satellite input (+ meteo); each input keeps its own gap flag.")
    for p in results:
        for method, comp in (("embedding", improvement[p]), ("embedding_meteo", (improvement_meteo or {}).get(p))):
            if not comp:
                continue
            parts = []
            for b, imp in comp.items():
                rel = imp["relative_reduction"]
                verb = "lower" if rel > 0 else "higher"
                parts.append(f"{METHOD_LABELS[b]} {imp['nrmse_baseline']:.3f} ({abs(rel) * 100:.0f} % {verb} with "
                             f"{METHOD_LABELS[method]})")
            text.append(f"{PROTOCOL_LABELS[p].capitalize()}: {METHOD_LABELS[method]} NRMSE "
                        f"{results[p]['scores'][method]['overall']['nrmse']:.3f} vs " + "; ".join(parts) + ".")
    tables = []
    overall_rows = [[PROTOCOL_LABELS[p], METHOD_LABELS[m], _fmt(results[p]["scores"][m]["overall"]["nrmse"]),
                     _fmt(results[p]["scores"][m]["overall"]["rmse"], 2), _fmt(results[p]["scores"][m]["overall"]["r2"]),
                     results[p]["scores"][m]["overall"]["n"]] for p in results for m in methods]
    tables.append(table("GPP, all sites: per method and protocol", ["protocol", "method", "NRMSE", "RMSE", "R²", "days"],
                        overall_rows))
    vegs = sorted({d.veg_type for d in data.values()})
    veg_rows = [[PROTOCOL_LABELS[p], v, *[_fmt(results[p]["scores"][m]["by_veg_type"][v]["nrmse"]) for m in methods]]
                for p in results for v in vegs]
    tables.append(table("NRMSE per vegetation type", ["protocol", "type", *[METHOD_LABELS[m] for m in methods]], veg_rows))
    site_rows = [[PROTOCOL_LABELS[p], s, data[s].veg_type,
                  *[_fmt(results[p]["scores"][m]["by_site"][s]["nrmse"]) for m in methods],
                  _fmt(results[p]["scores"]["embedding"]["by_site"][s]["rmse"], 2),
                  _fmt(results[p]["scores"]["embedding"]["by_site"][s]["r2"])] for p in results for s in data]
    tables.append(table("NRMSE per site (RMSE and R² of the per-date embeddings)",
                        ["protocol", "site", "type", *[METHOD_LABELS[m] for m in methods], "RMSE emb.", "R² emb."], site_rows))
    if sweep:
        tables.append(table("Window-length sweep (year split, per-date embeddings)", ["window (d)", "NRMSE", "RMSE", "R²"],
                            [[int(w), _fmt(v["nrmse"]), _fmt(v["rmse"], 2), _fmt(v["r2"])] for w, v in sweep.items()]))
    return write_section(out_dir, "gpp", order=60, title="GPP from per-date embeddings", text=text, tables=tables,
                         figures=figures, data={"improvement_over_baselines": improvement,
                                                        "improvement_with_meteo": improvement_meteo or {},
                                                        "timings_s": doc["timings_s"]})

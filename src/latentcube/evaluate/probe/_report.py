"""The probe's files and report section: ``evaluation/probe/probe.{json,csv,png}`` and ``sections/070_probe.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from latentcube.evaluate.probe._cv import ratios

_SOURCE_TITLES = {"embedding": "embedding", "raw": "raw bands", "pca": "PCA code"}
_PROTOCOL_TITLES = {"date": "one date", "seasonal": "seasonal medians", "series": "all dates", "mean": "annual mean"}


def feature_title(name: str) -> str:
    """``"pca_seasonal"`` -> ``"PCA code, seasonal medians"``."""
    source, _, protocol = name.rpartition("_")
    return f"{_SOURCE_TITLES.get(source, source)}, {_PROTOCOL_TITLES.get(protocol, protocol)}"


def _figure(table: pd.DataFrame, path: Path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend and figure state alone

    sub = table[table["metric"] == "balanced_accuracy"]
    feats = list(dict.fromkeys(sub["features"]))
    clfs = list(dict.fromkeys(sub["classifier"]))
    width = 0.8 / max(len(clfs), 1)
    fig = Figure(figsize=(max(7, 0.6 * len(feats) + 3), 3.8), dpi=110)
    ax = fig.add_subplot()
    for j, clf in enumerate(clfs):
        s = sub[sub["classifier"] == clf].set_index("features").reindex(feats)
        ax.bar(np.arange(len(feats)) + (j - (len(clfs) - 1) / 2) * width, s["mean"], width, yerr=s["std"],
               capsize=3, label=clf)
    chance = 1.0 / max(int(sub["n_classes"].iloc[0]), 1)
    ax.axhline(chance, color="grey", lw=1, ls=":", label="chance")
    ax.set_xticks(np.arange(len(feats)), [feature_title(f) for f in feats], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("balanced accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    over = "seeds" if (sub["spread"] == "seeds").any() else "blocked folds"
    ax.set_title(f"probe, one date {sub['date'].iloc[0]} (mean ± sd over {over})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_probe_report(table: pd.DataFrame, run_dir: str | Path) -> Path:
    """Write ``run_dir/evaluation/probe/{probe.json,probe.csv,probe.png}`` and the report section
    ``probe`` (order 70); returns the JSON path."""
    from latentcube.evaluate.sections import table as section_table
    from latentcube.evaluate.sections import write_section

    run_dir = Path(run_dir)
    folder = run_dir / "evaluation" / "probe"
    folder.mkdir(parents=True, exist_ok=True)
    settings = dict(table.attrs.get("probe", {}))
    ratio = ratios(table)
    doc = {"settings": settings, "ratio_embedding_date_over_raw_date": ratio,
           "results": json.loads(table.to_json(orient="records"))}
    (folder / "probe.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    flat = table.copy()
    for col in ("folds", "per_seed"):
        flat[col] = flat[col].map(lambda v: " ".join(f"{x:.4f}" for x in v))
    flat.to_csv(folder / "probe.csv", index=False)
    fig = _figure(table, folder / "probe.png")

    wide = table.pivot_table(index=["features", "classifier"], columns="metric", values=["mean", "std"], sort=False)
    rows = []
    for (fs, clf), r in wide.iterrows():
        n_feat = int(table[(table["features"] == fs) & (table["classifier"] == clf)]["n_features"].iloc[0])
        rows.append([feature_title(fs), clf, n_feat,
                     f"{r[('mean', 'balanced_accuracy')]:.3f} ± {r[('std', 'balanced_accuracy')]:.3f}",
                     f"{r[('mean', 'macro_f1')]:.3f} ± {r[('std', 'macro_f1')]:.3f}"])
    s = settings
    over = f"{len(s.get('seeds', []))} seeds ({s.get('seeds_over')})" if s.get("seeds_over") else "folds"
    text = [
        f"Label layer `{s.get('labels')}`: {s.get('n_pixels')} pixels of {len(s.get('classes', {}))} classes "
        f"({', '.join(f'{k} {v}' for k, v in s.get('classes', {}).items())}); spatially blocked "
        f"{s.get('folds')}-fold cross-validation over {s.get('n_blocks')} blocks of {s.get('block_px')} px "
        "(scikit-learn StratifiedGroupKFold), standardised features; every row on the same pixels and folds.",
        f"One date: {s.get('date')} (raw S2 {s.get('raw_s2_date')}, S1 {s.get('raw_s1_date')}); series and annual "
        f"means over the {s.get('n_period_dates')} embedding dates of {s.get('year')}"
        + (f"; seasonal medians over {len(s['windows'])} windows "
           + ", ".join(f"{w['start']}..{w['end']} ({w['dates']} dates)" for w in s["windows"]) if s.get("windows") else "")
        + ".",
    ]
    if s.get("pca"):
        p = s["pca"]
        text.append(f"PCA code: PCA-{p['k']} of {', '.join(p['bands'])} as the model sees them, fitted on {p['fit']} "
                    f"({p['n_fit_pixel_dates']} clear pixel-dates; explained variance "
                    f"{sum(p['explained_variance_ratio']):.1%}).")
    if ratio:
        text.append("One-date embedding vs the raw bands of the same date (balanced accuracy ratio): "
                    + ", ".join(f"{k} {v:.1%}" for k, v in ratio.items()) + ".")
    if s.get("dropped_classes"):
        text.append(f"Dropped rare classes (code: pixels): {s['dropped_classes']}.")
    write_section(
        run_dir, "probe", order=70, title="Land-cover probe", text=text,
        tables=[section_table(f"Balanced accuracy and macro F1 (mean ± sd over {over})",
                              ["features", "classifier", "n features", "balanced accuracy", "macro F1"], rows)],
        figures=[(fig, f"Balanced accuracy per feature set and classifier; error bars: sd over {over}.")],
        data={"settings": settings, "ratios": ratio,
              "results": json.loads(table.drop(columns=["folds"]).to_json(orient="records"))},
    )
    return folder / "probe.json"

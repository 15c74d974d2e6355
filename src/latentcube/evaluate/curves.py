"""Training curves (the paper's Fig. 5): centre-pixel losses on top, context losses below."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry to leave behind

__all__ = ["plot_training", "read_metrics"]

#: Panels of Fig. 5: (title, metric suffix). Fusion runs prefix metrics with "<sensor>/".
_PANELS = (("centre MAE", "center_mae"), ("SAM (degrees)", "sam_deg"), ("context MAE", "context_mae"), ("SSIM loss", "ssim_loss"))


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """Per-epoch metrics of a run (``metrics.csv`` written by ``latentcube train``), one row per epoch."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.csv in {run_dir}: is it a `latentcube train` output directory?")
    df = pd.read_csv(path)
    if "epoch" not in df.columns:
        raise ValueError(f"{path} has no 'epoch' column")
    # Lightning writes train and val rows separately; merge them per epoch.
    return df.groupby("epoch").first().reset_index()


def plot_training(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw train vs validation curves per loss part into ``out`` (default ``RUN/training_curves.png``)."""
    df = read_metrics(run_dir)
    out = Path(out) if out else Path(run_dir) / "training_curves.png"
    names = [c[len("train/"):] for c in df.columns if c.startswith("train/")]
    panels = []
    for title, suffix in _PANELS:
        keys = sorted(n for n in names if n == suffix or n.endswith("/" + suffix))
        if keys:
            panels.append((title, keys))
    if not panels:
        raise ValueError(f"no loss parts found in {run_dir}/metrics.csv (columns: {list(df.columns)[:10]})")
    fig = Figure(figsize=(10, 6.5), dpi=110)
    axes = fig.subplots(2, 2, squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            for split, style in (("train", "-"), ("val", "--")):
                col = f"{split}/{key}"
                if col in df:
                    s = df[["epoch", col]].dropna()
                    ax.plot(s["epoch"], s[col], style, marker=".", label=f"{split} {key}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"Training curves: {Path(run_dir).name}")
    fig.tight_layout()
    fig.savefig(out)
    return out

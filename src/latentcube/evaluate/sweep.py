"""Context-decay sweep: retrain a sensor autoencoder for several α and compare (the sensitivity study the
paper left for future work).

The context weights of the reconstruction loss are ``exp(-α_s · d_s) · exp(-α_t · d_t)`` (paper Eq. 1,
``latentcube.losses.context_weights``): small α spreads the objective over the whole 15 × 15 × 11 patch,
large α concentrates it on the centre pixel. ``run_sweep`` trains the same config (same data, same seed,
same sampling) once per (α_s, α_t) and reports for each run, on the validation split:

* the run's **own objective** (its loss with its own α) — not comparable across runs;
* **centre MAE** (normalised units, and in reflectance for S2 / dB for S1): independent of α;
* **context MAE** and the objective under a **fixed reference weighting** (default α_s = α_t = 1), so the
  numbers compare across runs (a run's own context MAE is reported too);
* **probe balanced accuracy**: the validation cube(s) embedded with the run's model and probed on a label
  layer (``latentcube.evaluate.probe``; one-date and annual-mean embedding, logistic regression and k-NN,
  spatially blocked folds). The raw-band probe on the same pixels is the same for every run and is
  reported once.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from latentcube.config import to_dict
from latentcube.errors import LatentcubeError
from latentcube.evaluate.reconstruction import collect
from latentcube.train import (
    CubeDataModule,
    TrainConfig,
    load_model,
    load_train_config,
    loss_module,
    normalization_of,
    run_training,
)

__all__ = ["SweepError", "alpha_pairs", "evaluate_run", "parse_floats", "run_sweep", "write_sweep_report"]


class SweepError(LatentcubeError, ValueError):
    """The sweep's options cannot work; the message says why and how to fix it."""


def parse_floats(text: str | Sequence[float] | None, *, what: str = "--alphas") -> list[float] | None:
    """``"0.5,1,2"`` -> ``[0.5, 1.0, 2.0]`` (the CLI's comma-separated lists); ``None`` stays ``None``."""
    if text is None:
        return None
    if not isinstance(text, str):
        return [float(v) for v in text]
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise SweepError(f"{what} {text!r}: expected comma-separated numbers, e.g. 0.5,1,2.") from err
    if not values:
        raise SweepError(f"{what} is empty: give comma-separated numbers, e.g. 0.5,1,2.")
    return values


def alpha_pairs(alphas: Sequence[float] | None = None, alpha_s: Sequence[float] | None = None,
                alpha_t: Sequence[float] | None = None, *, default: tuple[float, float] = (1.0, 1.0)) -> list[tuple[float, float]]:
    """The (α_s, α_t) runs: ``alphas`` sets both equal; ``alpha_s``/``alpha_t`` give their grid (product),
    the one not given staying at ``default``. Values must be >= 0 (α = 0: uniform weights)."""
    if alphas is not None and (alpha_s is not None or alpha_t is not None):
        raise SweepError("give either --alphas (both decays equal) or --alpha-s/--alpha-t (their grid), not both.")
    if alphas is not None:
        pairs = [(float(a), float(a)) for a in alphas]
    elif alpha_s is not None or alpha_t is not None:
        pairs = [(float(s), float(t)) for s, t in product(alpha_s or [default[0]], alpha_t or [default[1]])]
    else:
        raise SweepError("no α given. Fix: pass --alphas 0.5,1,2 (or --alpha-s / --alpha-t lists).")
    bad = [p for p in pairs if not (np.isfinite(p).all() and min(p) >= 0)]
    if bad:
        raise SweepError(f"α must be finite and >= 0, got {bad}.")
    if len(set(pairs)) != len(pairs):
        raise SweepError(f"repeated α settings {pairs}: each run must differ.")
    return pairs


def _with_alpha(cfg: TrainConfig, a_s: float, a_t: float) -> TrainConfig:
    loss = dict(cfg.loss)
    loss["weights"] = {**dict(loss.get("weights") or {}), "alpha_s": float(a_s), "alpha_t": float(a_t)}
    return replace(cfg, loss=loss)


def _run_name(a_s: float, a_t: float) -> str:
    return f"alpha_s{a_s:g}_t{a_t:g}"


@torch.no_grad()
def _loss_means(loss_fn: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor, days: torch.Tensor,
                batch_size: int = 128) -> tuple[dict[str, float], torch.Tensor]:
    """Patch-weighted means of the loss total and parts, and the reconstructions."""
    sums: dict[str, float] = {}
    recons = []
    for i in range(0, len(x), batch_size):
        xb, db = x[i : i + batch_size], days[i : i + batch_size]
        recon, _ = model(xb, db)
        out = loss_fn(recon, xb, db)
        for k, v in {"objective": out.total, **out.parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(xb)
        recons.append(recon)
    return {k: v / len(x) for k, v in sums.items()}, torch.cat(recons)


def evaluate_run(model_path: str | Path, cfg: TrainConfig, *, reference: tuple[float, float] = (1.0, 1.0),
                 base_dir: Path | None = None, max_val: int = 2000) -> dict[str, float]:
    """Validation metrics of one trained autoencoder: its own objective and context MAE, the objective,
    weighted and context MAE under the ``reference`` (α_s, α_t), the centre MAE (normalised and
    physical: reflectance for S2, dB for S1). Means over up to ``max_val`` validation patches (the
    split's deterministic patches, identical for every α because sampling does not depend on α)."""
    model, meta = load_model(model_path)
    if meta["kind"] != "autoencoder":
        raise SweepError(f"{model_path} is a {meta['kind']} model; the sweep trains sensor autoencoders.")
    data = CubeDataModule(cfg, normalization_of(cfg), base_dir=base_dir)
    val = collect(data.dataset("val"), ("x", "days"), max_items=max_val)
    x, days = val["x"], val["days"]
    if len(x) == 0:
        raise SweepError("the validation split yields no patch. Fix: check data.splits and data.sampling.")
    own, recon = _loss_means(loss_module(cfg), model, x, days)
    ref, _ = _loss_means(loss_module(_with_alpha(cfg, *reference)), model, x, days)
    # Physical centre MAE: the normalisation is linear per band (reflectance; dB for S1).
    norm = normalization_of(cfg)
    table = norm.s2 if cfg.stage == "s2" else norm.s1_db
    scale = torch.tensor([table[b][1] - table[b][0] for b in model.config.band_names], dtype=torch.float32)
    t, p = x.shape[1] // 2, x.shape[-1] // 2
    err = (recon[:, t, :, p, p] - x[:, t, :, p, p]).abs() * scale
    ok = torch.isfinite(err)
    return {
        "objective_own": own["objective"], "context_mae_own": own["context_mae"],
        "objective_ref": ref["objective"], "weighted_mae_ref": ref["weighted_mae"], "context_mae_ref": ref["context_mae"],
        "center_mae": ref["center_mae"], "center_mae_physical": float(err[ok].mean()) if ok.any() else float("nan"),
        "n_val_patches": int(len(x)),
    }


def _probe_run(model_path: Path, cfg: TrainConfig, run_dir: Path, *, labels: str, base_dir: Path | None,
               embed_kwargs: dict[str, Any], probe_kwargs: dict[str, Any]) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """Embed the validation cube(s) with the run's model and probe ``labels``: mean balanced accuracy
    over the cubes per (features, classifier), the raw-band reference, and the probe settings."""
    from latentcube.cube import open_cube
    from latentcube.embed import embed_cube
    from latentcube.evaluate.probe import run_probe

    data = CubeDataModule(cfg, normalization_of(cfg), base_dir=base_dir)
    emb_scores: dict[str, list[float]] = {}
    raw_scores: dict[str, list[float]] = {}
    settings: dict[str, Any] = {}
    if data.split_regions is not None:
        warnings.warn("sweep: with data.spatial_split the probe runs on whole cubes, training strips included "
                      "(the autoencoder saw their pixels, not their labels).", stacklevel=3)
    for cube in data.split_paths["val"]:
        if labels not in open_cube(cube).data_vars:
            warnings.warn(f"sweep: validation cube {cube} has no label layer {labels!r}; not probed.", stacklevel=3)
            continue
        out = run_dir / "embeddings" / f"{Path(cube).stem}.zarr"
        emb = embed_cube(cube, model_path, out, **{"scheduler": "synchronous", "progress": False, "overwrite": True, **embed_kwargs})
        table = run_probe(emb, cube, labels=labels, **{"feature_sets": ("embedding_date", "embedding_mean", "raw_date"),
                                                      **probe_kwargs})
        ba = table[table["metric"] == "balanced_accuracy"]
        for _, r in ba.iterrows():
            target = raw_scores if str(r["features"]).startswith("raw") else emb_scores
            target.setdefault(f"probe_{r['features']}_{r['classifier']}", []).append(float(r["mean"]))
        settings[Path(cube).stem] = {k: table.attrs["probe"][k] for k in ("date", "n_pixels", "classes", "block_px", "folds")}
    return ({k: float(np.mean(v)) for k, v in emb_scores.items()}, {k: float(np.mean(v)) for k, v in raw_scores.items()},
            settings)


def run_sweep(
    config: str | Path | TrainConfig,
    out: str | Path,
    *,
    alphas: Sequence[float] | None = None,
    alpha_s: Sequence[float] | None = None,
    alpha_t: Sequence[float] | None = None,
    reference: tuple[float, float] = (1.0, 1.0),
    max_epochs: int | None = None,
    max_steps: int | None = None,
    probe: bool = True,
    labels: str = "landcover",
    base_dir: str | Path | None = None,
    max_val: int = 2000,
    embed_kwargs: dict[str, Any] | None = None,
    probe_kwargs: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Train the config's sensor autoencoder once per (α_s, α_t) and compare the runs.

    Args:
        config: a stage-1 training config (``s2`` or ``s1``; YAML path or :class:`TrainConfig`). Every run
            uses its data, split, sampling, seed and optimiser; only the loss's context weights change.
        out: output directory: runs in ``out/runs/alpha_s<α_s>_t<α_t>/`` (model.pt, metrics.csv,
            embeddings/), ``out/sweep.json``, ``out/sweep.csv``, ``out/evaluation/sweep/sweep.png`` and the
            report section ``sweep`` (order 80) in ``out/sections``. A re-run resumes unfinished runs.
        alphas: values set as both α_s and α_t; or ``alpha_s``/``alpha_t``: their grid (see :func:`alpha_pairs`).
        reference: the fixed (α_s, α_t) whose weighting scores context MAE and objective for all runs.
        max_epochs, max_steps: override the config's trainer limits (e.g. a quick sweep).
        probe: embed the validation cube(s) and probe ``labels`` (skipped for cubes without that layer).
        base_dir: directory that relative paths in the config are relative to (default: the current one).
        max_val: at most this many validation patches for the reconstruction metrics.
        embed_kwargs, probe_kwargs: extra arguments of :func:`latentcube.embed.embed_cube` /
            :func:`latentcube.evaluate.probe.run_probe` (e.g. ``{"block_px": 8}``).

    Returns:
        One row per run: ``alpha_s``, ``alpha_t``, the metrics of :func:`evaluate_run` (MAEs in
        normalised units unless ``_physical``), ``probe_<features>_<classifier>`` balanced accuracies
        (0..1), ``train_seconds``, ``steps``, ``model``. ``table.attrs`` holds the raw-band probe
        reference and the settings.
    """
    cfg = load_train_config(config) if isinstance(config, (str, Path)) else config
    if cfg.stage not in ("s1", "s2"):
        raise SweepError(f"the sweep trains a sensor autoencoder; {cfg.stage!r} configs are not supported. "
                         "Fix: pass an s2 (or s1) stage config, e.g. configs/demo/s2.yaml.")
    pairs = alpha_pairs(alphas, alpha_s, alpha_t)
    reference = (float(reference[0]), float(reference[1]))
    if not (np.isfinite(reference).all() and min(reference) >= 0):
        raise SweepError(f"reference α must be finite and >= 0, got {reference}.")
    out = Path(out)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    trainer = cfg.trainer
    if max_epochs is not None:
        trainer = replace(trainer, max_epochs=int(max_epochs))
    if max_steps is not None:
        trainer = replace(trainer, max_steps=int(max_steps))
    cfg = replace(cfg, trainer=trainer)
    rows, raw_ref, probe_settings = [], {}, {}
    for a_s, a_t in pairs:
        run_dir = out / "runs" / _run_name(a_s, a_t)
        run_cfg = replace(_with_alpha(cfg, a_s, a_t), out_dir=str(run_dir.resolve()))
        t0 = time.perf_counter()
        summary = run_training(run_cfg, base_dir=base, test=False)
        seconds = time.perf_counter() - t0
        model_path = Path(summary["model"])
        row: dict[str, Any] = {"alpha_s": a_s, "alpha_t": a_t}
        row.update(evaluate_run(model_path, run_cfg, reference=reference, base_dir=base, max_val=max_val))
        if probe:
            emb_ba, raw_ref, probe_settings = _probe_run(model_path, run_cfg, run_dir, labels=labels, base_dir=base,
                                                         embed_kwargs=dict(embed_kwargs or {}), probe_kwargs=dict(probe_kwargs or {}))
            row.update(emb_ba)
        row.update({"train_seconds": seconds, "steps": int(summary["global_step"]), "model": str(model_path)})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["sweep"] = {
        "config": to_dict(cfg), "reference_alpha": list(reference), "labels": labels if probe else None,
        "raw_band_probe": raw_ref, "probe": probe_settings, "stage": cfg.stage, "seed": cfg.seed,
        "units": {"center_mae_physical": "reflectance" if cfg.stage == "s2" else "dB", "other MAEs": "normalised (0-1 bounds)"},
    }
    write_sweep_report(table, out)
    return table


# --------------------------------------------------------------------------------------- report


def _figure(table: pd.DataFrame, path: Path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry

    labels = [f"{s:g}/{t:g}" for s, t in zip(table["alpha_s"], table["alpha_t"], strict=True)]
    xs = np.arange(len(table))
    probes = [c for c in table.columns if c.startswith("probe_")]
    fig = Figure(figsize=(9 if probes else 4.5, 3.4), dpi=110)
    axes = fig.subplots(1, 2 if probes else 1, squeeze=False)
    ax = axes[0, 0]
    ax.plot(xs, table["center_mae"], "o-", label="centre MAE")
    ax.plot(xs, table["context_mae_ref"], "s-", label="context MAE (reference weights)")
    ax.set_xticks(xs, labels)
    ax.set_xlabel("α_s / α_t")
    ax.set_ylabel("MAE (normalised)")
    ax.legend(fontsize=8)
    if probes:
        ax = axes[0, 1]
        for c in probes:
            ax.plot(xs, table[c], "o-", label=c.removeprefix("probe_"))
        for k, v in (table.attrs.get("sweep", {}).get("raw_band_probe") or {}).items():
            ax.axhline(v, ls=":", lw=1, color="grey")
            ax.annotate(k.removeprefix("probe_"), (xs[-1], v), fontsize=7, color="grey", ha="right", va="bottom")
        ax.set_xticks(xs, labels)
        ax.set_xlabel("α_s / α_t")
        ax.set_ylabel("probe balanced accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_sweep_report(table: pd.DataFrame, out: str | Path) -> Path:
    """Write ``out/sweep.json``, ``out/sweep.csv``, ``out/evaluation/sweep/sweep.png`` and the report
    section ``sweep`` (order 80); returns the JSON path."""
    from latentcube.evaluate.sections import table as section_table
    from latentcube.evaluate.sections import write_section

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(table.attrs.get("sweep", {}))
    doc = {"settings": info, "runs": json.loads(table.to_json(orient="records"))}
    (out / "sweep.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    table.to_csv(out / "sweep.csv", index=False)
    folder = out / "evaluation" / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    fig = _figure(table, folder / "sweep.png")

    probes = [c for c in table.columns if c.startswith("probe_")]
    columns = ["α_s", "α_t", "own objective", "objective (ref.)", "centre MAE", "context MAE (ref.)",
               "context MAE (own)", f"centre MAE ({info.get('units', {}).get('center_mae_physical', 'physical')})",
               *[c.removeprefix("probe_") + " BA" for c in probes]]
    rows = [[f"{r.alpha_s:g}", f"{r.alpha_t:g}", f"{r.objective_own:.4f}", f"{r.objective_ref:.4f}", f"{r.center_mae:.4f}",
             f"{r.context_mae_ref:.4f}", f"{r.context_mae_own:.4f}", f"{r.center_mae_physical:.4f}",
             *[f"{getattr(r, c):.3f}" for c in probes]] for r in table.itertuples()]
    ref = info.get("reference_alpha", [1.0, 1.0])
    text = [
        f"The {info.get('stage', 's2')} autoencoder retrained for each context decay (α_s, α_t) of the loss weights "
        "exp(-α_s d_s) exp(-α_t d_t), with the same data, split, sampling and seed "
        f"({int(table['steps'].iloc[0]) if len(table) else 0} steps each). Validation split.",
        f"Centre MAE does not depend on the weights. Context MAE and 'objective (ref.)' use the fixed reference "
        f"weighting α_s = {ref[0]:g}, α_t = {ref[1]:g} for every run so they compare across runs; 'own objective' is "
        "each run's training loss and does not.",
    ]
    if probes:
        raw = info.get("raw_band_probe") or {}
        text.append(
            f"Probe: validation cube(s) embedded with each run's model, label layer `{info.get('labels')}`, "
            "balanced accuracy over spatially blocked folds (section 'Land-cover probe' for the method). Raw bands of "
            "the same date on the same pixels: " + ", ".join(f"{k.removeprefix('probe_')} {v:.3f}" for k, v in raw.items()) + "."
        )
    write_section(
        out, "sweep", order=80, title="Context-decay sweep", text=text,
        tables=[section_table("Validation metrics per α (MAE in normalised units unless stated)", columns, rows)],
        figures=[(fig, "Centre/context MAE and probe balanced accuracy against the context decay α.")],
        data={"settings": {k: v for k, v in info.items() if k != "config"},
              "runs": json.loads(table.to_json(orient="records"))},
    )
    return out / "sweep.json"

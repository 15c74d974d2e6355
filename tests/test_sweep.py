"""Context-decay sweep (latentcube.evaluate.sweep, `latentcube sweep alpha`): option parsing and errors,
then a tiny end-to-end sweep through the CLI (2 α, a few steps each) checked against an independent
recomputation of the reference-weighted context MAE."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import SMALL_MODEL

from latentcube.config import to_dict
from latentcube.demo import demo_config_dir
from latentcube.evaluate.sweep import SweepError, alpha_pairs, parse_floats, run_sweep
from latentcube.train import load_train_config

CONFIG = demo_config_dir() / "s2.yaml"
SMALL = SMALL_MODEL


def test_parse_floats_and_alpha_pairs():
    assert parse_floats("0.5, 1,2") == [0.5, 1.0, 2.0]
    assert parse_floats(None) is None
    with pytest.raises(SweepError, match="--alpha-s '1,x': expected comma-separated numbers"):
        parse_floats("1,x", what="--alpha-s")
    assert alpha_pairs([0.5, 2]) == [(0.5, 0.5), (2.0, 2.0)]
    # grid of the two lists; the one not given stays at the default 1
    assert alpha_pairs(alpha_s=[0.5, 2], alpha_t=[0, 1]) == [(0.5, 0.0), (0.5, 1.0), (2.0, 0.0), (2.0, 1.0)]
    assert alpha_pairs(alpha_t=[3]) == [(1.0, 3.0)]
    with pytest.raises(SweepError, match="either --alphas .* or --alpha-s/--alpha-t"):
        alpha_pairs([1], alpha_s=[2])
    with pytest.raises(SweepError, match="no α given"):
        alpha_pairs()
    with pytest.raises(SweepError, match=">= 0"):
        alpha_pairs([-1])
    with pytest.raises(SweepError, match="repeated"):
        alpha_pairs([1, 1.0])


def test_fusion_configs_are_rejected(tmp_path):
    cfg = replace(load_train_config(CONFIG), stage="fusion")
    with pytest.raises(SweepError, match="'fusion' configs are not supported"):
        run_sweep(cfg, tmp_path, alphas=[1])
    with pytest.raises(SweepError, match="reference α must be finite and >= 0"):
        run_sweep(load_train_config(CONFIG), tmp_path, alphas=[1], reference=(-1, 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A 40-px synthetic world and a small-model config (a few steps per run)."""
    from latentcube.synthetic import make_world, write_world

    root = tmp_path_factory.mktemp("sweep")
    write_world(make_world(seed=1, scene_size=40, n_scenes=3, n_towers=0, scene_years=(2019,)), root / "world")
    base = load_train_config(CONFIG)
    cfg = replace(base, model={**base.model, **SMALL},
                  data=replace(base.data, cubes=tuple(str(root / "world" / f"scene_00{i}.zarr") for i in range(3)),
                               batch_size=16, sampling={**base.data.sampling, "space_stride": 6}),
                  trainer=replace(base.trainer, limit_val_batches=2, enable_progress_bar=False))
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)), encoding="utf-8")
    return {"root": root, "config": path}


@pytest.mark.slow
def test_tiny_sweep_through_the_cli(tiny, one_torch_thread):
    from typer.testing import CliRunner

    from latentcube.cli import app
    from latentcube.evaluate.reconstruction import collect
    from latentcube.losses import context_mae, context_weights
    from latentcube.train import CubeDataModule, load_model, normalization_of

    out = tiny["root"] / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = CliRunner().invoke(app, ["sweep", "alpha", "--config", str(tiny["config"]), "--alphas", "1,3",
                                       "--out", str(out), "--max-steps", "4"])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    assert "context-decay sweep" in res.output

    doc = json.loads((out / "sweep.json").read_text())
    runs = doc["runs"]
    assert [(r["alpha_s"], r["alpha_t"]) for r in runs] == [(1.0, 1.0), (3.0, 3.0)]
    assert all(r["steps"] == 4 for r in runs)
    csv = pd.read_csv(out / "sweep.csv")
    assert len(csv) == 2 and {"center_mae", "context_mae_ref", "objective_own", "probe_embedding_date_logreg"} <= set(csv.columns)
    # α = 1 is the reference: its own objective and context MAE are the reference ones.
    assert runs[0]["objective_own"] == pytest.approx(runs[0]["objective_ref"], rel=1e-6)
    assert runs[0]["context_mae_own"] == pytest.approx(runs[0]["context_mae_ref"], rel=1e-6)
    # α = 3 weighs context differently: own and reference context MAE differ.
    assert runs[1]["context_mae_own"] != pytest.approx(runs[1]["context_mae_ref"], rel=1e-4)
    # The runs differ (same data and seed, different loss weights).
    m1, _ = load_model(runs[0]["model"])
    m3, _ = load_model(runs[1]["model"])
    diffs = [float((a - b).abs().max()) for a, b in zip(m1.state_dict().values(), m3.state_dict().values(), strict=True)
             if a.is_floating_point()]
    assert max(diffs) > 1e-4
    assert runs[0]["objective_ref"] != runs[1]["objective_ref"]

    # Independent recomputation of run 2's reference context MAE (α = 1 weights) on the same patches.
    cfg = load_train_config(out / "runs" / "alpha_s3_t3" / "config.yaml")
    val = collect(CubeDataModule(cfg, normalization_of(cfg)).dataset("val"), ("x", "days"))
    n = runs[1]["n_val_patches"]
    assert n == len(val["x"]) and n <= 128  # one batch inside evaluate_run as well
    with torch.no_grad():
        recon, _ = m3(val["x"], val["days"])
    T, H = val["x"].shape[1], val["x"].shape[-1]
    expected = float(context_mae(recon, val["x"], context_weights(T, H, H, alpha_s=1.0, alpha_t=1.0)))
    assert runs[1]["context_mae_ref"] == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(runs[1]["center_mae_physical"]) and 0 < runs[1]["center_mae_physical"] < 0.5

    # Probe: embeddings of the validation cube per run, balanced accuracies in [0, 1], raw reference once.
    for r in runs:
        assert 0 <= r["probe_embedding_date_logreg"] <= 1 and 0 <= r["probe_embedding_mean_knn"] <= 1
    assert (out / "runs" / "alpha_s3_t3" / "embeddings" / "scene_002.zarr").exists()
    raw = doc["settings"]["raw_band_probe"]
    assert set(raw) == {"probe_raw_date_logreg", "probe_raw_date_knn"} and all(0 < v <= 1 for v in raw.values())

    sec = json.loads((out / "sections" / "080_sweep.json").read_text())
    assert sec["order"] == 80 and sec["title"] == "Context-decay sweep"
    assert len(sec["tables"][0]["rows"]) == 2 and sec["figures"][0]["path"] == "evaluation/sweep/sweep.png"
    assert (out / "evaluation" / "sweep" / "sweep.png").stat().st_size > 5000

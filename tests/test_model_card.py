"""Model cards (issue 26): written by training beside model.pt from the run's own files; probe and PCA-baseline
comparisons; `latentcube model-info MODEL` prints the card and writes it when missing or stale."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SMALL_MODEL

from latentcube.model_card import (
    CARD_JSON,
    CARD_MD,
    UNSPECIFIED_LICENCE,
    WARM_START_FILE,
    build_model_card,
    model_card,
    write_model_card,
)
from latentcube.synthetic import make_world, write_world
from latentcube.train import DataConfig, OptimConfig, TrainConfig, TrainerConfig, run_training

SMALL = SMALL_MODEL


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-epoch S2 run on three 32-px cubes (train / val / test), cube paths relative to a base folder."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("card")
    write_world(make_world(seed=1, scene_size=32, n_scenes=3, n_towers=0, scene_years=(2019,)), base / "world")
    cfg = TrainConfig(
        stage="s2", out_dir="runs/s2", seed=3,
        data=DataConfig(cubes=tuple(f"world/scene_00{i}.zarr" for i in range(3)), batch_size=16,
                        splits={"train": ("scene_000",), "val": ("scene_001",), "test": ("scene_002",)},
                        sampling={"space_stride": 6}),
        model=dict(SMALL), optim=OptimConfig(lr=3e-3, warmup_steps=5),
        trainer=TrainerConfig(max_epochs=2, enable_progress_bar=False, limit_val_batches=2))
    summary = run_training(cfg, base_dir=base, test=True)
    torch.set_num_threads(before)
    assert summary["model_card"] == str(base / "runs" / "s2" / CARD_MD)
    return base / "runs" / "s2"


def test_card_reports_a_kept_warm_start(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    best = float(pd.read_csv(copy / "metrics.csv")["val/center_mae"].min())
    torch.save({"score": best * 0.5, "state_dict": {}}, copy / WARM_START_FILE)  # better than every epoch: kept
    card = build_model_card(copy / "model.pt")
    assert card["training"]["best_epoch"] is None and card["metrics"]["val"] == {"center_mae": pytest.approx(best * 0.5)}
    assert card["training"]["selected_by"].startswith("lowest val/center_mae: the warm start (")
    assert any(lim.startswith("The model is its linear warm start") for lim in card["limitations"])
    md, _ = write_model_card(copy)
    assert "the warm start (" in md.read_text() and "best epoch -" in md.read_text()
    torch.save({"score": best * 2.0, "state_dict": {}}, copy / WARM_START_FILE)  # worse: the best epoch is kept
    card = build_model_card(copy / "model.pt")
    assert card["training"]["best_epoch"] is not None and card["training"]["selected_by"] == "lowest val/center_mae"
    assert not any("linear warm start" in lim for lim in card["limitations"])


def test_training_writes_the_card_from_the_runs_files(run):
    card = json.loads((run / CARD_JSON).read_text())
    m = card["model"]
    assert m["sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()
    assert (m["kind"], m["stage"], m["latent_size"]) == ("autoencoder", "s2", 9) and m["parameters"]["total"] > 0
    cubes = {Path(c["path"]).stem: c for c in card["data"]["cubes"]}
    assert [cubes[k]["split"] for k in ("scene_000", "scene_001", "scene_002")] == ["train", "val", "test"]
    assert cubes["scene_000"]["found"] and cubes["scene_000"]["size_px"] == [32, 32]
    assert cubes["scene_000"]["s2_dates"]["first"].startswith("2019-01") and cubes["scene_000"]["s2_dates"]["n"] > 50
    assert card["data"]["bands"]["s2"][0] == "B02" and card["data"]["normalisation"]["s2"]["B02"] == [0.0, 1.0]
    assert card["data"]["pixel_size_m"] == 10.0
    # Train and validation at the epoch of the lowest val/center_mae, as metrics.csv logged them.
    per_epoch = pd.read_csv(run / "metrics.csv").dropna(subset=["epoch"]).groupby("epoch").first()
    best = per_epoch["val/center_mae"].idxmin()
    assert card["training"]["best_epoch"] == best and card["training"]["epochs"] == 2
    assert card["metrics"]["val"]["center_mae"] == pytest.approx(per_epoch.loc[best, "val/center_mae"])
    assert card["metrics"]["train"]["objective"] == pytest.approx(per_epoch.loc[best, "train/objective"])
    test = json.loads((run / "test_metrics.json").read_text())
    assert card["metrics"]["test"]["center_mae"] == pytest.approx(test["test/center_mae"])
    assert card["objective"]["monitor"] == "val/center_mae" and card["objective"]["seed"] == 3
    assert card["licence"] == UNSPECIFIED_LICENCE and card["evaluation"]["probe"] is None
    assert any("synthetic" in lim for lim in card["limitations"]) and card["intended_use"]
    assert any(lim.startswith("Trained on 3 cube(s) (1 train, 1 val, 1 test) dated ") for lim in card["limitations"])
    md = (run / CARD_MD).read_text()
    for heading in ("## Training data", "## Objective and settings", "## Metrics", "## Intended use", "## Limitations"):
        assert heading in md
    assert "| center_mae |" in md and "licence: unspecified" in md


def test_probe_baselines_and_licence_enter_the_card(run, tmp_path):
    probe = {"settings": {"labels": "landcover", "date": "2019-07-01", "n_pixels": 500, "folds": 5, "seeds": [0]},
             "ratio_embedding_date_over_raw_date": {"logistic": 1.1},
             "results": [{"features": f, "classifier": "logistic", "metric": k, "mean": v, "std": 0.01}
                         for f, v in (("embedding_date", 0.8), ("raw_date", 0.7), ("pca_date", 0.6))
                         for k in ("balanced_accuracy", "macro_f1")]}
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    baselines = {"model": {"objective": 0.2, "center_mae": 0.05}, "patch_pca": {"objective": 0.3},
                 "date_pca": {"objective": 0.25}, "beats_patch_pca": True}
    card = build_model_card(run / "model.pt", probe=tmp_path / "probe.json", baselines=baselines, licence="CC-BY-4.0")
    rows = {r["features"]: r for r in card["evaluation"]["probe"]["rows"]}
    assert rows["pca_date"]["balanced_accuracy"]["mean"] == 0.6 and rows["embedding_date"]["macro_f1"]["std"] == 0.01
    assert card["evaluation"]["reconstruction_baselines"]["patch_pca"]["objective"] == 0.3
    assert card["licence"] == "CC-BY-4.0"
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    md, js = write_model_card(copy, probe=tmp_path / "probe.json", baselines=baselines, licence="CC-BY-4.0")
    text = md.read_text()
    assert "## Land-cover probe" in text and "| pca_date | logistic | 0.6 ± 0.01 |" in text
    assert "## Against PCA baselines (validation)" in text and "| patch_pca | 0.3 |" in text
    assert "licence: CC-BY-4.0" in text and json.loads(js.read_text())["licence"] == "CC-BY-4.0"


def test_model_info_prints_the_card_and_writes_it_when_missing_or_stale(run, tmp_path, capsys):
    from latentcube.cli import main

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / CARD_MD).unlink()
    (copy / CARD_JSON).unlink()
    with pytest.raises(SystemExit) as done:
        main(["model-info", str(copy)])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Model card: latentcube s2 model") and (copy / CARD_MD).is_file()
    # A card made for another model file is rewritten; one for this file is read as it is.
    card = json.loads((copy / CARD_JSON).read_text())
    card["model"]["sha256"] = "0" * 64
    (copy / CARD_JSON).write_text(json.dumps(card))
    assert model_card(copy / "model.pt")["model"]["sha256"] != "0" * 64
    before = (copy / CARD_JSON).stat().st_mtime_ns
    assert model_card(copy)["paths"]["json"] == str(copy / CARD_JSON)
    assert (copy / CARD_JSON).stat().st_mtime_ns == before
    with pytest.raises(SystemExit):
        main(["model-info", str(copy / "model.pt"), "--licence", "MIT", "--json"])
    assert json.loads(capsys.readouterr().out)["licence"] == "MIT"
    with pytest.raises(SystemExit) as done:
        main(["model-info", str(tmp_path / "nothing")])
    assert done.value.code == 1 and "no model file" in capsys.readouterr().err


def test_licence_from_the_training_config(run, tmp_path):
    from latentcube.nn.model_file import load_model, save_model
    from latentcube.preprocess import Normalization

    model, meta = load_model(run / "model.pt")
    cfg = TrainConfig(stage="s2", out_dir=str(tmp_path), licence="CC-BY-SA-4.0")
    path = save_model(tmp_path / "model.pt", model, normalization=Normalization.from_dict(meta["normalization"]),
                      config=replace(cfg))
    card = build_model_card(path)
    assert card["licence"] == "CC-BY-SA-4.0" and card["metrics"] == {} and card["data"]["cubes"] == []


def test_demo_catalogue_section_links_cards_and_stac_items(run, tmp_path):
    import numpy as np
    import xarray as xr

    from latentcube.cube import set_crs
    from latentcube.demo import _catalogue_section
    from latentcube.stac_item import write_stac_item
    from latentcube.stores import write_zarr

    out = tmp_path / "demo"
    shutil.copytree(run, out / "runs" / "s2")
    times = pd.date_range("2020-04-01", periods=3, freq="10D")
    ds = xr.Dataset({"embedding": (("time", "feature", "y", "x"), np.zeros((3, 2, 4, 5), "float32"))},
                    coords={"time": times.values, "feature": ["f0", "f1"], "y": 5_000_005.0 - 10 * np.arange(4),
                            "x": 500_005.0 + 10 * np.arange(5)}, attrs={"conventions": "latentcube embedding cube v1"})
    write_zarr(set_crs(ds, "EPSG:32631"), out / "embeddings" / "e.zarr")
    write_stac_item(out / "embeddings" / "e.zarr")
    _catalogue_section(out, {})
    doc = json.loads(next((out / "sections").glob("*_catalogue.json")).read_text())
    text = "\n".join(doc["text"])
    assert "[runs/s2/MODEL_CARD.md](runs/s2/MODEL_CARD.md): 9-d" in text
    assert "[embeddings/e.zarr.stac.json](embeddings/e.zarr.stac.json): embedding, 2 features x 3 time steps, " \
           "2020-04-01 .. 2020-04-21" in text
    # The card is rewritten where the demo keeps it; the cubes are not in this folder: said, not an error.
    assert json.loads((out / "runs" / "s2" / CARD_JSON).read_text())["data"]["cubes"][0]["found"] is False


def test_card_names_the_models_own_bands(tmp_path, capsys):
    """A model of B04 B08 B11 (an openEO export): its count and names everywhere, never the preset's 10."""
    from latentcube.cli import main
    from latentcube.constants import S2_BANDS
    from latentcube.nn import SensorAutoencoder, s2_config
    from latentcube.nn.model_file import save_model
    from latentcube.preprocess import Normalization

    three = ("B04", "B08", "B11")
    model = SensorAutoencoder(replace(s2_config(), n_bands=3, band_names=three, **SMALL)).eval()
    cfg = TrainConfig(stage="s2", out_dir=str(tmp_path), model={**SMALL, "n_bands": 3, "band_names": list(three)})
    path = save_model(tmp_path / "model.pt", model, normalization=Normalization(), config=cfg)
    (tmp_path / CARD_JSON).write_text(json.dumps({"format": "latentcube-model-card/1", "model": {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}))  # an old card of this very file: rewritten
    with pytest.raises(SystemExit) as done:
        main(["model-info", str(path)])
    assert done.value.code == 0
    md = capsys.readouterr().out
    card = json.loads((tmp_path / CARD_JSON).read_text())
    m, d = card["model"], card["data"]
    assert (m["bands"], m["n_bands"], m["latent_size"]) == ({"s2": list(three)}, {"s2": 3}, 9)
    assert m["stage_description"] == "stage 1: Sentinel-2 autoencoder (3 reflectance bands: B04, B08, B11)"
    assert card["intended_use"][0].startswith("Embed cubes of Sentinel-2 L2A reflectance (3 bands: B04, B08, B11) ")
    assert d["bands"] == {"s2": list(three)}
    assert d["normalisation"]["s2"] == {"B04": [0.0, 1.0], "B08": [0.0, 1.0], "B11": [0.0, 1.0]}
    assert "s1_db" not in d["normalisation"]  # an S2 model does not read S1
    latent = [lim for lim in card["limitations"] if lim.startswith("The S2 code")]
    assert latent == ["The S2 code has more dimensions (9) than the model has input bands (3: B04, B08, B11): its "
                      "features are partly redundant (they can add spatial and temporal context, not spectral "
                      "information), so expect correlated features."]
    assert "10 bands" not in md and "10 reflectance" not in md and "B02" not in md
    assert "Sentinel-2 autoencoder (3 reflectance bands: B04, B08, B11)" in md and "(3 bands: B04, B08, B11)" in md

    ten = save_model(tmp_path / "ten" / "model.pt", SensorAutoencoder(replace(s2_config(), **SMALL)).eval(),
                     normalization=Normalization())
    card = build_model_card(ten)
    assert card["model"]["stage_description"] == (f"stage 1: Sentinel-2 autoencoder (10 reflectance bands: "
                                                  f"{', '.join(S2_BANDS)})")
    assert list(card["data"]["normalisation"]["s2"]) == list(S2_BANDS)
    assert not any(lim.startswith("The S2 code") for lim in card["limitations"])  # 9-d code of 10 bands

    from latentcube.nn import FusionConfig, FusionModel, s1_config

    s1 = SensorAutoencoder(replace(s1_config(), **SMALL)).eval()
    fused = FusionModel({"s1": s1, "s2": model}, FusionConfig(proj_dim=8, d_model=16, ffn_dim=16)).eval()
    card = build_model_card(save_model(tmp_path / "fusion" / "model.pt", fused, normalization=Normalization()))
    assert card["model"]["stage_description"].endswith("(S2: 3 reflectance bands: B04, B08, B11; S1: VV, VH backscatter)")
    assert card["intended_use"][0].startswith("Embed cubes of Sentinel-2 L2A reflectance (3 bands: B04, B08, B11) with "
                                              "Sentinel-1 VV/VH backscatter matched to each S2 date ")
    assert list(card["data"]["normalisation"]["s2"]) == list(three)
    assert list(card["data"]["normalisation"]["s1_db"]) == ["VV", "VH"]
    assert sum(lim.startswith("The S2 code has more dimensions (9)") for lim in card["limitations"]) == 1

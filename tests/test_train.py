"""Staged training: configs, per-stage loss decrease, frozen fusion, exact resume, model files, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import SMALL_MODEL

from latentcube.config import ConfigError
from latentcube.constants import S2_BANDS
from latentcube.synthetic import make_world, write_world
from latentcube.train import (
    DataConfig,
    OptimConfig,
    TrainConfig,
    TrainerConfig,
    load_model,
    load_train_config,
    run_training,
)

SMALL = SMALL_MODEL


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(make_world(seed=1, scene_size=40, n_scenes=3, n_towers=0, scene_years=(2019,)), out)
    return out


def stage_config(world: Path, out: Path, stage: str, *, epochs: int = 3, **changes) -> TrainConfig:
    cubes = tuple(str(world / f"scene_00{i}.zarr") for i in range(3))
    sampling = {"space_stride": 6} if stage != "s1" else {"seq_len": 30, "time_stride": 15, "space_stride": 6}
    cfg = TrainConfig(
        stage=stage,
        out_dir=str(out),
        seed=3,
        data=DataConfig(cubes=cubes, splits={"train": ("scene_000", "scene_001"), "val": ("scene_002",)},
                        batch_size=16, sampling=sampling),
        model={} if stage == "fusion" else dict(SMALL),
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
        trainer=TrainerConfig(max_epochs=epochs, enable_progress_bar=False, limit_val_batches=4),
    )
    return replace(cfg, **changes)


def epoch_metric(run: Path, name: str) -> pd.Series:
    df = pd.read_csv(run / "metrics.csv")
    return df.dropna(subset=[name]).groupby("epoch")[name].first()


@pytest.fixture(scope="module")
def stage1(world_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {s: Path(run_training(stage_config(world_dir, root / s, s), test=False)["model"]) for s in ("s1", "s2")}


def test_unknown_config_keys_are_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"stage": "s2", "out_dir": "x", "optim": {"lr": 1e-3, "learning_rate": 2}}))
    with pytest.raises(ConfigError, match=r"optim: unknown key\(s\) \['learning_rate'\]"):
        load_train_config(path)
    path.write_text(yaml.safe_dump({"stage": "s3", "out_dir": "x"}))
    with pytest.raises(ConfigError, match="not one of"):
        load_train_config(path)


@pytest.mark.parametrize("path", sorted([*Path(__file__).parents[1].glob("configs/**/*.yaml"), *Path(__file__).parents[1].glob("src/latentcube/configs/**/*.yaml")]), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    cfg = load_train_config(path)
    assert cfg.stage in ("s1", "s2", "fusion")


@pytest.mark.slow
def test_stage1_losses_decrease_and_model_files_are_self_describing(stage1):
    for stage, model_path in stage1.items():
        run = model_path.parent
        train = epoch_metric(run, "train/objective")
        assert len(train) == 3 and train.iloc[-1] < train.iloc[0], (stage, train.tolist())
        for part in ("center_mae", "context_mae"):
            assert f"val/{part}" in pd.read_csv(run / "metrics.csv").columns
        payload = torch.load(model_path, weights_only=True)  # no unrestricted pickle
        assert payload["kind"] == "autoencoder" and payload["latentcube_version"]
        assert payload["band_order"] == {stage: ["VV", "VH"] if stage == "s1" else list(S2_BANDS)}
        assert payload["normalization"]["s1_db"]["VV"] == [-25.0, 0.0]
        assert payload["config"]["stage"] == stage and payload["model_args"]["sensor"]["widths"] == SMALL["widths"]
        model, meta = load_model(model_path)
        x = torch.rand(2, 11, 2 if stage == "s1" else 10, 15, 15)
        days = torch.arange(11.0).repeat(2, 1) * 6
        with torch.no_grad():
            assert model.encode_patches(x, days).shape == (2, 11, 2 if stage == "s1" else 9)
    assert not (stage1["s2"].parent / "tensorboard").exists()  # CSV only unless trainer.tensorboard is set


def test_fusion_selection_metric_weights_sensors_like_the_loss():
    from latentcube.losses import FusionLoss, FusionLossConfig, SensorLossConfig
    from latentcube.nn import FusionConfig, SensorAutoencoder, s1_config, s2_config
    from latentcube.train import FusionTask

    sensors = {"s1": SensorAutoencoder(s1_config()), "s2": SensorAutoencoder(s2_config())}

    def task(s1_weight: float) -> FusionTask:
        loss = FusionLoss(FusionLossConfig(sensors={"s1": SensorLossConfig(weight=s1_weight),
                                                    "s2": SensorLossConfig(use_sam=True)}))
        return FusionTask(sensors, FusionConfig(), loss, OptimConfig())

    # two epochs of a fusion run with S1 down-weighted: S1 (normalised, ~15x S2's error) improves, S2 worsens
    early = {"s1/center_mae": torch.tensor(0.061), "s2/center_mae": torch.tensor(0.0035)}
    late = {"s1/center_mae": torch.tensor(0.0545), "s2/center_mae": torch.tensor(0.0051)}
    paper, down = task(1.0), task(0.1)
    assert paper._selection_centre_mae(early).item() == pytest.approx((0.061 + 0.0035) / 2)  # the paper's plain mean
    assert down._selection_centre_mae(early).item() == pytest.approx((0.1 * 0.061 + 0.0035) / 1.1)
    assert paper._selection_centre_mae(late) < paper._selection_centre_mae(early)  # plain mean keeps the S1 gain
    assert down._selection_centre_mae(early) < down._selection_centre_mae(late)  # weighted: the S2 loss decides


@pytest.mark.slow
def test_fusion_trains_only_fusion_layers(world_dir, stage1, tmp_path):
    from latentcube.train import build_task

    cfg = stage_config(world_dir, tmp_path / "fusion", "fusion", epochs=2,
                       checkpoints={k: str(v) for k, v in stage1.items()})
    task, _ = build_task(cfg)
    before = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
    summary = run_training(cfg, test=True)
    trained = torch.load(Path(cfg.out_dir) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    trained = {k.removeprefix("model."): v for k, v in trained.items() if k.startswith("model.")}
    frozen = [k for k in before if k.startswith("sensors.")]
    fusion = [k for k in before if not k.startswith("sensors.") and before[k].is_floating_point()]
    assert frozen and fusion
    for k in frozen:
        assert torch.equal(before[k], trained[k]), f"frozen parameter {k} changed"
    for k in fusion:
        assert not torch.equal(before[k], trained[k]), f"fusion parameter {k} did not change"
    train = epoch_metric(Path(cfg.out_dir), "train/objective")
    assert train.iloc[-1] < train.iloc[0]
    metrics = json.loads((Path(cfg.out_dir) / "test_metrics.json").read_text())
    assert metrics["units"] == {"s1": "dB", "s2": "reflectance"}
    # S1 physical error in dB = normalised error × the 25 dB (VV) / 27 dB (VH) normalisation span
    assert 0 < metrics["test/s1/center_mae_physical"] < 27 * 1.0
    assert summary["test_metrics"]["split"] == "val"


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(world_dir, tmp_path):
    full = stage_config(world_dir, tmp_path / "full", "s2", epochs=2)
    run_training(full, test=False)
    part = stage_config(world_dir, tmp_path / "part", "s2", epochs=1)
    run_training(part, test=False)  # stopped after one epoch (k = steps of one epoch) ...
    run_training(replace(part, trainer=replace(part.trainer, max_epochs=2)), test=False)  # ... and re-run
    a = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] > 0 and a["epoch"] == b["epoch"] == 1
    # the resumed run's metrics keep both epochs
    assert list(epoch_metric(tmp_path / "part", "train/objective").index) == [0, 1]
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(world_dir, tmp_path):
    cfg = stage_config(world_dir, tmp_path / "ddp", "s2", epochs=1)
    path = tmp_path / "ddp.yaml"
    from latentcube.config import to_dict

    path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "latentcube.cli", "train", "s2", "--config", str(path),
           "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr or "GLOBAL_RANK: 1" in proc.stderr or "MEMBER: 2/2" in proc.stderr
    assert (tmp_path / "ddp" / "model.pt").exists()


def test_pca_warm_start_sets_the_linear_paths_from_training_patches(world_dir, tmp_path):
    from latentcube.train import CubeDataModule, build_task, warm_start

    cfg = stage_config(world_dir, tmp_path / "ws", "s2", warm_start="pca", warm_start_patches=64)
    task, _ = build_task(replace(cfg, model={}))
    with pytest.raises(ConfigError, match="linear_patch: true"):  # the paper's architecture has no linear patch path
        warm_start(task, CubeDataModule(cfg, _), cfg)
    cfg = replace(cfg, model={**SMALL, "linear_patch": True})
    task, norm = build_task(cfg)
    data = CubeDataModule(cfg, norm)
    batch = next(iter(torch.utils.data.DataLoader(data.dataset("val"), batch_size=32)))
    with torch.no_grad():
        before = task.loss(task.model(batch["x"], batch["days"])[0], batch["x"], batch["days"]).total
    summary = warm_start(task, data, cfg)
    with torch.no_grad():
        after = task.loss(task.model(batch["x"], batch["days"])[0], batch["x"], batch["days"]).total
    # S2's SAM term weighs the centre pixel far above its spatial weight; 64 patches x 11 dates were fitted
    assert summary["centre_boost"] > 10 and summary["n_samples"] == 64 * 11
    assert 0.5 < summary["explained"] <= 1.0
    assert after < 0.5 * before, (float(before), float(after))  # the untrained model is the linear code
    assert warm_start(task, data, replace(cfg, warm_start="none")) is None
    with pytest.raises(ConfigError, match="warm_start must be"):
        warm_start(task, data, replace(cfg, warm_start="svd"))


@pytest.mark.slow
def test_fusion_pca_warm_start_lowers_the_initial_loss(world_dir, stage1, tmp_path):
    from latentcube.train import CubeDataModule, build_task, warm_start

    cfg = stage_config(world_dir, tmp_path / "fws", "fusion", warm_start="pca", warm_start_patches=48,
                       checkpoints={k: str(v) for k, v in stage1.items()})
    task, norm = build_task(cfg)
    data = CubeDataModule(cfg, norm)
    batch = next(iter(torch.utils.data.DataLoader(data.dataset("val"), batch_size=32)))
    inputs = {k: batch[k] for k in ("s1", "s2")}

    def loss() -> float:
        with torch.no_grad():
            return float(task.loss(task.model(inputs, batch["days"]).reconstructions, inputs, batch["days"]).total)

    before = loss()
    frozen = {k: v.clone() for k, v in task.model.sensors.state_dict().items()}
    summary = warm_start(task, data, cfg)
    assert summary["n_samples"] == 48 * 11 and 0.5 < summary["explained"] <= 1.0
    assert loss() < before
    assert all(torch.equal(v, task.model.sensors.state_dict()[k]) for k, v in frozen.items())  # sensors untouched


def test_model_files_load_and_embed_without_lightning(tmp_path):
    """Inference (model files, embed) must not import Lightning: ~6 s and ~175 MB in every Dask worker."""
    from latentcube.nn import SensorAutoencoder, s2_config
    from latentcube.nn.model_file import save_model
    from latentcube.preprocess import Normalization

    torch.manual_seed(0)
    model = SensorAutoencoder(s2_config(**SMALL)).eval()
    path = save_model(tmp_path / "model.pt", model, normalization=Normalization())
    x = torch.rand(1, 11, 10, 15, 15)
    days = torch.arange(11.0)[None] * 5
    with torch.no_grad():
        expected = model.encode_patches(x, days)
    torch.save({"x": x, "days": days, "z": expected}, tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        "import latentcube.embed, latentcube.evaluate.gpp, latentcube.evaluate.probe\n"
        "from latentcube.nn.model_file import load_model\n"
        f"model, meta = load_model({str(path)!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)\n"
        "with torch.no_grad():\n"
        "    assert torch.allclose(model.encode_patches(io['x'], io['days']), io['z'], atol=1e-6)\n"
        "assert meta['kind'] == 'autoencoder', meta['kind']\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout
    # and the old import path still works
    assert load_model(path)[1]["kind"] == "autoencoder"


def test_run_training_rejects_a_data_module_of_another_stage(world_dir, tmp_path):
    from latentcube.train import CubeDataModule, normalization_of

    s2 = stage_config(world_dir, tmp_path / "s2", "s2", epochs=1)
    s1 = stage_config(world_dir, tmp_path / "s1", "s1", epochs=1)
    data = CubeDataModule(s2, normalization_of(s2))
    with pytest.raises(ConfigError, match="built for another stage or normalisation"):
        run_training(s1, test=False, data=data)
    assert not (tmp_path / "s1" / "checkpoints").exists()  # refused before any training


@pytest.mark.slow
def test_one_cube_trains_with_a_spatial_holdout(world_dir, tmp_path):
    from latentcube.train import CubeDataModule, normalization_of

    one = (str(world_dir / "scene_000.zarr"),)
    base = stage_config(world_dir, tmp_path / "s2", "s2", epochs=1)
    cfg = replace(base, data=replace(base.data, cubes=one, splits=None, spatial_split={"val": 0.4}))
    data = CubeDataModule(cfg, normalization_of(cfg))
    # 40 columns: train strip 0..24, val strip 24..40; every patch (15 px) inside its strip.
    assert data.split_regions == {"train": [(slice(0, 40), slice(0, 24))], "val": [(slice(0, 40), slice(24, 40))]}
    train_x = {c.x0 for c in data.dataset("train").candidates}
    val_x = {c.x0 for c in data.dataset("val").candidates}
    assert max(train_x) + 15 <= 24 and min(val_x) >= 24
    result = run_training(cfg, test=True, data=data)
    assert Path(result["model"]).exists() and result["test_metrics"]["split"] == "val"
    assert result["patches"] == {"train": len(data.dataset("train")), "val": len(data.dataset("val"))}
    assert load_model(result["model"])[1]["pixel_size_m"] == 10.0  # the synthetic world's grid

    with pytest.raises(ConfigError, match="data.splits and data.spatial_split are both set"):
        CubeDataModule(replace(cfg, data=replace(base.data, spatial_split={"val": 0.4})), normalization_of(cfg))
    with pytest.raises(ConfigError, match="scene_000.zarr: .*the val strip is 4 px wide"):
        CubeDataModule(replace(cfg, data=replace(cfg.data, spatial_split={"val": 0.1})), normalization_of(cfg))
    from latentcube.cube import CubeError, open_cube, save_cube

    cloudy = open_cube(one[0]).load()
    cloudy["s2"][..., 24:] = float("nan")  # the whole val strip under cloud
    cloudy_path = save_cube(cloudy, tmp_path / "cloudy.zarr")
    cloudy_cfg = replace(cfg, data=replace(cfg.data, cubes=(str(cloudy_path),)))
    with pytest.raises(CubeError, match="split 'val': no s2 patch passed the sampling rules"):
        CubeDataModule(cloudy_cfg, normalization_of(cfg)).dataset("val")
    with pytest.raises(ConfigError, match="split 'val' has no cubes. Fix: .*spatial_split"):
        CubeDataModule(replace(cfg, data=replace(base.data, splits={"train": ("scene_000",)}, cubes=one)),
                       normalization_of(cfg))


def test_cli_train_check_prints_split_sizes_without_training(world_dir, tmp_path):
    from typer.testing import CliRunner

    from latentcube.cli import app
    from latentcube.config import to_dict
    from latentcube.train import CubeDataModule, normalization_of

    base = stage_config(world_dir, tmp_path / "run", "s2", epochs=1)
    cfg = replace(base, data=replace(base.data, cubes=(str(world_dir / "scene_000.zarr"),), splits=None,
                                     spatial_split={"val": 0.4}))
    path = tmp_path / "s2.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    res = CliRunner().invoke(app, ["train", "s2", "--config", str(path), "--check"])
    assert res.exit_code == 0, res.output
    data = CubeDataModule(cfg, normalization_of(cfg))
    for split in ("train", "val"):
        ds = data.dataset(split)
        assert f"{split}: {len(ds)} patches from strips of 1 cube(s) ({ds.n_rejected} candidates rejected)" in res.output
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_sampled_window_must_be_the_models(world_dir, tmp_path, capsys):
    from typer.testing import CliRunner

    from latentcube.cli import app, main
    from latentcube.config import to_dict

    base = stage_config(world_dir, tmp_path / "run", "s1", epochs=1)
    cfg = replace(base, data=replace(base.data, sampling={**base.data.sampling, "n_frames": 9}))
    with pytest.raises(ConfigError, match=r"data.sampling draws 9 dates of 15 x 15 px, but the model reads windows "
                                          r"of 11 dates of 15 x 15 px. Fix: make them equal"):
        run_training(cfg, test=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the warm start and training
    path = tmp_path / "s1.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    with pytest.raises(SystemExit) as exc:
        main(["train", "s1", "--config", str(path), "--check"])
    assert exc.value.code == 1
    assert "ConfigError: data.sampling draws 9 dates of 15 x 15 px, but the model reads windows of 11 dates" in (
        capsys.readouterr().err)
    # with the model's window set to match, the same sampling is accepted
    matched = replace(cfg, model={**cfg.model, "n_dates": 9}, out_dir=str(tmp_path / "run9"))
    path.write_text(yaml.safe_dump(to_dict(matched)))
    res = CliRunner().invoke(app, ["train", "s1", "--config", str(path), "--check"])
    assert res.exit_code == 0, res.output


def test_training_refuses_cubes_whose_bands_are_not_the_models(world_dir, tmp_path):
    from latentcube.cube import CubeError, open_cube, save_cube

    ds = open_cube(world_dir / "scene_000.zarr").load()
    bands = [str(b) for b in ds["band"].values]
    four = save_cube(ds.sel(band=["B02", "B03", "B04", "B08"]), tmp_path / "four.zarr")
    swapped = save_cube(ds.sel(band=[bands[1], bands[0], *bands[2:]]), tmp_path / "swapped.zarr")
    base = stage_config(world_dir, tmp_path / "run", "s2", epochs=1)

    def cfg_for(path, **model):
        return replace(base, model={**base.model, **model},
                       data=replace(base.data, cubes=(str(path),), splits=None, spatial_split={"val": 0.4}))

    with pytest.raises(CubeError, match=r"s2 bands of four.zarr vs the model mismatch: missing \['B05', 'B06', 'B07', "
                                        r"'B8A', 'B11', 'B12'\].*Fix: the cube lacks \['B05', .*'B12'\]: fetch or "
                                        r"import them .* \(model: \{n_bands: 4, band_names: \['B02', 'B03', 'B04', 'B08'\]\}\)"):
        run_training(cfg_for(four), test=False)
    with pytest.raises(CubeError, match=r"training cube .*swapped.zarr: S2 bands \['B03', 'B02', .*out of the canonical "
                                        r"order. Fix: ds = ds.sel\(band=\['B02', 'B03', .*'B12'\]\)"):
        run_training(cfg_for(swapped), test=False)
    dn = save_cube(ds.assign(s2=ds["s2"] * 10000), tmp_path / "dn.zarr")  # reflectance left as digital numbers
    with pytest.raises(CubeError, match=r"training cube .*dn.zarr: s2 looks like unscaled digital numbers"):
        run_training(cfg_for(dn), test=False)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training
    # Cubes at two pixel sizes: a warning, and the model records none.
    coarse = ds.assign_coords(x=ds.x.values[0] + 2 * (ds.x.values - ds.x.values[0]),
                              y=ds.y.values[0] + 2 * (ds.y.values - ds.y.values[0]))
    mixed = replace(base, data=replace(base.data, cubes=(str(world_dir / "scene_000.zarr"),
                                                          str(save_cube(coarse, tmp_path / "coarse.zarr"))),
                                       splits={"train": ("scene_000",), "val": ("coarse",)}))
    from latentcube.train import CubeDataModule, normalization_of

    with pytest.warns(UserWarning, match=r"training cubes at different pixel sizes \{'scene_000.zarr': 10.0, "
                                         r"'coarse.zarr': 20.0\}"):
        assert CubeDataModule(mixed, normalization_of(mixed)).pixel_size_m() is None
    # The fix the message names: a model on the cube's own bands trains.
    result = run_training(cfg_for(four, n_bands=4, band_names=["B02", "B03", "B04", "B08"]), test=False)
    assert load_model(result["model"])[1]["band_order"]["s2"] == ["B02", "B03", "B04", "B08"]
    # The same model on the full 10-band cube reads its 4 bands by name: the same weights as on the reduced cube.
    full = replace(cfg_for(world_dir / "scene_000.zarr", n_bands=4, band_names=["B02", "B03", "B04", "B08"]),
                   out_dir=str(tmp_path / "run_full"))
    on_full = run_training(full, test=False)
    a, b = load_model(result["model"])[0].state_dict(), load_model(on_full["model"])[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_with_another_config_is_refused(world_dir, tmp_path):
    from latentcube.config import to_dict
    from latentcube.train.run import _check_resumable

    out = tmp_path / "run"
    cfg = stage_config(world_dir, out, "s2", epochs=1)
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"")  # a run was started here ...
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))  # ... with this config
    longer = replace(cfg, trainer=replace(cfg.trainer, max_epochs=5))
    _check_resumable(out, longer)  # extending the run: allowed
    _check_resumable(out, replace(cfg, data=replace(cfg.data, num_workers=cfg.data.num_workers + 2)))  # how, not what
    with pytest.raises(ConfigError, match=r"data.batch_size: 16 -> 8"):  # what each step sees: refused
        _check_resumable(out, replace(cfg, data=replace(cfg.data, batch_size=8)))
    older = to_dict(cfg)
    del older["data"]["spatial_split_axis"]  # a config.yaml written before that field existed
    (out / "config.yaml").write_text(yaml.safe_dump(older))
    _check_resumable(out, cfg)  # compares at the field's default: still the same run
    other = replace(cfg, model={**cfg.model, "latent_dim": 5}, optim=replace(cfg.optim, lr=1e-2))
    with pytest.raises(ConfigError, match=r"holds a run started with another config \(model.latent_dim: None -> 5; "
                                          r"optim.lr: 0.003 -> 0.01\). Fix: train into a new directory"):
        run_training(other, test=False)
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.003  # the run's config is kept


def test_training_step_reads_the_masked_input_and_scores_the_full_target():
    from latentcube.losses import S2PretrainLoss
    from latentcube.train import AutoencoderTask, sensor_model_config

    torch.manual_seed(0)
    task = AutoencoderTask(sensor_model_config("s2", SMALL), S2PretrainLoss(), OptimConfig()).eval()
    x = torch.rand(2, 11, 10, 15, 15)
    x_in = x.clone()
    x_in[:, :, :, 7, 7] = float("nan")  # the centre pixel hidden from the input only
    days = torch.arange(11.0).repeat(2, 1) * 5
    with torch.no_grad():
        got = task._step({"x": x, "x_in": x_in, "days": days}, "train").total
        want = task.loss(task.model(x_in, days)[0], x, days).total
        plain = task._step({"x": x, "days": days}, "train").total
    torch.testing.assert_close(got, want)
    assert not torch.isclose(got, plain)  # without x_in the model reads the full patch


def test_training_that_does_not_beat_the_warm_start_keeps_it(world_dir, tmp_path):
    from latentcube.train.run import WARM_START_FILE

    # A learning rate far too high: every epoch ends worse on the validation metric than the warm start.
    cfg = stage_config(world_dir, tmp_path / "keep", "s2", epochs=1, warm_start="pca", warm_start_patches=64,
                       model={**SMALL, "linear_patch": True}, optim=OptimConfig(lr=0.5, warmup_steps=0))
    summary = run_training(cfg, test=False)
    saved = torch.load(tmp_path / "keep" / WARM_START_FILE, weights_only=True)
    epochs = epoch_metric(tmp_path / "keep", cfg.optim.monitor)
    assert len(epochs) == 1 and saved["score"] < float(epochs.iloc[0])
    assert summary["best_checkpoint"].endswith(WARM_START_FILE)
    model, _ = load_model(summary["model"])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved["state_dict"][f"model.{key}"], rtol=0, atol=0, msg=key)
    # without a warm start there is nothing to compete: the best epoch is kept
    plain = run_training(replace(cfg, out_dir=str(tmp_path / "plain"), warm_start="none", model=dict(SMALL)), test=False)
    assert plain["best_checkpoint"].endswith("best.ckpt")
    assert not (tmp_path / "plain" / WARM_START_FILE).exists()


def test_warm_start_context_settings_are_checked(world_dir, tmp_path):
    from latentcube.train import CubeDataModule, build_task, warm_start
    from latentcube.train.config import ContextCodeConfig

    with pytest.raises(ConfigError, match="px must be odd"):
        ContextCodeConfig(dims=2, px=4)
    with pytest.raises(ConfigError, match="dims"):
        ContextCodeConfig(dims=-1)
    with pytest.raises(ConfigError, match=r"share = 0 is out of range. Fix: set share to a value > 0 and <= 1"):
        ContextCodeConfig(dims=2, share=0)
    cfg = stage_config(world_dir, tmp_path / "ctx", "s2", warm_start="pca", warm_start_patches=16,
                       model={**SMALL, "linear_patch": True}, warm_start_context=ContextCodeConfig(dims=9, px=3))
    task, norm = build_task(cfg)
    with pytest.raises(ConfigError, match="leaves no pixel-exact dimension of the 9-d latent; use at most 8"):
        warm_start(task, CubeDataModule(cfg, norm), cfg)
    cfg = replace(cfg, warm_start_context=ContextCodeConfig(dims=2, px=3))
    summary = warm_start(task, CubeDataModule(cfg, norm), cfg)
    assert summary["context_dims"] == 2.0

"""Training run state and safety: hostile and corrupt checkpoints, history across re-runs, atomic files,
and the stop at the first non-finite loss or weight (issue 27, defects 1, 3 and 5)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import SMALL_MODEL

from latentcube.config import to_dict
from latentcube.losses import S2PretrainLoss
from latentcube.nn.model_file import NonFiniteModelError, save_model
from latentcube.preprocess import Normalization
from latentcube.synthetic import make_world, write_world
from latentcube.train import (
    AutoencoderTask,
    DataConfig,
    OptimConfig,
    TrainConfig,
    TrainerConfig,
    TrainError,
    load_checkpoint,
    load_model,
    run_training,
    sensor_model_config,
)
from latentcube.train.checkpoints import _SafeCheckpointIO
from latentcube.train.metrics import _RunMetrics

# The smallest model and run that still train for real: 3 steps of 4 patches per epoch, one val batch.
SMALL = SMALL_MODEL


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(make_world(seed=1, scene_size=40, n_scenes=1, n_towers=0, scene_years=(2019,)), out)
    return out / "scene_000.zarr"


def tiny_config(cube: Path, out: Path, *, epochs: int = 2) -> TrainConfig:
    return TrainConfig(
        stage="s2",
        out_dir=str(out),
        seed=3,
        data=DataConfig(cubes=(str(cube),), spatial_split={"val": 0.4}, batch_size=4,
                        sampling={"space_stride": 6}),
        model=dict(SMALL),
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
        trainer=TrainerConfig(max_epochs=epochs, enable_progress_bar=False, limit_train_batches=3,
                              limit_val_batches=1),
    )


@pytest.fixture(scope="module")
def finished(cube, tmp_path_factory) -> Path:
    """A finished two-epoch run, copied by each test that changes it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_training(tiny_config(cube, out), test=False)
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def epochs_of(run: Path, name: str = "train/objective") -> pd.Series:
    df = pd.read_csv(run / "metrics.csv")
    return df.dropna(subset=[name]).set_index("epoch")[name]


class Payload:
    """Pickles to a call of os.system: loading it with unrestricted pickle runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


# --- defect 1: a checkpoint is data, never code -----------------------------------------------------------


def plant_payload(ckpt: Path, marker: Path) -> None:
    state = torch.load(ckpt, weights_only=True)
    state["callbacks_extra"] = Payload(f"touch {marker}")
    torch.save(state, ckpt)


@pytest.mark.slow
def test_hostile_last_ckpt_is_refused_on_resume_and_never_runs(cube, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    marker = tmp_path / "pwned"
    plant_payload(run / "checkpoints" / "last.ckpt", marker)
    cfg = tiny_config(cube, run, epochs=3)
    with pytest.raises(TrainError, match=r"checkpoint .*last\.ckpt holds more than weights and training state "
                                         r"\(.*posix.system.*\); it was not loaded, as loading it could run code\. "
                                         r"Fix: delete it"):
        run_training(cfg, test=False)
    assert not marker.exists()
    # Lightning's own loading goes through the same refusal (trainer.fit with ckpt_path).
    with pytest.raises(TrainError, match="holds more than weights"):
        _SafeCheckpointIO().load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert not marker.exists()


def test_hostile_checkpoint_is_refused_by_the_cli_without_traceback(cube, tmp_path, capsys):
    from latentcube.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "x": Payload(f"touch {marker}")}, run / "checkpoints" / "last.ckpt")
    config = tmp_path / "s2.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_config(cube, run))))
    with pytest.raises(SystemExit) as exc:
        main(["train", "s2", "--config", str(config), "--out", str(run)])
    assert exc.value.code == 1
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "TrainError: checkpoint" in err and "holds more than weights and training state" in err
    assert "Traceback" not in err
    assert not marker.exists()


def test_best_checkpoint_reload_refuses_a_payload(tmp_path):
    path = tmp_path / "best.ckpt"
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": Payload(f"touch {marker}")}, path)
    with pytest.raises(TrainError, match=rf"checkpoint {path} holds more than weights"):
        load_checkpoint(path)
    assert not marker.exists()


def test_no_unrestricted_torch_load_in_the_package():
    src = Path(__file__).parents[1] / "src" / "latentcube"
    offenders = [str(p) for p in src.rglob("*.py") if "weights_only=False" in p.read_text(encoding="utf-8")]
    assert offenders == []


# --- defect 5: run state ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_truncated_last_ckpt_is_named_with_the_fix(cube, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # a full disk under the old, non-atomic writer
    with pytest.raises(TrainError, match=rf"checkpoint {last} is corrupt or truncated \(.*\)\. Fix: delete {last} "
                                         "to start this run again from the first epoch"):
        run_training(tiny_config(cube, run, epochs=3), test=False)
    last.write_bytes(b"")
    with pytest.raises(TrainError, match="is corrupt or truncated"):
        run_training(tiny_config(cube, run, epochs=3), test=False)


def test_checkpoint_writes_are_atomic(tmp_path):
    path = tmp_path / "last.ckpt"
    io = _SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "x": Unpicklable()}, path)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_rerun_of_a_finished_run_keeps_metrics_and_model_metrics(cube, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    before = pd.read_csv(run / "metrics.csv")
    model_metrics = load_model(run / "model.pt")[1]["metrics"]
    assert list(epochs_of(run).index) == [0, 1] and "val/center_mae" in model_metrics
    summary = run_training(tiny_config(cube, run), test=False)  # the same command again
    assert summary["global_step"] == 6
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics.csv"), before)
    assert load_model(run / "model.pt")[1]["metrics"] == pytest.approx(model_metrics)


@pytest.mark.slow
def test_extending_a_run_keeps_every_epoch(cube, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    before = epochs_of(run)
    run_training(tiny_config(cube, run), test=False)  # re-run first (it used to delete the history) ...
    run_training(tiny_config(cube, run, epochs=3), test=False)  # ... then extend with --max-epochs 3
    after = epochs_of(run)
    assert list(after.index) == [0, 1, 2]
    pd.testing.assert_series_equal(after.loc[[0, 1]], before)
    assert load_model(run / "model.pt")[1]["config"]["trainer"]["max_epochs"] == 3


def test_metrics_history_replaces_rows_from_the_first_new_step(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/objective\n0,2,0.5\n1,5,0.4\n2,8,0.3\n,bad\n")  # epoch 2 after the checkpoint
    with pytest.warns(UserWarning, match="1 damaged row"):
        log = _RunMetrics(path, resume=True)
    log.log_metrics({"train/objective": torch.tensor(0.25), "epoch": 2}, step=8)  # epoch 2 done again
    log.save()
    df = pd.read_csv(path)
    assert df["step"].tolist() == [2, 5, 8]
    assert df["train/objective"].tolist() == pytest.approx([0.5, 0.4, 0.25])
    assert log.last_values() == pytest.approx({"train/objective": 0.25})
    fresh = _RunMetrics(path, resume=False)  # a run started over: the old history goes
    fresh.log_metrics({"train/objective": 1.0, "epoch": 0}, step=2)
    fresh.save()
    assert pd.read_csv(path)["train/objective"].tolist() == [1.0]


# --- defect 3: never train on, nor save, non-finite values -------------------------------------------------


@pytest.mark.slow
def test_non_finite_loss_stops_training_and_saves_no_model(cube, tmp_path, monkeypatch):
    original = S2PretrainLoss.forward
    calls = []

    def poisoned(self, *args, **kwargs):  # what an inf or 1e30 slipping past every mask does to the loss
        out = original(self, *args, **kwargs)
        calls.append(1)
        if self.training and len(calls) >= 2:
            out.total = out.total * float("inf")
        return out

    monkeypatch.setattr(S2PretrainLoss, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainError, match=r"training stopped: the training loss is (nan|inf) at epoch 0, step 1; "
                                         r"no model was saved from it\. Likely cause: non-finite or extreme values "
                                         r".*Fix: check the cubes with `latentcube validate`"):
        run_training(tiny_config(cube, run, epochs=1), test=False)
    assert not (run / "model.pt").exists()
    assert not (run / "checkpoints" / "last.ckpt").exists()


def test_non_finite_weight_stops_training(tmp_path):
    task = AutoencoderTask(sensor_model_config("s2", SMALL), torch.nn.L1Loss(), OptimConfig())
    task.on_train_batch_end(None, None, 0)  # all finite: nothing happens
    with torch.no_grad():
        task.model.decoder.linear.weight[0, 0] = float("nan")
    with pytest.raises(TrainError, match=r"1 weight tensor\(s\) became non-finite \(model\.decoder\.linear\.weight\) "
                                         r"at epoch 0, step 0"):
        task.on_train_batch_end(None, None, 0)


def test_a_nan_model_is_never_written(tmp_path):
    task = AutoencoderTask(sensor_model_config("s2", SMALL), torch.nn.L1Loss(), OptimConfig())
    path = tmp_path / "model.pt"
    save_model(path, task.model, normalization=Normalization())
    good = path.read_bytes()
    with torch.no_grad():
        next(task.model.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteModelError, match=rf"refusing to write {path}: 1 of \d+ weight tensors hold NaN or "
                                                  r"infinity .*Fix:"):
        save_model(path, task.model, normalization=Normalization())
    assert path.read_bytes() == good  # the previous model file is kept


@pytest.mark.slow
@pytest.mark.parametrize("value", [float("inf"), 1e30])
def test_extreme_values_in_a_cube_never_give_a_nan_model(cube, tmp_path, value):
    """inf and 1e30 reflectances on 4 dates of the whole training strip: masked or refused at read time
    (then training works or says why), or stopped by the guard; never a NaN model."""
    from latentcube.cube import open_cube, save_cube

    ds = open_cube(cube).load()
    s2 = ds["s2"].transpose("time", "band", "y", "x").values.copy()
    s2[5:9, :, :, :24] = value
    ds["s2"] = (("time", "band", "y", "x"), s2, ds["s2"].attrs)
    bad = save_cube(ds, tmp_path / "bad.zarr")
    run = tmp_path / "run"
    try:
        run_training(tiny_config(bad, run, epochs=1), test=False)
    except TrainError as err:
        assert "training stopped" in str(err)
        assert not (run / "model.pt").exists()
    except Exception as err:  # refused at read time is fine too, as long as it says why
        assert "Fix" in str(err), err
        assert not (run / "model.pt").exists()
    else:
        model, _ = load_model(run / "model.pt")
        assert all(torch.isfinite(p).all() for p in model.state_dict().values())


def test_cli_train_prints_the_run_not_lightning_chatter_and_names_the_held_out_split(cube, tmp_path, capsys):
    """Lightning's start-up lines (accelerators, a product tip, 100 % batch notices) are hidden during the run and
    come back after it; the run's own lines still print, and metrics of a config without a test split are
    labelled with the split they come from."""
    import logging
    import warnings

    from latentcube.cli import main

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    keep, filters_before, warnings_before = Keep(), list(logger.filters), list(warnings.filters)
    logger.addHandler(keep)
    try:
        config = tmp_path / "s2.yaml"
        config.write_text(yaml.safe_dump(to_dict(tiny_config(cube, tmp_path / "run", epochs=1))))
        with pytest.warns() as caught:
            warnings.warn("marker", UserWarning, stacklevel=1)  # pytest.warns needs one; the run's are checked below
            with pytest.raises(SystemExit) as exc:
                main(["train", "s2", "--config", str(config)])
        assert exc.value.code in (0, None)
        assert not [w for w in caught if "LeafSpec" in str(w.message) or "logging interval" in str(w.message)]
        assert any(m.startswith("data: train ") for m in seen), seen  # ours, through the same logger
        assert not [m for m in seen if m.startswith(("GPU available", "TPU available", "\N{ELECTRIC LIGHT BULB}",
                                                     "`Trainer(limit_"))], seen
        assert logger.filters == filters_before and warnings.filters == warnings_before
        seen.clear()
        logger.info("GPU available: outside a run")  # not hidden outside training
        assert seen == ["GPU available: outside a run"]
    finally:
        logger.removeHandler(keep)
    printed = capsys.readouterr()
    assert "held-out val split (the config has no test split):" in printed.out
    assert "  val/center_mae: " in printed.out and "test/" not in printed.out
    assert "LeafSpec" not in printed.err and "logging interval" not in printed.err  # the CLI prints warnings there
    with pytest.raises(SystemExit):  # a re-run resumes into the run's own checkpoint folder: no warning about it
        main(["train", "s2", "--config", str(config), "--max-epochs", "2"])
    again = capsys.readouterr()
    assert "model: " in again.out and "Checkpoint directory" not in again.err, again.err


@pytest.mark.slow
def test_training_with_dataloader_workers_does_not_hang(cube, tmp_path):
    """`num_workers >= 1` (the paper preset has 2): the workers are forked after the parent read the cubes through
    Dask, whose threaded scheduler does not survive a fork; a read in a worker used to wait forever at the first
    batch. Run in a subprocess with a timeout, so a hang fails the test instead of the suite."""
    import subprocess
    import sys

    code = (
        "import sys; from dataclasses import replace; from pathlib import Path\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_train_safety import tiny_config\n"
        "from latentcube.train import run_training\n"
        f"cfg = tiny_config(Path({str(cube)!r}), Path({str(tmp_path / 'run')!r}), epochs=1)\n"
        "cfg = replace(cfg, data=replace(cfg.data, num_workers=2))\n"
        "print(run_training(cfg, test=False)['global_step'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip().splitlines()[-1]) > 0 and (tmp_path / "run" / "model.pt").exists()


def test_a_run_that_ends_early_in_its_warm_up_is_named(cube, tmp_path):
    """The paper preset warms up over 30,000 steps: cut to a few epochs, its learning rate stays near zero. The
    warning gives the run's steps (hand count: 40 patches / 4 per batch, at most 3 batches, 2 epochs = 6) and the fix;
    a warm-up the run gets through (the area recipe: 20 steps over ~9) is not warned about."""
    import warnings
    from dataclasses import replace

    from latentcube.train.run import _warn_short_warmup

    cfg = tiny_config(cube, tmp_path / "run")  # batch 4, limit_train_batches 3, 2 epochs
    paper = replace(cfg, optim=replace(cfg.optim, lr=1e-4, warmup_steps=30_000))
    with pytest.warns(UserWarning, match=r"^this run makes about 6 optimiser steps, fewer than optim.warmup_steps "
                                         r"\(30000\): the learning rate stays in its warm-up \(at most 2e-08 instead of "
                                         r"0.0001\) for the whole run. Fix: lower optim.warmup_steps \(e.g. 1\)"):
        _warn_short_warmup(paper, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_short_warmup(replace(cfg, optim=replace(cfg.optim, warmup_steps=20)), 40)  # 6 steps: within 10x
        _warn_short_warmup(replace(paper, trainer=replace(cfg.trainer, limit_train_batches=1.0, max_epochs=1000)), 400)

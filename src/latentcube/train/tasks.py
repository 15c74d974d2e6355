"""The Lightning tasks of the stages: losses, physical-unit metrics, optimiser and schedule, freezing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from latentcube.config import ConfigError
from latentcube.constants import S1_BANDS, S2_BANDS
from latentcube.losses import (
    FusionLoss,
    FusionLossConfig,
    LossOutput,
    S1PretrainConfig,
    S1PretrainLoss,
    S2PretrainConfig,
    S2PretrainLoss,
)
from latentcube.nn import AutoencoderConfig, FusionConfig, FusionModel, SensorAutoencoder
from latentcube.nn.model_file import load_model
from latentcube.preprocess import Normalization
from latentcube.train.config import (
    OptimConfig,
    TrainConfig,
    TrainError,
    _merge,
    normalization_of,
    sensor_model_config,
)

#: Parameter-name suffixes of the linear code paths (``OptimConfig.linear_lr_factor``).
LINEAR_PATH_PARAMS = ("encoder.patch_linear.weight", "decoder.linear.weight", "decoder.linear.bias")


def _configure_optim(module: L.LightningModule, params: list[torch.nn.Parameter], optim: OptimConfig):
    trainable = {id(p) for p in params}
    linear = [p for name, p in module.named_parameters() if id(p) in trainable and name.endswith(LINEAR_PATH_PARAMS)]
    linear_ids = {id(p) for p in linear}
    rest = [p for p in params if id(p) not in linear_ids]
    groups = [{"params": rest, "lr": optim.lr}]
    if linear:
        groups.append({"params": linear, "lr": optim.lr * optim.linear_lr_factor})
    opt = torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay, fused=True)
    warmup = torch.optim.lr_scheduler.LinearLR(
        opt, start_factor=optim.warmup_start_factor, end_factor=1.0, total_iters=max(optim.warmup_steps, 1)
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=optim.plateau_factor, patience=optim.plateau_patience, min_lr=optim.min_lr
    )
    return [opt], [
        {"scheduler": warmup, "interval": "step", "frequency": 1},
        {"scheduler": plateau, "interval": "epoch", "monitor": optim.monitor, "reduce_on_plateau": True},
    ]


class _StageTask(L.LightningModule):
    """Shared logging, seeding and optimisation for both stages."""

    def __init__(self, optim: OptimConfig, seed: int, physical_scale: Mapping[str, list[float]]) -> None:
        super().__init__()
        self.optim = optim
        self.seed = int(seed)
        # Per-band factor turning a normalised absolute error into physical units (reflectance, dB).
        self.physical_scale = {k: torch.tensor(v, dtype=torch.float32) for k, v in physical_scale.items()}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Seeding per step makes dropout a function of (seed, step), so a resumed run continues exactly
        # as an uninterrupted one: Lightning does not restore RNG states, and DataLoader iterators draw
        # from the global generator at points that differ between fresh and resumed runs.
        torch.manual_seed(self.seed * 1_000_003 + self.global_step)

    def _log_parts(self, stage: str, out: LossOutput, batch_size: int) -> None:
        self.log(f"{stage}/objective", out.total.detach(), on_step=False, on_epoch=True, batch_size=batch_size,
                 sync_dist=True, prog_bar=stage == "val")
        for name, value in out.parts.items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, batch_size=batch_size, sync_dist=True,
                     prog_bar=stage == "val" and name == "center_mae")

    def _physical_center_mae(self, sensor: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t, p = target.shape[1] // 2, target.shape[-1] // 2
        err = (pred[:, t, :, p, p].float() - target[:, t, :, p, p].float()).abs() * self.physical_scale[sensor].to(pred.device)
        valid = torch.isfinite(err)
        return torch.where(valid, err, 0).sum() / valid.sum().clamp(min=1)

    def configure_optimizers(self):
        return _configure_optim(self, [p for p in self.parameters() if p.requires_grad], self.optim)

    def _step(self, batch: Mapping[str, torch.Tensor], stage: str) -> LossOutput:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train").total
        # All ranks decide together, so that under DDP no rank waits for one that stopped.
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach())), all=True):
            raise TrainError(self._non_finite(f"the training loss is {float(loss.detach())}"))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # One device sync for all tensors; the names are looked up only when something is wrong.
        params = [p for p in self.parameters() if p.requires_grad]
        if params and not bool(torch.stack([torch.isfinite(p.detach()).all() for p in params]).all()):
            bad = [n for n, p in self.named_parameters() if p.requires_grad and not torch.isfinite(p.detach()).all()]
            shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
            raise TrainError(self._non_finite(f"{len(bad)} weight tensor(s) became non-finite ({shown})"))

    def _non_finite(self, what: str) -> str:
        return (
            f"training stopped: {what} at epoch {self.current_epoch}, step {self.global_step}; no model was saved "
            "from it. Likely cause: non-finite or extreme values (inf, 1e30) in the training cubes that no mask "
            "caught, or a learning rate too high. Fix: check the cubes with `latentcube validate` and mask or "
            "remove those values (or lower optim.lr), then train again"
        )

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)


class AutoencoderTask(_StageTask):
    """Stage 1: one sensor autoencoder trained on its own patches."""

    def __init__(self, model_config: AutoencoderConfig, loss: torch.nn.Module, optim: OptimConfig, *, seed: int = 0,
                 physical_scale: Mapping[str, list[float]] | None = None) -> None:
        super().__init__(optim, seed, physical_scale or {model_config.sensor: [1.0] * model_config.n_bands})
        self.model = SensorAutoencoder(model_config)
        self.loss = loss
        self.sensor = model_config.sensor

    def _step(self, batch: Mapping[str, torch.Tensor], stage: str) -> LossOutput:
        x, days = batch["x"], batch["days"]
        recon, _ = self.model(batch.get("x_in", x), days)  # x_in: masked input (data.sampling.mask_*), x the target
        out = self.loss(recon, x, days)
        self._log_parts(stage, out, x.shape[0])
        if stage == "test":
            self.log("test/center_mae_physical", self._physical_center_mae(self.sensor, recon, x), batch_size=x.shape[0],
                     sync_dist=True)
        return out


class FusionTask(_StageTask):
    """Stage 2: fusion layers on frozen sensor encoders/decoders (no gradients, eval mode)."""

    def __init__(self, sensors: Mapping[str, SensorAutoencoder], fusion_config: FusionConfig, loss: torch.nn.Module,
                 optim: OptimConfig, *, seed: int = 0, physical_scale: Mapping[str, list[float]] | None = None) -> None:
        super().__init__(optim, seed, physical_scale or {n: [1.0] * m.config.n_bands for n, m in sensors.items()})
        self.model = FusionModel(dict(sensors), fusion_config)
        self.model.freeze_sensor_models()
        self.loss = loss
        sensors = getattr(getattr(loss, "config", None), "sensors", {})
        self._sensor_weights = [float(sensors[n].weight) if n in sensors else 1.0 for n in self.model.sensor_names]

    def configure_optimizers(self):
        return _configure_optim(self, list(self.model.fusion_parameters()), self.optim)

    def _selection_centre_mae(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Model selection in fusion uses the centre pixel (paper §III-C): the mean over sensors, each
        weighted by its weight in the fusion loss (equal weights, the paper's: the plain mean). Without
        the weights a down-weighted sensor would still pick the epoch (S1's normalised error is ~15x S2's)."""
        maes = torch.stack([parts[f"{n}/center_mae"] for n in self.model.sensor_names])
        w = torch.tensor(self._sensor_weights, dtype=maes.dtype, device=maes.device)
        return (maes * w).sum() / w.sum()

    def _step(self, batch: Mapping[str, torch.Tensor], stage: str) -> LossOutput:
        inputs = {name: batch[name] for name in self.model.sensor_names}
        days = batch["days"]
        out_model = self.model({n: batch.get(f"{n}_in", x) for n, x in inputs.items()}, days)  # masked input, if any
        out = self.loss(out_model.reconstructions, inputs, days)
        out.parts["center_mae"] = self._selection_centre_mae(out.parts)
        self._log_parts(stage, out, days.shape[0])
        if stage == "test":
            for name in self.model.sensor_names:
                self.log(f"test/{name}/center_mae_physical",
                         self._physical_center_mae(name, out_model.reconstructions[name], inputs[name]),
                         batch_size=days.shape[0], sync_dist=True)
        return out


def loss_module(cfg: TrainConfig) -> torch.nn.Module:
    if cfg.stage == "s1":
        return S1PretrainLoss(_merge(S1PretrainConfig(), cfg.loss, S1PretrainConfig, "loss"))
    if cfg.stage == "s2":
        return S2PretrainLoss(_merge(S2PretrainConfig(), cfg.loss, S2PretrainConfig, "loss"))
    return FusionLoss(_merge(FusionLossConfig(), cfg.loss, FusionLossConfig, "loss"))


def model_bands(model: SensorAutoencoder | FusionModel) -> dict[str, tuple[str, ...]]:
    """The band order each sensor of ``model`` reads: ``{"s2": (...)}``, or both sensors for fusion."""
    if isinstance(model, FusionModel):
        return {name: tuple(m.config.band_names) for name, m in model.sensors.items()}
    return {model.config.sensor: tuple(model.config.band_names)}


PHYSICAL_UNITS = {"s2": "reflectance", "s1": "dB"}


def _physical_scale(norm: Normalization, sensors: Mapping[str, tuple[str, ...]]) -> dict[str, list[float]]:
    """Per band, the factor turning a normalised absolute error into physical units: (hi − lo) of the
    linear normalisation (reflectance for S2, dB for S1, where the scaling is linear in dB)."""
    tables = {"s2": norm.s2, "s1": norm.s1_db}
    return {s: [float(tables[s][b][1] - tables[s][b][0]) for b in bands] for s, bands in sensors.items()}


def build_task(cfg: TrainConfig, *, base_dir: Path | None = None) -> tuple[_StageTask, Normalization]:
    """The Lightning task of a config (fusion: loads the stage-1 model files)."""
    norm = normalization_of(cfg)
    base = base_dir or Path.cwd()
    if cfg.stage in ("s1", "s2"):
        mcfg = sensor_model_config(cfg.stage, cfg.model)
        task = AutoencoderTask(mcfg, loss_module(cfg), cfg.optim, seed=cfg.seed,
                               physical_scale=_physical_scale(norm, {cfg.stage: mcfg.band_names}))
        return task, norm
    sensors: dict[str, SensorAutoencoder] = {}
    for name in ("s1", "s2"):
        if name not in cfg.checkpoints:
            raise ConfigError(f"fusion needs checkpoints.{name}: the stage-1 {name} model file (model.pt)")
    for name, path in cfg.checkpoints.items():
        p = Path(path) if Path(path).is_absolute() else base / path
        if not p.exists():
            raise ConfigError(f"checkpoints.{name} ({p}) does not exist: fusion trains on the stage-1 models. Fix: "
                              f"train that stage first (`latentcube train {name} --config {name}.yaml`), or set "
                              f"checkpoints.{name} to its model.pt")
        model, meta = load_model(p)
        if meta["kind"] != "autoencoder":
            raise ConfigError(f"checkpoints.{name} ({p}) holds a {meta['kind']} model, not a sensor autoencoder")
        _check_sensor_bands(name, p, tuple(model.config.band_names))
        saved = Normalization.from_dict(meta["normalization"])
        if saved.to_dict() != norm.to_dict():
            raise ConfigError(f"checkpoints.{name} was trained with another normalisation; use the same for fusion")
        sensors[name] = model
    windows = {name: (m.config.patch_size, m.config.n_dates) for name, m in sensors.items()}
    if len(set(windows.values())) > 1:
        seen = ", ".join(f"checkpoints.{n} ({cfg.checkpoints[n]}) {w[0]} px x {w[1]} dates" for n, w in windows.items())
        raise ConfigError(f"the sensor models fuse one window, but they were trained on different ones: {seen}. Fix: "
                          "retrain the stages with the same model: {n_dates, patch_size} and data.sampling: {n_frames, "
                          "patch} (a sensor with fewer dates sets them for all), and give fusion.yaml the same window")
    # Order matters for the fused token: S1 then S2 (then any further sensor).
    sensors = {k: sensors[k] for k in sorted(sensors, key=lambda n: (n != "s1", n != "s2", n))}
    fcfg = _merge(FusionConfig(), cfg.model, FusionConfig, "model (fusion)")
    task = FusionTask(sensors, fcfg, loss_module(cfg), cfg.optim, seed=cfg.seed,
                      physical_scale=_physical_scale(norm, {n: m.config.band_names for n, m in sensors.items()}))
    return task, norm


_SENSOR_BANDS = {"s1": S1_BANDS, "s2": S2_BANDS}


def _check_sensor_bands(name: str, path: Path, bands: tuple[str, ...]) -> None:
    """A stage-1 model file given for the wrong sensor (e.g. s1 and s2 swapped) is named with the fix,
    instead of failing later on a missing band (``KeyError: 'B02'``)."""
    expected = _SENSOR_BANDS.get(name)
    if expected is None or set(bands) <= set(expected):
        return
    other = next((k for k, v in _SENSOR_BANDS.items() if k != name and set(bands) <= set(v)), None)
    what = f"a {other} model" if other else "a model"
    raise ConfigError(
        f"checkpoints.{name} ({path}) is {what} of bands {', '.join(bands)}, not a {name} model "
        f"({', '.join(expected)}). Fix: set checkpoints.{name} to the model.pt of `latentcube train {name}`"
        + (" (the s1 and s2 files look swapped)" if other else ""))

"""One training run: resume checks, the Lightning Trainer, and the files it leaves (model, config, test metrics)."""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from latentcube.config import ConfigError, from_dict, to_dict
from latentcube.files import atomic_write_text
from latentcube.heap import grow_heap_in_large_steps
from latentcube.model_card import WARM_START_FILE
from latentcube.nn.model_file import save_model
from latentcube.process_state import restored_process_state
from latentcube.train.checkpoints import _SafeCheckpointIO, load_checkpoint
from latentcube.train.config import TrainConfig, TrainerConfig, normalization_of
from latentcube.train.data import CubeDataModule
from latentcube.train.metrics import _RunMetrics, _tensorboard
from latentcube.train.tasks import PHYSICAL_UNITS, _StageTask, build_task, model_bands
from latentcube.train.warmstart import warm_start


def _precision(cfg: TrainerConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        return {k: v for key, value in d.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def _check_resumable(out: Path, cfg: TrainConfig) -> None:
    """A re-run resumes ``out``'s checkpoint only with the config it was started with (``trainer`` settings
    such as ``max_epochs`` may change: extending a run is what resuming is for; so may ``data.num_workers``,
    which changes how batches are read, not which). Anything else would
    resume different data, model or loss silently, or fail deep in Lightning on mismatched weights."""
    import yaml

    previous_file = out / "config.yaml"
    if not (out / "checkpoints" / "last.ckpt").exists() or not previous_file.exists():
        return
    saved = yaml.safe_load(previous_file.read_text(encoding="utf-8")) or {}
    try:  # through the dataclasses: a field added by a later version compares at its default
        saved = to_dict(from_dict(TrainConfig, saved, where=str(previous_file)))
    except ConfigError:
        pass  # a field since removed: compare as written
    previous, current = _flatten(saved), _flatten(to_dict(cfg))
    changed = sorted(k for k in previous.keys() | current.keys()
                     if not k.startswith(("trainer.", "out_dir", "data.num_workers")) and previous.get(k) != current.get(k))
    if changed:
        shown = "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"{out} holds a run started with another config ({shown}{'; ...' if len(changed) > 5 else ''}). "
            f"Fix: train into a new directory (--out), delete {out / 'checkpoints'} to start again, or restore the "
            "config to resume (only trainer settings, e.g. max_epochs, and data.num_workers may change)."
        )


def check_data(cfg: TrainConfig, *, base_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """What a run of ``cfg`` would train on, without training (``latentcube train --check``).

    Runs the band and window checks of :func:`run_training` (same errors) and returns, per split,
    ``{"patches": n, "cubes": n, "rejected": candidates rejected, "strips": True when the splits are
    strips of the same cubes (data.spatial_split)}``.
    """
    data = CubeDataModule(cfg, normalization_of(cfg), base_dir=base_dir)
    model = build_task(cfg, base_dir=base_dir)[0].model
    data.check_bands(model_bands(model))
    data.check_window(model)
    summary = {}
    for split, paths in data.split_paths.items():
        ds = data.dataset(split)
        summary[split] = {"patches": len(ds), "cubes": len(paths), "rejected": ds.n_rejected,
                          "strips": data.split_regions is not None}
    return summary


def run_training(cfg: TrainConfig, *, base_dir: Path | None = None, test: bool = True,
                 data: CubeDataModule | None = None) -> dict[str, Any]:
    """Train one stage; resume from ``out_dir/checkpoints/last.ckpt`` when present.

    Writes ``out_dir/metrics.csv`` (per-epoch loss parts of every epoch, kept across resumes and re-runs),
    TensorBoard logs with ``trainer.tensorboard``, ``model.pt`` (best validation ``optim.monitor``), ``config.yaml`` and
    ``test_metrics.json``, each atomically, and last the model card beside ``model.pt`` (``MODEL_CARD.md``,
    ``model_card.json``: :func:`latentcube.model_card.write_model_card`). Raises :class:`TrainError` for a checkpoint that is corrupt or
    holds more than data, and at the first non-finite loss or weight (nothing is saved then).
    Returns a summary dict.
    ``data``: a ``CubeDataModule`` of this ``cfg`` to train on (default: a new one), so a caller can
    go on using its indexed datasets afterwards (the demo scores on them); it must use the stage's
    normalisation.
    The caller's torch threads, TF32/determinism flags, random state and warning filters are restored on return.
    """
    with restored_process_state(), _quiet_lightning():
        return _run_training(cfg, base_dir=base_dir, test=test, data=data)


#: Lightning's start-up lines that say nothing about this run (printed by each of a run's three Trainers).
_CHATTER = ("GPU available:", "TPU available:", "HPU available:", "\N{ELECTRIC LIGHT BULB} Tip:", "`Trainer(limit_",
            "`Trainer.fit` stopped:")


def _not_chatter(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_CHATTER)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's start-up chatter and three warnings that are not the user's to act on (a deprecation
    inside Lightning, the logging interval: metrics are logged per epoch, and a re-run's checkpoint folder) for the run; every other
    message, ours included (they go through the same logger), still prints. Undone on exit."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addFilter(_not_chatter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval")
            # A re-run resumes into its own checkpoint folder by design (docs/training.md, "Resume").
            warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty")
            yield
    finally:
        logger.removeFilter(_not_chatter)


def _run_training(cfg: TrainConfig, *, base_dir: Path | None, test: bool, data: CubeDataModule | None) -> dict[str, Any]:
    import yaml

    grow_heap_in_large_steps()
    out = Path(cfg.out_dir)
    if not out.is_absolute() and base_dir is not None:
        out = Path(base_dir) / out
    cfg = replace(cfg, out_dir=str(out))
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    _check_resumable(out, cfg)
    last = out / "checkpoints" / "last.ckpt"
    resume = last.exists()
    if resume:  # refuse a corrupt or hostile checkpoint now, not after indexing the data
        load_checkpoint(last)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    task, norm = build_task(cfg, base_dir=base_dir)
    if data is None:
        data = CubeDataModule(cfg, norm, base_dir=base_dir)
    elif data.norm.to_dict() != norm.to_dict() or data.cfg.stage != cfg.stage:
        raise ConfigError("run_training: the data module given was built for another stage or normalisation")
    data.check_bands(model_bands(task.model))
    data.check_window(task.model)
    pixel_size = data.pixel_size_m()
    patches = {split: len(data.dataset(split)) for split in ("train", "val")}
    rank_zero_info("data: " + ", ".join(f"{split} {n} patches from {len(data.split_paths[split])} cube(s)"
                                        for split, n in patches.items())
                   + (" (strips of the same cubes: data.spatial_split)" if data.split_regions is not None else ""))
    _warn_short_warmup(cfg, patches["train"])
    if not resume and warm_start(task, data, cfg) is not None and not _distributed(cfg):  # resume: weights from the checkpoint
        _save_warm_start(task, data, cfg, out / WARM_START_FILE)

    metrics_log = _RunMetrics(out / "metrics.csv", resume=resume)
    trainer, checkpoint = _trainer(cfg, out, metrics_log)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LightningDataModule.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen sensors, by design
        trainer.fit(task, datamodule=data, ckpt_path=last if resume else None, weights_only=True)
    summary: dict[str, Any] = {"out_dir": str(out), "epochs": trainer.current_epoch, "global_step": trainer.global_step,
                               "patches": patches}
    if trainer.global_rank != 0:
        return summary

    # The run's files: the best model (the warm start competes: training must beat it), then test metrics.
    best_path = checkpoint.best_model_path or str(last)
    if best_path and Path(best_path).exists():
        task.load_state_dict(load_checkpoint(best_path)["state_dict"])
    start = out / WARM_START_FILE
    if start.exists():
        saved = torch.load(start, map_location="cpu", weights_only=True)
        best = checkpoint.best_model_score
        if best is None or float(saved["score"]) <= float(best):
            task.load_state_dict(saved["state_dict"])
            best_path = str(start)
            rank_zero_info(f"{cfg.optim.monitor}: the warm start ({float(saved['score']):.4g}) was not improved on by "
                           f"training ({'-' if best is None else f'{float(best):.4g}'}); model.pt keeps the warm start "
                           "(common on little data; on one small area more epochs rarely change it: docs/method.md, 'Training "
                           "length')")
    summary["best_checkpoint"] = best_path
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    # A re-run of a finished run trains nothing and logs nothing: its model file keeps the run's metrics.
    metrics = metrics or metrics_log.last_values()
    summary["model"] = str(save_model(out / "model.pt", task.model, normalization=norm, config=cfg,
                                      metrics=metrics, pixel_size_m=pixel_size))
    if test:
        summary["test_metrics"] = _test(task, data, cfg.trainer, out)
    # Last: the card reads metrics.csv and test_metrics.json.
    from latentcube.model_card import write_model_card

    summary["model_card"] = str(write_model_card(out / "model.pt", base_dir=base_dir)[0])
    return summary


def _warn_short_warmup(cfg: TrainConfig, n_train: int) -> None:
    """Warn when the run ends early in its learning-rate warm-up (the paper preset warms up over 30,000 steps): the
    rate then stays below a tenth of ``optim.lr`` and a short run barely moves the weights."""
    t = cfg.trainer
    per_epoch, lim = math.ceil(n_train / cfg.data.batch_size), t.limit_train_batches
    per_epoch = min(per_epoch, lim) if isinstance(lim, int) else math.ceil(per_epoch * lim)  # Lightning: int = batches
    steps = per_epoch * t.max_epochs if t.max_steps < 0 else min(t.max_steps, per_epoch * t.max_epochs)
    if 0 < steps * 10 < cfg.optim.warmup_steps:  # the rate never exceeds a tenth of optim.lr
        warnings.warn(f"this run makes about {steps} optimiser steps, fewer than optim.warmup_steps "
                      f"({cfg.optim.warmup_steps}): the learning rate stays in its warm-up (at most "
                      f"{cfg.optim.lr * steps / cfg.optim.warmup_steps:.2g} instead of {cfg.optim.lr:g}) for the whole run. "
                      f"Fix: lower optim.warmup_steps (e.g. {max(steps // 10, 1)}) for a short run, or train longer.",
                      UserWarning, stacklevel=3)


def _distributed(cfg: TrainConfig) -> bool:
    t = cfg.trainer
    return t.num_nodes > 1 or str(t.devices) not in ("1", "auto") or "ddp" in str(t.strategy)


def _save_warm_start(task: _StageTask, data: CubeDataModule, cfg: TrainConfig, path: Path) -> None:
    """Score the warm-started model on the monitored validation metric and keep it as a candidate best.

    On small data a few optimiser steps can move a good linear start the wrong way; best-checkpoint
    selection then keeps the warm start instead of the least bad epoch."""
    tcfg = cfg.trainer
    scorer = L.Trainer(accelerator=tcfg.accelerator, devices=1, precision=_precision(tcfg), logger=False,
                       enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                       limit_val_batches=tcfg.limit_val_batches, deterministic=not torch.cuda.is_available() or "warn")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        results = scorer.validate(task, datamodule=data, verbose=False)
    score = results[0].get(cfg.optim.monitor) if results else None
    if score is None:
        return
    tmp = path.with_suffix(".tmp")  # atomic: a kill mid-write must not leave a half file to compare against
    torch.save({"score": float(score), "state_dict": {k: v.detach().cpu().clone() for k, v in task.state_dict().items()}},
               tmp)
    tmp.replace(path)


def _trainer(cfg: TrainConfig, out: Path, metrics_log: _RunMetrics) -> tuple[L.Trainer, ModelCheckpoint]:
    """The run's Lightning Trainer and its best-checkpoint callback (``checkpoints/best.ckpt``)."""
    ckpt_dir = out / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.optim.monitor, mode="min",
                                 save_top_k=1, enable_version_counter=False)
    # A second, unmonitored callback writes last.ckpt every epoch: Lightning 2.6's save_last refreshes
    # last.ckpt only when a new best is saved, which would resume from a stale epoch.
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    tcfg = cfg.trainer
    devices: Any = tcfg.devices if tcfg.devices == "auto" else int(tcfg.devices)
    trainer = L.Trainer(
        default_root_dir=out,
        accelerator=tcfg.accelerator,
        devices=devices,
        num_nodes=tcfg.num_nodes,
        strategy=tcfg.strategy,
        precision=_precision(tcfg),
        max_epochs=tcfg.max_epochs,
        max_steps=tcfg.max_steps,
        gradient_clip_val=cfg.optim.grad_clip or None,
        limit_train_batches=tcfg.limit_train_batches,
        limit_val_batches=tcfg.limit_val_batches,
        log_every_n_steps=tcfg.log_every_n_steps,
        logger=[metrics_log, *_tensorboard(out, tcfg)],
        plugins=[_SafeCheckpointIO()],
        callbacks=[checkpoint, latest, LearningRateMonitor(logging_interval="epoch")],
        deterministic=not torch.cuda.is_available() or "warn",
        enable_progress_bar=tcfg.enable_progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # BlockShuffleSampler shards by rank itself
        num_sanity_val_steps=0,
    )
    return trainer, checkpoint


def _test(task: _StageTask, data: CubeDataModule, tcfg: TrainerConfig, out: Path) -> dict[str, Any]:
    """Scores the (best) model on the test split, or val when there is none; writes ``test_metrics.json``."""
    test_trainer = L.Trainer(accelerator=tcfg.accelerator, devices=1, precision=_precision(tcfg), logger=False,
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    metrics: dict[str, Any] = {k: float(v) for k, v in test_trainer.test(task, datamodule=data, verbose=False)[0].items()}
    metrics["split"] = "test" if data.split_paths.get("test") else "val"
    metrics["units"] = {s: PHYSICAL_UNITS.get(s, "normalised") for s in task.physical_scale}
    atomic_write_text(out / "test_metrics.json", json.dumps(metrics, indent=2))
    return metrics

"""Training settings: the stage config dataclasses (YAML), their loading and strict merging, and the error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from latentcube.config import ConfigError, Range, check_ranges, from_dict, load_yaml, to_dict
from latentcube.errors import LatentcubeError
from latentcube.nn import AutoencoderConfig, s1_config, s2_config
from latentcube.preprocess import Normalization

Stage = Literal["s1", "s2", "fusion"]


class TrainError(LatentcubeError, RuntimeError):
    """Training cannot go on: a checkpoint that is corrupt or not data only, a non-finite loss or weight."""


@dataclass(frozen=True)
class DataConfig:
    """Which cubes, how they are split and how patches are drawn."""

    cube_dir: str | None = None
    """Directory whose ``*.zarr`` cubes are used (alternative or addition to ``cubes``)."""
    cubes: tuple[str, ...] = ()
    """Explicit cube paths."""
    plan: str | None = None
    """Site plan CSV (``cube_id``, ``split``) giving each cube's split."""
    splits: dict[str, tuple[str, ...]] | None = None
    """Explicit split lists of cube ids (file stems); used when no plan is given."""
    spatial_split: dict[str, float] | None = None
    """Instead of a plan or split lists: hold out strips of every cube, e.g. ``{val: 0.2}`` or ``{val: 0.2,
    test: 0.2}`` (shares of the extent along ``spatial_split_axis``; train gets the rest, west/north first).
    Patches never cross strips, so no pixel is in two splits. For one area of interest; with several
    cubes, cube-level splits (plan or lists) test generalisation to new places better."""
    spatial_split_axis: str = "x"
    """``x``: strips of columns (train west, then val, then test); ``y``: strips of rows (north first)."""
    batch_size: int = 64
    """Patches per optimisation step (per device)."""
    num_workers: int = 0
    """DataLoader worker processes (each keeps its own block cache)."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """Overrides of the paper's sampling scheme for the stage (``SamplingConfig`` fields)."""

    def __post_init__(self) -> None:
        check_ranges(self, batch_size=Range(1, 65536), num_workers=Range(0, 256))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then plateau reduction; defaults from the authors' public code."""

    lr: float = 1e-4
    weight_decay: float = 1.5e-4
    warmup_steps: int = 30_000
    """Linear warm-up from ``lr * warmup_start_factor`` (authors: 30,000 steps from 0.001)."""
    warmup_start_factor: float = 0.001
    plateau_factor: float = 0.35
    plateau_patience: int = 5
    min_lr: float = 1.5e-6
    grad_clip: float = 1.0
    """Gradient-norm clipping (our default; the paper does not state one)."""
    monitor: str = "val/center_mae"
    """Validation metric for the plateau schedule and best-checkpoint selection (authors: centre MAE)."""
    linear_lr_factor: float = 1.0
    """Learning-rate factor of the linear code paths (encoder ``patch_linear``, decoder ``linear``). Use
    ~0.1 with ``warm_start: pca``: the paths then start near their optimum and full-size steps only add
    noise (docs/training.md)."""

    def __post_init__(self) -> None:
        check_ranges(self, lr=Range(0, 1, lo_open=True), weight_decay=Range(0, 1), warmup_steps=Range(0),
                     warmup_start_factor=Range(0, 1, lo_open=True), plateau_factor=Range(0, 1, True, True),
                     plateau_patience=Range(0), min_lr=Range(0, 1), grad_clip=Range(0), linear_lr_factor=Range(0))


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning Trainer settings."""

    max_epochs: int = 100
    max_steps: int = -1
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    """``auto``: bf16 mixed precision on a CUDA GPU, float32 on CPU."""
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    tensorboard: bool = False
    """Also write TensorBoard logs to ``out_dir/tensorboard`` (needs ``pip install latentcube[tensorboard]``);
    ``metrics.csv`` is always written."""

    def __post_init__(self) -> None:
        check_ranges(self, max_epochs=Range(1, 1_000_000), max_steps=Range(1, also=(-1,)), num_nodes=Range(1),
                     limit_train_batches=Range(0, lo_open=True), limit_val_batches=Range(0), log_every_n_steps=Range(1))


@dataclass(frozen=True)
class ContextCodeConfig:
    """``warm_start_context``: the last ``dims`` latent directions start as the mean of the pixel's code
    over its ``px x px`` neighbourhood (s1/s2 with ``warm_start: pca``; ``nn.linear_init.context_projection``).
    0 = the plain per-date PCA code (the paper preset's behaviour)."""

    dims: int = 0
    px: int = 3
    #: share of each of those directions read from the neighbourhood mean (the rest: the pixel's own code)
    share: float = 1.0

    def __post_init__(self) -> None:
        check_ranges(self, dims=Range(0), px=Range(3, 15), share=Range(0, 1, lo_open=True))
        if self.px % 2 == 0:
            raise ConfigError(f"warm_start_context.px must be odd (a centred neighbourhood), got {self.px}")


@dataclass(frozen=True)
class TrainConfig:
    """One training stage. YAML files in ``configs/`` serialise this; unknown keys are errors."""

    stage: Stage
    out_dir: str
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of the sensor preset (``AutoencoderConfig``) or of ``FusionConfig`` (fusion)."""
    loss: dict[str, Any] = field(default_factory=dict)
    """Overrides of the stage's loss config (``S1PretrainConfig``, ``S2PretrainConfig``, ``FusionLossConfig``)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoints: dict[str, str] = field(default_factory=dict)
    """Fusion only: stage-1 model files per sensor, e.g. ``{s1: runs/s1/model.pt, s2: runs/s2/model.pt}``."""
    normalization: dict[str, Any] | None = None
    """Normalisation (``Normalization.to_dict()``); default: the documented fixed bounds."""
    warm_start: Literal["pca", "none"] = "none"
    """``pca``: before the first step (not on resume), fit the linear code paths to up to
    ``warm_start_patches`` training patches (``nn.linear_init``): s1/s2 a weighted per-date PCA with the
    centre weighted as the loss weighs it (``centre_emphasis``), fusion the loss-weighted linear code of
    the sensor latents. Off by default: it wins on the reconstruction objective but gives more
    spectrum-like embeddings (docs/training.md)."""
    warm_start_patches: int = 2000
    warm_start_context: ContextCodeConfig = field(default_factory=ContextCodeConfig)
    """Field-level context dimensions of the s1/s2 warm start (``ContextCodeConfig``; docs/training.md)."""
    licence: str | None = None
    """Licence of the trained model, recorded in its model card (``MODEL_CARD.md``), e.g. ``CC-BY-4.0``."""

    def __post_init__(self) -> None:
        check_ranges(self, seed=Range(0, 2**32 - 1), warm_start_patches=Range(1))


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a stage YAML; keyword overrides replace top-level fields (e.g. ``out_dir``)."""
    cfg = load_yaml(TrainConfig, path)
    return replace(cfg, **overrides) if overrides else cfg


def _merge(base: Any, overrides: Mapping[str, Any], cls: type, where: str) -> Any:
    data = to_dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return from_dict(cls, data, where=where)


def sensor_model_config(stage: str, overrides: Mapping[str, Any]) -> AutoencoderConfig:
    """The preset of sensor ``stage`` with config overrides applied (strict)."""
    base = {"s1": s1_config, "s2": s2_config}[stage]()
    return _merge(base, overrides, AutoencoderConfig, f"model ({stage})")


def normalization_of(cfg: TrainConfig) -> Normalization:
    return Normalization.from_dict(cfg.normalization) if cfg.normalization else Normalization()

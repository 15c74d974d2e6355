"""Model summary for ``latentcube model-info``: parameter counts, latent sizes, FLOPs per embedding."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .autoencoder import SensorAutoencoder
from .fusion import FusionModel

__all__ = ["model_info", "count_flops_per_embedding", "random_inputs"]


def _counts(module: nn.Module) -> dict[str, int]:
    params = list(module.parameters())
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def _bands(model: SensorAutoencoder | FusionModel) -> dict[str, int]:
    if isinstance(model, FusionModel):
        return {name: m.config.n_bands for name, m in model.sensors.items()}
    return {model.config.sensor: model.config.n_bands}


def random_inputs(
    model: SensorAutoencoder | FusionModel, *, scene: tuple[int, int, int] | None = None, batch: int = 1,
    nan_fraction: float = 0.1, seed: int = 0,
) -> tuple[Any, torch.Tensor]:
    """Random inputs with NaNs for either entry point: ``scene=(T, H, W)`` for ``encode_scene``,
    else a batch of patches for ``encode_patches``. Returns (x, days); x is a tensor or a dict by sensor."""
    gen = torch.Generator().manual_seed(seed)
    params = next(model.parameters())
    n_dates = model.n_dates if isinstance(model, FusionModel) else model.config.n_dates
    p = model.patch_size if isinstance(model, FusionModel) else model.config.patch_size
    if scene is None:
        shape, n_days = (lambda c: (batch, n_dates, c, p, p)), (batch, n_dates)
    else:
        shape, n_days = (lambda c: (scene[0], c, scene[1], scene[2])), (scene[0],)
    xs = {}
    for name, c in _bands(model).items():
        x = torch.randn(*shape(c), generator=gen)
        x[torch.rand(x.shape, generator=gen) < nan_fraction] = float("nan")
        xs[name] = x.to(device=params.device, dtype=params.dtype)
    days = torch.cumsum(1 + 20 * torch.rand(n_days, generator=gen), dim=-1).to(params.device, params.dtype)
    return (xs if isinstance(model, FusionModel) else next(iter(xs.values()))), days


def count_flops_per_embedding(
    model: SensorAutoencoder | FusionModel, *, scene: tuple[int, int, int] = (21, 64, 64)
) -> dict[str, float]:
    """FLOPs per pixel-date embedding, counted by ``FlopCounterMode`` (matmuls and convolutions only;
    elementwise ops, softmax, gathers are not counted).

    ``dense``: ``encode_scene`` on a random ``scene = (T, H, W)`` divided by T*H*W. ``patch``: one
    ``encode_patches`` call on one patch, which is what the per-patch path spends per embedding (it
    returns all 11 dates' latents, but only the centre date's is the embedding of that patch).
    """
    out = {}
    with torch.inference_mode():
        x, days = random_inputs(model, scene=scene)  # on the model's device and dtype
        with FlopCounterMode(display=False) as counter:
            model.encode_scene(x, days)
        out["dense"] = counter.get_total_flops() / (scene[0] * scene[1] * scene[2])
        x, days = random_inputs(model, batch=1)
        with FlopCounterMode(display=False) as counter:
            model.encode_patches(x, days)
        out["patch"] = float(counter.get_total_flops())
    out["patch_over_dense"] = out["patch"] / out["dense"]
    return out


def model_info(model: SensorAutoencoder | FusionModel, *, flops: bool = True,
               scene: tuple[int, int, int] = (21, 64, 64)) -> dict[str, Any]:
    """JSON-serialisable summary: parameters (total/trainable, per top-level submodule), latent sizes,
    window geometry, and FLOPs per embedding of both paths (see ``count_flops_per_embedding``)."""
    info: dict[str, Any] = {"class": type(model).__name__, "parameters": _counts(model)}
    info["parameters"]["per_submodule"] = {name: _counts(m) for name, m in model.named_children()}
    if isinstance(model, FusionModel):
        info["sensors"] = model.sensor_names
        info["latent_sizes"] = {"fused": model.latent_dim,
                                **{name: m.config.latent_dim for name, m in model.sensors.items()}}
        info["per_sensor_parameters"] = {name: {part: _counts(getattr(m, part)) for part in ("encoder", "decoder")}
                                         for name, m in model.sensors.items()}
        info["fusion_parameters"] = sum(p.numel() for p in model.fusion_parameters())
        info["patch_size"], info["n_dates"] = model.patch_size, model.n_dates
    else:
        c = model.config
        info["sensor"], info["bands"] = c.sensor, list(c.band_names) or c.n_bands
        info["latent_sizes"] = {c.sensor: c.latent_dim}
        info["patch_size"], info["n_dates"], info["receptive_field"] = c.patch_size, c.n_dates, c.receptive_field
    if flops:
        was_training = model.training
        model.eval()
        info["flops_per_embedding"] = count_flops_per_embedding(model, scene=scene)
        info["flops_scene"] = list(scene)
        model.train(was_training)
    return info

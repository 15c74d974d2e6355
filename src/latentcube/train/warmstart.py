"""``warm_start: pca``: the linear code paths fitted to training patches before the first step."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from latentcube.config import ConfigError
from latentcube.losses import weights_from_config
from latentcube.nn.linear_init import fusion_warm_start, pca_warm_start
from latentcube.train.config import TrainConfig
from latentcube.train.data import CubeDataModule
from latentcube.train.tasks import _StageTask


def warm_start(task: _StageTask, data: CubeDataModule, cfg: TrainConfig) -> dict[str, float] | None:
    """Apply ``cfg.warm_start`` to a fresh task of any stage; returns the fit's summary (None when skipped).

    Patches are read at evenly spaced indices of the training split (epoch-0 frames), so the fit is
    deterministic and independent of the shuffling seed's draw order.
    """
    if cfg.warm_start == "none":
        return None
    if cfg.warm_start != "pca":
        raise ConfigError(f"warm_start must be 'pca' or 'none', got {cfg.warm_start!r}")
    if cfg.stage == "fusion":
        if cfg.warm_start_context.dims:
            raise ConfigError("warm_start_context applies to the s1/s2 stages; for fusion set model: {context_px: 5, "
                              "context_dims: 5, context_share: 0.5} (docs/method.md, Fusion) and remove warm_start_context")
        return _fusion_warm_start(task, data, cfg)
    model = task.model
    if model.encoder.patch_linear is None or model.decoder.linear is None:
        raise ConfigError("warm_start: pca needs the linear code paths: set model: {linear_patch: true} "
                          "(and keep linear_paths: true), or warm_start: none")
    x = _training_sample(data, cfg.warm_start_patches, ("x",))["x"]
    c = model.config
    loss_cfg = task.loss.config
    wcfg = replace(loss_cfg.weights, center_weight=1.0, time_distance="index")
    weights = weights_from_config(wcfg, c.n_dates, c.patch_size, c.patch_size)
    boost = centre_emphasis(loss_cfg, weights, x)
    ctx = cfg.warm_start_context
    if ctx.dims >= c.latent_dim:
        raise ConfigError(f"warm_start_context.dims={ctx.dims} leaves no pixel-exact dimension of the "
                          f"{c.latent_dim}-d latent; use at most {c.latent_dim - 1}")
    if ctx.dims and ctx.px > c.patch_size:
        raise ConfigError(f"warm_start_context.px={ctx.px} is wider than the {c.patch_size}-px patch")
    summary = pca_warm_start(model, x, weights, centre_boost=boost, context_dims=ctx.dims, context_px=ctx.px,
                             context_share=ctx.share)
    return {**summary, "centre_boost": boost, "context_dims": float(ctx.dims)}


def _training_sample(data: CubeDataModule, n: int, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Up to ``n`` training items at evenly spaced indices (epoch-0 frames), stacked per key."""
    dataset = data.dataset("train")
    index = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), max(n, 1))).round().astype(int))
    loader = DataLoader(torch.utils.data.Subset(dataset, index.tolist()), batch_size=256, shuffle=False)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for batch in loader:
        for k in keys:
            parts[k].append(batch[k])
    return {k: torch.cat(v) for k, v in parts.items()}


def _fusion_warm_start(task: _StageTask, data: CubeDataModule, cfg: TrainConfig) -> dict[str, float]:
    """``warm_start: pca`` for fusion: the loss-weighted linear fused code of the frozen sensor latents."""
    model = task.model
    names = model.sensor_names
    sample = _training_sample(data, cfg.warm_start_patches, (*names, "days"))
    loss_sensors = task.loss.config.sensors
    weights = {}
    for name in names:
        scfg = loss_sensors[name]
        x = sample[name]
        t, p = x.shape[1], x.shape[-1]
        w = weights_from_config(replace(scfg.weights, time_distance="index"), t, p, p)
        total, norm = _valid_weight_and_centre_norm(w, x)
        a = scfg.weight * scfg.mae_weight * w / max(total, 1e-12)
        if scfg.use_sam:  # SAM of the centre spectrum, to first order (see centre_emphasis)
            a[t // 2, p // 2, p // 2] += scfg.weight * scfg.sam_weight / max(norm, 1e-6)
        weights[name] = a
    x = {name: sample[name] for name in names}
    return fusion_warm_start(model, x, sample["days"].to(torch.float32), weights)


def centre_emphasis(loss_cfg: Any, weights: torch.Tensor, x: torch.Tensor) -> float:
    """Factor on the centre pixel's weight that makes the warm start's weighted PCA follow the loss.

    The loss is ``lambda_mae * sum_e w_e |err_e| / sum_e w_e`` (over valid elements e) plus, for S2,
    ``lambda_sam * angle(centre spectrum)`` with ``angle ~ |err_perp| / |x_centre|`` for small errors.
    Per unit of error on a centre element, the MAE term weighs ``lambda_mae * w_c / sum w`` and the
    SAM term ``lambda_sam / |x_centre|``; PCA weights proportional to these first-order coefficients
    give ``1 + (lambda_sam / lambda_mae) * sum w / (w_c * mean |x_centre|)``, with ``sum w`` over the
    valid elements of an average patch. The centre-weight setting multiplies it; SSIM is left out.
    """
    boost = float(loss_cfg.weights.center_weight)
    lambda_sam, lambda_mae = float(getattr(loss_cfg, "lambda_sam", 0.0)), float(getattr(loss_cfg, "lambda_mae", 1.0))
    if lambda_sam > 0 and lambda_mae > 0:
        total, norm = _valid_weight_and_centre_norm(weights, x)
        w_c = float(weights[x.shape[1] // 2, x.shape[-1] // 2, x.shape[-1] // 2])
        boost *= 1.0 + (lambda_sam / lambda_mae) * total / (w_c * max(norm, 1e-6))
    return boost


def _valid_weight_and_centre_norm(weights: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """For patches ``x`` (N, T, C, p, p) and weights (T, p, p): the sum of the weights over the valid
    elements of an average patch, and the mean norm of the complete centre spectra (centre date)."""
    total = float((weights[None, :, None] * torch.isfinite(x)).sum() / x.shape[0])
    centre = x[:, x.shape[1] // 2, :, x.shape[-1] // 2, x.shape[-1] // 2]
    return total, float(centre[torch.isfinite(centre).all(1)].norm(dim=1).mean())

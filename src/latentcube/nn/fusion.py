"""Fusion of frozen per-sensor autoencoders into one fused embedding per pixel-date (paper §III-C).

Frozen encoders give each sensor's latent sequence over the window -> modality-specific linear
projections -> concatenation -> one day-difference attention layer -> linear -> fused latent (7-d)
-> per-sensor linear back-projections -> frozen decoders. All sensors live on the common (S2) date
axis; matching S1 acquisitions to S2 dates happens before the model. A new sensor needs only its own
autoencoder and new fusion layers.

Beyond the paper (``FusionConfig.context_px``, off in the paper preset): the fusion layers can also read,
per sensor with a linear patch code, that code averaged over the pixel's ``context_px x context_px``
neighbourhood. It is a fixed linear map of the same 15 x 15 patch (the sensor's frozen kernel convolved
with a box, ``linear_init.context_projection``), so patch and dense paths stay exact and need no wider
input; it gives the fused code field-level context that a single pixel's latents do not hold
(docs/method.md, "Recipes").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from .autoencoder import (
    DEFAULT_PIXEL_CHUNK,
    DEFAULT_TILE,
    SensorAutoencoder,
    _crop_feats,
    _tile_with_halo,
    check_wanted,
    region_bounds,
    region_tiles,
    targets_or_nan,
    wanted_targets,
)
from .blocks import DayAttentionLayer, linear
from .linear_init import context_projection
from .time_encoding import window_starts

__all__ = ["FusionConfig", "FusionModel", "FusionOutput"]


@dataclass(frozen=True)
class FusionConfig:
    """Fusion layers. ``latent_dim`` 7 is the paper's fused bottleneck; the rest are our lean defaults.

    ``proj_dim`` is the width of each sensor's projection before concatenation (token width =
    n_sensors * proj_dim), so adding a sensor adds only its projection and widens ``W_in``.
    """

    latent_dim: int = 7
    proj_dim: int = 16
    d_model: int = 32
    n_heads: int = 2
    ffn_dim: int = 64
    dropout: float = 0.1
    n_frequencies: int = 8
    min_period_days: float = 4.0
    max_period_days: float = 1461.0
    #: Side of the neighbourhood whose mean linear sensor code the fusion layers also read (odd; 0 = off,
    #: the paper's per-pixel fusion). Needs sensor models with ``linear_patch``.
    context_px: int = 0
    #: With ``warm_start: pca``: how many of the fused code's weakest directions start as read from those
    #: neighbourhood codes instead of the pixel's own latents (a two-scale fused code).
    context_dims: int = 0
    #: Share of each of those directions read from the neighbourhood code; the rest stays the pixel's own
    #: (1 = all from the neighbourhood; 0.5 = half-way between the pixel's code and its neighbourhood mean).
    context_share: float = 1.0

    def __post_init__(self) -> None:
        if self.latent_dim < 1 or self.proj_dim < 1:
            raise ValueError("latent_dim and proj_dim must be positive")
        if self.context_px < 0 or (self.context_px and (self.context_px % 2 == 0 or self.context_px < 3)):
            raise ValueError(f"context_px must be 0 (off) or an odd size >= 3, got {self.context_px}")
        top = self.latent_dim if self.context_share < 1 else self.latent_dim - 1  # keep some pixel detail
        if not 0 <= self.context_dims <= top or (self.context_dims and not self.context_px):
            raise ValueError(f"context_dims must be in 0..{top} (latent_dim={self.latent_dim}, context_share="
                             f"{self.context_share}) and needs context_px > 0, got context_dims={self.context_dims}, "
                             f"context_px={self.context_px}")
        if not 0 < self.context_share <= 1:
            raise ValueError(f"context_share must be in (0, 1], got {self.context_share}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")


@dataclass
class FusionOutput:
    """What ``FusionModel.forward`` returns (B = batch, T = dates, p = patch size)."""

    reconstructions: dict[str, Tensor]  # sensor -> (B, T, C_sensor, p, p)
    latent: Tensor  # (B, T, latent_dim): the fused embedding at every date of the patch
    sensor_latents: dict[str, Tensor]  # sensor -> (B, T, latent_sensor), frozen encoders' output


class FusionModel(nn.Module):
    """Fused encoder/decoder over named sensor autoencoders sharing patch size and window length.

    Shapes: ``forward(x, days)``: x {sensor: (B, T, C_s, p, p)}, days (B, T) -> ``FusionOutput``.
    ``encode_patches(x, days)`` -> (B, T, latent_dim). ``encode_scene(x, days)``: x {sensor:
    (T_all, C_s, H, W)}, days (T_all,) -> (T_all, latent_dim, H, W), same window convention as the
    sensor encoders (``time_encoding.window_starts``). Every sensor must be present in every call.
    """

    def __init__(self, sensors: Mapping[str, SensorAutoencoder], config: FusionConfig | None = None):
        super().__init__()
        if len(sensors) < 1:
            raise ValueError("fusion needs at least one sensor autoencoder")
        self.config = config = config or FusionConfig()
        self.sensors = nn.ModuleDict(dict(sensors))
        shapes = {(m.config.patch_size, m.config.n_dates) for m in self.sensors.values()}
        if len(shapes) != 1:
            raise ValueError(f"sensor autoencoders disagree on (patch_size, n_dates): {sorted(shapes)}")
        self.patch_size, self.n_dates = shapes.pop()
        self.project = nn.ModuleDict(
            {name: nn.Linear(m.config.latent_dim, config.proj_dim) for name, m in self.sensors.items()}
        )
        if config.context_px:
            if config.context_px > self.patch_size:
                raise ValueError(f"context_px={config.context_px} is wider than the {self.patch_size}-px patch")
            plain = [name for name, m in self.sensors.items() if m.encoder.patch_linear is None]
            if plain:
                raise ValueError(f"context_px needs sensor models with the linear patch code (linear_patch: true); "
                                 f"{plain} have none. Fix: retrain them with model: {{linear_patch: true}}, or "
                                 "set context_px: 0")
        # Neighbourhood-mean linear codes: one more token part per sensor (empty dict when off).
        self.project_context = nn.ModuleDict(
            {name: nn.Linear(m.config.latent_dim, config.proj_dim) for name, m in self.sensors.items()}
            if config.context_px else {}
        )
        self.temporal = DayAttentionLayer(
            config.proj_dim * (len(self.sensors) + len(self.project_context)), config.d_model, config.n_heads, config.ffn_dim, config.latent_dim,
            config.n_frequencies, config.min_period_days, config.max_period_days, config.dropout,
        )
        self.back_project = nn.ModuleDict(
            {name: nn.Linear(config.latent_dim, m.config.latent_dim) for name, m in self.sensors.items()}
        )
        self._frozen = False

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def sensor_names(self) -> list[str]:
        return list(self.sensors.keys())

    def freeze_sensor_models(self) -> FusionModel:
        """Freeze every sensor autoencoder (no grads, eval mode kept across ``train()``). Returns self."""
        self._frozen = True
        self.sensors.requires_grad_(False)
        self.sensors.eval()
        return self

    def train(self, mode: bool = True) -> FusionModel:
        super().train(mode)
        if self._frozen:  # frozen encoders/decoders keep eval behaviour (no dropout) during fusion training
            self.sensors.eval()
        return self

    def fusion_parameters(self) -> list[nn.Parameter]:
        """Parameters of the fusion layers only (projections, fusion transformer, back-projections)."""
        return [*self.project.parameters(), *self.project_context.parameters(), *self.temporal.parameters(),
                *self.back_project.parameters()]

    def _check_keys(self, x: Mapping[str, Tensor]) -> None:
        if set(x) != set(self.sensors):
            raise ValueError(f"expected inputs for sensors {self.sensor_names}, got {sorted(x)}")

    def _fuse_tokens(self, latents: Mapping[str, Tensor], context: Mapping[str, Tensor]) -> Tensor:
        parts = [linear(latents[name], self.project[name]) for name in self.sensors]
        parts += [linear(context[name], self.project_context[name]) for name in self.project_context]
        return torch.cat(parts, dim=-1)

    def sensor_latents(self, x: Mapping[str, Tensor], days: Tensor) -> dict[str, Tensor]:
        self._check_keys(x)
        return {name: model.encode_patches(x[name], days) for name, model in self.sensors.items()}

    def _context_kernel(self, name: str) -> Tensor:
        """The sensor's linear patch kernel averaged over ``context_px`` neighbours (frozen: recomputed)."""
        enc = self.sensors[name].encoder
        return context_projection(enc.patch_linear.weight * enc.patch_scale, self.config.context_px)

    def context_codes(self, x: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{sensor: (B, T, latent_s)}: each sensor's linear code averaged over the pixel's neighbourhood
        (empty when ``context_px`` is 0)."""
        out = {}
        for name in self.project_context:
            enc, b = self.sensors[name].encoder, x[name].shape[0]
            code = enc._linear_code(rearrange(x[name], "b t c h w -> (b t) c h w"), self._context_kernel(name))
            out[name] = rearrange(code, "(b t) l 1 1 -> b t l", b=b)
        return out

    def encode_patches(self, x: Mapping[str, Tensor], days: Tensor) -> Tensor:
        return self._encode_patches(x, days)[0]

    def _encode_patches(self, x: Mapping[str, Tensor], days: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        first = next(iter(x.values()))
        days = days.to(first.dtype)
        latents = self.sensor_latents(x, days)
        return self.temporal.forward_patches(self._fuse_tokens(latents, self.context_codes(x)), days), latents

    def decode(self, z: Tensor, days: Tensor) -> dict[str, Tensor]:
        return {name: model.decode(self.back_project[name](z), days) for name, model in self.sensors.items()}

    def forward(self, x: Mapping[str, Tensor], days: Tensor) -> FusionOutput:
        z, latents = self._encode_patches(x, days)
        return FusionOutput(self.decode(z, days), z, latents)

    def encode_scene(
        self, x: Mapping[str, Tensor], days: Tensor, *, tile: int | None = DEFAULT_TILE, pixel_chunk: int = DEFAULT_PIXEL_CHUNK,
        region: tuple[slice, slice] | None = None, wanted: Tensor | None = None,
    ) -> Tensor:
        """Dense fused embedding; see the class docstring and ``docs/method.md`` for the window convention.

        ``tile``, ``pixel_chunk``, ``region`` and ``wanted`` as in ``SensorEncoder.encode_scene`` (results
        do not depend on the first two; ``region`` embeds only those pixels, the rest is context; pixel-dates
        outside ``wanted`` are NaN and a target date no pixel of a chunk wants skips its window's rows).
        """
        self._check_keys(x)
        first = x[self.sensor_names[0]]
        n_total, _, height, width = first.shape
        if any(v.shape[0] != n_total or v.shape[-2:] != (height, width) for v in x.values()):
            raise ValueError("all sensors must share the date axis and the spatial grid")
        n, dev = self.n_dates, first.device
        days = days.to(device=dev, dtype=first.dtype)
        # Target t reads the n rows of its window start s(t), queried at position t - s(t).
        s = window_starts(n_total, n, dev)
        qpos = torch.arange(n_total, device=dev) - s
        ry0, ry1, rx0, rx1 = region_bounds(region, height, width)
        out = first.new_empty(n_total, self.latent_dim, ry1 - ry0, rx1 - rx0)
        wanted = check_wanted(wanted, n_total, ry1 - ry0, rx1 - rx0, dev)
        r = self.patch_size // 2
        for y0, y1, x0, x1 in region_tiles(height, width, tile, region):
            feats, lins, ctxs = {}, {}, {}
            for name, model in self.sensors.items():
                sub = _tile_with_halo(x[name], y0, y1, x0, x1, r)
                feats[name] = _crop_feats(model.encoder.scene_features(sub), sub.shape[-2], sub.shape[-1],
                                          y0, y1, x0, x1, r, height, width)
                lin = model.encoder.scene_linear_code(sub)
                if lin is not None:
                    lins[name] = _crop_feats(lin, sub.shape[-2], sub.shape[-1], y0, y1, x0, x1, r, height, width)
                if name in self.project_context:
                    ctx = model.encoder.scene_linear_code(sub, self._context_kernel(name))
                    ctxs[name] = _crop_feats(ctx, sub.shape[-2], sub.shape[-1], y0, y1, x0, x1, r, height, width)
            zs = []
            n_pix = (y1 - y0) * (x1 - x0)
            tile_wanted = None if wanted is None else wanted[:, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0].flatten(1)
            for p0 in range(0, n_pix, pixel_chunk):
                chunk = slice(p0, p0 + pixel_chunk)

                def fuse(targets, chunk=chunk, feats=feats, lins=lins, ctxs=ctxs):  # called at once, in this iteration
                    if targets is None:  # every target: all windows
                        return self._fuse_chunk(feats, lins, ctxs, chunk, days, None, s, qpos)
                    needed = torch.unique(s[targets])  # the wanted targets' windows; each target's index into them
                    return self._fuse_chunk(feats, lins, ctxs, chunk, days, needed,
                                            torch.searchsorted(needed, s[targets]), qpos[targets])

                zs.append(targets_or_nan(wanted_targets(tile_wanted, chunk, n_total),
                                         (n_total, min(pixel_chunk, n_pix - p0), self.latent_dim), first, fuse))
            out[:, :, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = rearrange(torch.cat(zs, dim=1), "t (h w) l -> t l h w",
                                                                          h=y1 - y0)
        return out if wanted is None else out.masked_fill_(~wanted[:, None], float("nan"))

    def _fuse_chunk(self, feats: dict[str, Tensor], lins: dict[str, Tensor], ctxs: dict[str, Tensor], chunk: slice,
                    days: Tensor, windows: Tensor | None, starts: Tensor, qpos: Tensor) -> Tensor:
        """Fused embeddings (N, P, latent) of one pixel chunk for N targets: target i is queried at
        ``qpos[i]`` in window ``starts[i]`` of ``windows`` (increasing window starts; None = all windows)."""
        n = self.n_dates
        if windows is None:
            windows = torch.arange(days.shape[0] - n + 1, device=days.device)
        rows = (windows[:, None] + torch.arange(n, device=days.device)).flatten()  # row (w, j): date w + j
        # Stage 1, per sensor: latents of every position j of every window w (rows w * n + j).
        wins = None if len(windows) == days.shape[0] - n + 1 else windows.tolist()
        latents = {name: model.encoder.temporal.forward_all_positions(feats[name][:, chunk], days, n, windows=wins)
                   .flatten(0, 1) for name, model in self.sensors.items()}
        for name, lin in lins.items():  # each row's linear code is that of its own date
            latents[name] = latents[name] + lin[rows, chunk]
        tokens = self._fuse_tokens(latents, {name: ctx[rows, chunk] for name, ctx in ctxs.items()})
        # Stage 2: one query per target over its window's fused token rows.
        return self.temporal.forward_window_queries(tokens.view(-1, n, *tokens.shape[1:]), days[rows].view(-1, n),
                                                    starts, qpos)

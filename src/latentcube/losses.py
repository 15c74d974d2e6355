"""Context-aware reconstruction losses (paper Eqs. 1-8): weighted MAE, masked SSIM, SAM, and the
Sentinel-1, Sentinel-2 and fusion objectives built from them.

One module (~575 lines) on purpose: the three objectives share the weighting, masking and reduction
conventions below, and keeping them beside their building blocks keeps those conventions in one place.

Conventions (docs/method-losses.md):

* Patches are ``(B, T, C, H, W)``: batch, dates, bands, rows, columns. The centre element is the
  centre pixel ``(H // 2, W // 2)`` on the centre date ``T // 2``.
* Targets mark invalid values with NaN (any non-finite value counts as invalid). Invalid targets are
  ignored entirely: neither their value nor the prediction at their position changes a loss value or
  its gradient. Predictions are assumed finite.
* Everything is computed in float32, whatever the input dtype (bfloat16 inputs are upcast), and
  every reduction that could divide by zero returns 0 (or SSIM 1) with a zero gradient instead.

Plain PyTorch only: no xarray, Lightning or file access here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "ContextWeightConfig",
    "SSIMConfig",
    "S1PretrainConfig",
    "S2PretrainConfig",
    "SensorLossConfig",
    "FusionLossConfig",
    "LossOutput",
    "context_weights",
    "weights_from_config",
    "weighted_mae",
    "center_mae",
    "context_mae",
    "masked_ssim",
    "spectral_angle",
    "S1PretrainLoss",
    "S2PretrainLoss",
    "FusionLoss",
]

Weighting = Literal["paper", "authors"]
TimeDistance = Literal["index", "days"]


# --------------------------------------------------------------------------------------------------
# Context weights (Eq. 1)
# --------------------------------------------------------------------------------------------------


def context_weights(
    T: int,
    H: int,
    W: int,
    *,
    alpha_s: float = 1.0,
    alpha_t: float = 1.0,
    center_weight: float = 1.0,
    days: Tensor | None = None,
    revisit_days: float | None = None,
    weighting: Weighting = "paper",
    device: torch.device | str | None = None,
) -> Tensor:
    """Context weights of every element of a ``(T, H, W)`` patch, float32.

    ``weighting="paper"`` (Eq. 1): ``w = exp(-alpha_s * d_s) * exp(-alpha_t * d_t)`` with ``d_s`` the
    Euclidean distance in pixels from ``(H // 2, W // 2)`` and ``d_t`` the distance from date
    ``T // 2``. ``weighting="authors"`` reproduces the authors' public code: spatial factor 1 at the
    centre and ``0.01 * 0.1 ** (r - 1)`` on Chebyshev ring ``r >= 1``, temporal factor ``0.1 ** d_t``
    (``alpha_s``/``alpha_t`` are then unused). In both, ``center_weight`` multiplies the single centre
    element (centre pixel on the centre date).

    ``d_t`` is the date-index distance, or, when ``days`` (``(B, T)`` day offsets per sample, any
    origin) is given, ``|days[:, t] - days[:, T // 2]| / revisit_days`` (days divided by a nominal
    revisit, so one revisit counts like one index step).

    Returns ``(T, H, W)``, or ``(B, T, H, W)`` when ``days`` is given. Unnormalised: losses divide by
    the sum over valid elements.
    """
    if min(T, H, W) < 1:
        raise ValueError(f"patch dimensions must be positive, got T={T}, H={H}, W={W}")
    if weighting not in ("paper", "authors"):
        raise ValueError(f"weighting must be 'paper' or 'authors', got {weighting!r}")
    if days is not None:
        if revisit_days is None or not revisit_days > 0:
            raise ValueError("revisit_days must be a positive number of days when days are given")
        if days.ndim != 2 or days.shape[1] != T:
            raise ValueError(f"days must be shaped (B, T={T}), got {tuple(days.shape)}")
        device = days.device
    f32 = torch.float32
    tc, hc, wc = T // 2, H // 2, W // 2
    dy = (torch.arange(H, device=device, dtype=f32) - hc)[:, None]
    dx = (torch.arange(W, device=device, dtype=f32) - wc)[None, :]
    if days is None:
        d_t = (torch.arange(T, device=device, dtype=f32) - tc).abs()  # (T,)
    else:
        d = days.to(f32)
        d_t = (d - d[:, tc : tc + 1]).abs() / float(revisit_days)  # (B, T)

    if weighting == "paper":
        spatial = torch.exp(-alpha_s * torch.sqrt(dy**2 + dx**2))
        temporal = torch.exp(-alpha_t * d_t)
    else:
        ring = torch.maximum(dy.abs(), dx.abs())
        spatial = torch.where(ring == 0, torch.ones_like(ring), 0.01 * torch.pow(0.1, ring - 1))
        temporal = torch.pow(0.1, d_t)

    w = temporal[..., :, None, None] * spatial  # (T, H, W) or (B, T, H, W)
    if center_weight != 1.0:
        scale = torch.ones_like(w)
        scale[..., tc, hc, wc] = center_weight
        w = w * scale
    return w


@dataclass(frozen=True)
class ContextWeightConfig:
    """Settings of :func:`context_weights` (defaults: issue / paper, see docs/method-losses.md)."""

    alpha_s: float = 1.0
    alpha_t: float = 1.0
    center_weight: float = 1.0
    weighting: Weighting = "paper"
    time_distance: TimeDistance = "index"
    #: Nominal revisit used to turn day offsets into steps when ``time_distance="days"``
    #: (5 days: the Sentinel-2A/B constellation revisit).
    revisit_days: float = 5.0


def weights_from_config(
    cfg: ContextWeightConfig, T: int, H: int, W: int, *, days: Tensor | None = None, device=None
) -> Tensor:
    """:func:`context_weights` for a config; ``days`` ``(B, T)`` is required iff ``time_distance="days"``."""
    if cfg.time_distance == "days":
        if days is None:
            raise ValueError("time_distance='days' needs per-sample day offsets (B, T)")
        use_days, revisit = days, cfg.revisit_days
    elif cfg.time_distance == "index":
        use_days, revisit = None, None
    else:
        raise ValueError(f"time_distance must be 'index' or 'days', got {cfg.time_distance!r}")
    return context_weights(
        T, H, W, alpha_s=cfg.alpha_s, alpha_t=cfg.alpha_t, center_weight=cfg.center_weight,
        days=use_days, revisit_days=revisit, weighting=cfg.weighting, device=device,
    )


# --------------------------------------------------------------------------------------------------
# Functional losses
# --------------------------------------------------------------------------------------------------


def _check_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Upcast to float32; return ``(pred, target with invalid set to 0, valid mask)``."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim != 5:
        raise ValueError(f"expected (B, T, C, H, W) tensors, got {pred.ndim} dimensions")
    pred = pred.float()
    target = target.float()
    valid = torch.isfinite(target)
    # Filling invalid targets (and masking pred below) keeps NaN out of both the value and the
    # backward pass: where() routes a zero gradient to the unselected branch.
    return pred, torch.where(valid, target, torch.zeros_like(target)), valid


def _broadcast_weights(weights: Tensor, shape: torch.Size) -> Tensor:
    """Weights ``(T, H, W)``, ``(B, T, H, W)`` or ``(B, T, C, H, W)`` as ``(B|1, T, C|1, H, W)``."""
    B, T, C, H, W = shape
    w = weights.float()
    if w.ndim == 3:
        w = w[None, :, None]
    elif w.ndim == 4:
        w = w[:, :, None]
    if w.ndim != 5 or w.shape[1] != T or w.shape[-2:] != (H, W) or w.shape[0] not in (1, B) or w.shape[2] not in (1, C):
        raise ValueError(f"weights {tuple(weights.shape)} do not match a (B, T, C, H, W) = {tuple(shape)} patch")
    return w


def weighted_mae(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Context-weighted MAE, a float32 scalar in the units of the data.

    For every sample ``b`` and band ``c``: ``sum(w * |pred - target|) / sum(w)`` over the valid
    (finite-target) elements of ``(T, H, W)``; then the mean over the ``(b, c)`` pairs that have a
    valid element with positive weight. Pairs with none are excluded from the mean; with no valid
    pair in the batch the result is 0 with a zero gradient.

    ``pred``/``target``: ``(B, T, C, H, W)``; ``weights``: ``(T, H, W)``, ``(B, T, H, W)`` or
    ``(B, T, C, H, W)``, non-negative.
    """
    pred, target, valid = _check_pair(pred, target)
    w = _broadcast_weights(weights, pred.shape).to(pred.device) * valid
    err = torch.where(valid, pred - target, torch.zeros_like(pred)).abs()
    num = (w * err).sum(dim=(1, 3, 4))  # (B, C)
    den = w.expand_as(err).sum(dim=(1, 3, 4))
    has = den > 0
    per_pair = torch.where(has, num / den.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(num))
    return per_pair.sum() / has.sum().clamp_min(1)


def _center_mask(shape: torch.Size, device) -> Tensor:
    """``(T, H, W)`` float mask that is 1 only at the centre element."""
    _, T, _, H, W = shape
    m = torch.zeros(T, H, W, device=device)
    m[T // 2, H // 2, W // 2] = 1.0
    return m


def center_mae(pred: Tensor, target: Tensor) -> Tensor:
    """Unweighted MAE at the centre pixel on the centre date, float32 scalar.

    Mean of ``|pred - target|`` over the valid bands of all samples at ``(T//2, H//2, W//2)``
    (``pred``/``target`` ``(B, T, C, H, W)``); 0 with a zero gradient when none is valid.
    """
    return weighted_mae(pred, target, _center_mask(pred.shape, pred.device))


def context_mae(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Weighted MAE (:func:`weighted_mae`) over every element except the centre one.

    The centre element's weight is set to 0 and the remaining weights are renormalised over the
    valid context. ``weights`` as in :func:`weighted_mae`; float32 scalar.
    """
    w = _broadcast_weights(weights, pred.shape).to(pred.device)
    w = w * (1.0 - _center_mask(pred.shape, w.device))[None, :, None]
    return weighted_mae(pred, target, w)


def _gaussian_1d(win_size: int, sigma: float, device) -> Tensor:
    x = torch.arange(win_size, dtype=torch.float64, device=device) - (win_size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def _valid_filter_matrix(taps: Tensor, n: int) -> Tensor:
    """(n - len(taps) + 1, n) matrix whose product with a length-``n`` signal is its valid-mode
    correlation with ``taps`` (row i holds the taps at columns i .. i + len(taps) - 1)."""
    n_out = n - taps.numel() + 1
    cols = torch.arange(n_out, device=taps.device)[:, None] + torch.arange(taps.numel(), device=taps.device)
    return torch.zeros(n_out, n, dtype=taps.dtype, device=taps.device).scatter_(1, cols, taps.expand(n_out, -1))


def masked_ssim(
    pred: Tensor,
    target: Tensor,
    *,
    win_size: int = 7,
    sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
    min_valid_fraction: float = 0.5,
    return_map: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mean SSIM (Eq. 2) with a validity mask, float32 scalar (1 = identical).

    Inputs ``(..., H, W)`` (e.g. ``(B, T, C, H, W)``); every leading index is one image (one date and
    band of one sample), with ``H, W >= win_size``. Local statistics use a normalised ``win_size``-tap
    Gaussian (``sigma`` pixels) over the *valid* convolution region, so the map is
    ``(H - win_size + 1, W - win_size + 1)`` (the same as scikit-image's map after it crops
    ``(win_size - 1) // 2`` border pixels, when its filter has ``win_size`` taps). Pixels with a
    non-finite target are left out of both images: window weights are renormalised over valid
    pixels, and windows whose valid weight is below ``min_valid_fraction`` are excluded. The SSIM map
    (population statistics, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``, ``L = data_range``) is averaged
    over the valid windows of each image, then over the images with any valid window. With none the
    result is 1 (loss 0) with a zero gradient.

    torchmetrics/kornia SSIM take no mask, hence this implementation. With ``return_map=True`` also
    returns the map, NaN at excluded windows.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim < 2:
        raise ValueError("masked_ssim needs (..., H, W) inputs")
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd integer, got {win_size}")
    H, W = pred.shape[-2:]
    if H < win_size or W < win_size:
        raise ValueError(f"win_size {win_size} exceeds the image extent {H}x{W}")
    x = pred.float().reshape(-1, 1, H, W)
    y_raw = target.float().reshape(-1, 1, H, W)
    m = torch.isfinite(y_raw).float()
    y = torch.where(m > 0, y_raw, torch.zeros_like(y_raw))
    x = x * m  # the prediction at invalid pixels must not reach the statistics either

    g = _gaussian_1d(win_size, sigma, x.device)
    stack = torch.cat([m, x, y, x * x, y * y, x * y], dim=1)  # (N, 6, H, W); m is 0/1 so m*x*x = x*x here
    # The separable Gaussian as two banded-matrix products, not depthwise conv2d: oneDNN's depthwise
    # convolution of a batch's (7040, 6, 15, 15) stack is slow on CPU (benchmarks/RESULTS.md). Same sums.
    # float32 even under autocast (bf16 training on a GPU): the variances below are differences of
    # local second moments, which bf16's 8-bit mantissa would swamp (SSIM 0.9766 against 0.9781).
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = _valid_filter_matrix(g, H) @ stack @ _valid_filter_matrix(g, W).T
    sw, sx, sy, sxx, syy, sxy = out.unbind(dim=1)

    ok = sw >= min_valid_fraction
    inv = 1.0 / sw.clamp_min(1e-6)  # clamp keeps the unselected branch finite for backward
    ux, uy = sx * inv, sy * inv
    vx = sxx * inv - ux * ux
    vy = syy * inv - uy * uy
    vxy = sxy * inv - ux * uy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    s_map = torch.where(ok, s_map, torch.zeros_like(s_map))

    n_win = ok.sum(dim=(-2, -1))  # (N,)
    per_image = s_map.sum(dim=(-2, -1)) / n_win.clamp_min(1)
    has = n_win > 0
    n_img = has.sum()
    mean = torch.where(has, per_image, torch.zeros_like(per_image)).sum() / n_img.clamp_min(1)
    result = torch.where(n_img > 0, mean, torch.ones_like(mean))
    if return_map:
        full = torch.where(ok, s_map, torch.full_like(s_map, float("nan")))
        return result, full.reshape(*pred.shape[:-2], *full.shape[-2:])
    return result


def spectral_angle(
    pred: Tensor,
    target: Tensor,
    *,
    dates: Literal["center", "all"] = "center",
    eps: float = 1e-7,
) -> Tensor:
    """Mean spectral angle (SAM, Eq. 4) at the centre pixel, radians, float32 scalar.

    ``pred``/``target`` ``(B, T, C, H, W)``; spectra run along ``C`` at pixel ``(H//2, W//2)``, on the
    centre date (``dates="center"``) or on every date (``"all"``). ``angle = arccos(cos)`` with
    ``cos = <p, t> / (|p| |t|)`` clamped to ``[-1 + eps, 1 - eps]`` so the arccos gradient stays
    finite; the norm product is floored at ``eps**2`` so zero vectors give ``cos = 0`` (pi/2) rather
    than NaN. A spectrum is invalid, and excluded, if any of its target bands is non-finite. Mean over
    valid spectra; 0 with a zero gradient when none is valid. Because of the clamp, identical spectra
    give ``arccos(1 - eps)`` (about 5e-4 rad in float32), not exactly 0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim != 5:
        raise ValueError(f"expected (B, T, C, H, W) tensors, got {pred.ndim} dimensions")
    if dates not in ("center", "all"):
        raise ValueError(f"dates must be 'center' or 'all', got {dates!r}")
    _, T, _, H, W = pred.shape
    p = pred[..., H // 2, W // 2].float()  # (B, T, C)
    t = target[..., H // 2, W // 2].float()
    if dates == "center":
        p, t = p[:, T // 2], t[:, T // 2]  # (B, C)
    valid_band = torch.isfinite(t)
    valid = valid_band.all(dim=-1)
    keep = valid.unsqueeze(-1)
    t = torch.where(valid_band & keep, t, torch.zeros_like(t))
    p = torch.where(keep, p, torch.zeros_like(p))
    dot = (p * t).sum(-1)
    norm2 = (p * p).sum(-1) * (t * t).sum(-1)
    cos = dot / torch.sqrt(norm2.clamp_min(eps * eps))
    angle = torch.acos(cos.clamp(-1.0 + eps, 1.0 - eps))
    angle = torch.where(valid, angle, torch.zeros_like(angle))
    return angle.sum() / valid.sum().clamp_min(1)


# --------------------------------------------------------------------------------------------------
# Loss modules
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SSIMConfig:
    """Masked SSIM settings; defaults from the authors' code (Gaussian window 7, sigma 1.5, L = 1)."""

    win_size: int = 7
    sigma: float = 1.5
    data_range: float = 1.0
    k1: float = 0.01
    k2: float = 0.03
    min_valid_fraction: float = 0.5


@dataclass
class LossOutput:
    """A loss value with its parts.

    ``total``: float32 scalar with gradient. ``parts``: detached float32 scalars for logging, e.g.
    ``center_mae``, ``context_mae``, ``weighted_mae``, ``ssim_loss``, ``sam_rad``, ``sam_deg``
    (fusion: prefixed ``"<sensor>/"`` or ``"joint/"``).
    """

    total: Tensor
    parts: dict[str, Tensor]

    def floats(self) -> dict[str, float]:
        """Parts as Python floats (forces a device sync)."""
        return {k: float(v) for k, v in self.parts.items()}


def _mae_parts(pred: Tensor, target: Tensor, w: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    wmae = weighted_mae(pred, target, w)
    parts = {
        "weighted_mae": wmae,
        "center_mae": center_mae(pred, target),
        "context_mae": context_mae(pred, target, w),
    }
    return wmae, parts


def _ssim_loss(pred: Tensor, target: Tensor, cfg: SSIMConfig) -> Tensor:
    ssim = masked_ssim(
        pred, target, win_size=cfg.win_size, sigma=cfg.sigma, data_range=cfg.data_range,
        k1=cfg.k1, k2=cfg.k2, min_valid_fraction=cfg.min_valid_fraction,
    )
    return 1.0 - ssim


def _detach(parts: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in parts.items()}


@dataclass(frozen=True)
class S1PretrainConfig:
    """Sentinel-1 pretraining: context-weighted MAE only (paper Sec. III-B)."""

    weights: ContextWeightConfig = field(default_factory=ContextWeightConfig)


class S1PretrainLoss(nn.Module):
    """Sentinel-1 pretraining loss: ``L = WMAE`` (Eq. 1 weights). ``forward(pred, target, days=None)``
    with ``(B, T, C, H, W)`` tensors and optional ``(B, T)`` day offsets."""

    def __init__(self, config: S1PretrainConfig | None = None) -> None:
        super().__init__()
        self.config = config or S1PretrainConfig()

    def forward(self, pred: Tensor, target: Tensor, days: Tensor | None = None) -> LossOutput:
        _, T, _, H, W = pred.shape
        w = weights_from_config(self.config.weights, T, H, W, days=days, device=pred.device)
        total, parts = _mae_parts(pred, target, w)
        return LossOutput(total=total, parts=_detach(parts))


@dataclass(frozen=True)
class S2PretrainConfig:
    """Sentinel-2 pretraining (Eq. 5); lambdas from the authors' public code (0.23, 0.03, 0.74)."""

    weights: ContextWeightConfig = field(default_factory=ContextWeightConfig)
    ssim: SSIMConfig = field(default_factory=SSIMConfig)
    lambda_mae: float = 0.23
    lambda_ssim: float = 0.03
    lambda_sam: float = 0.74
    sam_dates: Literal["center", "all"] = "center"
    sam_eps: float = 1e-7


class S2PretrainLoss(nn.Module):
    """Sentinel-2 pretraining loss (Eq. 5):
    ``L = lambda_mae * WMAE + lambda_ssim * (1 - SSIM) + lambda_sam * SAM(centre)``."""

    def __init__(self, config: S2PretrainConfig | None = None) -> None:
        super().__init__()
        self.config = config or S2PretrainConfig()

    def forward(self, pred: Tensor, target: Tensor, days: Tensor | None = None) -> LossOutput:
        cfg = self.config
        _, T, _, H, W = pred.shape
        w = weights_from_config(cfg.weights, T, H, W, days=days, device=pred.device)
        wmae, parts = _mae_parts(pred, target, w)
        ssim_l = _ssim_loss(pred, target, cfg.ssim)
        sam = spectral_angle(pred, target, dates=cfg.sam_dates, eps=cfg.sam_eps)
        total = cfg.lambda_mae * wmae + cfg.lambda_ssim * ssim_l + cfg.lambda_sam * sam
        parts.update(ssim_loss=ssim_l, sam_rad=sam, sam_deg=torch.rad2deg(sam))
        return LossOutput(total=total, parts=_detach(parts))


@dataclass(frozen=True)
class SensorLossConfig:
    """One sensor's term in the fusion loss: ``weight * (mae_weight * WMAE + sam_weight * SAM)``,
    the SAM part only when ``use_sam``."""

    weights: ContextWeightConfig = field(default_factory=ContextWeightConfig)
    use_sam: bool = False
    weight: float = 1.0
    mae_weight: float = 1.0
    sam_weight: float = 1.0


def _default_fusion_sensors() -> dict[str, SensorLossConfig]:
    # Paper Sec. III-C: centre weight 1.5 for S1 (Eq. 6), 1.75 and SAM for S2 (Eq. 7).
    return {
        "s1": SensorLossConfig(weights=ContextWeightConfig(center_weight=1.5)),
        "s2": SensorLossConfig(weights=ContextWeightConfig(center_weight=1.75), use_sam=True),
    }


@dataclass(frozen=True)
class FusionLossConfig:
    """Fusion objective (Eqs. 6-8): per-sensor terms plus a joint SSIM + SAM term on the
    band-concatenated reconstruction, ``total = sum_s L_s + joint_weight * L_joint``.

    ``sensors`` maps a sensor name (the key used in the pred/target dicts) to its settings; the joint
    term concatenates sensors in this mapping's order. Add a third sensor by adding an entry.
    """

    sensors: Mapping[str, SensorLossConfig] = field(default_factory=_default_fusion_sensors)
    ssim: SSIMConfig = field(default_factory=SSIMConfig)
    joint_weight: float = 1.0
    joint_ssim_weight: float = 1.0
    joint_sam_weight: float = 1.0
    sam_dates: Literal["center", "all"] = "center"
    sam_eps: float = 1e-7


class FusionLoss(nn.Module):
    """Fusion loss over dicts of ``(B, T, C_s, H, W)`` tensors keyed by sensor name.

    ``forward(pred, target, days=None)``: ``days`` is ``None``, one ``(B, T)`` tensor shared by all
    sensors, or a dict per sensor. All sensors must share ``B, T, H, W`` (the joint term concatenates
    bands). Parts are prefixed ``"<sensor>/"`` and ``"joint/"``; ``"<sensor>/total"`` and
    ``"joint/total"`` give each term before its outer weight.
    """

    def __init__(self, config: FusionLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or FusionLossConfig()
        if not self.config.sensors:
            raise ValueError("FusionLossConfig.sensors must name at least one sensor")
        weights = {n: s.weight for n, s in self.config.sensors.items()}
        if not all(math.isfinite(w) and w >= 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"fusion loss sensor weights must be >= 0 with at least one > 0, got {weights} "
                             "(loss: {sensors: {s1: {weight: 0.1}}})")

    def forward(
        self,
        pred: Mapping[str, Tensor],
        target: Mapping[str, Tensor],
        days: Tensor | Mapping[str, Tensor] | None = None,
    ) -> LossOutput:
        cfg = self.config
        names = list(cfg.sensors)
        for what, d in (("pred", pred), ("target", target)):
            missing = [n for n in names if n not in d]
            if missing:
                raise ValueError(f"{what} lacks sensor(s) {missing}; configured: {names}")
        shapes = {n: tuple(pred[n].shape) for n in names}
        ref = shapes[names[0]]
        for n in names:
            if len(shapes[n]) != 5 or shapes[n][:2] != ref[:2] or shapes[n][3:] != ref[3:]:
                raise ValueError(f"sensors must share (B, T, H, W); got shapes {shapes}")

        total = pred[names[0]].new_zeros((), dtype=torch.float32)
        parts: dict[str, Tensor] = {}
        for n in names:
            scfg = cfg.sensors[n]
            p, t = pred[n], target[n]
            d = days.get(n) if isinstance(days, Mapping) else days
            _, T, _, H, W = p.shape
            w = weights_from_config(scfg.weights, T, H, W, days=d, device=p.device)
            wmae, sp = _mae_parts(p, t, w)
            term = scfg.mae_weight * wmae
            if scfg.use_sam:
                sam = spectral_angle(p, t, dates=cfg.sam_dates, eps=cfg.sam_eps)
                term = term + scfg.sam_weight * sam
                sp.update(sam_rad=sam, sam_deg=torch.rad2deg(sam))
            sp["total"] = term
            parts.update({f"{n}/{k}": v for k, v in sp.items()})
            total = total + scfg.weight * term

        p_all = torch.cat([pred[n].float() for n in names], dim=2)
        t_all = torch.cat([target[n].float() for n in names], dim=2)
        ssim_l = _ssim_loss(p_all, t_all, cfg.ssim)
        sam_j = spectral_angle(p_all, t_all, dates=cfg.sam_dates, eps=cfg.sam_eps)
        joint = cfg.joint_ssim_weight * ssim_l + cfg.joint_sam_weight * sam_j
        parts.update({
            "joint/ssim_loss": ssim_l, "joint/sam_rad": sam_j,
            "joint/sam_deg": torch.rad2deg(sam_j), "joint/total": joint,
        })
        total = total + cfg.joint_weight * joint
        return LossOutput(total=total, parts=_detach(parts))


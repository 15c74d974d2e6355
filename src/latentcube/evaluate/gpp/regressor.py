"""The Transformer regressor: inputs, fitting with early stopping, daily predictions."""

from __future__ import annotations

import time as _time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from latentcube.evaluate.gpp.config import GPPConfig, GPPError
from latentcube.evaluate.gpp.series import doy_index, make_windows, window_starts
from latentcube.evaluate.gpp.sites import SiteData


def _device(cfg: GPPConfig) -> str:
    return cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")


class GPPTransformer(nn.Module):
    """Linear input layer (patch_days x features -> d_model) + learned positions, ``n_layers`` Transformer
    encoder blocks, a linear regression head giving patch_days daily values per token.

    ``target_scale`` (a buffer, so it travels with ``state_dict`` and ``.to()``) is the SD the targets were
    divided by in training: :func:`predict_daily` multiplies the outputs by it."""

    def __init__(self, n_features: int, window_days: int, cfg: GPPConfig) -> None:
        super().__init__()
        self.p = cfg.patch_days
        self.inp = nn.Linear(n_features * cfg.patch_days, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(1, window_days // cfg.patch_days, cfg.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.ffn_dim, cfg.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.patch_days)
        self.register_buffer("target_scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, F) -> (B, L), in units of target_scale
        b, n, f = x.shape
        z = self.inp(x.reshape(b, n // self.p, self.p * f)) + self.pos
        return self.head(self.norm(self.encoder(z))).reshape(b, n)


@dataclass
class _Prepared:
    """Standardised model inputs of every site for one method and one fit set."""

    x: dict[str, np.ndarray]  # site -> (n_days, F + G) float32: standardised features, NaN -> 0, + G valid flags
    mean: np.ndarray
    std: np.ndarray


def _prepare(data: Mapping[str, SiteData], method: str, fit_days: Mapping[str, np.ndarray], doy: bool = False) -> _Prepared:
    """Standardise with the fit days' statistics; NaN input days become 0 (the fit mean) and an extra column
    per input group (``SiteData.groups``: e.g. embeddings, meteo) says which days had all of that group's
    features (1) or not (0), so a gap is never a value in disguise.
    ``doy`` appends sin/cos of the day of year (a diagnostic: what the inputs add beyond the season)."""
    stack = np.concatenate([data[s].features[method][m] for s, m in fit_days.items() if m.any()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    x = {}
    for s, d in data.items():
        f = d.features[method]
        edges = np.cumsum([0, *d.groups.get(method, [f.shape[1]])])
        valid = [np.isfinite(f[:, a:b]).all(axis=1, keepdims=True) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        z = np.where(np.isfinite(f), (f - mean) / std, 0.0)
        cols = [z, *valid]
        if doy:
            a = 2 * np.pi * doy_index(d.days)[:, None] / 365.0
            cols += [np.sin(a), np.cos(a)]
        x[s] = np.concatenate(cols, axis=1).astype("float32")
    return _Prepared(x, mean, std)


def _window_set(x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], length: int,
                stride: int, min_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of every site with targets kept only on the masked days (others NaN); windows with fewer
    than ``min_days`` target days are dropped."""
    xs, ys = [], []
    for s, m in masks.items():
        if not m.any():
            continue
        starts = window_starts(len(m), length, stride)
        if len(starts) == 0:
            continue
        t = np.where(m, y[s], np.nan)
        tw = make_windows(t, starts, length)
        keep = np.isfinite(tw).sum(axis=1) >= min_days
        xs.append(make_windows(x[s], starts[keep], length))
        ys.append(tw[keep])
    if not xs:
        return np.zeros((0, length, 1), "float32"), np.zeros((0, length), "float32")
    return np.concatenate(xs).astype("float32"), np.concatenate(ys).astype("float32")


def fit_regressor(x_fit: np.ndarray, y_fit: np.ndarray, x_es: np.ndarray, y_es: np.ndarray, cfg: GPPConfig,
                  window_days: int | None = None) -> tuple[GPPTransformer, dict[str, Any]]:
    """Train the Transformer regressor with MAE on the finite targets of ``y_fit`` ``(N, L)``; early stop
    on the MAE of ``y_es`` (restores the best epoch). Inputs ``(N, L, F)`` float32 without NaN.

    Returns (model in eval mode on its device, info with epochs, best early-stopping MAE in g C m⁻² d⁻¹,
    target scale and seconds). Seeded (``cfg.seed``): the same data and config give the same model.
    """
    t0 = _time.perf_counter()
    if len(x_fit) == 0:
        raise GPPError("no training window has enough target days. Fix: more sites/years, or a lower min_target_days.")
    dev = _device(cfg)
    # Seeded without touching the caller's random state: fork_rng restores the global generators on return.
    with torch.random.fork_rng(devices=[torch.device(dev)] if dev.startswith("cuda") else []):
        torch.manual_seed(cfg.seed)
        model, info = _train(x_fit, y_fit, x_es, y_es, cfg, window_days or x_fit.shape[1], dev)
    info["seconds"] = _time.perf_counter() - t0
    return model, info


def _train(x_fit: np.ndarray, y_fit: np.ndarray, x_es: np.ndarray, y_es: np.ndarray, cfg: GPPConfig, length: int,
           dev: str) -> tuple[GPPTransformer, dict[str, Any]]:
    gen = torch.Generator().manual_seed(cfg.seed)
    model = GPPTransformer(x_fit.shape[2], length, cfg).to(dev)
    scale = float(np.nanstd(y_fit)) or 1.0  # targets in units of their SD: one learning rate fits all sites
    xf = torch.from_numpy(np.array(x_fit, dtype="float32")).to(dev)  # a copy: joblib may pass read-only memmaps
    yf = torch.from_numpy(y_fit / scale).to(dev)
    xe = torch.from_numpy(np.array(x_es, dtype="float32")).to(dev) if len(x_es) else None
    ye = torch.from_numpy(y_es / scale).to(dev) if len(x_es) else None
    # fused: one kernel over all 55 parameter tensors; the default per-tensor loop was ~25 % of a CPU step
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)

    def masked_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(target)
        return (pred[ok] - target[ok]).abs().mean()

    best, best_state, best_epoch, bad, epoch = float("inf"), None, 0, 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        order = torch.randperm(len(xf), generator=gen).to(dev)
        for i in range(0, len(order), cfg.batch_size):
            b = order[i : i + cfg.batch_size]
            loss = masked_mae(model(xf[b]), yf[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if xe is None:
            continue
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xe[i : i + 256]) for i in range(0, len(xe), 256)])
            ok = torch.isfinite(ye)
            val = float((pred[ok] - ye[ok]).abs().mean()) * scale
        if val < best - 1e-6:
            best, best_epoch, bad = val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    model.target_scale.fill_(scale)
    return model, {"epochs": epoch, "best_epoch": best_epoch, "es_mae": best if np.isfinite(best) else None,
                   "target_scale": scale, "n_fit_windows": len(x_fit), "n_es_windows": len(x_es)}


def predict_daily(model: Any, x: np.ndarray, length: int, stride: int) -> np.ndarray:
    """Daily predictions ``(n_days,)`` of one site: every window (stride + end-aligned) predicts all its
    days, and each day's value is the mean over the windows covering it (NaN if the site is too short).
    Outputs are multiplied by the model's ``target_scale`` buffer when it has one."""

    starts = window_starts(len(x), length, stride)
    out = np.full(len(x), np.nan)
    if len(starts) == 0:
        return out
    dev = next(model.parameters()).device
    xw = torch.from_numpy(make_windows(x, starts, length).astype("float32")).to(dev)
    with torch.no_grad():
        pred = torch.cat([model(xw[i : i + 256]) for i in range(0, len(xw), 256)]).cpu().numpy().astype("float64")
    pred *= float(getattr(model, "target_scale", 1.0))
    sums, counts = np.zeros(len(x)), np.zeros(len(x))
    for s, p in zip(starts, pred, strict=True):
        sums[s : s + length] += p
        counts[s : s + length] += 1
    ok = counts > 0
    out[ok] = sums[ok] / counts[ok]
    return out



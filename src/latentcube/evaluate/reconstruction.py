"""Reconstruction quality of trained models next to two linear baselines fitted on the training split.

(a) ``patch PCA``: PCA of the context-weighted, flattened patches with the same total code size as the
    model's latent sequence (dates × latent). Weighting each element by √w before PCA makes the PCA
    minimise the weighted squared error, so this is close to the best *linear* autoencoder for the
    model's own weighted objective; it is scored with exactly the model's loss.
(b) ``centre-spectrum PCA-k``: PCA of the centre-pixel spectra with k = the latent size. With 9 of 10
    S2 bands this is nearly lossless (real clear-sky S2: ~0.001 reflectance MAE), so it is context for the
    centre MAE, not a target: it sees no context and needs the spectrum itself as input.
(c) ``per-date PCA``: one weighted PCA basis of single-date patches (C × H × W, each date weighted by its
    temporal context weight), applied to every date separately with ``latent_size`` codes per date. It is
    the linear counterpart of the model's *contract*: a per-pixel-date embedding of ``latent_size``
    numbers, computed by the same function for every date. (a) instead codes the 11-date patch jointly
    and may spend its ``dates × latent`` numbers on anything (a static field layout once, say), which a
    per-date embedding cannot; (c) says how the model does against a linear code with its own structure.

NaN (invalid) inputs are filled with the training mean for encoding; losses ignore invalid targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from latentcube.losses import context_weights
from latentcube.nn.linear_init import top_basis as _top_basis
from latentcube.nn.linear_init import weighted_date_pca

__all__ = ["ReconstructionReport", "collect", "compare_with_baselines"]


@dataclass
class ReconstructionReport:
    """Validation metrics (means over patches) for the model and both baselines."""

    model: dict[str, float]
    patch_pca: dict[str, float]
    center_pca: dict[str, float]
    code_size: int
    n_train: int
    n_val: int
    date_pca: dict[str, float] | None = None
    latent_size: int = 0

    def rows(self) -> list[tuple[str, dict[str, float]]]:
        rows = [("model", self.model), (f"(a) patch PCA, code {self.code_size}", self.patch_pca),
                (f"(b) centre-spectrum PCA-{self.center_pca.get('k', 0):.0f}", self.center_pca)]
        if self.date_pca is not None:
            rows.append((f"(c) per-date PCA, {self.latent_size} per date", self.date_pca))
        return rows


def collect(dataset: Dataset, keys: tuple[str, ...], *, max_items: int | None = None, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Stack up to ``max_items`` items of a patch dataset (first items, deterministic)."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    n = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        for k in keys:
            parts[k].append(batch[k])
        n += len(batch[keys[0]])
        if max_items is not None and n >= max_items:
            break
    out = {k: torch.cat(v) for k, v in parts.items()}
    return {k: v[:max_items] for k, v in out.items()} if max_items else out


def _loss_means(loss_fn, pred, target, days, batch_size: int = 256) -> dict[str, float]:
    """Mean of the loss total and parts over patches, batch-size weighted."""
    sums: dict[str, float] = {}
    n = 0
    first = next(iter(target.values())) if isinstance(target, Mapping) else target
    for i in range(0, first.shape[0], batch_size):
        sl = slice(i, i + batch_size)
        p = {k: v[sl] for k, v in pred.items()} if isinstance(pred, Mapping) else pred[sl]
        t = {k: v[sl] for k, v in target.items()} if isinstance(target, Mapping) else target[sl]
        out = loss_fn(p, t, days[sl])
        b = days[sl].shape[0]
        for k, v in {"objective": out.total, **out.parts}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
        n += b
    return {k: v / n for k, v in sums.items()}


def _centred(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``x - mean`` with invalid (non-finite) entries replaced by the mean first, i.e. 0 after centring."""
    return torch.where(torch.isfinite(x), x, mean) - mean


def _patch_pca(train: torch.Tensor, val: torch.Tensor, code_size: int, weights: torch.Tensor) -> torch.Tensor:
    """Fit weighted PCA on ``train`` (N, T, C, H, W) and reconstruct ``val``; float64 for the tiny weights."""
    sw = weights.double().sqrt()[:, None, :, :].expand(train.shape[1:]).reshape(-1)  # (T*C*H*W,)
    xt = train.double().reshape(len(train), -1)
    mean = torch.nan_to_num(torch.nanmean(xt, dim=0), nan=0.0)
    xt = _centred(xt, mean)
    basis = _top_basis(xt * sw, code_size)  # (features, k)
    xv = val.double().reshape(len(val), -1)
    xv = _centred(xv, mean)
    code = (xv * sw) @ basis
    recon = (code @ basis.T) / sw.clamp(min=1e-30) + mean
    return recon.reshape(val.shape).float()


def _date_pca(train: torch.Tensor, val: torch.Tensor, k: int, weights: torch.Tensor) -> torch.Tensor:
    """One weighted PCA basis of single-date patches, ``k`` codes per date: fit on ``train`` (N, T, C, H, W)
    with every date a sample weighted by its temporal weight, reconstruct each date of ``val`` on its own.

    Elements are scaled by the square root of the spatial weight (``weights`` (T, H, W) at the centre
    date, normalised to 1 at the centre pixel) so the basis minimises the spatially weighted squared
    error; each date's sample is scaled by the square root of its temporal weight."""
    n, t = train.shape[:2]
    xt = train.double().reshape(n * t, -1)
    mean = torch.nan_to_num(torch.nanmean(xt, dim=0), nan=0.0)
    basis, sw = weighted_date_pca(_centred(xt, mean).reshape(train.shape), weights.double(), k)
    xv = val.double().reshape(len(val) * t, -1)
    xv = _centred(xv, mean)
    recon = ((xv * sw) @ basis @ basis.T) / sw.clamp(min=1e-30) + mean
    return recon.reshape(val.shape).float()


def _center_pca(train: torch.Tensor, val: torch.Tensor, k: int) -> dict[str, float]:
    """PCA-k of centre spectra (centre date, centre pixel): fit on train, MAE on val (valid spectra)."""
    t, p = train.shape[1] // 2, train.shape[-1] // 2
    a = train[:, t, :, p, p].double()
    b = val[:, t, :, p, p].double()
    a = a[torch.isfinite(a).all(1)]
    ok = torch.isfinite(b).all(1)
    b = b[ok]
    mean = a.mean(0)
    _, _, v = torch.linalg.svd(a - mean, full_matrices=False)
    basis = v[: min(k, v.shape[0])].T
    recon = (b - mean) @ basis @ basis.T + mean
    return {"center_mae": float((recon - b).abs().mean()), "k": float(k)}


@torch.no_grad()
def compare_with_baselines(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    *,
    sensors: tuple[str, ...],
    latent_size: int,
    alpha_s: float = 1.0,
    alpha_t: float = 1.0,
    max_train: int = 3000,
    max_val: int = 2000,
) -> ReconstructionReport:
    """Score ``model`` and the two baselines with ``loss_fn`` on (a sample of) the validation split.

    ``sensors`` names the input keys: ``("x",)`` for a sensor autoencoder (items ``x``) or e.g.
    ``("s1", "s2")`` for fusion (the loss then takes dicts). ``latent_size`` is the per-date latent size
    (9 for S2, 2 for S1, 7 fused); baseline (a) gets ``n_dates × latent_size`` numbers per patch.
    """
    model.eval()
    keys = (*sensors, "days")
    tr = collect(train_set, keys, max_items=max_train)
    va = collect(val_set, keys, max_items=max_val)
    fused = sensors != ("x",)
    first = va[sensors[0]]
    n_dates, size = first.shape[1], first.shape[-1]
    weights = context_weights(n_dates, size, size, alpha_s=alpha_s, alpha_t=alpha_t)

    # model
    preds: dict[str, list[torch.Tensor]] = {s: [] for s in sensors}
    for i in range(0, first.shape[0], 256):
        sl = slice(i, i + 256)
        if fused:
            out = model({s: va[s][sl] for s in sensors}, va["days"][sl])
            for s in sensors:
                preds[s].append(out.reconstructions[s])
        else:
            recon, _ = model(va["x"][sl], va["days"][sl])
            preds["x"].append(recon)
    pred = {s: torch.cat(v) for s, v in preds.items()}
    target = {s: va[s] for s in sensors}
    model_metrics = _loss_means(loss_fn, pred if fused else pred["x"], target if fused else target["x"], va["days"])

    # (a) weighted patch PCA with the same code size, on all sensors' bands jointly
    cat_tr = torch.cat([tr[s] for s in sensors], dim=2)
    cat_va = torch.cat([va[s] for s in sensors], dim=2)
    rec = _patch_pca(cat_tr, cat_va, n_dates * latent_size, weights)
    splits = np.cumsum([0] + [va[s].shape[2] for s in sensors])
    rec_d = {s: rec[:, :, splits[j] : splits[j + 1]] for j, s in enumerate(sensors)}
    pca_metrics = _loss_means(loss_fn, rec_d if fused else rec_d["x"], target if fused else target["x"], va["days"])

    # (b) centre-spectrum PCA-k
    center = _center_pca(cat_tr, cat_va, latent_size)

    # (c) per-date weighted PCA with the model's per-date code size
    rec = _date_pca(cat_tr, cat_va, latent_size, weights)
    rec_d = {s: rec[:, :, splits[j] : splits[j + 1]] for j, s in enumerate(sensors)}
    date_metrics = _loss_means(loss_fn, rec_d if fused else rec_d["x"], target if fused else target["x"], va["days"])
    return ReconstructionReport(model_metrics, pca_metrics, center, n_dates * latent_size, len(tr["days"]),
                                len(va["days"]), date_pca=date_metrics, latent_size=latent_size)

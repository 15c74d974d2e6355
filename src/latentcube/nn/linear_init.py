"""Linear warm start of a sensor autoencoder from a weighted per-date PCA of training patches.

A freshly initialised autoencoder spends its first few hundred optimiser steps learning what a linear
code already gives: the dominant spectral-spatial patterns of one date's patch. On two CPU cores that
is most of a short training run (docs/training.md). :func:`pca_warm_start` therefore fits, before the
first step,

* the encoder's linear patch path (a ``p x p`` convolution, ``SensorEncoder.patch_linear``) to the
  top-``latent`` weighted principal directions of single-date patches (the same fit as baseline (c) in
  ``evaluate.reconstruction``), and
* the decoder's linear path (``SensorDecoder.linear``, latent -> patch) to the least-squares
  reconstruction of every patch element from those codes (valid elements only),

and zeroes the output layers of the non-linear paths, so the untrained model *is* that linear
autoencoder and training learns only the non-linear residual. The latent keeps its meaning (one code
per pixel-date from the same function at every date); the warm start changes where optimisation
starts, not the architecture's contract.
"""

from __future__ import annotations

import scipy.linalg
import torch
from torch import Tensor

__all__ = ["top_basis", "weighted_date_pca", "spatial_scale", "pca_warm_start", "context_projection", "fusion_warm_start"]


def top_basis(a: Tensor, k: int) -> Tensor:
    """The top-``k`` right singular vectors of ``a`` (rows = samples), as columns ``(features, k)``.

    Through the eigenvectors of the smaller Gram matrix instead of an SVD of ``a``: several times faster
    for the baselines' tall and wide patch matrices (benchmarks/RESULTS.md).
    Directions with a zero singular value are dropped (they carry nothing to reconstruct).
    """
    tall = a.shape[0] >= a.shape[1]
    gram = (a.T @ a if tall else a @ a.T).cpu().numpy()
    n = gram.shape[0]
    # Only the top k eigenpairs (?syevr, index range): ~3x faster than a full eigh (benchmarks/RESULTS.md).
    evals, vecs = scipy.linalg.eigh(gram, subset_by_index=[n - min(k, n), n - 1], driver="evr", check_finite=False)
    evals = torch.from_numpy(evals[::-1].copy()).to(a)
    vecs = torch.from_numpy(vecs[:, ::-1].copy()).to(a)
    keep = evals > evals.max().clamp(min=0) * 1e-12
    # tall: right singular vectors directly; wide: left ones u, and the right ones are a.T u / sigma
    return vecs[:, keep] if tall else a.T @ vecs[:, keep] / evals[keep].sqrt()


def weighted_date_pca(centred: Tensor, weights: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Weighted PCA basis of single-date patches.

    Args:
        centred: (N, T, C, H, W) patches minus their centre value, invalid elements already 0 (float64
            recommended: outer-ring weights are ~1e-6 of the centre's).
        weights: (T, H, W) context weights (``losses.context_weights``); the spatial weights of the
            centre date (normalised to 1 at the centre pixel) weight the elements, the temporal weights
            (normalised to 1 at the centre date) weight each date's sample.
        k: number of directions.

    Returns:
        ``basis`` (C*H*W, k') with k' <= k orthonormal columns in the weighted space, and ``sw``
        (C*H*W,) the square roots of the spatial weights: a date's code is ``(x * sw) @ basis``.
    """
    n, t, c, h, w = centred.shape
    temporal = (weights[:, h // 2, w // 2] / weights[t // 2, h // 2, w // 2]).to(centred.dtype)
    sw = spatial_scale(weights.to(centred.dtype), c)
    rows = centred.reshape(n * t, -1) * sw * temporal.sqrt().repeat(n)[:, None]
    return top_basis(rows, k), sw


def spatial_scale(weights: Tensor, c: int) -> Tensor:
    """(C*H*W,) square roots of the centre date's spatial weights of ``weights`` (T, H, W), normalised to
    1 at their maximum, repeated for ``c`` bands: the element scale of ``weighted_date_pca``."""
    t, h, w = weights.shape
    spatial = weights[t // 2] / weights[t // 2].max()
    return spatial.sqrt()[None].expand(c, h, w).reshape(-1)


@torch.no_grad()
def pca_warm_start(model, x: Tensor, weights: Tensor, *, ridge: float = 1e-6, centre_boost: float = 1.0,
                   context_dims: int = 0, context_px: int = 3, context_share: float = 1.0) -> dict[str, float]:
    """Set a ``SensorAutoencoder`` with ``linear_patch=True`` to the per-date PCA autoencoder of ``x``.

    Args:
        model: the untrained autoencoder (changed in place).
        x: (N, T, C, p, p) normalised training patches, NaN = invalid (a few thousand are plenty).
        weights: (T, p, p) context weights of the model's loss.
        ridge: relative Tikhonov term of the decoder's least-squares fit (keeps rare codes stable).
        context_dims: a two-scale code: the directions are then the principal directions of
            single-pixel spectra (every complete spectrum of ``x``), and the last ``context_dims``
            (weakest) of them are read as the mean of the pixel's code over its ``context_px x
            context_px`` neighbourhood (:func:`context_projection`): a field-level summary placed where
            it costs the centre reconstruction least (docs/method.md).
        context_px: odd side of that neighbourhood (<= the patch size).
        context_share: share of each context direction read from the neighbourhood mean; the rest stays
            the pixel's own code (1 = the neighbourhood mean alone).

    Returns:
        ``{"explained": fraction of the weighted variance the codes keep, "n_samples": N * T}``.
    """
    enc, dec = model.encoder, model.decoder
    if enc.patch_linear is None or dec.linear is None:
        raise ValueError("pca_warm_start needs linear_patch=True and linear_paths=True in the model config")
    n, t, c, p, _ = x.shape
    latent = model.config.latent_dim
    xd = x.double()
    valid = torch.isfinite(xd)
    # One centre per band (not per element): the conv path must be the same at every pixel of a scene.
    centre = torch.stack([xd[:, :, b][valid[:, :, b]].mean() if valid[:, :, b].any() else xd.new_tensor(0.0)
                          for b in range(c)])
    centred = torch.where(valid, xd - centre[:, None, None], 0.0)
    w = weights.double().clone()
    w[:, p // 2, p // 2] *= centre_boost
    if context_dims:
        if not 0 < context_dims < latent or context_px % 2 == 0 or not 1 < context_px <= p:
            raise ValueError(f"context_dims must be in 1..{latent - 1} and context_px odd in 3..{p}, "
                             f"got {context_dims} and {context_px}")
        if not 0 < context_share <= 1:
            raise ValueError(f"context_share must be in (0, 1], got {context_share}")
        # Two-scale code: the directions are the principal directions of single-pixel spectra, fitted on
        # every complete spectrum of the patches (all pixels, all dates: ~p*p times the centre samples, which
        # matters for the weakest directions on a small area); the neighbourhood enters only through the
        # context dims. The kernel keeps the loss's spatial scale, so training can still reach the ring.
        sw = spatial_scale(w, c)
        spectra = centred.permute(0, 1, 3, 4, 2).reshape(-1, c)[valid.all(dim=2).reshape(-1)]
        pixel = top_basis(spectra, latent)  # (C, k)
        basis = torch.zeros(c, p, p, pixel.shape[1], dtype=centred.dtype)
        basis[:, p // 2, p // 2] = pixel
        basis = basis.reshape(c * p * p, -1) / torch.where(sw > 0, sw, 1.0)[:, None]  # code = (x * sw) @ basis
    else:
        basis, sw = weighted_date_pca(centred, w, latent)
    k = basis.shape[1]
    proj = (basis * sw[:, None]).T  # (k, C*p*p): code = proj @ centred patch
    if context_dims:
        ctx = slice(max(k - context_dims, 0), k)
        mean = context_projection(proj[ctx].reshape(-1, c, p, p), context_px).reshape(proj[ctx].shape)
        proj[ctx] = context_share * mean + (1.0 - context_share) * proj[ctx]
    codes = centred.reshape(n * t, -1) @ proj.T  # (N*T, k)
    explained = float(((centred.reshape(n * t, -1) * sw) @ basis).pow(2).sum() / (centred.reshape(n * t, -1) * sw).pow(2).sum())

    # Decoder: per element, least squares of the centred value on the codes over the samples where the
    # element is valid (a cloud-masked target must not pull its weights towards the fill value).
    ones = torch.ones(n * t, 1, dtype=codes.dtype)
    design = torch.cat([codes, ones], dim=1)  # (S, k+1)
    m = valid.reshape(n * t, -1).double()  # (S, E)
    y = centred.reshape(n * t, -1)
    # sum_s m_se d_sk d_sl as one matmul over outer products: no (S, E, k) intermediate
    outer = (design[:, :, None] * design[:, None, :]).reshape(n * t, -1)  # (S, (k+1)^2)
    gram = (m.T @ outer).reshape(-1, k + 1, k + 1)  # (E, k+1, k+1)
    gram = gram + ridge * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp(min=1e-12)[:, None, None] * torch.eye(k + 1, dtype=gram.dtype)
    rhs = (y * m).T @ design  # (E, k+1)
    coef = torch.linalg.solve(gram, rhs[..., None])[..., 0]  # (E, k+1)

    weight = torch.zeros(c * p * p, latent, dtype=torch.float64)
    weight[:, :k] = coef[:, :k]
    bias = coef[:, k] + centre.repeat_interleave(p * p) - model.config.value_offset
    dec.linear.weight.copy_(weight.to(dec.linear.weight.dtype))
    dec.linear.bias.copy_(bias.to(dec.linear.bias.dtype))
    scale = sw[: p * p].reshape(p, p)  # the spatial weights' square roots (the same for every band)
    kernel = torch.zeros(latent, c, p, p, dtype=torch.float64)
    kernel[:k] = basis.T.reshape(k, c, p, p)  # proj = basis * sw: the scale lives in the fixed buffer
    if context_dims:
        kernel[ctx] = torch.where(sw > 0, proj[ctx] / sw, 0.0).reshape(-1, c, p, p)
    enc.patch_linear.weight.copy_(kernel.to(enc.patch_linear.weight.dtype))
    enc.patch_scale.copy_(scale.to(enc.patch_scale.dtype))
    enc.patch_centre.copy_(centre.to(enc.patch_centre.dtype))
    # The non-linear paths start silent: the model equals the linear code until training moves them.
    for layer in (enc.temporal.w_out, enc.temporal.w_lin, dec.head):
        if layer is not None:
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
    return {"explained": explained, "n_samples": float(n * t)}


def context_projection(proj: Tensor, size: int) -> Tensor:
    """Linear patch codes ``proj`` (k, C, p, p) turned into their ``size x size`` neighbourhood mean.

    A code read from the patch centred at pixel i, averaged over the pixels i' of i's neighbourhood, is
    itself a linear code of i's patch: the kernel convolved with a ``size x size`` box (divided by its
    area), cropped to the patch. The crop drops the kernel's outermost ring weights, which the loss's
    context weights already make ~1e-6 of the centre's.
    """
    r = size // 2
    return torch.nn.functional.avg_pool2d(torch.nn.functional.pad(proj, (r, r, r, r)), size, stride=1)


@torch.no_grad()
def fusion_warm_start(model, x, days: Tensor, element_weights, *, n_jacobian: int = 64, step: float = 1e-2) -> dict[str, float]:
    """Set a ``FusionModel``'s fusion layers to the best linear fused code of the frozen sensor latents.

    The fused code is the top-``latent_dim`` directions of the (centred) concatenated sensor latents in
    the metric ``M = J^T A J``: ``J`` the frozen decoders' response of a whole patch sequence to the
    centre date's latent (central differences at ``n_jacobian`` training samples), ``A`` the per-element
    loss weights (``element_weights``: sensor -> (T, p, p)), one block per sensor. So the 7 numbers keep
    the latent directions the loss notices most. With ``context_px`` (fusion layers that also read each
    sensor's neighbourhood-mean linear code), the last ``context_dims`` (weakest) of these directions
    are read from those neighbourhood codes instead, ``context_share`` of each (the rest from the pixel's
    own latents): a two-scale fused code. Back-projections are least squares of
    each sensor's latent on the code. The fusion transformer starts as a pure linear map (identity ``W_in``, value,
    position-value, FFN and LayerNorm read-out silenced), so the untrained fusion model is that code.

    Args:
        model: the ``FusionModel`` (sensor models frozen; changed in place).
        x: {sensor: (N, T, C_s, p, p)} normalised training patches; days: (N, T).
        element_weights: {sensor: (T, p, p)} loss weight of one element (summed over nothing: per band).

    Returns: ``{"explained": fraction of the metric-weighted latent variance kept, "n_samples": N * T}``.
    """
    names = model.sensor_names
    latents = model.sensor_latents(x, days)
    context = model.context_codes(x)  # {} unless the fusion layers read neighbourhood codes
    n, t = days.shape
    blocks = []
    for name in names:
        dec, z = model.sensors[name], latents[name][:n_jacobian]
        d, c, a = days[:n_jacobian], t // 2, element_weights[name].to(z.dtype)
        cols = []
        for j in range(z.shape[-1]):
            e = torch.zeros_like(z)
            e[:, c, j] = step
            cols.append((dec.decode(z + e, d) - dec.decode(z - e, d)) / (2 * step))  # (B, T, C, p, p)
        jac = torch.stack(cols, dim=-1) * a[None, :, None, :, :, None].sqrt()
        jac = jac.reshape(jac.shape[0], -1, jac.shape[-1]).double()
        blocks.append(torch.einsum("bej,bek->jk", jac, jac) / jac.shape[0])
    metric = torch.block_diag(*blocks)
    evals, vecs = torch.linalg.eigh(metric)
    root = vecs @ torch.diag(evals.clamp(min=0).sqrt()) @ vecs.T
    z_all = torch.cat([latents[name] for name in names], dim=-1).reshape(n * t, -1).double()
    mean = z_all.mean(0)
    centred = z_all - mean
    basis = top_basis(centred @ root, model.latent_dim)  # (L_total, k)
    q = basis.T @ root  # (k, L_total): code = q @ (z - mean)
    explained = float((centred @ root @ basis).pow(2).sum() / (centred @ root).pow(2).sum().clamp(min=1e-30))
    if context:
        # Two-scale fused code: the last context_dims (weakest) directions are read context_share from the
        # neighbourhood means of the sensors' linear codes and the rest from the pixel's own latents.
        c_all = torch.cat([context[name] for name in model.project_context], dim=-1).reshape(n * t, -1).double()
        c_mean = c_all.mean(0)
        split, share = max(q.shape[0] - model.config.context_dims, 0), model.config.context_share
        q_pix, q_ctx = q.clone(), q.clone()
        q_pix[split:] *= 1.0 - share
        q_ctx[:split], q_ctx[split:] = 0.0, q_ctx[split:] * share
        q = torch.cat([q_pix, q_ctx], 1)  # (k, 2 L_total) on [latents, neighbourhood codes]
        mean, centred = torch.cat([mean, c_mean]), torch.cat([centred, c_all - c_mean], 1)
    k = q.shape[0]
    codes = centred @ q.T
    design = torch.cat([codes, torch.ones(n * t, 1, dtype=codes.dtype)], dim=1)
    coef = torch.linalg.lstsq(design, z_all).solution  # (k + 1, L_total): back-projections

    cfg, tl = model.config, model.temporal
    parts = [*((name, model.project[name]) for name in names), *((n_, model.project_context[n_]) for n_ in model.project_context)]
    d_in = cfg.proj_dim * len(parts)
    if cfg.d_model < d_in or any(model.sensors[s].latent_dim > cfg.proj_dim for s in names) or tl.w_lin is None:
        raise ValueError(f"fusion_warm_start needs proj_dim >= every sensor's latent size, d_model >= {len(parts)} "
                         f"token parts x proj_dim = {d_in} (model: {{d_model: ...}}) and the fusion layer's linear "
                         "read-out")
    w_lin = torch.zeros(cfg.latent_dim, cfg.d_model, dtype=torch.float64)
    offset = 0
    for i, (name, proj) in enumerate(parts):
        size = model.sensors[name].latent_dim
        proj.weight.zero_()
        proj.weight[:size].copy_(torch.eye(size))
        proj.bias.zero_()
        proj.bias[:size].copy_(-mean[offset : offset + size].to(proj.bias.dtype))
        w_lin[:k, i * cfg.proj_dim : i * cfg.proj_dim + size] = q[:, offset : offset + size]
        offset += size
    offset = 0
    for name in names:
        size = model.sensors[name].latent_dim
        back = model.back_project[name]
        back.weight.zero_()
        back.weight[:, :k].copy_(coef[:k, offset : offset + size].T.to(back.weight.dtype))
        back.bias.copy_(coef[k, offset : offset + size].to(back.bias.dtype))
        offset += size
    tl.w_in.weight.zero_()
    tl.w_in.weight[:, :d_in].copy_(torch.eye(cfg.d_model, d_in))
    tl.w_in.bias.zero_()
    tl.w_lin.weight.copy_(w_lin.to(tl.w_lin.weight.dtype))
    for layer in (tl.wv, tl.vpos, tl.ffn[2], tl.w_out):
        layer.weight.zero_()
        layer.bias.zero_()
    return {"explained": explained, "n_samples": float(n * t)}

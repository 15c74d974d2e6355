"""The quality layer: the decoders' reconstruction error of the centre pixel at each date."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from latentcube.embed._plan import _device, _Plan

#: Target pixel-dates per decoder call of the quality layer (~15 kB each in the up-sampling path).
QUALITY_CHUNK = 2048

# ---------------------------------------------------------------------------------- quality layer


def _fold_for_inference(module: Any) -> Any:
    """``module`` with its linear layers rewritten as equivalent, faster plain convolutions (inference only).

    * ``ConvTranspose2d`` (stride 1): a transposed convolution equals a convolution with the flipped,
      in/out-swapped kernel over the input zero-padded by ``k - 1 - padding``; PyTorch's CPU kernels
      run that 2-3x faster (measured on the decoder's shapes).
    * ``MultiscaleConv``: parallel same-padded convolutions (kernels 1, 3, 5...) concatenated and mixed by
      a 1x1 convolution are all linear, so they equal one convolution with the largest kernel whose
      weights are the mix applied to the zero-padded branch kernels: ~4x faster than the four calls and
      the concatenation.
    Results differ by float summation order only. Modules that do not fit these patterns are kept.
    """
    import torch
    from torch import nn

    from latentcube.nn import MultiscaleConv

    if isinstance(module, nn.Sequential):
        return nn.Sequential(*(_fold_for_inference(m) for m in module))
    if (isinstance(module, nn.ConvTranspose2d) and module.stride == (1, 1) and module.dilation == (1, 1)
            and module.groups == 1 and module.output_padding == (0, 0) and module.padding_mode == "zeros"
            and all(k - 1 - p >= 0 for k, p in zip(module.kernel_size, module.padding, strict=True))):
        conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                         padding=tuple(k - 1 - p for k, p in zip(module.kernel_size, module.padding, strict=True)),
                         bias=module.bias is not None).to(module.weight)
        with torch.no_grad():
            conv.weight.copy_(module.weight.flip(-1, -2).transpose(0, 1))
            if module.bias is not None:
                conv.bias.copy_(module.bias)
        return conv.eval()
    if not isinstance(module, MultiscaleConv):
        return module
    branches, mix = list(module.branches), module.mix
    plain = all(
        isinstance(b, nn.Conv2d) and b.stride == (1, 1) and b.dilation == (1, 1) and b.groups == 1
        and b.kernel_size[0] == b.kernel_size[1] and b.kernel_size[0] % 2 == 1
        and b.padding == (b.kernel_size[0] // 2,) * 2 and b.padding_mode == "zeros" and b.bias is not None
        for b in branches
    ) and isinstance(mix, nn.Conv2d) and mix.kernel_size == (1, 1) and mix.groups == 1
    if not plain or sum(b.out_channels for b in branches) != mix.in_channels:
        return module
    k = max(b.kernel_size[0] for b in branches)
    w = torch.zeros(mix.out_channels, branches[0].in_channels, k, k, dtype=mix.weight.dtype, device=mix.weight.device)
    bias = mix.bias.detach().clone() if mix.bias is not None else torch.zeros_like(w[:, 0, 0, 0])
    m = mix.weight.detach()[:, :, 0, 0]
    col = 0
    for b in branches:
        kb, c = b.kernel_size[0], b.out_channels
        p = (k - kb) // 2
        w[:, :, p : p + kb, p : p + kb] += torch.einsum("om,mikl->oikl", m[:, col : col + c], b.weight.detach())
        bias += m[:, col : col + c] @ b.bias.detach()
        col += c
    conv = nn.Conv2d(w.shape[1], w.shape[0], k, padding=k // 2).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(bias)
    return conv.eval()


class _TargetDecoder:
    """Centre pixel of one date's reconstruction from a window of latents, at 1/n of the decoder's cost.

    ``__call__(zw, dw, rows, qpos)``: window latents ``zw`` (N, n, L) and their days ``dw`` (N, n);
    targets ``rows`` (M,) (which window) and ``qpos`` (M,) (the target date's position in it) ->
    (M, C) = ``decode(zw, dw)[rows, qpos, :, r, r]`` (the centre pixel, normalised units).

    The public ``decode`` reconstructs all n dates of the 15 x 15 patch; the quality layer needs one
    date's centre pixel. This runs the decoder's transformer once per window (it mixes all n dates) and
    its convolutional up-sampling path only for the target date (n = 11x less work there, and that
    path is ~85 % of the decoder's cost). It mirrors ``SensorDecoder.forward`` step by step, so it is
    checked against the public ``decode`` when built; if the decoder's internals differ from what it
    mirrors (another architecture), it falls back to the public path (exact, 11x slower) with a warning.
    """

    def __init__(self, full: Callable[[Any, Any], Any], decoder: Any, pre: Any = None) -> None:
        self.full, self.decoder, self.pre = full, decoder, pre
        self.fast = False
        try:
            c = decoder.config
            self.n, self.r, self.centre, self.offset = c.n_dates, c.patch_size // 2, c.centre_index, c.value_offset
            self.blocks = [_fold_for_inference(getattr(decoder, f"block{i}")) for i in (1, 2, 3)]
            self.fast = self._agrees()
        except (AttributeError, TypeError, RuntimeError, ValueError):
            self.fast = False
        if not self.fast:
            warnings.warn("quality layer: the decoder does not have the structure the fast centre-pixel path mirrors; "
                          "using the public decode (same numbers, ~11x slower).", RuntimeWarning, stacklevel=2)

    def _agrees(self) -> bool:
        import torch

        p = next(self.decoder.parameters())
        gen = torch.Generator().manual_seed(0)
        n_in = self.pre.in_features if self.pre is not None else self.decoder.config.latent_dim
        zw = torch.randn(6, self.n, n_in, generator=gen).to(p)
        dw = torch.cumsum(torch.rand(6, self.n, generator=gen) * 12, 1).to(p)
        rows = torch.arange(6, device=p.device).repeat_interleave(2)
        qpos = torch.randint(0, self.n, (12,), generator=gen).to(p.device)
        ref = self._public(zw, dw, rows, qpos)
        got = self._fast(zw, dw, rows, qpos)
        return bool(torch.allclose(got, ref, rtol=1e-4, atol=1e-5))

    def _public(self, zw, dw, rows, qpos):
        return self.full(zw, dw)[rows, qpos, :, self.r, self.r]

    def _fast(self, zw, dw, rows, qpos):
        import torch

        d = self.decoder
        z = self.pre(zw) if self.pre is not None else zw
        days = dw.to(z.dtype)
        rel = days - days[:, self.centre, None]
        h = d.transformer(d.inp(z) + d.pos(d.time(rel)))[rows, qpos]  # (M, d): the target date's token
        y = d.to_map(d.ln(h))[:, :, None, None]
        for block in self.blocks:
            y = block(y)
        y = d.head(y)[:, :, self.r, self.r]
        if d.linear is not None:
            zt = z[rows, qpos]
            p = d.config.patch_size
            # Only the centre pixel's rows of the linear read-out (layout "(c h w)").
            w = d.linear.weight.view(-1, p, p, zt.shape[-1])[:, self.r, self.r]
            b = d.linear.bias.view(-1, p, p)[:, self.r, self.r]
            y = y + torch.nn.functional.linear(zt, w, b)
        return y + self.offset

    def __call__(self, zw, dw, rows, qpos):
        return self._fast(zw, dw, rows, qpos) if self.fast else self._public(zw, dw, rows, qpos)


_DECODERS: dict[tuple[str, str, str], dict[str, _TargetDecoder]] = {}


def _target_decoders(model: Any, plan: _Plan) -> dict[str, _TargetDecoder]:
    """Per quality sensor: the centre-pixel decoder of the model's embedding (fused or the sensor's own)."""
    key = (plan.checkpoint, plan.sha256, _device(plan))
    if key not in _DECODERS:
        if plan.kind == "fusion":
            _DECODERS[key] = {
                s: _TargetDecoder(lambda z, d, s=s: model.decode(z, d)[s], model.sensors[s].decoder, model.back_project[s])
                for s in plan.quality_sensors
            }
        else:
            _DECODERS[key] = {plan.quality_sensors[0]: _TargetDecoder(model.decode, model.decoder)}
    return _DECODERS[key]


def _band_spans(meta: dict[str, Any], ds: xr.Dataset, sensor: str) -> np.ndarray:
    """Physical units per normalised unit for each band: reflectance (S2) or dB (S1)."""
    from latentcube.preprocess import Normalization

    norm = Normalization.from_dict(meta["normalization"])
    table = norm.s2 if sensor == "s2" else norm.s1_db
    bands = [str(b) for b in ds["band" if sensor == "s2" else "band_s1"].values]
    return np.array([table[b][1] - table[b][0] for b in bands], dtype="float32")


def reconstruction_error(
    decoders: dict[str, Callable[..., Any]], z: Any, days: Any, targets: dict[str, Any], spans: dict[str, np.ndarray],
    n_dates: int, *, chunk: int = QUALITY_CHUNK,
) -> dict[str, np.ndarray]:
    """Per pixel-date reconstruction error of the centre pixel, in physical units.

    Args:
        decoders: sensor -> callable ``(zw, dw, rows, qpos) -> (M, C)`` as ``_TargetDecoder``.
        z: dense embeddings (T, L, h, w) (torch), *before* the invalid mask: the decoder input of
            target t is the embedding of each of the ``n_dates`` dates of t's window
            (``window_starts``), each from its own dense computation.
        days: (T,) float days (torch) of the date axis.
        targets: sensor -> normalised model input (T, C, h, w) (torch, NaN = invalid) on the same axis.
        spans: sensor -> (C,) physical units per normalised unit (band hi - lo).
        n_dates: the model's window length (11).
        chunk: targets per decoder call (memory: ~15 kB per target).

    Returns:
        sensor -> (T, h, w) float32: mean over the finite bands of |reconstruction - input| (reflectance
        for S2, dB for S1); NaN where every band of that sensor's input is missing.
    """
    import torch

    from latentcube.nn import window_starts

    n_time, n_lat, height, width = z.shape
    dev = z.device
    starts = window_starts(n_time, n_dates, dev)
    n_win = n_time - n_dates + 1
    windows = torch.arange(n_win, device=dev)[:, None] + torch.arange(n_dates, device=dev)  # (W, n)
    qpos = torch.arange(n_time, device=dev) - starts
    days = days.to(device=dev, dtype=z.dtype)
    dw_all = days[windows]  # (W, n)
    zp = z.permute(2, 3, 0, 1).reshape(height * width, n_time, n_lat)  # (P, T, L)
    n_pix = zp.shape[0]
    px_step = max(1, chunk // n_time)
    out = {}
    for sensor, decode in decoders.items():
        x = targets[sensor]
        n_band = x.shape[1]
        recon = torch.empty(n_pix, n_time, n_band, dtype=z.dtype, device=dev)
        for p0 in range(0, n_pix, px_step):
            zc = zp[p0 : p0 + px_step]  # (pc, T, L)
            pc = zc.shape[0]
            zw = zc[:, windows].reshape(pc * n_win, n_dates, n_lat)
            dw = dw_all.repeat(pc, 1)
            rows = (torch.arange(pc, device=dev)[:, None] * n_win + starts).reshape(-1)  # pixel-major, (pc * T)
            recon[p0 : p0 + pc] = decode(zw, dw, rows, qpos.repeat(pc)).reshape(pc, n_time, n_band)
        recon = recon.permute(1, 2, 0).float().cpu().numpy().reshape(n_time, n_band, height, width)
        inp = x.float().cpu().numpy()
        err = np.abs(recon - inp) * spans[sensor][None, :, None, None]
        valid = np.isfinite(err)
        count = valid.sum(axis=1)
        total = np.where(valid, err, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sensor] = np.where(count > 0, total / count, np.nan).astype("float32")
    return out

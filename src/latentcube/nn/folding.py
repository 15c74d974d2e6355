"""Inference-only rewrites of linear decoder layers into equivalent, faster plain convolutions."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import MultiscaleConv

__all__ = ["fold_for_inference"]


def fold_for_inference(module: nn.Module) -> nn.Module:
    """``module`` with its linear layers rewritten as equivalent, faster plain convolutions (inference only).

    * ``ConvTranspose2d`` (stride 1): a transposed convolution equals a convolution with the flipped,
      in/out-swapped kernel over the input zero-padded by ``k - 1 - padding``; PyTorch's CPU kernels
      run that 2-3x faster on the decoder's shapes.
    * ``MultiscaleConv``: parallel same-padded convolutions (kernels 1, 3, 5...) concatenated and mixed by
      a 1x1 convolution are all linear, so they equal one convolution with the largest kernel whose
      weights are the mix applied to the zero-padded branch kernels: ~4x faster than the four calls and
      the concatenation.
    Results differ by float summation order only. Modules that do not fit these patterns are kept.
    """
    if isinstance(module, nn.Sequential):
        return nn.Sequential(*(fold_for_inference(m) for m in module))
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

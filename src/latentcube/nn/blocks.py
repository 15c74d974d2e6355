"""Building blocks: valid (unpadded) convolutional attention blocks, global CBAM, day-difference attention.

Encoder blocks are translation-equivariant and use no padding, so running them on a 15x15 patch is
*literally* the dense computation restricted to that crop: the scene path pads the scene once with
invalid context and shares every per-date, per-pixel feature between all windows that contain it.
Nothing in the encoder normalises over space or time windows (that would make a pixel's output depend
on which crop it was computed in).

One module (~510 lines) on purpose: every block here carries the same patch/scene equivalence contract,
and the dense path's correctness is reviewed block by block in one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .time_encoding import DayDifferenceEncoding

__all__ = [
    "linear",
    "fill_and_mask",
    "center_crop",
    "LocalCBAM",
    "ValidConvBlock",
    "SpatialReducer",
    "GlobalCBAM",
    "MultiscaleConv",
    "DayAttentionLayer",
]


def _onednn_linear_op():
    """oneDNN's fused linear (the op torch.compile's CPU backend emits), or None where torch lacks it."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear_op()


def linear(x: Tensor, layer: nn.Linear, gelu: bool = False) -> Tensor:
    """``layer(x)``, followed by the exact GELU when ``gelu``: the same numbers up to float32 rounding.

    Inference on CPU in float32 runs oneDNN's fused linear, which adds the bias and applies the GELU
    inside the matrix product. Eager ``F.linear`` first copies the bias into the output and GELU then
    reads and writes it again; at this model's widths (32-64 features per row) those extra passes over
    memory, not the products, bound the dense path (about half the time per call, benchmarks/RESULTS.md).
    With autograd (training), under autocast, on
    other devices and dtypes, or without oneDNN in the torch build, the eager ops run.
    """
    if (_ONEDNN_LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and layer.weight.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")):
        return _ONEDNN_LINEAR(x, layer.weight, layer.bias, "gelu" if gelu else "none", [], "none" if gelu else "")
    y = F.linear(x, layer.weight, layer.bias)
    return F.gelu(y) if gelu else y


def fill_and_mask(x: Tensor, dim: int) -> Tensor:
    """Replace NaN/inf by 0 and append one validity channel per band along ``dim`` (C -> 2C)."""
    valid = torch.isfinite(x)
    return torch.cat([torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device)), valid.to(x.dtype)], dim=dim)


def center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre crop of the last two (spatial) dims to ``size`` = (h, w) (differences must be even)."""
    (h, w), (th, tw) = x.shape[-2:], size
    if (h - th) % 2 or (w - tw) % 2 or th > h or tw > w:
        raise ValueError(f"cannot centre-crop {h}x{w} to {th}x{tw}")
    oy, ox = (h - th) // 2, (w - tw) // 2
    return x[..., oy : oy + th, ox : ox + tw]


class LocalCBAM(nn.Module):
    """CBAM made local and valid: channel then spatial attention from k x k neighbourhoods.

    Channel attention pools (average and max) over a stride-1 ``pool`` x ``pool`` window instead of the
    whole map, so it shrinks the map like a convolution; spatial attention convolves the channel-mean
    and channel-max maps with an unpadded ``spatial_kernel`` conv. Shapes: (N, C, H, W) ->
    (N, C, H - pool - spatial_kernel + 2, W - ...). ``shrink`` = pool + spatial_kernel - 2.
    """

    def __init__(self, channels: int, pool: int, spatial_kernel: int, reduction: int = 4):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.pool, self.spatial_kernel = pool, spatial_kernel
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel)
        self.shrink = pool + spatial_kernel - 2

    def forward(self, x: Tensor) -> Tensor:
        if self.pool > 1:
            avg = F.avg_pool2d(x, self.pool, stride=1)
            mx = F.max_pool2d(x, self.pool, stride=1)
            x = center_crop(x, avg.shape[-2:])
        else:  # a 1x1 window: both poolings are the identity
            avg = mx = x
        # Gates are 2 * sigmoid (1 at a zero logit) rather than sigmoid: stacked plain sigmoid gates halve
        # the signal per gate at initialisation, which made the encoder learn very slowly (docs/method.md).
        x = x * (2 * torch.sigmoid(self.mlp(avg) + self.mlp(mx)))
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        gate = 2 * torch.sigmoid(self.spatial(stats))
        return center_crop(x, gate.shape[-2:]) * gate


class ValidConvBlock(nn.Module):
    """Unpadded conv (one kernel, or parallel kernels = multiscale module) + GELU + local CBAM.

    With several kernels every branch is centre-cropped to the smallest output, concatenated and mixed
    by a 1x1 conv (Inception-style multiscale module). Kernels must be odd so crops are symmetric.
    Shapes: (N, in_ch, H, W) -> (N, out_ch, H - shrink, W - shrink), ``shrink`` = max(k) - 1 + cbam.shrink.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernels: tuple[int, ...],
        pool: int,
        spatial_kernel: int,
        reduction: int = 4,
        branch_ch: int | None = None,
    ):
        super().__init__()
        self.multiscale = len(kernels) > 1
        branch_ch = branch_ch or out_ch
        self.branches = nn.ModuleList(
            nn.Conv2d(in_ch, branch_ch if self.multiscale else out_ch, k) for k in kernels
        )
        self.mix = nn.Conv2d(branch_ch * len(kernels), out_ch, 1) if self.multiscale else nn.Identity()
        self.cbam = LocalCBAM(out_ch, pool, spatial_kernel, reduction)
        self.shrink = max(kernels) - 1 + self.cbam.shrink

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        size = min(o.shape[-2] for o in outs), min(o.shape[-1] for o in outs)
        y = self.mix(torch.cat([center_crop(o, size) for o in outs], dim=1)) if self.multiscale else outs[0]
        return self.cbam(F.gelu(y))


class SpatialReducer(nn.Module):
    """Three valid conv-attention blocks; the first is multiscale. (N, in_ch, H, W) -> (N, widths[-1], H-rf+1, W-rf+1).

    ``receptive_field`` = 1 + sum of block shrinks; the autoencoder config asserts it equals the patch
    size, so a patch reduces to exactly 1x1 and a NaN-padded scene of H x W to exactly H x W.
    """

    def __init__(
        self,
        in_ch: int,
        widths: tuple[int, int, int],
        multiscale_kernels: tuple[int, ...],
        conv_kernels: tuple[int, int],
        ca_pools: tuple[int, int, int],
        sa_kernels: tuple[int, int, int],
        reduction: int = 4,
        branch_ch: int | None = None,
        centre_skip: bool = True,
    ):
        super().__init__()
        kernels = (tuple(multiscale_kernels), (conv_kernels[0],), (conv_kernels[1],))
        chans = (in_ch, *widths)
        self.blocks = nn.ModuleList(
            ValidConvBlock(chans[i], chans[i + 1], kernels[i], ca_pools[i], sa_kernels[i], reduction,
                           branch_ch if i == 0 else None)
            for i in range(3)
        )
        self.receptive_field = 1 + sum(b.shrink for b in self.blocks)
        self.out_ch = widths[-1]
        # Centre skip: a 1x1 conv of the (filled + mask) input at the output pixel itself, added to the
        # features. It gives the temporal layer the centre pixel's own values through one linear map
        # instead of through three gated conv blocks; cropping by the receptive field keeps the
        # reducer a valid (dense-exact) convolution.
        self.skip = nn.Conv2d(in_ch, widths[-1], 1) if centre_skip else None

    def forward(self, x: Tensor) -> Tensor:
        # Channels-last: oneDNN's convolutions are faster on CPU (benchmarks/RESULTS.md); same values.
        x = x.contiguous(memory_format=torch.channels_last)
        inp = x
        for block in self.blocks:
            x = block(x)
        if self.skip is not None:
            x = x + self.skip(center_crop(inp, x.shape[-2:]))
        return x


class GlobalCBAM(nn.Module):
    """Standard CBAM (Woo et al. 2018): global avg/max channel attention, then 7x7 spatial attention.

    Used in the decoder only (it pools over the whole map, which is fine there: the decoder is not
    run densely). Shapes: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 4, spatial_kernel: int = 7):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        avg = x.mean(dim=(-2, -1), keepdim=True)
        mx = x.amax(dim=(-2, -1), keepdim=True)
        x = x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(stats))


class MultiscaleConv(nn.Module):
    """Parallel same-padded convs of several odd kernel sizes, concatenated, mixed by a 1x1 conv.

    Shapes: (N, in_ch, H, W) -> (N, out_ch, H, W). Decoder version of the multiscale module.
    """

    def __init__(self, in_ch: int, out_ch: int, kernels: tuple[int, ...], branch_ch: int):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_ch, branch_ch, k, padding=k // 2) for k in kernels)
        self.mix = nn.Conv2d(branch_ch * len(kernels), out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(torch.cat([b(x) for b in self.branches], dim=1))


class DayAttentionLayer(nn.Module):
    """One pre-LN transformer layer over a date window whose positions are day differences.

    For query date j and key date i of the same window:
    ``q_j = Wq LN(x_j)``, ``k_i = Wk LN(x_i) + Kpos(d_i - d_j)``, ``v_i = Wv LN(x_i) + Vpos(d_i - d_j)``,
    with ``x = W_in s`` and ``Kpos``/``Vpos`` linear maps of sinusoidal day-difference features. Then
    ``h = x_j + concat_heads(softmax(q k / sqrt(d_h)) v)``, ``h = h + FFN(LN(h))``, ``out = W_out LN(h)``.

    Position terms depend only on dates, and every other op is per token, so the per-date projections
    can be shared between all windows containing a date (``forward_windows``). There is no output
    projection after the heads (the FFN's first linear follows directly); dropping it saves one D x D
    matmul per query, which is the per-embedding cost that dominates the dense fused path.

    Shapes: ``forward_patches``: s (B, T, d_in), days (B, T) -> (B, T, d_out), every date a query over
    all T dates. ``forward_windows``: s (M, P, d_in) rows of tokens shared by P pixels, ``row_days``
    (M,), ``windows`` (N, n) row indices, ``query_pos`` (N,) position of the query inside its window
    -> (N, P, d_out).
    """

    def __init__(
        self,
        d_in: int,
        d_model: int,
        n_heads: int,
        ffn_dim: int,
        d_out: int,
        n_frequencies: int = 8,
        min_period_days: float = 4.0,
        max_period_days: float = 1461.0,
        dropout: float = 0.0,
        linear_out: bool = True,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.scale = n_heads, (d_model // n_heads) ** -0.5
        self.w_in = nn.Linear(d_in, d_model)
        self.ln_attn = nn.LayerNorm(d_model)
        self.wq, self.wk, self.wv = (nn.Linear(d_model, d_model) for _ in range(3))
        self.time = DayDifferenceEncoding(n_frequencies, min_period_days, max_period_days)
        self.kpos = nn.Linear(self.time.n_features, d_model)
        self.vpos = nn.Linear(self.time.n_features, d_model)
        self.ln_ffn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model), nn.Dropout(dropout))
        self.ln_out = nn.LayerNorm(d_model)
        self.w_out = nn.Linear(d_model, d_out)
        # Linear read-out of the un-normalised residual stream next to the LayerNorm one: the LayerNorm
        # discards the stream's scale, which carries absolute brightness (docs/method.md).
        self.w_lin = nn.Linear(d_model, d_out, bias=False) if linear_out else None

    def _ffn(self, h: Tensor) -> Tensor:
        if self.training:  # dropout is active only here
            return self.ffn(h)
        first, act, second, _ = self.ffn
        assert isinstance(act, nn.GELU) and act.approximate == "none", "the fused path assumes the exact GELU"
        return linear(linear(h, first, gelu=True), second)

    def _finish(self, x: Tensor, attended: Tensor) -> Tensor:
        return self._finish_residual(x + attended)

    def _finish_residual(self, h: Tensor) -> Tensor:
        """The layer after attention, from the residual stream ``h = x + attended``."""
        h = h + self._ffn(self.ln_ffn(h))
        z = linear(self.ln_out(h), self.w_out)
        return z if self.w_lin is None else z + linear(h, self.w_lin)

    def forward_patches(self, s: Tensor, days: Tensor) -> Tensor:
        x = linear(s, self.w_in)
        h = self.ln_attn(x)
        q, k, v = (rearrange(linear(h, w), "b t (h d) -> b h t d", h=self.n_heads) for w in (self.wq, self.wk, self.wv))
        q = q * self.scale
        feats = self.time(days[:, None, :] - days[:, :, None])  # (B, j, i, F): d_i - d_j
        kp, vp = (rearrange(linear(feats, w), "b j i (h d) -> b h j i d", h=self.n_heads) for w in (self.kpos, self.vpos))
        logits = torch.einsum("bhjd,bhid->bhji", q, k) + torch.einsum("bhjd,bhjid->bhji", q, kp)
        a = logits.softmax(dim=-1)
        o = torch.einsum("bhji,bhid->bhjd", a, v) + torch.einsum("bhji,bhjid->bhjd", a, vp)
        return self._finish(x, rearrange(o, "b h t d -> b t (h d)"))

    def forward_windows(
        self, s: Tensor, row_days: Tensor, windows: Tensor, query_pos: Tensor, *, max_block: int = 1 << 25
    ) -> Tensor:
        x = linear(s, self.w_in)  # once per row, shared by every window containing the row
        h = self.ln_attn(x)
        # Pixel-major, head-major layout: every pixel-head is one small attention problem, solved for a
        # block of query rows at once with batched matmuls over all (pixel, head) pairs.
        k = rearrange(linear(h, self.wk), "m p (h d) -> p h m d", h=self.n_heads).contiguous()
        v = rearrange(linear(h, self.wv), "m p (h d) -> p h m d", h=self.n_heads).contiguous()
        qrow = windows.gather(1, query_pos[:, None]).squeeze(1)
        feats = self.time(row_days[windows] - row_days[qrow][:, None])  # (N, n, F), pixel-independent
        kp = rearrange(linear(feats, self.kpos), "r m (h d) -> h r d m", h=self.n_heads)
        vp = rearrange(linear(feats, self.vpos), "r m (h d) -> h r m d", h=self.n_heads)
        n_pix = s.shape[1]
        # A query depends only on its row, not its window: when rows are queried more often than
        # they exist (overlapping windows), project every row once and gather.
        q_all = None
        if windows.shape[0] > s.shape[0]:
            q_all = rearrange(linear(h, self.wq), "m p (h d) -> p h m d", h=self.n_heads) * self.scale
        outs = []
        for r0, r1, lo, hi in _row_blocks(windows, n_pix * self.n_heads, max_block):
            win = windows[r0:r1] - lo  # (R, n) key columns inside the span [lo, hi)
            if q_all is None:
                q = rearrange(linear(h[qrow[r0:r1]], self.wq), "r p (h d) -> p h r d", h=self.n_heads) * self.scale
            else:
                q = q_all[:, :, qrow[r0:r1]]
            # Logits (P, h, window position, row): softmax over a short non-innermost dim is faster on CPU.
            # Content logits k_i . q_u for every (date in span, query row), then each row's window.
            span = k[:, :, lo:hi] @ q.transpose(-1, -2)  # (P, h, S, R)
            idx = win.T.expand(*span.shape[:2], *win.T.shape)  # (P, h, n, R)
            logits = span.gather(-2, idx)
            # Position logits Kpos(d_i - d_u) . q: one (n x d) @ (d x P) matmul per (head, row).
            pos = kp[:, r0:r1].transpose(-1, -2) @ rearrange(q, "p h r d -> h r d p")  # (h, R, n, P)
            logits = logits + rearrange(pos, "h r m p -> p h m r")
            a = logits.softmax(dim=-2)
            dense_a = a.new_zeros(span.shape).scatter_(-2, idx, a)  # a's dtype: fp32 under autocast
            o = dense_a.transpose(-1, -2) @ v[:, :, lo:hi]  # (P, h, R, d)
            o = o + rearrange(rearrange(a, "p h m r -> h r p m") @ vp[:, r0:r1], "h r p d -> p h r d")
            h_q = _residual_sum(rearrange(x[qrow[r0:r1]], "r p (h d) -> r p h d", h=self.n_heads),
                                rearrange(o, "p h r d -> r p h d"))
            outs.append(self._finish_residual(rearrange(h_q, "r p h d -> r p (h d)")))
        return torch.cat(outs, dim=0)

    def forward_all_positions(self, s: Tensor, days: Tensor, n: int, *, windows: list[int] | None = None,
                              windows_per_block: int = 12) -> Tensor:
        """Every position of every window of ``n`` consecutive dates: the fused path's per-sensor rows.

        s (T, P, d_in) one token per date and pixel, days (T,) -> (T - n + 1, n, P, d_out): entry [w, j]
        is date w + j queried inside the window of dates w .. w + n - 1. The same numbers as
        ``forward_windows`` with those (T - n + 1) * n rows, computed without index gathers: a query
        date and a key date give the same logit in every window holding both, so each block of
        ``windows_per_block`` windows computes the logits of all date pairs of its span once and reads
        every window's (n x n) logits as a strided view of them (2 cores: ~25 % less time per call).
        ``windows`` (increasing window starts): compute only those, -> (len(windows), n, P, d_out).
        """
        n_total, n_pix = s.shape[:2]
        n_windows = n_total - n + 1
        if windows is None:
            windows = list(range(n_windows))
        elif any(not 0 <= w < n_windows for w in windows) or any(b <= a for a, b in zip(windows[:-1], windows[1:], strict=True)):
            raise ValueError(f"windows must be increasing starts in [0, {n_windows}), got {windows}")
        if not windows:
            return s.new_empty(0, n, n_pix, self.w_out.out_features)
        heads = self.n_heads
        x = linear(s, self.w_in)
        h = self.ln_attn(x)
        q, k, v = (rearrange(linear(h, w), "m p (h d) -> p h m d", h=heads).contiguous()
                   for w in (self.wq, self.wk, self.wv))
        q = q * self.scale
        # Residual streams of the computed rows, filled block by block. The layer's tail runs on groups of
        # at least ``windows_per_block`` windows: with sparse window lists its ops stay large (per-op
        # overhead), and with all windows its intermediates stay as small as one block's (cache).
        res = x.new_empty(len(windows), n, n_pix, heads, x.shape[-1] // heads)
        out = None
        done = finished = 0
        for w0, w1, sel in _window_blocks(windows, n_windows, windows_per_block):
            nw, span, k_sel = w1 - w0, w1 - w0 + n - 1, len(sel)
            rows = k_sel * n
            dates = slice(w0, w0 + span)  # the block's span: window w0 starts at date w0
            qb, kb, vb = (t[:, :, dates] for t in (q, k, v))
            # Logits of every (query date j, key date i) pair of the span: content and day-difference terms.
            pair = self.time(days[dates][None, :] - days[dates][:, None])  # (j, i, F)
            kp = rearrange(linear(pair, self.kpos), "j i (h d) -> h j d i", h=heads)
            vp = rearrange(linear(pair, self.vpos), "j i (h d) -> h j i d", h=heads).contiguous()
            logits = qb @ kb.transpose(-1, -2) + rearrange(rearrange(qb, "p h j d -> h j p d") @ kp, "h j p i -> p h j i")
            # Row (window w, position j) reads key dates w + m of query date w + j: a strided view of the pairs.
            _, _, sj, si = logits.stride()
            view = logits.as_strided((n_pix, heads, nw, n, n), (*logits.stride()[:2], sj + si, sj, si))
            # Vpos per date pair, read the same way: row (w, j), key m -> pair (w + j, w + m).
            _, vj, vi, _ = vp.stride()
            vp_rows = vp.as_strided((heads, nw, n, n, vp.shape[-1]), (vp.stride(0), vj + vi, vj, vi, vp.stride(3)))
            xs = x[dates]
            x_rows = xs.as_strided((nw, n, *xs.shape[1:]), (xs.stride(0), *xs.stride()))  # row (w, j): date w + j
            if k_sel < nw:  # only some windows of the block: keep their rows
                pick = torch.tensor(sel, device=x.device)
                view, vp_rows, x_rows = view[:, :, pick], vp_rows[:, pick], x_rows[pick]
            a = rearrange(view, "p h w j m -> p h m (w j)").softmax(dim=2)  # softmax over a non-innermost dim
            # The weights into a dense (key date of the span) x (row) matrix: row (w, j) key m at w + m.
            dense = a.new_zeros(n_pix, heads, span, rows)
            if k_sel == nw:  # by strides: (w + m, w * n + j)
                _, _, sk, sr = dense.stride()
                dense.as_strided((n_pix, heads, n, nw, n), (*dense.stride()[:2], sk, sk + n * sr, sr)).copy_(
                    rearrange(a, "p h m (w j) -> p h m w j", j=n))
            else:
                key = (pick[None, :, None] + torch.arange(n, device=x.device)[:, None, None]).expand(n, k_sel, n)
                dense.scatter_(2, key.reshape(1, 1, n, rows).expand(n_pix, heads, n, rows), a)
            o = dense.transpose(-1, -2) @ vb  # (P, h, rows, d)
            # Day-difference value terms of row (w, j): sum_m a * Vpos(d_{w+m} - d_{w+j}).
            o = o + rearrange(rearrange(a, "p h m r -> h r p m") @ rearrange(vp_rows, "h w j m d -> h (w j) m d"),
                              "h r p d -> p h r d")
            _residual_sum(rearrange(x_rows, "w j p (h d) -> w j p h d", h=heads),
                          rearrange(o, "p h (w j) d -> w j p h d", j=n), out=res[done : done + k_sel])
            done += k_sel
            if done - finished >= windows_per_block or done == len(windows):
                z = self._finish_residual(rearrange(res[finished:done], "w j p h d -> (w j) p (h d)"))
                if out is None:
                    out = z.new_empty(len(windows), n, n_pix, z.shape[-1])
                out[finished:done] = z.view(done - finished, n, n_pix, -1)
                finished = done
        return out

    def forward_window_queries(self, s: Tensor, row_days: Tensor, starts: Tensor, query_pos: Tensor) -> Tensor:
        """One query per target over its own window of token rows: the fused path's fusion layer.

        s (W, n, P, d_in): the n token rows of each of W windows for P pixels, ``row_days`` (W, n),
        ``starts`` (N,) the window of each target, ``query_pos`` (N,) its query row inside that window
        -> (N, P, d_out). The same numbers as ``forward_windows`` with rows ``starts * n + arange(n)``;
        here keys are never shared between windows, so the logits are one elementwise product per
        (target, key row) in the rows' own (row, pixel, feature) layout, with no transposed copies of
        every row's keys and values (2 cores: about half the time of ``forward_windows``).
        """
        n_win, n, n_pix = s.shape[:3]
        heads = self.n_heads
        x = linear(s, self.w_in)  # (W, n, P, D)
        h = self.ln_attn(x)
        k, v = (rearrange(linear(h, w), "w m p (h d) -> w m p h d", h=heads) for w in (self.wk, self.wv))
        x_q = x[starts, query_pos]  # (N, P, D)
        q = rearrange(linear(h[starts, query_pos], self.wq), "t p (h d) -> t p h d", h=heads) * self.scale
        feats = self.time(row_days[starts] - row_days[starts, query_pos][:, None])  # (N, n, F): d_key - d_query
        kp = rearrange(linear(feats, self.kpos), "t m (h d) -> t h d m", h=heads)
        vp = rearrange(linear(feats, self.vpos), "t m (h d) -> t h m d", h=heads)
        # Targets in runs of consecutive windows read their keys and values as slices (no gathered copies).
        runs = _consecutive_runs(starts.tolist())
        content = torch.cat([(k[w0 : w0 + t1 - t0] * q[t0:t1, None]).sum(-1) for t0, t1, w0 in runs])
        logits = content + rearrange(rearrange(q, "t p h d -> t h p d") @ kp, "t h p m -> t m p h")
        a = logits.softmax(dim=1)  # (N, n, P, h)
        o = torch.cat([(a[t0:t1, ..., None] * v[w0 : w0 + t1 - t0]).sum(1) for t0, t1, w0 in runs])
        o = o + rearrange(rearrange(a, "t m p h -> t h p m") @ vp, "t h p d -> t p h d")
        return self._finish(x_q, rearrange(o, "t p h d -> t p (h d)"))


def _residual_sum(x: Tensor, attended: Tensor, out: Tensor | None = None) -> Tensor:
    """``x + attended`` written into ``out`` (default: a new row-major tensor of their shape).

    Both may be strided views (the rows' inputs, the heads' outputs in their attention layout): the add
    reads them as they are, where rearranging either into the row layout first would copy it.
    """
    return torch.add(x, attended, out=x.new_empty(x.shape) if out is None else out)


def _window_blocks(windows: list[int], n_windows: int, per_block: int) -> list[tuple[int, int, list[int]]]:
    """(w0, w1, selected): blocks [w0, w1) of ``per_block`` consecutive windows out of ``n_windows`` that hold
    some of the increasing ``windows``, and the positions of those inside the block.

    A block's attention core shares the logits of its date span, so even a block of few wanted windows
    costs little more than their rows; the grid is the same for every window list (all windows: the
    blocks 0..per_block-1, per_block..., as without a list)."""
    blocks: dict[int, list[int]] = {}
    for w in windows:
        blocks.setdefault(w // per_block, []).append(w % per_block)
    return [(b * per_block, min((b + 1) * per_block, n_windows), sel) for b, sel in blocks.items()]


def _consecutive_runs(starts: list[int]) -> list[tuple[int, int, int]]:
    """Split targets into runs (t0, t1, w0): targets t0 .. t1 - 1 use windows w0, w0 + 1, ... in order."""
    runs: list[tuple[int, int, int]] = []
    for t, w in enumerate(starts):
        if runs and w == runs[-1][2] + t - runs[-1][0]:
            runs[-1] = (runs[-1][0], t + 1, runs[-1][2])
        else:
            runs.append((t, t + 1, w))
    return runs


def _row_blocks(windows: Tensor, batch: int, max_block: int):
    """Split query rows into consecutive blocks whose key span keeps the logits block small.

    Yields (r0, r1, lo, hi): rows r0..r1-1 use key rows lo..hi-1. A block grows while its dense
    (rows x span) logit block wastes at most 2x over the n keys per row actually needed and stays
    under ``max_block`` elements across ``batch`` pixel-heads. Rows with shared key dates (overlapping
    windows) therefore go in large blocks; rows with disjoint keys in small ones. (The fused scene path
    uses ``forward_all_positions`` and ``forward_window_queries`` instead; tests compare them to this.)
    """
    lo_all = windows.min(dim=1).values.tolist()
    hi_all = (windows.max(dim=1).values + 1).tolist()
    n_rows, n = windows.shape
    r0 = 0
    while r0 < n_rows:
        lo, hi, r1 = lo_all[r0], hi_all[r0], r0 + 1
        while r1 < n_rows:
            nlo, nhi = min(lo, lo_all[r1]), max(hi, hi_all[r1])
            rows, width = r1 + 1 - r0, nhi - nlo
            if width > 2 * n or rows * width * batch > max_block:
                break
            lo, hi, r1 = nlo, nhi, r1 + 1
        yield r0, r1, lo, hi
        r0 = r1

"""Per-sensor context-aware autoencoder (paper §III-B), one class for every sensor, built from a config.

The encoder maps a (T, C, 15, 15) patch sequence to one latent vector per date; the value at a date is
the embedding of the patch's centre pixel at that date. It is built so that ``encode_scene`` (whole
scene, shared computation) equals ``encode_patches`` on the extracted patches up to float rounding:
see ``docs/method.md``.

One module (~500 lines) on purpose: encoder, decoder and the scene-tiling helpers the fusion model reuses
must agree on the window convention, which is easiest to check when they sit together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from einops import rearrange
from torch import Tensor, nn

from ..constants import DEFAULT_PIXEL_CHUNK, S1_BANDS, S2_BANDS
from .blocks import DayAttentionLayer, GlobalCBAM, MultiscaleConv, SpatialReducer, fill_and_mask
from .folding import fold_for_inference
from .time_encoding import DayDifferenceEncoding, window_indices, window_starts

#: Default spatial tile of ``encode_scene``: bounds memory (per-date features of a whole 10,000 x 10,000
#: scene would not fit) at ~11 % halo overhead; ``None`` = one tile.
DEFAULT_TILE = 256
#: Pixel-dates per call of the spatial stage in ``scene_features``: dates go through the convolutions
#: a few at a time, so their activations (~100 channels per pixel-date) stay ~30 MB instead of growing
#: with the number of dates; faster and far smaller than one call (benchmarks/RESULTS.md).
SPATIAL_CHUNK_PIXEL_DATES = 1 << 15

__all__ = [
    "DEFAULT_PIXEL_CHUNK",
    "DEFAULT_TILE",
    "AutoencoderConfig",
    "s1_config",
    "s2_config",
    "SensorEncoder",
    "SensorDecoder",
    "SensorAutoencoder",
    "scene_tiles",
]


@dataclass(frozen=True)
class AutoencoderConfig:
    """Everything that defines a sensor autoencoder; ``s1_config()``/``s2_config()`` are the presets.

    Encoder receptive field = 1 + (max(multiscale_kernels) - 1) + sum(conv_kernels - 1)
    + sum(ca_pools - 1) + sum(sa_kernels - 1); it must equal ``patch_size`` (checked here) so that a
    patch reduces to exactly one pixel. All kernels/pools must be odd.
    """

    sensor: str
    n_bands: int
    latent_dim: int
    band_names: tuple[str, ...] = ()
    patch_size: int = 15
    n_dates: int = 11
    # Encoder spatial reducer (valid convolutions; see blocks.SpatialReducer).
    widths: tuple[int, int, int] = (32, 48, 64)
    # Defaults: convolutions alone reach 13 x 13 (radius 3 + 2 + 1); block 2's 3 x 3 spatial attention
    # adds the last ring. Rings reached only through several stacked sigmoid gates get vanishing
    # influence (measured ~1e-11 gradients), so most of the 15 x 15 field must come from convolutions.
    multiscale_kernels: tuple[int, ...] = (1, 3, 5, 7)
    multiscale_branch_ch: int = 16
    conv_kernels: tuple[int, int] = (5, 3)
    ca_pools: tuple[int, int, int] = (1, 1, 1)
    sa_kernels: tuple[int, int, int] = (1, 3, 1)
    cbam_reduction: int = 4
    # 1x1 conv of the centre pixel's own (filled + mask) input added to the reducer's output.
    centre_skip: bool = True
    # Linear paths around the LayerNorms: encoder latent read-out of the raw residual stream, and a
    # per-date Linear(latent -> C*p*p) added to the decoder's conv output.
    linear_paths: bool = True
    # A p x p linear convolution of the (centred, NaN -> 0) input added to the latent: the linear part of
    # the code, warm-started from a weighted per-date PCA before training (nn.linear_init). Off by
    # default (the paper's architecture); training configs with ``warm_start: pca`` switch it on.
    linear_patch: bool = False
    # Typical normalised value: the encoder sees ``x - value_offset`` (a filled invalid value then sits
    # at the typical level) and the decoder predicts the deviation from it. Without it the output bias
    # alone needs ~|mean| / lr Adam steps to reach the data mean (S1 ~0.6: hundreds of steps).
    # Presets: S1 0.5 (middle of the dB range), S2 0.15 (land reflectance in normalised units).
    value_offset: float = 0.0
    # Encoder temporal layer (one day-difference attention layer; see blocks.DayAttentionLayer).
    d_model: int = 32
    n_heads: int = 2
    ffn_dim: int = 64
    dropout: float = 0.1
    n_frequencies: int = 8
    min_period_days: float = 4.0
    max_period_days: float = 1461.0
    # Decoder (patch-only, so ordinary full transformer layers and global CBAM are fine).
    decoder_d_model: int = 64
    decoder_heads: int = 4
    decoder_layers: int = 1
    decoder_ffn_dim: int = 128
    decoder_widths: tuple[int, int, int] = (64, 32, 16)
    decoder_multiscale_kernels: tuple[int, ...] = (1, 3, 5)
    decoder_branch_ch: int = 8

    def __post_init__(self) -> None:
        if self.n_bands < 1 or self.latent_dim < 1:
            raise ValueError("n_bands and latent_dim must be positive")
        if self.band_names and len(self.band_names) != self.n_bands:
            raise ValueError(f"{len(self.band_names)} band_names given for n_bands={self.n_bands}")
        canonical = {"s2": S2_BANDS, "s1": S1_BANDS}.get(self.sensor, ())
        names = [str(b) for b in self.band_names]
        if names and set(names) <= set(canonical) and names != [b for b in canonical if b in names]:
            # Cubes hold bands in this order (latentcube.cube), so a model in another can read no valid cube.
            raise ValueError(f"band_names {names} must follow the cubes' band order: use "
                             f"{[b for b in canonical if b in names]}")
        if self.patch_size % 2 == 0 or self.n_dates < 1:
            raise ValueError(f"patch_size must be odd (a centre pixel), got {self.patch_size}")
        sizes = (*self.multiscale_kernels, *self.conv_kernels, *self.ca_pools, *self.sa_kernels)
        if len(self.conv_kernels) != 2 or len(self.ca_pools) != 3 or len(self.sa_kernels) != 3:
            raise ValueError("conv_kernels needs 2 entries (blocks 2, 3); ca_pools and sa_kernels 3 each")
        if any(k < 1 or k % 2 == 0 for k in sizes):
            raise ValueError(f"all kernel and pool sizes must be odd and >= 1, got {sizes}")
        if self.receptive_field != self.patch_size:
            raise ValueError(
                f"inconsistent receptive field for sensor {self.sensor!r}: the encoder blocks see "
                f"{self.receptive_field} x {self.receptive_field} pixels (1 + (max multiscale kernel - 1) + "
                f"sum(conv_kernels - 1) + sum(ca_pools - 1) + sum(sa_kernels - 1)) but patch_size is "
                f"{self.patch_size}; they must be equal so a patch reduces to exactly its centre pixel"
            )
        if self.d_model % self.n_heads or self.decoder_d_model % self.decoder_heads:
            raise ValueError("d_model must be divisible by n_heads (encoder and decoder)")
        if self.patch_size < 4:
            raise ValueError("patch_size must be at least 5 for the three-stage decoder")

    @property
    def receptive_field(self) -> int:
        return 1 + (max(self.multiscale_kernels) - 1) + sum(k - 1 for k in self.conv_kernels) + sum(
            p - 1 for p in self.ca_pools
        ) + sum(k - 1 for k in self.sa_kernels)

    @property
    def centre_index(self) -> int:
        """Index of the target date inside a patch's date axis (5 for 11 dates)."""
        return self.n_dates // 2

    @property
    def centre_pixel(self) -> tuple[int, int]:
        return (self.patch_size // 2, self.patch_size // 2)


def s1_config(**overrides) -> AutoencoderConfig:
    """Sentinel-1 preset: VV, VH; latent 2 (paper §III-B). Narrower widths: 2 bands carry less."""
    base = AutoencoderConfig(sensor="s1", n_bands=len(S1_BANDS), latent_dim=2, band_names=S1_BANDS,
                             widths=(16, 32, 32), multiscale_branch_ch=8, value_offset=0.5)
    return replace(base, **overrides)


def s2_config(**overrides) -> AutoencoderConfig:
    """Sentinel-2 preset: the ten 10/20 m bands; latent 9 (paper §III-B)."""
    base = AutoencoderConfig(sensor="s2", n_bands=len(S2_BANDS), latent_dim=9, band_names=S2_BANDS,
                             value_offset=0.15)
    return replace(base, **overrides)


def scene_tiles(height: int, width: int, tile: int | None):
    """Yield (y0, y1, x0, x1) output tiles covering the scene (one tile when ``tile`` is None)."""
    tile_h = height if tile is None else tile
    tile_w = width if tile is None else tile
    for y0 in range(0, height, tile_h):
        for x0 in range(0, width, tile_w):
            yield y0, min(y0 + tile_h, height), x0, min(x0 + tile_w, width)


def region_bounds(region: tuple[slice, slice] | None, height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the output ``region`` (row slice, column slice of the scene; None = all of it).

    ``encode_scene(..., region=...)`` embeds only these pixels and uses the rest of the scene as context
    only, so a caller that needs a block or a flux-tower footprint does not pay for its halo's outputs.
    """
    if region is None:
        return 0, height, 0, width
    ys, xs = region
    y0, y1, sy = ys.indices(height)
    x0, x1, sx = xs.indices(width)
    if sy != 1 or sx != 1 or y1 <= y0 or x1 <= x0:
        raise ValueError(f"region {region} must be a non-empty step-1 (rows, columns) slice pair inside the "
                         f"{height} x {width} scene")
    return y0, y1, x0, x1


def region_tiles(height: int, width: int, tile: int | None, region: tuple[slice, slice] | None):
    """Yield (y0, y1, x0, x1) scene tiles covering ``region`` (see ``region_bounds``), in scene coordinates."""
    ry0, ry1, rx0, rx1 = region_bounds(region, height, width)
    for y0, y1, x0, x1 in scene_tiles(ry1 - ry0, rx1 - rx0, tile):
        yield y0 + ry0, y1 + ry0, x0 + rx0, x1 + rx0


def check_wanted(wanted: Tensor | None, n_total: int, height: int, width: int, device) -> Tensor | None:
    """``encode_scene``'s ``wanted`` mask as a bool tensor on ``device``, or None; checks its shape."""
    if wanted is None:
        return None
    wanted = torch.as_tensor(wanted, device=device)
    if wanted.dtype != torch.bool or tuple(wanted.shape) != (n_total, height, width):
        raise ValueError(f"wanted must be a bool mask (dates, rows, columns) = {(n_total, height, width)} of the "
                         f"embedded region, got {wanted.dtype} {tuple(wanted.shape)}")
    return wanted


def wanted_targets(tile_wanted: Tensor | None, chunk: slice, n_total: int) -> Tensor | None:
    """Target dates that some pixel of ``chunk`` wants ((dates, pixels) mask of a tile); None = all of them."""
    if tile_wanted is None:
        return None
    targets = torch.nonzero(tile_wanted[:, chunk].any(dim=1)).flatten()
    return None if len(targets) == n_total else targets


def targets_or_nan(targets: Tensor | None, shape: tuple[int, int, int], like: Tensor, compute) -> Tensor:
    """One pixel chunk's outputs ``shape`` = (dates, pixels, features) when only ``targets`` are wanted:
    ``compute(targets)`` at those dates, NaN at the others; ``compute(None)`` (every date) for None."""
    if targets is None:
        return compute(None)
    z = like.new_full(shape, float("nan"))
    if len(targets):
        z[targets] = compute(targets)
    return z


class SensorEncoder(nn.Module):
    """Patch sequence -> latent per date, with a dense scene path computing the same numbers.

    Shapes: ``encode_patches``: x (B, T, C, p, p) with NaN = invalid, days (B, T) float (any origin)
    -> (B, T, latent). ``encode_scene``: x (T_all, C, H, W), days (T_all,) -> (T_all, latent, H, W),
    where target t uses the window ``window_indices(T_all, T)[t]`` (t-5..t+5 shifted inside the
    series) and pixels outside the scene count as invalid.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c = config
        self.config = c
        self.spatial = SpatialReducer(2 * c.n_bands, c.widths, c.multiscale_kernels, c.conv_kernels, c.ca_pools,
                                      c.sa_kernels, c.cbam_reduction, c.multiscale_branch_ch, c.centre_skip)
        assert self.spatial.receptive_field == c.patch_size, "config check and blocks disagree"
        self.temporal = DayAttentionLayer(c.widths[-1], c.d_model, c.n_heads, c.ffn_dim, c.latent_dim,
                                          c.n_frequencies, c.min_period_days, c.max_period_days, c.dropout,
                                          c.linear_paths)
        # Linear patch code (see AutoencoderConfig.linear_patch); zero until warm-started or trained.
        # Created only with the path, so model files written without it load unchanged (strict keys).
        self.patch_linear = nn.Conv2d(c.n_bands, c.latent_dim, c.patch_size, bias=False) if c.linear_patch else None
        if self.patch_linear is not None:
            nn.init.zeros_(self.patch_linear.weight)
            self.register_buffer("patch_centre", torch.full((c.n_bands,), float(c.value_offset)))
            # Fixed per-pixel factor of the kernel (the warm start sets sqrt of the loss's spatial weights):
            # the learned kernel then has entries of similar size everywhere, so an optimiser step of a
            # given size does not swamp the ~1e-3-small weights of the outer rings.
            self.register_buffer("patch_scale", torch.ones(c.patch_size, c.patch_size))

    def _linear_code(self, x: Tensor, kernel: Tensor | None = None) -> Tensor:
        """(N, C, H, W) with NaN = invalid -> (N, latent, H - p + 1, W - p + 1): the linear patch code
        (``kernel``: another (latent, C, p, p) kernel on the same centred input, e.g. the fusion's context)."""
        centred = x - self.patch_centre[:, None, None]
        filled = torch.where(torch.isfinite(centred), centred, torch.zeros((), dtype=x.dtype, device=x.device))
        return nn.functional.conv2d(filled, self.patch_linear.weight * self.patch_scale if kernel is None else kernel)

    def scene_linear_code(self, x: Tensor, kernel: Tensor | None = None) -> Tensor | None:
        """(T, C, H, W) scene (or tile with halo) -> (T, H*W, latent) linear codes, None without the path.

        Pixels outside the scene count as invalid (NaN padding), as in ``scene_features``.
        """
        if self.patch_linear is None:
            return None
        r = self.config.patch_size // 2
        padded = nn.functional.pad(x, (r, r, r, r), value=float("nan"))
        return rearrange(self._linear_code(padded, kernel), "t l h w -> t (h w) l")

    def patch_features(self, x: Tensor) -> Tensor:
        """(B, T, C, p, p) -> per-date spatial features (B, T, widths[-1])."""
        b, t, c, p, _ = self._check_patches(x)
        y = self.spatial(fill_and_mask(rearrange(x, "b t c h w -> (b t) c h w") - self.config.value_offset, dim=1))
        return rearrange(y, "(b t) d 1 1 -> b t d", b=b)

    def encode_patches(self, x: Tensor, days: Tensor) -> Tensor:
        z = self.temporal.forward_patches(self.patch_features(x), days.to(x.dtype))
        if self.patch_linear is not None:
            b = x.shape[0]
            lin = self._linear_code(rearrange(x, "b t c h w -> (b t) c h w"))
            z = z + rearrange(lin, "(b t) l 1 1 -> b t l", b=b)
        return z

    def scene_features(self, x: Tensor) -> Tensor:
        """(T_all, C, H, W) -> per-date, per-pixel spatial features (T_all, H*W, widths[-1])."""
        if x.ndim != 4 or x.shape[1] != self.config.n_bands:
            raise ValueError(f"expected a scene (T, {self.config.n_bands}, H, W), got {tuple(x.shape)}")
        r = self.config.patch_size // 2
        # Padding with NaN *before* filling makes out-of-scene context exactly "invalid" (0 + mask 0).
        padded = nn.functional.pad(x - self.config.value_offset, (r, r, r, r), value=float("nan"))
        # Every op of the spatial stage acts on one date at a time, so date chunks give the same numbers,
        # and every date without any data in the tile (wholly cloudy, outside the swath: most dates of
        # many masked real exports) has the same input (all zeros, mask 0), hence the same features: they
        # are computed once for all of them.
        blank = ~torch.isfinite(padded).flatten(1).any(dim=1)
        step = max(1, SPATIAL_CHUNK_PIXEL_DATES // (padded.shape[-2] * padded.shape[-1]))
        if not bool(blank.any()):
            y = torch.cat([self.spatial(fill_and_mask(padded[t0 : t0 + step], dim=1))
                           for t0 in range(0, padded.shape[0], step)])
            return rearrange(y, "t d h w -> t (h w) d")
        blank_feats = self.spatial(fill_and_mask(torch.full_like(padded[:1], float("nan")), dim=1))
        y = blank_feats.new_empty(padded.shape[0], *blank_feats.shape[1:])
        y[blank] = blank_feats
        data_dates = torch.nonzero(~blank).flatten()
        for t0 in range(0, len(data_dates), step):
            dates = data_dates[t0 : t0 + step]
            y[dates] = self.spatial(fill_and_mask(padded[dates], dim=1))
        return rearrange(y, "t d h w -> t (h w) d")

    def encode_scene(
        self, x: Tensor, days: Tensor, *, tile: int | None = DEFAULT_TILE, pixel_chunk: int = DEFAULT_PIXEL_CHUNK,
        region: tuple[slice, slice] | None = None, wanted: Tensor | None = None,
    ) -> Tensor:
        """Dense embedding of every pixel-date (of ``region`` only when given: (T_all, latent, h, w)).

        ``tile`` bounds memory by computing square spatial tiles (each with a 7-pixel halo of real
        context, so results do not depend on it). ``pixel_chunk`` pixels at a time go through the
        temporal layer: small enough for its intermediates to stay in cache (faster on CPU than whole
        scenes, benchmarks/RESULTS.md), large enough for efficient matmuls. ``region`` (rows, columns slices):
        embed only those pixels, the rest of ``x`` is context (equal to cropping the full result).
        ``wanted``: optional bool mask (T_all, h, w) of the region's pixel-dates whose embeddings are
        needed (``embed`` passes the valid centre pixels: the product is NaN elsewhere). The others are
        returned as NaN, and a target date that no pixel of a pixel chunk wants is not computed for that
        chunk: on cloudy dates most of the temporal layers' work is skipped. The wanted values are the
        same numbers as without the mask (up to float summation order).
        """
        n_total, _, height, width = x.shape
        days = days.to(device=x.device, dtype=x.dtype)
        windows = window_indices(n_total, self.config.n_dates, x.device)
        query_pos = torch.arange(n_total, device=x.device) - window_starts(n_total, self.config.n_dates, x.device)
        ry0, ry1, rx0, rx1 = region_bounds(region, height, width)
        out = x.new_empty(n_total, self.config.latent_dim, ry1 - ry0, rx1 - rx0)
        wanted = check_wanted(wanted, n_total, ry1 - ry0, rx1 - rx0, x.device)
        r = self.config.patch_size // 2
        for y0, y1, x0, x1 in region_tiles(height, width, tile, region):
            sub = _tile_with_halo(x, y0, y1, x0, x1, r)
            feats = _crop_feats(self.scene_features(sub), sub.shape[-2], sub.shape[-1], y0, y1, x0, x1, r, height, width)
            tile_wanted = None if wanted is None else wanted[:, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0].flatten(1)
            zs = []
            for p0 in range(0, feats.shape[1], pixel_chunk):
                chunk = feats[:, p0 : p0 + pixel_chunk]
                zs.append(targets_or_nan(
                    wanted_targets(tile_wanted, slice(p0, p0 + pixel_chunk), n_total),
                    (n_total, chunk.shape[1], self.config.latent_dim), chunk,
                    lambda t, chunk=chunk: self.temporal.forward_windows(
                        chunk, days, windows if t is None else windows[t], query_pos if t is None else query_pos[t])))
            z = torch.cat(zs, dim=1)
            lin = self.scene_linear_code(sub)
            if lin is not None:  # query t's row is date t: its own date's linear code
                z = z + _crop_feats(lin, sub.shape[-2], sub.shape[-1], y0, y1, x0, x1, r, height, width)
            out[:, :, y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] = rearrange(z, "t (h w) l -> t l h w", h=y1 - y0)
        return out if wanted is None else out.masked_fill_(~wanted[:, None], float("nan"))

    def _check_patches(self, x: Tensor) -> tuple[int, ...]:
        c = self.config
        if x.ndim != 5 or x.shape[2:] != (c.n_bands, c.patch_size, c.patch_size) or x.shape[1] != c.n_dates:
            raise ValueError(
                f"expected patches (B, {c.n_dates}, {c.n_bands}, {c.patch_size}, {c.patch_size}) for sensor "
                f"{c.sensor!r}, got {tuple(x.shape)}"
            )
        return tuple(x.shape)


def _tile_with_halo(x: Tensor, y0: int, y1: int, x0: int, x1: int, r: int) -> Tensor:
    """The scene crop a tile needs (tile plus ``r`` pixels of real context where the scene has them)."""
    return x[..., max(y0 - r, 0) : y1 + r, max(x0 - r, 0) : x1 + r]


def _crop_feats(feats: Tensor, sh: int, sw: int, y0: int, y1: int, x0: int, x1: int, r: int,
                height: int, width: int) -> Tensor:
    """Keep the features of the tile's own pixels from features computed on a halo crop.

    ``scene_features`` NaN-pads its input by r on every side, which is exactly right at the scene
    border; inside the scene the halo carries real pixels, and the features of halo pixels are dropped.
    """
    oy, ox = y0 - max(y0 - r, 0), x0 - max(x0 - r, 0)
    f = rearrange(feats, "t (h w) d -> t h w d", h=sh)[:, oy : oy + (y1 - y0), ox : ox + (x1 - x0)]
    return rearrange(f, "t h w d -> t (h w) d")


class SensorDecoder(nn.Module):
    """Latent sequence -> reconstructed patch sequence. (B, T, latent), days (B, T) -> (B, T, C, p, p).

    Mirrors the encoder: latent -> linear + day encoding (relative to the centre date) -> transformer
    -> per-date vector -> three transposed-conv blocks with CBAM growing 1 -> p, the last multiscale.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c = config
        self.config = c
        d = c.decoder_d_model
        self.inp = nn.Linear(c.latent_dim, d)
        self.time = DayDifferenceEncoding(c.n_frequencies, c.min_period_days, c.max_period_days)
        self.pos = nn.Linear(self.time.n_features, d)
        layer = nn.TransformerEncoderLayer(d, c.decoder_heads, c.decoder_ffn_dim, c.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, c.decoder_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d)
        w1, w2, w3 = c.decoder_widths
        self.to_map = nn.Linear(d, w1)
        # Split the growth 1 -> p into three transposed convs (e.g. 15: 1 -> 5 -> 9 -> 15).
        grow = c.patch_size - 1
        k1 = k2 = grow // 3
        k3 = grow - k1 - k2
        self.block1 = nn.Sequential(nn.ConvTranspose2d(w1, w2, k1 + 1), nn.GELU(), GlobalCBAM(w2, c.cbam_reduction))
        self.block2 = nn.Sequential(nn.ConvTranspose2d(w2, w3, k2 + 1), nn.GELU(), GlobalCBAM(w3, c.cbam_reduction))
        self.block3 = nn.Sequential(
            nn.ConvTranspose2d(w3, w3, k3 + 1), nn.GELU(),
            MultiscaleConv(w3, w3, c.decoder_multiscale_kernels, c.decoder_branch_ch), nn.GELU(),
            GlobalCBAM(w3, c.cbam_reduction),
        )
        self.head = nn.Conv2d(w3, c.n_bands, 1)
        self.linear = nn.Linear(c.latent_dim, c.n_bands * c.patch_size**2) if c.linear_paths else None
        # Near-zero output layers (default init / 100, zero bias): an untrained decoder predicts about
        # ``value_offset`` everywhere instead of O(0.5) noise that Adam must first unlearn; not exactly
        # zero so that every parameter gets a gradient from the first step.
        with torch.no_grad():
            for layer in (self.head, self.linear):
                if layer is not None:
                    layer.weight.mul_(0.01)
                    layer.bias.zero_()

    def forward(self, z: Tensor, days: Tensor) -> Tensor:
        days = days.to(z.dtype)
        rel = days - days[:, self.config.centre_index, None]
        h = self.transformer(self.inp(z) + self.pos(self.time(rel)))
        y = rearrange(self.to_map(self.ln(h)), "b t d -> (b t) d 1 1")
        y = rearrange(self.head(self.block3(self.block2(self.block1(y)))), "(b t) c h w -> b t c h w", b=z.shape[0])
        if self.linear is not None:
            p = self.config.patch_size
            y = y + rearrange(self.linear(z), "b t (c h w) -> b t c h w", h=p, w=p)
        return y + self.config.value_offset

    def decode_centre(self, z: Tensor, days: Tensor, rows: Tensor | None = None, dates: Tensor | None = None, *,
                      blocks: list[nn.Module] | None = None) -> Tensor:
        """Centre pixel of the reconstruction at one date per target: ``forward(z, days)[rows, dates, :, r, r]``.

        ``z`` (B, T, latent), ``days`` (B, T); targets ``rows`` (M,) (which sequence) and ``dates`` (M,) (which
        of its dates); default: every sequence at its centre date (``config.centre_index``). Returns (M, C).
        The transformer runs once per sequence (it mixes all dates); the up-sampling path, ~85 % of the
        decoder's cost, only for the targets: T times cheaper when one date per sequence is wanted (embed's
        quality layer). ``blocks``: the three up-sampling blocks to run, default this decoder's;
        :meth:`inference_blocks` gives equivalent faster ones. Same numbers as ``forward`` up to float
        summation order (in eval mode: dropout makes two calls differ in training mode).
        """
        c = self.config
        if rows is None or dates is None:
            rows = torch.arange(z.shape[0], device=z.device)
            dates = torch.full_like(rows, c.centre_index)
        r, p = c.patch_size // 2, c.patch_size
        days = days.to(z.dtype)
        rel = days - days[:, c.centre_index, None]
        h = self.transformer(self.inp(z) + self.pos(self.time(rel)))[rows, dates]  # (M, d): the targets' tokens
        y = self.to_map(self.ln(h))[:, :, None, None]
        for block in blocks if blocks is not None else (self.block1, self.block2, self.block3):
            y = block(y)
        y = self.head(y)[:, :, r, r]
        if self.linear is not None:
            zt = z[rows, dates]
            # Only the centre pixel's rows of the linear read-out (layout "(c h w)").
            w = self.linear.weight.view(-1, p, p, zt.shape[-1])[:, r, r]
            b = self.linear.bias.view(-1, p, p)[:, r, r]
            y = y + nn.functional.linear(zt, w, b)
        return y + c.value_offset

    def inference_blocks(self) -> list[nn.Module]:
        """The three up-sampling blocks as faster equivalent modules for inference (``fold_for_inference``);
        a copy: later changes to the weights do not reach it."""
        return [fold_for_inference(b) for b in (self.block1, self.block2, self.block3)]


class SensorAutoencoder(nn.Module):
    """Encoder + decoder for one sensor. ``forward(x, days)`` -> (reconstruction (B, T, C, p, p), latent (B, T, L)).

    ``encode_patches`` and ``encode_scene`` delegate to the encoder (shapes in ``SensorEncoder``).
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = SensorEncoder(config)
        self.decoder = SensorDecoder(config)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode_patches(self, x: Tensor, days: Tensor) -> Tensor:
        return self.encoder.encode_patches(x, days)

    def encode_scene(
        self, x: Tensor, days: Tensor, *, tile: int | None = DEFAULT_TILE, pixel_chunk: int = DEFAULT_PIXEL_CHUNK,
        region: tuple[slice, slice] | None = None, wanted: Tensor | None = None,
    ) -> Tensor:
        return self.encoder.encode_scene(x, days, tile=tile, pixel_chunk=pixel_chunk, region=region, wanted=wanted)

    def decode(self, z: Tensor, days: Tensor) -> Tensor:
        return self.decoder(z, days)

    def forward(self, x: Tensor, days: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encode_patches(x, days)
        return self.decode(z, days), z

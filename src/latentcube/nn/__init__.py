"""Neural networks: per-sensor context-aware autoencoders and their fusion (plain PyTorch only).

Every encoder has two entry points computing the same numbers: ``encode_patches`` (B, T, C, 15, 15)
-> (B, T, latent) and ``encode_scene`` (T_all, C, H, W) -> (T_all, latent, H, W) with shared
computation over the whole scene. See ``docs/method.md``.
"""

from .autoencoder import (
    AutoencoderConfig,
    SensorAutoencoder,
    SensorDecoder,
    SensorEncoder,
    s1_config,
    s2_config,
)
from .blocks import DayAttentionLayer, GlobalCBAM, LocalCBAM, MultiscaleConv, SpatialReducer, ValidConvBlock
from .fusion import FusionConfig, FusionModel, FusionOutput
from .info import count_flops_per_embedding, model_info
from .time_encoding import DayDifferenceEncoding, window_indices, window_starts

__all__ = [
    "AutoencoderConfig",
    "DayAttentionLayer",
    "DayDifferenceEncoding",
    "FusionConfig",
    "FusionModel",
    "FusionOutput",
    "GlobalCBAM",
    "LocalCBAM",
    "MultiscaleConv",
    "SensorAutoencoder",
    "SensorDecoder",
    "SensorEncoder",
    "SpatialReducer",
    "ValidConvBlock",
    "count_flops_per_embedding",
    "model_info",
    "s1_config",
    "s2_config",
    "window_indices",
    "window_starts",
]

"""The quality layer: the decoders' reconstruction error of the centre pixel at each date."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from latentcube.embed._plan import _Plan

#: Target pixel-dates per decoder call of the quality layer (~15 kB each in the up-sampling path).
QUALITY_CHUNK = 2048

# ---------------------------------------------------------------------------------- quality layer


def _centre_decoders(model: Any, plan: _Plan) -> dict[str, Callable[..., Any]]:
    """Per quality sensor: ``(zw, dw, rows, qpos) -> (M, C)``, the centre pixel of the model's decoder
    (``SensorDecoder.decode_centre``) of its own embedding: the fused one through the sensor's
    back-projection, or the autoencoder's. Built per block (folding the blocks costs milliseconds), so no
    decoder outlives the block."""
    if plan.kind == "fusion":
        pairs = {s: (model.sensors[s].decoder, model.back_project[s]) for s in plan.quality_sensors}
    else:
        pairs = {plan.quality_sensors[0]: (model.decoder, None)}
    out = {}
    for sensor, (decoder, pre) in pairs.items():
        blocks = decoder.inference_blocks()

        def decode(zw, dw, rows, qpos, decoder=decoder, pre=pre, blocks=blocks):
            return decoder.decode_centre(pre(zw) if pre is not None else zw, dw, rows, qpos, blocks=blocks)

        out[sensor] = decode
    return out


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
        decoders: sensor -> callable ``(zw, dw, rows, qpos) -> (M, C)`` as ``_centre_decoders``.
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

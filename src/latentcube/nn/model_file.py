"""Model files: a trained model with everything needed to use it, readable without unrestricted pickle.

``save_model`` writes architecture arguments, weights, normalisation, band order, the dates convention,
the training config and the package version into one ``torch.save`` file that ``torch.load(...,
weights_only=True)`` reads; ``load_model`` rebuilds the model from it. Kept apart from ``latentcube.train``
so that inference (``embed``, GPP, ``model-info``) does not import Lightning, whose import costs every
process that loads a model seconds and memory (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latentcube import __version__
from latentcube.config import from_dict, to_dict
from latentcube.errors import LatentcubeError
from latentcube.files import atomic_torch_save
from latentcube.preprocess import Normalization

from .autoencoder import AutoencoderConfig, SensorAutoencoder
from .fusion import FusionConfig, FusionModel

__all__ = ["MODEL_FORMAT", "DATES_CONVENTION", "NonFiniteModelError", "build_model", "save_model", "load_model"]

MODEL_FORMAT = "latentcube-model/1"
#: How dates enter the models; stored in checkpoints so a consumer can check it.
DATES_CONVENTION = "days: float days (any origin) per date; positions use differences to the target date"


class NonFiniteModelError(LatentcubeError, ValueError):
    """A model whose weights hold NaN or infinity: it would embed every pixel to NaN."""


def build_model(meta: Mapping[str, Any]) -> torch.nn.Module:
    """Rebuild a model from a checkpoint's ``model_args`` (no weights)."""
    args = meta["model_args"]
    if meta["kind"] == "autoencoder":
        return SensorAutoencoder(from_dict(AutoencoderConfig, args["sensor"], where="model_args"))
    sensors = {name: SensorAutoencoder(from_dict(AutoencoderConfig, a, where=f"model_args.{name}")) for name, a in args["sensors"].items()}
    return FusionModel(sensors, from_dict(FusionConfig, args["fusion"], where="model_args.fusion"))


def _model_args(model: torch.nn.Module) -> tuple[str, dict[str, Any]]:
    if isinstance(model, SensorAutoencoder):
        return "autoencoder", {"sensor": to_dict(model.config)}
    if isinstance(model, FusionModel):
        return "fusion", {
            "sensors": {name: to_dict(m.config) for name, m in model.sensors.items()},
            "fusion": to_dict(model.config),
        }
    raise TypeError(f"cannot export {type(model).__name__}")


def save_model(path: str | Path, model: torch.nn.Module, *, normalization: Normalization, config: Any = None,
               metrics: Mapping[str, float] | None = None, pixel_size_m: float | None = None) -> Path:
    """Write a self-describing model file readable with ``torch.load(path, weights_only=True)``.

    ``pixel_size_m``: the pixel edge (m) of the cubes it was trained on (None: unknown or mixed), so
    that embedding a cube of another resolution can warn (the 15-pixel context is a ground distance).
    The file is written atomically (a kill or a full disk leaves the previous file); a model with
    non-finite weights is refused with :class:`NonFiniteModelError` and nothing is written.
    """
    kind, args = _model_args(model)
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteModelError(
            f"refusing to write {path}: {len(bad)} of {len(state)} weight tensors hold NaN or infinity "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}), so the model would embed to NaN. Fix: find "
            "the non-finite input values or the too-high learning rate that caused it, then train again"
        )
    if kind == "autoencoder":
        bands = {model.config.sensor: list(model.config.band_names)}
    else:
        bands = {name: list(m.config.band_names) for name, m in model.sensors.items()}
    payload = {
        "format": MODEL_FORMAT,
        "kind": kind,
        "model_args": args,
        "state_dict": state,
        "normalization": normalization.to_dict(),
        "band_order": bands,
        "dates_convention": DATES_CONVENTION,
        "config": to_dict(config) if config is not None else None,
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "latentcube_version": __version__,
        "pixel_size_m": None if pixel_size_m is None else float(pixel_size_m),
    }
    atomic_torch_save(payload, path)  # never a half-written model file under the final name
    return path


def load_model(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a model file written by :func:`save_model` (``weights_only=True``, strict state dict).

    Returns the model in eval mode and the checkpoint's metadata (everything but the weights).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a latentcube model file (or is corrupt): {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a latentcube model file (format {payload.get('format') if isinstance(payload, dict) else '?'}); "
                         "Lightning's last.ckpt only resumes training: use the exported model.pt")
    model = build_model(payload)
    model.load_state_dict(payload["state_dict"], strict=True)
    model.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta

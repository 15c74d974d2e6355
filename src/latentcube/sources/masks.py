"""Cloud and cloud-shadow masks for Sentinel-2 cubes.

A mask is any callable ``mask(ds) -> DataArray`` returning bool ``(time, y, x)``, True where the S2
observation is invalid (cloud, shadow, ...) — the :class:`CloudMask` protocol. Two are provided:

* :class:`SCLMask` (default): the L2A scene classification (Sen2Cor SCL) classes shadow (3), cloud
  medium/high probability (8, 9) and thin cirrus (10); snow (11) optional.
* :class:`ModelMask`: a CloudSEN12 deep-learning model (the paper's mask, §II Data), used only when
  its weights are available locally. It never downloads anything.

:func:`apply_mask` sets masked reflectance to NaN and drops dates with too few valid pixels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from latentcube.constants import SCL_CLASSES, SCL_MASKED_DEFAULT
from latentcube.cube import CubeError
from latentcube.errors import LatentcubeError

__all__ = [
    "CLOUDSEN12_L2A_BANDS",
    "CLOUDSEN12_WEIGHTS_ENV",
    "CloudMask",
    "MaskModelError",
    "ModelMask",
    "SCLMask",
    "apply_mask",
    "valid_fraction",
]

#: Environment variable naming the local CloudSEN12 TorchScript weights file.
CLOUDSEN12_WEIGHTS_ENV = "LATENTCUBE_CLOUDSEN12_WEIGHTS"

#: Input bands of the CloudSEN12 L2A model (``cloudsen12-s2-l2a-1.0.0.pt`` of the cloudsen12_models
#: release), in its channel order, as surface reflectance 0-1.
CLOUDSEN12_L2A_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)


class MaskModelError(LatentcubeError, RuntimeError):
    """A model-based mask cannot run (weights or package missing); the message says how to fix it."""


@runtime_checkable
class CloudMask(Protocol):
    """Anything that maps a cube to a bool ``(time, y, x)`` mask, True = invalid observation.

    An implementation may declare ``required_bands`` (S2 band names it reads beyond the cube's ``s2``
    bands); :func:`latentcube.sources.stac.fetch_cube` then loads them into a temporary ``s2_extra``
    variable ``(time, band_extra, y, x)`` for the mask only.
    """

    def __call__(self, ds: xr.Dataset) -> xr.DataArray: ...


# ------------------------------------------------------------------------------------------- SCL


@dataclass(frozen=True)
class SCLMask:
    """Mask from the L2A scene classification layer ``s2_scl``.

    Args:
        classes: SCL classes treated as invalid; default shadow, cloud medium/high, cirrus (3, 8, 9, 10).
        mask_snow: also mask snow/ice (11). Off by default: snow is a real surface state in winter
            time series, but Sen2Cor often confuses it with cloud.
    """

    classes: tuple[int, ...] = SCL_MASKED_DEFAULT
    mask_snow: bool = False
    required_bands: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        bad = [c for c in self.classes if int(c) not in SCL_CLASSES]
        if bad:
            raise ValueError(f"unknown SCL classes {bad}; valid classes are {SCL_CLASSES}.")

    @property
    def masked_classes(self) -> tuple[int, ...]:
        """The classes actually masked (``classes`` plus 11 when ``mask_snow``)."""
        return tuple(sorted({int(c) for c in self.classes} | ({11} if self.mask_snow else set())))

    def __call__(self, ds: xr.Dataset) -> xr.DataArray:
        if "s2_scl" not in ds:
            raise CubeError(
                "SCLMask needs the 's2_scl' scene classification, which this cube lacks. Fix: fetch with "
                "latentcube.sources.stac.fetch_cube (it keeps SCL), import SCL with the cube, or use ModelMask."
            )
        scl = ds["s2_scl"]
        if tuple(scl.dims) != ("time", "y", "x"):
            raise CubeError(f"'s2_scl' has dimensions {scl.dims}; expected ('time', 'y', 'x').")
        return scl.isin(list(self.masked_classes)).rename("cloud_mask")


# ------------------------------------------------------------------------------------ model mask


def _model_input(ds: xr.Dataset, bands: Sequence[str]) -> xr.DataArray:
    """(time, band_m, y, x) reflectance in the model's band order from ``s2`` and ``s2_extra``."""
    have: dict[str, xr.DataArray] = {str(b): ds["s2"].sel(band=b) for b in ds["s2"]["band"].values}
    if "s2_extra" in ds:
        have.update({str(b): ds["s2_extra"].sel(band_extra=b) for b in ds["s2_extra"]["band_extra"].values})
    missing = [b for b in bands if b not in have]
    if missing:
        raise CubeError(
            f"the cloud model needs bands {missing} that the cube lacks. Fix: fetch with "
            "fetch_cube(mask=ModelMask(...)) (it loads them for the mask), or give ModelMask(bands=...) "
            "matching a model trained on the cube's bands."
        )
    layers = [have[b].drop_vars(["band", "band_extra"], errors="ignore") for b in bands]
    return xr.concat(layers, dim="band_m").assign_coords(band_m=list(bands)).transpose("time", "band_m", "y", "x")


@dataclass
class ModelMask:
    """CloudSEN12-style deep-learning cloud/shadow mask (the paper's choice), as an optional plug-in.

    The model is a TorchScript file taking ``(1, len(bands), H, W)`` float32 reflectance (0-1) and
    returning ``(1, n_classes, H, W)`` scores; the arg-max class is CloudSEN12's 0 clear, 1 thick cloud,
    2 thin cloud, 3 cloud shadow. Pixels whose class is in ``classes`` are masked. Spatial sizes are
    padded to a multiple of 32 (the U-Net's stride) by edge replication.

    Weights are never downloaded: give ``weights_path`` or set ``LATENTCUBE_CLOUDSEN12_WEIGHTS`` to the
    local file (e.g. ``cloudsen12-s2-l2a-1.0.0.pt`` from the CloudSEN12 model release, fetched once by
    hand). Alternatively pass ``predictor``, a callable ``(band, y, x) float32 array -> (y, x) int class
    array``, to plug in any other model.

    Args:
        weights_path: local TorchScript file; default from the environment variable.
        bands: model input bands in channel order (default the CloudSEN12 L2A 12 bands).
        classes: classes treated as invalid (default thick cloud, thin cloud, shadow).
        device: torch device for inference ("cpu", "cuda").
        predictor: optional replacement for the TorchScript model (see above).
    """

    weights_path: str | Path | None = None
    bands: tuple[str, ...] = CLOUDSEN12_L2A_BANDS
    classes: tuple[int, ...] = (1, 2, 3)
    device: str = "cpu"
    predictor: Callable[[np.ndarray], np.ndarray] | None = None
    _model: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.bands = tuple(str(b) for b in self.bands)
        if self.predictor is not None:
            return
        path = self.weights_path or os.environ.get(CLOUDSEN12_WEIGHTS_ENV)
        if not path:
            raise MaskModelError(
                "ModelMask has no CloudSEN12 weights: latentcube never downloads model weights at run time. "
                f"Fix: download the CloudSEN12 L2A TorchScript model once (cloudsen12-s2-l2a-1.0.0.pt) and set "
                f"{CLOUDSEN12_WEIGHTS_ENV}=/path/to/it or pass ModelMask(weights_path=...); "
                "or use mask='scl' (SCLMask)."
            )
        path = Path(path).expanduser()
        if not path.is_file():
            raise MaskModelError(
                f"CloudSEN12 weights file {path} does not exist (from "
                f"{'weights_path' if self.weights_path else CLOUDSEN12_WEIGHTS_ENV}). Fix: point it at the "
                "local TorchScript file; nothing is downloaded automatically."
            )
        self.weights_path = path

    @property
    def required_bands(self) -> tuple[str, ...]:
        return self.bands

    def _load(self) -> Callable[[np.ndarray], np.ndarray]:
        if self.predictor is not None:
            return self.predictor
        if self._model is None:
            try:
                import torch
            except ImportError as err:  # torch is a core dependency, but keep the message useful
                raise MaskModelError(
                    "ModelMask needs PyTorch. Fix: pip install latentcube (it depends on torch) or pip install torch."
                ) from err
            try:
                model = torch.jit.load(str(self.weights_path), map_location=self.device)
            except Exception as err:
                raise MaskModelError(
                    f"cannot load {self.weights_path} as a TorchScript model ({err}). Fix: use the CloudSEN12 "
                    "TorchScript file (cloudsen12-s2-l2a-1.0.0.pt), or wrap another checkpoint in predictor=."
                ) from err
            model.eval()
            self._model = model
        model, device = self._model, self.device

        def predict(x: np.ndarray) -> np.ndarray:
            import torch

            h, w = x.shape[-2:]
            ph, pw = (-h) % 32, (-w) % 32
            xp = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="edge") if (ph or pw) else x
            with torch.no_grad():
                out = model(torch.from_numpy(np.ascontiguousarray(xp, dtype=np.float32))[None].to(device))
            return out.argmax(dim=1)[0, :h, :w].cpu().numpy()

        return predict

    def __call__(self, ds: xr.Dataset) -> xr.DataArray:
        inp = _model_input(ds, self.bands)
        predict = self._load()
        invalid_classes = np.asarray(self.classes)

        def run(block: np.ndarray) -> np.ndarray:
            # block: (..., band_m, y, x); one model call per date (the model sees the whole scene).
            lead = block.shape[:-3]
            flat = block.reshape((-1, *block.shape[-3:]))
            res = np.zeros((flat.shape[0], *block.shape[-2:]), dtype=bool)
            for i, img in enumerate(flat):
                img = np.nan_to_num(img.astype(np.float32), nan=0.0)  # NaN pixels are masked anyway
                res[i] = np.isin(np.asarray(predict(img)), invalid_classes)
            return res.reshape((*lead, *block.shape[-2:]))

        if inp.chunks:
            inp = inp.chunk({"band_m": -1, "y": -1, "x": -1})
        out = xr.apply_ufunc(
            run,
            inp,
            input_core_dims=[["band_m", "y", "x"]],
            output_core_dims=[["y", "x"]],
            dask="parallelized",
            output_dtypes=[bool],
        )
        return out.transpose("time", "y", "x").rename("cloud_mask")


# ----------------------------------------------------------------------------------------- apply


def valid_fraction(ds: xr.Dataset, mask: xr.DataArray | None = None) -> xr.DataArray:
    """Per-date fraction (0-1) of pixels that were observed (SCL != 0, or all bands finite without SCL)
    and are not masked; lazy if the inputs are."""
    if "s2_scl" in ds:
        observed = ds["s2_scl"] > 0  # SCL 0 = no data (outside the swath / tile)
    else:
        observed = np.isfinite(ds["s2"]).all("band")
    good = observed if mask is None else observed & ~mask
    return good.mean(("y", "x")).rename("valid_fraction")


def apply_mask(
    ds: xr.Dataset,
    mask: CloudMask | Callable[[xr.Dataset], xr.DataArray] | None = None,
    *,
    min_valid_fraction: float = 0.0,
) -> xr.Dataset:
    """Set masked ``s2`` pixels to NaN and drop dates whose valid fraction is below ``min_valid_fraction``.

    Args:
        ds: cube with ``s2`` (and ``s2_scl`` for :class:`SCLMask`).
        mask: a :class:`CloudMask`; default :class:`SCLMask` (None means SCLMask()).
        min_valid_fraction: 0-1; 0 keeps every date. Dropping needs the per-date fraction, so the mask
            (SCL only, for SCLMask) is computed once here.

    Returns:
        The cube with NaN for masked pixels; ``s2_scl`` is kept unchanged (it is the classification).
    """
    if not 0.0 <= float(min_valid_fraction) <= 1.0:
        raise ValueError(f"min_valid_fraction must be within [0, 1], got {min_valid_fraction}.")
    mask = SCLMask() if mask is None else mask
    m = mask(ds)
    if not isinstance(m, xr.DataArray) or set(m.dims) != {"time", "y", "x"}:
        raise CubeError(
            f"mask {mask!r} returned {getattr(m, 'dims', type(m).__name__)}; a CloudMask must return a bool "
            "DataArray with dims (time, y, x)."
        )
    m = m.transpose("time", "y", "x").astype(bool)
    out = ds.copy()
    out["s2"] = ds["s2"].where(~m).astype("float32")
    if "s2_extra" in ds:
        out["s2_extra"] = ds["s2_extra"].where(~m).astype("float32")
    out.attrs["cloud_mask"] = repr(mask)
    if min_valid_fraction > 0:
        frac = valid_fraction(ds, m).values  # computes the mask (cheap for SCL)
        keep = np.flatnonzero(frac >= float(min_valid_fraction))
        if keep.size == 0:
            raise CubeError(
                f"no date has a valid fraction >= {min_valid_fraction} (best {float(np.max(frac, initial=0)):.2f}). "
                "Fix: lower min_valid_fraction, widen the dates, or check the mask."
            )
        out = out.isel(time=keep)
        out.attrs["min_valid_fraction"] = float(min_valid_fraction)
    return out

"""Lightning checkpoint files of a run, read as data only and written atomically."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins import TorchCheckpointIO

from latentcube.files import atomic_torch_save
from latentcube.train.config import TrainError

#: Globals besides tensors and plain containers that a Lightning checkpoint of these tasks may hold, allowed
#: while loading it with ``weights_only=True``. Lightning 2.6 checkpoints of every stage need none (tested);
#: one a later Lightning adds goes here, never a general unpickler.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()


def _unsafe_global(err: Exception) -> str:
    """The "Unsupported global" line of torch's weights-only refusal (its other lines advise loading unsafely)."""
    lines = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line]
    return lines[0] if lines else type(err).__name__


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a Lightning checkpoint of ``run_training`` as data only (``torch.load(weights_only=True)``).

    A checkpoint carrying anything but tensors, plain containers and ``CHECKPOINT_SAFE_GLOBALS`` (a pickled
    object whose ``__reduce__`` would run a command) is refused before anything in it runs; a truncated or
    corrupt file is named. Both raise :class:`TrainError` with the fix.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise TrainError(
            f"checkpoint {path} holds more than weights and training state ({_unsafe_global(err)}); it was not "
            "loaded, as loading it could run code. Fix: delete it and train again from the start, or train into "
            "a new --out; resume only from checkpoints this program wrote"
        ) from err
    except Exception as err:  # torch reports a damaged zip archive, pickle or storage in many ways
        raise TrainError(
            f"checkpoint {path} is corrupt or truncated ({str(err).splitlines()[0] if str(err) else type(err).__name__}). "
            f"Fix: delete {path} to start this run again from the first epoch, or train into a new --out"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise TrainError(f"{path} is not a training checkpoint (no state_dict). Fix: delete it, or train into a "
                         "new --out")
    return ckpt


class _SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files, written atomically (a full disk or a kill leaves the previous
    checkpoint, never a truncated one) and read as data only (:func:`load_checkpoint`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by latentcube's checkpoint files")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location if map_location is not None else "cpu")

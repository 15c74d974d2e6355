"""Where a run's metrics go: ``metrics.csv`` (kept across resumes and re-runs) and, optionally, TensorBoard."""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from latentcube.config import ConfigError
from latentcube.files import atomic_write_text
from latentcube.train.config import TrainerConfig


def _step_of(row: Mapping[str, Any]) -> float:
    try:
        return float(row.get("step", "nan"))
    except (TypeError, ValueError):
        return math.nan


class _RunMetrics(Logger):
    """``metrics.csv`` of a run: every value logged, one row per log call, kept across resumes and re-runs.

    Written by hand because Lightning's ``CSVLogger`` deletes the file a new run finds and appends in place:
    a re-run of a finished run lost the history, and a kill could truncate it. This logger starts from the
    rows already there when resuming, replaces those from the first step the run logs onward (work after
    the checkpoint, done again) and writes the whole file atomically.
    """

    def __init__(self, path: Path, *, resume: bool) -> None:
        super().__init__()
        self.path = path
        self.history = self._read(path) if resume and path.exists() else []
        self.rows: list[dict[str, Any]] = []
        self._dirty = False

    @staticmethod
    def _read(path: Path) -> list[dict[str, Any]]:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        good = [r for r in rows if not math.isnan(_step_of(r))]
        if len(good) < len(rows):
            warnings.warn(f"{path}: {len(rows) - len(good)} damaged row(s) without a step dropped", stacklevel=3)
        return good

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the run's config.yaml holds them

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        row["step"] = len(self.history) + len(self.rows) if step is None else step
        self.rows.append(row)
        self._dirty = True

    def merged(self) -> list[dict[str, Any]]:
        """The history before this run's first logged step, then this run's rows."""
        first = min((_step_of(r) for r in self.rows), default=math.inf)
        return [r for r in self.history if _step_of(r) < first] + self.rows

    def last_values(self) -> dict[str, float]:
        """Each metric's last logged value (not epoch and step), as ``trainer.callback_metrics`` holds them."""
        values: dict[str, float] = {}
        for row in self.merged():
            for k, v in row.items():
                if k in ("epoch", "step") or v in ("", None):
                    continue
                values[k] = float(v)
        return values

    @rank_zero_only
    def save(self) -> None:
        if not self._dirty:
            return
        rows = self.merged()
        keys = sorted({k for r in rows for k in r})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())
        self._dirty = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def _tensorboard(out: Path, tcfg: TrainerConfig) -> list[TensorBoardLogger]:
    """TensorBoard's logger when the config asks for it (an optional dependency)."""
    if not tcfg.tensorboard:
        return []
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        raise ConfigError("trainer.tensorboard is true but TensorBoard is not installed. "
                          "Fix: pip install 'latentcube[tensorboard]', or set trainer.tensorboard: false.")
    return [TensorBoardLogger(out, name="tensorboard", version="")]

"""Temporal position features from real acquisition dates, and the date-window convention.

Positions enter the temporal attention as functions of *day differences* (key date minus query
date), never of date indices: two series with the same index layout but different gaps get
different encodings, and an encoding never depends on which window a date was seen in. That last
property is what lets the dense scene path share work between overlapping windows
(see ``docs/method.md``, "Dense-exact encoding").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["DayDifferenceEncoding", "window_starts", "window_indices"]


class DayDifferenceEncoding(nn.Module):
    """Sinusoidal features of a (signed, fractional) number of days.

    Shapes: ``delta`` (...) float days -> (..., 2 * n_frequencies) = [sin(w_k d), cos(w_k d)].

    Periods are geometric between ``min_period_days`` and ``max_period_days``; the defaults (4 d to
    4 years) span the Sentinel revisit (5-6 d) up to the seasonal cycle with room for multi-year
    windows of sparse cloud-free series. Learnable maps of these features give the position terms.
    """

    def __init__(self, n_frequencies: int = 8, min_period_days: float = 4.0, max_period_days: float = 1461.0):
        super().__init__()
        if n_frequencies < 1 or not 0 < min_period_days < max_period_days:
            raise ValueError("need n_frequencies >= 1 and 0 < min_period_days < max_period_days")
        periods = torch.logspace(math.log10(min_period_days), math.log10(max_period_days), n_frequencies)
        # A buffer, not a parameter: fixed frequencies keep the features well spread; the learnable
        # part is the linear map applied to them by the attention layer.
        self.register_buffer("omega", (2 * math.pi / periods).float(), persistent=False)
        self.n_features = 2 * n_frequencies

    def forward(self, delta: Tensor) -> Tensor:
        phase = delta.to(self.omega.dtype)[..., None] * self.omega
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)


def window_starts(n_total: int, n_dates: int, device: torch.device | str | None = None) -> Tensor:
    """First date index of the window of every target date: ``clamp(t - n_dates // 2, 0, n_total - n_dates)``.

    The window of target t is the ``n_dates`` consecutive dates centred on t, shifted to stay inside
    the series near its ends; the target then sits at position ``t - start`` (not the centre).
    Shape: (n_total,) int64.
    """
    if n_total < n_dates:
        raise ValueError(
            f"the series has {n_total} dates but a window needs {n_dates}; "
            "scene encoding requires at least as many dates as the model's temporal window"
        )
    t = torch.arange(n_total, device=device)
    return (t - n_dates // 2).clamp(0, n_total - n_dates)


def window_indices(n_total: int, n_dates: int, device: torch.device | str | None = None) -> Tensor:
    """Date indices of every target's window, (n_total, n_dates) int64 (see ``window_starts``)."""
    return window_starts(n_total, n_dates, device)[:, None] + torch.arange(n_dates, device=device)

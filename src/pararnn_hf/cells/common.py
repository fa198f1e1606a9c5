"""Helpers shared by the cell modules."""

from __future__ import annotations

from torch import Tensor


def sum_leading(x: Tensor) -> Tensor:
    """Sum a ``[..., 1, N]`` per-step term over batch and time into one ``[1, N]`` row."""
    return x.reshape(-1, x.shape[-1]).sum(0, keepdim=True)

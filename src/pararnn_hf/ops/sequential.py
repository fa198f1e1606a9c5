"""The step-by-step loop: the exact reference, the CPU forward path and the Newton fallback."""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import Cell
from .transition import Transition


def sequential_solve(
    cell: Cell,
    u: Tensor,
    A: Tensor,
    C: Tensor | None,
    s0: Tensor,
    mask: Tensor | None = None,
    keep: Tensor | None = None,
) -> Tensor:
    """States ``[B, T, k, N]`` of ``s_t = f(s_{t-1}, u_t)`` from ``s0`` ``[B, k, N]``.

    Plain differentiable torch ops: autograd through it is the gradient reference.
    """
    T = u.shape[1]
    us = u.unbind(1)
    masks = mask.unbind(1) if mask is not None else (None,) * T
    keeps = keep.unbind(1) if keep is not None else (None,) * T
    state, out = s0, []
    for t in range(T):
        state = Transition(cell, state, us[t], A, C, masks[t], keeps[t]).output()
        out.append(state)
    return torch.stack(out, dim=1)

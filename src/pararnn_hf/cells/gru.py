"""ParaGRU cell math (docs/design.md#cells).

State layout: ``[..., 1, N]`` (the single row is h). Gate rows of ``u`` and ``A``: (z, r, c).

    z   = sigmoid(A_z * h + u_z)
    r   = sigmoid(A_r * h + u_r)
    c~  = tanh(A_c * (r * h) + u_c)
    h'  = (1 - z) * h + z * c~

Every function broadcasts over the leading dimensions, so the same code runs one decoding
step (``[B, 1, N]``) and a whole Newton iterate (``[B, T, 1, N]``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .common import sum_leading as _sum_leading

NAME = "gru"
KERNEL_ID = 0  # the Triton kernels' CELL constexpr
STATE_ROWS = ("h",)
# State rows in [-1, 1] after any step whatever the initial state (none here: h' is a convex
# combination of h and tanh(...), so only |h'| <= max(1, |h|) holds).
UNIT_ROWS: tuple[str, ...] = ()
GATE_ROWS = ("z", "r", "c")
PEEPHOLE_ROWS: tuple[str, ...] = ()


class GRUGates(NamedTuple):
    z: Tensor
    r: Tensor
    c_tilde: Tensor


def gates(prev: Tensor, u: Tensor, A: Tensor, C: Tensor | None = None) -> GRUGates:
    h = prev
    zr = torch.sigmoid(torch.addcmul(u[..., 0:2, :], A[0:2], h))
    z, r = zr[..., 0:1, :], zr[..., 1:2, :]
    c_tilde = torch.tanh(torch.addcmul(u[..., 2:3, :], A[2:3], r * h))
    return GRUGates(z, r, c_tilde)


def output(prev: Tensor, g: GRUGates) -> Tensor:
    # lerp(h, c~, z) = (1 - z) * h + z * c~
    return torch.lerp(prev, g.c_tilde, g.z)


def jacobian(prev: Tensor, g: GRUGates, A: Tensor, C: Tensor | None = None) -> Tensor:
    """dh'/dh, diagonal per channel: returned as 1x1 blocks ``[..., 1, 1, N]``."""
    h = prev
    z, r, c_tilde = g
    A_z, A_r, A_c = A[0:1], A[1:2], A[2:3]
    sig_z = z * (1 - z)
    sig_r = r * (1 - r)
    tanh_c = 1 - c_tilde * c_tilde
    J = (1 - z) + (c_tilde - h) * sig_z * A_z + z * tanh_c * A_c * (r + h * sig_r * A_r)
    return J.unsqueeze(-3)


def vjp(prev: Tensor, g: GRUGates, A: Tensor, C: Tensor | None, lam: Tensor) -> tuple[Tensor, Tensor, None, Tensor]:
    """Pull ``lam = dL/dh'`` back through one step.

    Returns ``(dL/du, dL/dA summed over leading dims, None, dL/dh)``.
    """
    h = prev
    z, r, c_tilde = g
    A_z, A_r, A_c = A[0:1], A[1:2], A[2:3]
    dp_z = lam * (c_tilde - h) * (z * (1 - z))
    dp_c = lam * z * (1 - c_tilde * c_tilde)
    dp_r = dp_c * A_c * h * (r * (1 - r))
    du = torch.cat([dp_z, dp_r, dp_c], dim=-2)
    dA = torch.cat([_sum_leading(dp_z * h), _sum_leading(dp_r * h), _sum_leading(dp_c * r * h)], dim=0)
    d_prev = lam * (1 - z) + dp_z * A_z + dp_r * A_r + dp_c * A_c * r
    return du, dA, None, d_prev

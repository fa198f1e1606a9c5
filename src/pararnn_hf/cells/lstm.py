"""ParaLSTM cell math (docs/design.md#cells): coupled input/forget gate with peepholes.

State layout: ``[..., 2, N]`` with rows (c, h). Gate rows of ``u`` and ``A``: (f, o, c);
peephole rows of ``C``: (f, o).

    f   = sigmoid(A_f * h + C_f * c + u_f)
    c~  = tanh(A_c * h + u_c)
    c'  = f * c + (1 - f) * c~
    o   = sigmoid(A_o * h + C_o * c' + u_o)      (peephole on the NEW c')
    h'  = o * tanh(c')

The Jacobian is a 2x2 block per channel, returned as ``[..., 2, 2, N]`` with rows (c', h')
and columns (d/dc, d/dh).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .common import sum_leading as _sum_leading

NAME = "lstm"
KERNEL_ID = 1  # the Triton kernels' CELL constexpr
STATE_ROWS = ("c", "h")
# State rows in [-1, 1] after any step whatever the initial state: h' = o * tanh(c').
# (c' = f c + (1 - f) c~ only keeps |c'| <= max(1, |c|).)
UNIT_ROWS = ("h",)
GATE_ROWS = ("f", "o", "c")
PEEPHOLE_ROWS = ("f", "o")


class LSTMGates(NamedTuple):
    f: Tensor
    o: Tensor
    c_tilde: Tensor
    c: Tensor  # the new cell state c'
    tanh_c: Tensor  # tanh(c')


def gates(prev: Tensor, u: Tensor, A: Tensor, C: Tensor) -> LSTMGates:
    c_prev, h = prev[..., 0:1, :], prev[..., 1:2, :]
    f = torch.sigmoid(torch.addcmul(torch.addcmul(u[..., 0:1, :], A[0:1], h), C[0:1], c_prev))
    c_tilde = torch.tanh(torch.addcmul(u[..., 2:3, :], A[2:3], h))
    # lerp(c~, c, f) = f * c + (1 - f) * c~
    c = torch.lerp(c_tilde, c_prev, f)
    o = torch.sigmoid(torch.addcmul(torch.addcmul(u[..., 1:2, :], A[1:2], h), C[1:2], c))
    return LSTMGates(f, o, c_tilde, c, torch.tanh(c))


def output(prev: Tensor, g: LSTMGates) -> Tensor:
    return torch.cat([g.c, g.o * g.tanh_c], dim=-2)


def _dh_dc(g: LSTMGates, C: Tensor) -> Tensor:
    """D = dh'/dc' through both o (peephole) and tanh(c')."""
    return (g.o * (1 - g.o)) * C[1:2] * g.tanh_c + g.o * (1 - g.tanh_c * g.tanh_c)


def jacobian(prev: Tensor, g: LSTMGates, A: Tensor, C: Tensor) -> Tensor:
    c_prev = prev[..., 0:1, :]
    sig_f = g.f * (1 - g.f)
    gap = (c_prev - g.c_tilde) * sig_f
    J_cc = g.f + gap * C[0:1]
    J_ch = gap * A[0:1] + (1 - g.f) * (1 - g.c_tilde * g.c_tilde) * A[2:3]
    D = _dh_dc(g, C)
    J_hc = D * J_cc
    J_hh = g.tanh_c * (g.o * (1 - g.o)) * A[1:2] + D * J_ch
    row_c = torch.cat([J_cc, J_ch], dim=-2)
    row_h = torch.cat([J_hc, J_hh], dim=-2)
    return torch.stack([row_c, row_h], dim=-3)


def vjp(prev: Tensor, g: LSTMGates, A: Tensor, C: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pull ``lam = dL/d(c', h')`` back through one step.

    Returns ``(dL/du, dL/dA, dL/dC, dL/d(c, h))``; dA and dC are summed over leading dims.
    """
    c_prev, h = prev[..., 0:1, :], prev[..., 1:2, :]
    lam_c, lam_h = lam[..., 0:1, :], lam[..., 1:2, :]
    dp_o = lam_h * g.tanh_c * (g.o * (1 - g.o))
    grad_c = lam_c + lam_h * _dh_dc(g, C)  # total dL/dc'
    dp_f = grad_c * (c_prev - g.c_tilde) * (g.f * (1 - g.f))
    dp_c = grad_c * (1 - g.f) * (1 - g.c_tilde * g.c_tilde)
    du = torch.cat([dp_f, dp_o, dp_c], dim=-2)
    dA = torch.cat([_sum_leading(dp_f * h), _sum_leading(dp_o * h), _sum_leading(dp_c * h)], dim=0)
    dC = torch.cat([_sum_leading(dp_f * c_prev), _sum_leading(dp_o * g.c)], dim=0)
    d_c_prev = grad_c * g.f + dp_f * C[0:1]
    d_h_prev = dp_f * A[0:1] + dp_o * A[1:2] + dp_c * A[2:3]
    return du, dA, dC, torch.cat([d_c_prev, d_h_prev], dim=-2)

"""Shared test helpers: an independent float64 reference of the layers."""

from __future__ import annotations

import torch

from pararnn_hf.ops.sequential import sequential_solve


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def reference_forward(layer, x, initial_state=None, mask=None, resets=None):
    """The layer's output by the plain step loop in float64 (autograd-able)."""
    xd = x.double()
    u = (
        torch.einsum("bthi,higj->btghj", xd.unflatten(-1, (layer.num_heads, -1)), layer.B.double()).flatten(-2)
        + layer.b.double()
    )
    k, N, Bsz = layer.state_rows, layer.state_size, x.shape[0]
    if initial_state is None:
        s0 = torch.zeros(Bsz, k, N, dtype=torch.float64)
    elif isinstance(initial_state, torch.Tensor):
        s0 = initial_state.double().unsqueeze(-2)
    else:
        s0 = torch.stack([t.double() for t in initial_state], dim=-2)
    m = None if mask is None else (mask != 0).view(Bsz, -1, 1, 1)
    keep = None if resets is None else (resets == 0).double().view(Bsz, -1, 1, 1)
    C = None if layer.C is None else layer.C.double()
    s = sequential_solve(layer.cell, u, layer.A.double(), C, s0, m, keep)
    return s[..., -1, :], s[:, -1]

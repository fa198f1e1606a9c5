"""Linear recurrences with k x k block-diagonal coefficients (k = 1 for ParaGRU, 2 for ParaLSTM).

    x_t = J_t x_{t-1} + r_t,    x_{-1} = 0,   along dim 1,

with ``J`` ``[B, T, k, k, N]`` and ``r`` ``[B, T, k, N]``. ``parallel_linear_scan`` is an
odd-even reduction (log2 T levels, O(T) work, no Python loop over time);
``sequential_linear_scan`` is the obvious loop it is tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor


def block_apply(J: Tensor, v: Tensor) -> Tensor:
    """``J @ v`` per channel: ``[..., k, k, N] x [..., k, N] -> [..., k, N]``."""
    k = J.shape[-3]
    if k == 1:
        return J[..., 0, :, :] * v
    if k == 2:  # written out: a broadcast-and-sum would build a k-times larger temporary
        v0, v1 = v[..., 0:1, :], v[..., 1:2, :]
        return torch.addcmul(J[..., :, 0, :] * v0, J[..., :, 1, :], v1)
    return (J * v.unsqueeze(-3)).sum(-2)


def block_compose(J2: Tensor, J1: Tensor) -> Tensor:
    """``J2 @ J1`` per channel: ``[..., k, k, N] x [..., k, k, N] -> [..., k, k, N]``."""
    k = J2.shape[-3]
    if k == 1:
        return J2 * J1
    if k == 2:
        # row i of the product: J2[i, 0] * J1[0, :] + J2[i, 1] * J1[1, :]
        return torch.addcmul(J2[..., :, 0:1, :] * J1[..., 0:1, :, :], J2[..., :, 1:2, :], J1[..., 1:2, :, :])
    return (J2.unsqueeze(-2) * J1.unsqueeze(-4)).sum(-3)


def parallel_linear_scan(J: Tensor, r: Tensor) -> Tensor:
    T = r.shape[1]
    if T == 1:
        return r
    n = T // 2
    J_even, J_odd = J[:, 0 : 2 * n : 2], J[:, 1 : 2 * n : 2]
    r_even, r_odd = r[:, 0 : 2 * n : 2], r[:, 1 : 2 * n : 2]
    # A pair (2i, 2i+1) is one step from x_{2i-1} to x_{2i+1}: solve those at half length.
    x_odd = parallel_linear_scan(block_compose(J_odd, J_even), block_apply(J_odd, r_even) + r_odd)
    x = torch.empty_like(r)
    x[:, 0] = r[:, 0]
    x[:, 1::2] = x_odd
    m = (T + 1) // 2 - 1  # even indices 2, 4, ... below T
    x[:, 2::2] = block_apply(J[:, 2::2], x_odd[:, :m]) + r[:, 2::2]
    return x


def sequential_linear_scan(J: Tensor, r: Tensor) -> Tensor:
    x = torch.zeros_like(r[:, 0])
    out = []
    for t in range(r.shape[1]):
        x = block_apply(J[:, t], x) + r[:, t]
        out.append(x)
    return torch.stack(out, dim=1)


def reverse_linear_scan(M: Tensor, g: Tensor) -> Tensor:
    """``x_t = M_t x_{t+1} + g_t`` backwards in time with ``x_{T-1} = g_{T-1}``.

    ``M`` holds the T-1 coefficients ``M_0 .. M_{T-2}``; ``g`` is ``[B, T, k, N]``. The same
    odd-even reduction as ``parallel_linear_scan``, pairing (2i, 2i+1) towards the front, so
    strided views (a transposed, shifted Jacobian) are used without copies.
    """
    T = g.shape[1]
    if T == 1:
        return g
    n, E = T // 2, (T + 1) // 2  # full pairs, even positions
    # y_i = x_{2i} satisfies y_i = (M_{2i} M_{2i+1}) y_{i+1} + (g_{2i} + M_{2i} g_{2i+1}).
    q = g[:, 0::2].clone()
    q[:, :n] += block_apply(M[:, 0 : 2 * n : 2], g[:, 1::2])
    y = reverse_linear_scan(block_compose(M[:, 0 : 2 * (E - 1) : 2], M[:, 1 : 2 * (E - 1) : 2]), q)
    x = torch.empty_like(g)
    x[:, 0::2] = y
    x[:, 1 : 2 * (E - 1) : 2] = block_apply(M[:, 1 : 2 * (E - 1) : 2], y[:, 1:]) + g[:, 1 : 2 * (E - 1) : 2]
    if T % 2 == 0:
        x[:, T - 1] = g[:, T - 1]
    return x


def sequential_reverse_linear_scan(M: Tensor, g: Tensor) -> Tensor:
    x = g[:, -1]
    out = [x]
    for t in range(g.shape[1] - 2, -1, -1):
        x = block_apply(M[:, t], x) + g[:, t]
        out.append(x)
    return torch.stack(out[::-1], dim=1)


def adjoint_scan(J: Tensor, g: Tensor) -> Tensor:
    """``lam_t = g_t + J_{t+1}^T lam_{t+1}``, ``lam_{T-1} = g_{T-1}`` (reverse time)."""
    return reverse_linear_scan(J[:, 1:].transpose(-3, -2), g)

"""The differentiable recurrence: a forward solve (parallel Newton or the loop) and ONE
reverse adjoint scan for the backward (docs/design.md#backward), so no autograd graph is built over T steps.

Backward, with ``g_t = dL/ds_t``:

    lam_t = g_t + J_{t+1}^T lam_{t+1}                       (adjoint scan, reverse time)
    dL/du_t, dL/dA, dL/dC, dL/ds_{t-1} = vjp of step t at lam_t   (closed form, all t at once)

Only ``u``, the parameters, ``s0`` and the solution ``s`` are saved; gates are recomputed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import Cell
from .dispatch import METHODS
from .newton import SolveInfo, newton_forward
from .scan import adjoint_scan
from .sequential import sequential_solve
from .transition import Transition, shift_right


def decode_step(cell: Cell, u: Tensor, A: Tensor, C: Tensor | None, s0: Tensor) -> Tensor:
    """One step for every row: ``u`` [B, G, N] and ``s0`` [B, k, N] -> the new state [B, k, N].
    The reference of ``triton_decode_step`` (same signature)."""
    return Transition(cell, s0, u, A, C).output()


def adjoint_backward(
    cell: Cell,
    u: Tensor,
    A: Tensor,
    C: Tensor | None,
    s0: Tensor,
    s: Tensor,
    mask: Tensor | None,
    keep: Tensor | None,
    grad_s: Tensor,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``dL/du, dL/dA, dL/dC, dL/ds0`` from ``grad_s = dL/ds`` at the solution ``s``: one reverse
    adjoint scan, then every step's VJP in closed form (docs/design.md#backward). The
    reference of ``triton_adjoint_backward`` (same signature)."""
    step = Transition(cell, shift_right(s, s0), u, A, C, mask, keep)
    lam = adjoint_scan(step.jacobian(), grad_s)
    du, dA, dC, d_prev = step.vjp(lam)
    return du, dA, dC, d_prev[:, 0]


def solve(
    cell: Cell,
    u: Tensor,
    A: Tensor,
    C: Tensor | None,
    s0: Tensor,
    mask: Tensor | None = None,
    keep: Tensor | None = None,
    method: str = "torch",
    max_iterations: int = 8,
    tolerance: float | None = None,
) -> tuple[Tensor, SolveInfo]:
    """All states ``[B, T, k, N]`` from ``u`` ``[B, T, G, N]`` and ``s0`` ``[B, k, N]``.

    Differentiable in ``u``, ``A``, ``C`` and ``s0`` through the adjoint backward.
    """
    if method not in METHODS:
        raise ValueError(f"unknown solve method {method!r}; expected one of {METHODS}")
    # autograd.Function.apply passes tensors through; the solve's report (a plain object)
    # comes back through this list, which forward appends to.
    info_box: list[SolveInfo] = []
    s = _Recurrence.apply(cell, method, max_iterations, tolerance, info_box, u, A, C, s0, mask, keep)
    return s, info_box[0]


def forward_solve(cell, u, A, C, s0, mask, keep, method, max_iterations, tolerance):
    if method == "triton":
        from .triton.solve import triton_newton_forward

        return triton_newton_forward(cell, u, A, C, s0, mask, keep, max_iterations, tolerance)
    if method == "torch":
        return newton_forward(cell, u, A, C, s0, mask, keep, max_iterations, tolerance)
    s = sequential_solve(cell, u, A, C, s0, mask, keep)
    finite = bool(torch.isfinite(s).all()) if s.numel() else True
    return s, SolveInfo("sequential", finite=finite)


class _Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, method, max_iterations, tolerance, info_box, u, A, C, s0, mask, keep):
        s, info = forward_solve(cell, u, A, C, s0, mask, keep, method, max_iterations, tolerance)
        info_box.append(info)
        ctx.cell, ctx.method = cell, method
        ctx.save_for_backward(u, A, C, s0, s, mask, keep)
        return s

    @staticmethod
    def backward(ctx, grad_s):
        u, A, C, s0, s, mask, keep = ctx.saved_tensors
        backward = adjoint_backward
        if ctx.method == "triton":
            from .triton.solve import triton_adjoint_backward as backward
        du, dA, dC, ds0 = backward(ctx.cell, u, A, C, s0, s, mask, keep, grad_s)
        return None, None, None, None, None, du, dA, dC, ds0, None, None

"""The differentiable recurrence: a forward solve (parallel Newton, the loop or the kernels)
and ONE reverse adjoint scan for the backward (docs/design.md#backward), so no autograd graph
is built over T steps.

Backward, with ``g_t = dL/ds_t``:

    lam_t = g_t + J_{t+1}^T lam_{t+1}                       (adjoint scan, reverse time)
    dL/du_t, dL/dA, dL/dC, dL/ds_{t-1} = vjp of step t at lam_t   (closed form, all t at once)

Only ``u``, the parameters, ``s0`` and the solution ``s`` are saved; gates are recomputed.

Both directions are ``torch.library`` custom ops with fake (shape-only) implementations and a
registered autograd formula, for every backend: ``torch.compile(fullgraph=True)`` and
``torch.export`` see one opaque op with known output shapes, whatever data-dependent loop
(Newton's convergence test, the fallback) runs inside (docs/design.md#compile).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import Cell, get_cell
from .dispatch import METHODS, dense_u, select_schedule, sequence_shape
from .newton import REPORT_SIZE, SolveInfo, newton_forward, report_dtype
from .scan import adjoint_scan
from .sequential import sequential_solve
from .transition import Transition, shift_right

# The package registers its ops as pararnn_hf::*; a saved folder's bundled copy under its own
# private package name, so several copies never collide.
_NAMESPACE = __name__.split(".")[0].lstrip("_") or "pararnn_hf"


class NonFiniteSolve(FloatingPointError):
    """NaN/Inf in what the solve reads or in the states it produced. The layers turn it into a
    message naming the culprit when they run eagerly."""


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
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor | None]:
    """``dL/du, dL/dA, dL/dC, dL/ds0, dL/dbias`` from ``grad_s = dL/ds`` at the solution ``s``:
    one reverse adjoint scan, then every step's VJP in closed form (docs/design.md#backward).
    ``du`` has ``u``'s shape; ``dbias`` is None without a bias. The reference of
    ``triton_adjoint_backward`` (same signature)."""
    step = Transition(cell, shift_right(s, s0), dense_u(u, bias), A, C, mask, keep)
    lam = adjoint_scan(step.jacobian(), grad_s)
    du, dA, dC, d_prev = step.vjp(lam)
    db = None if bias is None else du.sum((0, 1)).to(bias.dtype)
    return du.view(u.shape), dA, dC, d_prev[:, 0], db


def forward_solve(
    cell: Cell,
    u: Tensor,
    A: Tensor,
    C: Tensor | None,
    s0: Tensor,
    mask: Tensor | None,
    keep: Tensor | None,
    method: str,
    max_iterations: int,
    tolerance: float | None,
    schedule: str = "auto",
    bias: Tensor | None = None,
) -> tuple[Tensor, SolveInfo]:
    """The states by the backend ``method`` (one of ``METHODS``; ``schedule`` for the Triton
    kernels), not differentiable."""
    if method == "triton":
        if select_schedule(schedule, u) == "time_parallel":
            from .triton.time_parallel import triton_time_parallel_forward as solve
        else:
            from .triton.solve import triton_newton_forward as solve

        return solve(cell, u, A, C, s0, mask, keep, max_iterations, tolerance, bias)
    if method == "torch":
        return newton_forward(cell, u, A, C, s0, mask, keep, max_iterations, tolerance, bias)
    s = sequential_solve(cell, dense_u(u, bias), A, C, s0, mask, keep)
    finite = bool(torch.isfinite(s).all()) if s.numel() else True
    return s, SolveInfo("sequential", finite=finite)


def _inputs_finite(u: Tensor, A: Tensor, C: Tensor | None, s0: Tensor, bias: Tensor | None = None) -> bool:
    """One reduction and one host sync for everything the solve reads. Non-finite values in
    ``u`` (x at real positions, B or b) saturate the gates and give finite outputs with NaN
    gradients, so they are refused rather than trusted to show in the states."""
    checks = [torch.isfinite(t).all() for t in (u, A, s0, C, bias) if t is not None]
    return bool(torch.stack(checks).all())


@torch.library.custom_op(f"{_NAMESPACE}::recurrence_forward", mutates_args=())
def _forward_op(
    u: Tensor,
    A: Tensor,
    C: Tensor | None,
    s0: Tensor,
    mask: Tensor | None,
    keep: Tensor | None,
    cell: str,
    method: str,
    max_iterations: int,
    tolerance: float | None,
    label: str,
    schedule: str = "auto",
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    if not _inputs_finite(u, A, C, s0, bias):
        raise NonFiniteSolve(
            f"{label}: NaN or Inf in what the recurrence reads (the input projection B·x + b at a real "
            "position, A, C or the initial state)"
        )
    s, info = forward_solve(get_cell(cell), u, A, C, s0, mask, keep, method, max_iterations, tolerance, schedule, bias)
    if not info.finite:
        raise NonFiniteSolve(f"{label}: the recurrent state became NaN/Inf although inputs and parameters are finite")
    return s, info.report(u.device)


@_forward_op.register_fake
def _forward_fake(u, A, C, s0, mask, keep, cell, method, max_iterations, tolerance, label, schedule="auto", bias=None):
    B, T, N = sequence_shape(u)
    s = u.new_empty((B, T, s0.shape[1], N), dtype=s0.dtype)
    return s, u.new_empty((REPORT_SIZE,), dtype=report_dtype(u.device))


@torch.library.custom_op(f"{_NAMESPACE}::recurrence_backward", mutates_args=())
def _backward_op(
    u: Tensor,
    A: Tensor,
    C: Tensor | None,
    s0: Tensor,
    s: Tensor,
    mask: Tensor | None,
    keep: Tensor | None,
    grad_s: Tensor,
    cell: str,
    method: str,
    schedule: str = "auto",
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    backward = adjoint_backward
    if method == "triton" and select_schedule(schedule, u) == "time_parallel":
        from .triton.time_parallel import triton_time_parallel_backward as backward
    elif method == "triton":
        from .triton.solve import triton_adjoint_backward as backward
    du, dA, dC, ds0, db = backward(get_cell(cell), u, A, C, s0, s, mask, keep, grad_s, bias)
    # an op returns tensors only, none aliasing another: an empty dC (db) stands for "no C (bias)"
    dC = A.new_empty(0) if dC is None else dC.contiguous()
    db = A.new_empty(0) if db is None else db.contiguous()
    # du keeps u's layout (the per-head GEMM's): autograd hands it on to the GEMM uncopied
    return du, dA.contiguous(), dC, ds0.contiguous(), db


@_backward_op.register_fake
def _backward_fake(u, A, C, s0, s, mask, keep, grad_s, cell, method, schedule="auto", bias=None):
    dC = A.new_empty(0) if C is None else torch.empty_like(C)
    db = A.new_empty(0) if bias is None else torch.empty_like(bias)
    return torch.empty_like(u), torch.empty_like(A), dC, torch.empty_like(s0), db


def _setup_context(ctx, inputs, output):
    u, A, C, s0, mask, keep, cell, method, _, _, _, schedule, bias = inputs
    ctx.cell, ctx.method, ctx.schedule = cell, method, schedule
    ctx.has_C, ctx.has_bias = C is not None, bias is not None
    ctx.save_for_backward(u, A, C, s0, output[0], mask, keep, bias)


def _backward(ctx, grad_s, _grad_report):
    u, A, C, s0, s, mask, keep, bias = ctx.saved_tensors
    # the schedule resolves as in the forward (a function of the shapes and the device)
    du, dA, dC, ds0, db = _backward_op(u, A, C, s0, s, mask, keep, grad_s, ctx.cell, ctx.method, ctx.schedule, bias)
    dC = dC if ctx.has_C else None
    db = db if ctx.has_bias else None
    return du, dA, dC, ds0, None, None, None, None, None, None, None, None, db


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def solve_op(
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
    label: str = "recurrence",
    schedule: str = "auto",
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """All states ``[B, T, k, N]`` from ``u`` ``[B, T, G, N]`` (or the per-head projection
    ``[B, T, G, H, N/H]`` with its ``bias`` [G, N] apart) and ``s0`` ``[B, k, N]``, and the
    solve's report tensor (read it with ``SolveInfo.from_report``; leaving it unread keeps the
    host out of the way, as compiled code does). Differentiable in ``u``, ``A``, ``C`` and ``s0``
    through the adjoint backward. Raises ``NonFiniteSolve``."""
    if method not in METHODS:
        raise ValueError(f"unknown solve method {method!r}; expected one of {METHODS}")
    return _forward_op(u, A, C, s0, mask, keep, cell.NAME, method, max_iterations, tolerance, label, schedule, bias)

"""Host side of the time-parallel schedule (docs/design.md#kernels): the launch sequence of one
forward Newton solve and one adjoint backward, parallel over time chunks as well as batch rows
and channels. Same signatures and results as the chunked schedule (``solve.py``) and the
torch references (``ops.newton.newton_forward``, ``ops.recurrence.adjoint_backward``).

The forward is a fixed sequence of launches: the first iterate, then per Newton step a carry
launch and a step launch, then one copy. The loop's stopping test runs on the device (the
carry launch of a converged step sets a flag the later launches read), so there is no host
sync between steps and the launches can be captured in a CUDA graph; the report is read
once at the end, where the exact fallback is decided as in the chunked schedule.
"""

from __future__ import annotations

import math

import torch
import triton
from torch import Tensor

from ...cells import Cell
from ..dispatch import sequence_shape
from ..newton import SolveInfo, default_tolerance
from . import interpreter_enabled
from .solve import _cell_constants, _fp32, _new, _step_flags, fallback_solve, new_like_layout, u_layout
from .time_parallel_kernels import (
    tp_adjoint_carry_kernel,
    tp_adjoint_grad_kernel,
    tp_adjoint_local_kernel,
    tp_carry_kernel,
    tp_finish_kernel,
    tp_guess_kernel,
    tp_step_kernel,
)

# (CH, BN, num_warps) per cell (KERNEL_ID) on GPUs. Not autotuned: every launch of a solve must
# use the same chunking (the summaries and carries are laid out by chunk). Short chunks give
# more programs at batch 1; each compiles for sm_80/sm_90 without spills
# (benchmarks/kernel_resources.py; the GRU's step kernel at CH = 64 spills 8 B at 255
# registers on sm_90). The interpreter runs 8-step chunks, as the tests want.
TILES = {0: (32, 32, 4), 1: (32, 32, 4)}
INTERPRETER_TILES = (8, 16, 1)


def tiles(cell: Cell) -> tuple[int, int, int]:
    """(time chunk CH, channels per program BN, warps) of the time-parallel kernels."""
    return INTERPRETER_TILES if interpreter_enabled() else TILES[cell.KERNEL_ID]


def first_resets(keep: Tensor | None, B: int, T: int, device: torch.device) -> Tensor:
    """Each row's first reset step ([B] int32; T where there is none), without a host sync:
    residuals are measured against max(1, |s0|) only before it (ops/newton.py state_scales)."""
    if keep is None:
        return torch.full((B,), T, dtype=torch.int32, device=device)
    reset = keep.reshape(B, T) == 0
    first = reset.to(torch.int8).argmax(1).to(torch.int32)
    return torch.where(reset.any(1), first, torch.full_like(first, T)).contiguous()


def triton_time_parallel_forward(
    cell: Cell,
    u: Tensor,
    A: Tensor,
    C: Tensor | None,
    s0: Tensor,
    mask: Tensor | None,
    keep: Tensor | None,
    max_iterations: int,
    tolerance: float | None,
    bias: Tensor | None = None,
) -> tuple[Tensor, SolveInfo]:
    B, T, N = sequence_shape(u)
    K = len(cell.STATE_ROWS)
    CH, BN, warps = tiles(cell)
    NC, NB = triton.cdiv(T, CH), triton.cdiv(N, BN)
    tol = default_tolerance(torch.float32) if tolerance is None else tolerance
    u5, strides = u_layout(u)
    A32, C32 = _fp32(A), _fp32(C)
    s0 = s0.float().contiguous()
    s, other = _new((B, T, K, N), u), _new((B, T, K, N), u)
    P = _new((B, NC, K * K, N), u)
    E = _new((B, NC, K, N), u)
    carry = _new((B, NC, K, N), u)
    err = torch.zeros(max_iterations + 1, dtype=torch.float32, device=u.device)
    ctrl = torch.zeros(2, dtype=torch.int32, device=u.device)  # (stopped, final iterate)
    m, k = _step_flags(mask, keep, B, T)
    flags = dict(mask_ptr=m, keep_ptr=k, first_reset_ptr=first_resets(keep, B, T, u.device))
    bias = None if bias is None else bias.contiguous()
    inputs = dict(u_ptr=u5, bias_ptr=bias, A_ptr=A32, C_ptr=C32, s0_ptr=s0, **flags)
    sizes = dict(T=T, N=N, NC=NC, CH=CH, BN=BN, num_warps=warps, **strides, **_cell_constants(cell))
    chunks, blocks = (NB, NC, B), (NB, B)
    tp_guess_kernel[chunks](s_ptr=s, P_ptr=P, E_ptr=E, err_ptr=err, **inputs, **sizes)
    buffers = (s, other)
    for it in range(max_iterations + 1):
        tp_carry_kernel[blocks](
            P_ptr=P, E_ptr=E, carry_ptr=carry, err_ptr=err, ctrl_ptr=ctrl, it=it, tol=tol, N=N, NC=NC,
            MAX_ITERS=max_iterations, BN=BN, num_warps=warps, **_cell_constants(cell),
        )  # fmt: skip
        if it < max_iterations:
            tp_step_kernel[chunks](
                src_ptr=buffers[it % 2], dst_ptr=buffers[(it + 1) % 2], carry_ptr=carry, P_ptr=P, E_ptr=E,
                err_ptr=err, ctrl_ptr=ctrl, it=it, **inputs, **sizes,
            )  # fmt: skip
    tp_finish_kernel[chunks](s_ptr=s, other_ptr=other, ctrl_ptr=ctrl, T=T, N=N, K=K, CH=CH, BN=BN, num_warps=warps)
    final = int(ctrl[1].item())  # the one host sync: the report
    residual = float(err[final].item())
    info = SolveInfo("triton", iterations=final, residual=residual, schedule="time_parallel")
    if not math.isfinite(residual):
        # an iterate went NaN/Inf: the exact loop decides whether the recurrence itself does
        info.converged, info.fallback_from = False, 0
        s = fallback_solve(cell, u, bias, A32, C32, s0, mask, keep)
        info.finite = bool(torch.isfinite(s).all())
    elif residual > tol:
        info.converged, info.fallback_from = False, 0
        s = fallback_solve(cell, u, bias, A32, C32, s0, mask, keep)
    return s, info


def triton_time_parallel_backward(
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
    B, T, N = sequence_shape(u)
    K = len(cell.STATE_ROWS)
    CH, BN, warps = tiles(cell)
    NC, NB = triton.cdiv(T, CH), triton.cdiv(N, BN)
    u5, strides = u_layout(u)
    m, k = _step_flags(mask, keep, B, T)
    P = _new((B, NC, K * K, N), u)
    E = _new((B, NC, K, N), u)
    carry = _new((B, NC, K, N), u)
    du = new_like_layout(u5)
    dA = _new((B, NC, 3, N), u)
    dC = _new((B, NC, 2, N), u) if C is not None else None
    db = _new((B, NC, 3, N), u) if bias is not None else None
    ds0 = _new((B, K, N), u)
    inputs = dict(
        u_ptr=u5, bias_ptr=None if bias is None else bias.contiguous(), A_ptr=_fp32(A), C_ptr=_fp32(C),
        s0_ptr=s0.float().contiguous(), s_ptr=s.contiguous(), mask_ptr=m, keep_ptr=k,
        g_ptr=grad_s.float().contiguous(),
    )  # fmt: skip
    sizes = dict(T=T, N=N, NC=NC, CH=CH, BN=BN, num_warps=warps, **strides, **_cell_constants(cell))
    chunks, blocks = (NB, NC, B), (NB, B)
    tp_adjoint_local_kernel[chunks](P_ptr=P, E_ptr=E, **inputs, **sizes)
    tp_adjoint_carry_kernel[blocks](
        P_ptr=P, E_ptr=E, carry_ptr=carry, ds0_ptr=ds0, N=N, NC=NC, BN=BN, num_warps=warps, **_cell_constants(cell)
    )
    tp_adjoint_grad_kernel[chunks](carry_ptr=carry, du_ptr=du, dA_ptr=dA, dC_ptr=dC, db_ptr=db, **inputs, **sizes)
    dC = dC.sum((0, 1)).to(C.dtype) if C is not None else None
    db = db.sum((0, 1)).to(bias.dtype) if bias is not None else None
    return du.to(u.dtype).view(u.shape), dA.sum((0, 1)).to(A.dtype), dC, ds0, db

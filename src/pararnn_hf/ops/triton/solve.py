"""Host side of the Triton backend: launches the kernels and keeps the docs/design.md#newton convergence
rule (measure the residual, fall back to the exact loop and say so when Newton did not
converge). The torch backend is the reference these are tested against."""

from __future__ import annotations

import math

import torch
import triton
from torch import Tensor

from ...cells import Cell
from ..dispatch import dense_u, sequence_shape
from ..newton import SolveInfo, default_tolerance
from ..sequential import sequential_solve
from .kernels import MIN_BN, adjoint_backward_kernel, decode_step_kernel, newton_forward_kernel, tuning_keys

# Tests set this to catch elements a kernel forgets to write.
FILL_OUTPUTS_WITH_NAN = False


def _grid(B: int, N: int):
    """One program per (batch row, block of BN channels); BN comes from the autotuner."""
    return lambda meta: (B, triton.cdiv(N, meta["BN"]))


def _new(shape, like: Tensor, dtype=torch.float32) -> Tensor:
    if FILL_OUTPUTS_WITH_NAN:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def _step_flags(mask: Tensor | None, keep: Tensor | None, B: int, T: int):
    """The solver's [B, T, 1, 1] mask/keep as flat [B, T] int8 / fp32 (None stays None)."""
    m = mask.reshape(B, T).to(torch.int8).contiguous() if mask is not None else None
    k = keep.reshape(B, T).to(torch.float32).contiguous() if keep is not None else None
    return m, k


def u_layout(u: Tensor) -> tuple[Tensor, dict[str, int]]:
    """``u`` as the kernels read it, ``[B, T, 3, H, NH]`` (a plain ``[B, T, 3, N]`` is H = 1),
    in whatever layout it comes as long as a head's channels are contiguous, and its strides
    as kernel arguments: the per-head projection's output is read where it lies."""
    u5 = u if u.dim() == 5 else u.unsqueeze(3)
    if u5.stride(-1) != 1:
        u5 = u5.contiguous()
    sb, st, sg, sh, _ = u5.stride()
    return u5, {"su_b": sb, "su_t": st, "su_g": sg, "su_h": sh, "NH": u5.shape[4]}


def new_like_layout(u: Tensor) -> Tensor:
    """A ``du`` for the kernels to write in ``u``'s own layout, fp32. (Half precision is cast by
    torch afterwards, rounding to nearest even: a store that converts rounds toward zero
    under the interpreter, so the kernels would not match their reference there.)"""
    du = torch.empty_strided(u.shape, u.stride(), dtype=torch.float32, device=u.device)
    return du.fill_(float("nan")) if FILL_OUTPUTS_WITH_NAN else du


def fallback_solve(cell: Cell, u: Tensor, bias: Tensor | None, A: Tensor, C, s0, mask, keep) -> Tensor:
    """The exact loop on what the kernels read (their fallback when Newton did not converge)."""
    return sequential_solve(cell, dense_u(u, bias).float(), A, C, s0, mask, keep)


def _fp32(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.float().contiguous()


def _cell_constants(cell: Cell) -> dict[str, int]:
    return {"CELL": cell.KERNEL_ID, "K": len(cell.STATE_ROWS)}


def triton_newton_forward(
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
    tol = default_tolerance(torch.float32) if tolerance is None else tolerance
    u5, strides = u_layout(u)
    A32, C32 = _fp32(A), _fp32(C)
    s0 = s0.float().contiguous()
    s = _new((B, T, K, N), u)
    slots = B * triton.cdiv(N, MIN_BN)  # one per program for any autotuned BN; unused stay 0
    res = torch.zeros(slots, dtype=torch.float32, device=u.device)
    iters = torch.zeros(slots, dtype=torch.int32, device=u.device)
    m, k = _step_flags(mask, keep, B, T)
    newton_forward_kernel[_grid(B, N)](
        u_ptr=u5,
        bias_ptr=None if bias is None else bias.contiguous(),
        A_ptr=A32,
        C_ptr=C32,
        s0_ptr=s0,
        mask_ptr=m,
        keep_ptr=k,
        s_ptr=s,
        res_ptr=res,
        iters_ptr=iters,
        T=T,
        N=N,
        tol=tol,
        **strides,
        **tuning_keys(B, T, N),
        MAX_ITERS=max_iterations,
        MIN_BN=MIN_BN,
        **_cell_constants(cell),
    )
    residual = res.max().item()  # already relative per element (ops/newton.py state_scales)
    info = SolveInfo("triton", iterations=int(iters.max().item()), residual=residual, schedule="chunked")
    if not math.isfinite(residual):
        info.finite = False
        return s, info
    if residual > tol:
        # some chunk did not converge: redo the whole sequence exactly
        info.converged, info.fallback_from = False, 0
        s = fallback_solve(cell, u, bias, A32, C32, s0, mask, keep)
    return s, info


def triton_adjoint_backward(
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
    u5, strides = u_layout(u)
    du = new_like_layout(u5)
    dA = _new((B, 3, N), u)
    dC = _new((B, 2, N), u) if C is not None else None
    db = _new((B, 3, N), u) if bias is not None else None
    ds0 = _new((B, K, N), u)
    m, k = _step_flags(mask, keep, B, T)
    adjoint_backward_kernel[_grid(B, N)](
        u_ptr=u5,
        bias_ptr=None if bias is None else bias.contiguous(),
        A_ptr=_fp32(A),
        C_ptr=_fp32(C),
        s0_ptr=s0.float().contiguous(),
        s_ptr=s.contiguous(),
        mask_ptr=m,
        keep_ptr=k,
        g_ptr=grad_s.float().contiguous(),
        du_ptr=du,
        dA_ptr=dA,
        dC_ptr=dC,
        ds0_ptr=ds0,
        db_ptr=db,
        T=T,
        N=N,
        **strides,
        **tuning_keys(B, T, N),
        **_cell_constants(cell),
    )
    dC = dC.sum(0).to(C.dtype) if C is not None else None
    db = db.sum(0).to(bias.dtype) if bias is not None else None
    return du.to(u.dtype).view(u.shape), dA.sum(0).to(A.dtype), dC, ds0, db


def triton_decode_step(cell: Cell, u: Tensor, A: Tensor, C: Tensor | None, s0: Tensor) -> Tensor:
    """One step for every row: ``u`` [B, 3, N] and ``s0`` [B, K, N] fp32 -> the new state
    [B, K, N]. The fused version of ``ops.recurrence.decode_step`` (same signature)."""
    B, K, N = s0.shape
    out = _new((B, K, N), u)
    decode_step_kernel[_grid(B, N)](
        u_ptr=u.contiguous(),
        A_ptr=_fp32(A),
        C_ptr=_fp32(C),
        s_ptr=s0.float().contiguous(),
        out_ptr=out,
        N=N,
        **_cell_constants(cell),
    )
    return out

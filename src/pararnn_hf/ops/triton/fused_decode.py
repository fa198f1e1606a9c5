"""Host side of the decoding step's fused kernels: the same signatures and results as the torch
reference ``ops/fused_decode.py`` (docs/design.md#cache). No host sync: the step can be
captured in a CUDA graph."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import triton
from torch import Tensor

from ...cells import Cell
from . import interpreter_enabled
from .fused_decode_kernels import mixer_step_kernel, residual_norm_kernel, silu_mul_kernel


def _pow2(x: int) -> int:
    return triton.next_power_of_2(max(int(x), 1))


def _warps(elements: int, interpreted: bool | None = None) -> int:
    interpreted = interpreter_enabled() if interpreted is None else interpreted
    return 1 if interpreted else max(1, min(8, elements // 1024))


def mixer_tile(DH: int, NH: int, interpreted: bool | None = None) -> tuple[int, int, int]:
    """(BDH, BJ, num_warps) of ``mixer_step_kernel`` for heads of DH inputs and NH channels:
    the head's whole input, and channel blocks that keep a [BDH, BJ] weight tile per gate
    (``interpreted``: for the Triton interpreter; None: as this process runs them)."""
    BDH = _pow2(DH)
    BJ = min(_pow2(NH), max(1, 4096 // BDH), 64)
    # 8 warps for a full tile: three gates' [BDH, BJ] fp32 tiles in 4 warps ran out of
    # registers (spills at 255 on sm_90, benchmarks/kernel_resources.py)
    return BDH, BJ, _warps(2 * BDH * BJ, interpreted)


def meansq_groups(H: int, DH: int, NH: int, interpreted: bool | None = None) -> int:
    """How many shares of the mean square ``mixer_step`` returns per row: one per program."""
    return H * triton.cdiv(NH, mixer_tile(DH, NH, interpreted)[1])


def norm_tile(d: int, H: int, interpreted: bool | None = None) -> tuple[int, int, int]:
    """(BD, BH, num_warps) of ``residual_norm_kernel``: one program holds a whole row."""
    return _pow2(d), _pow2(H), _warps(_pow2(d), interpreted)


def silu_tile(I: int, interpreted: bool | None = None) -> tuple[int, int]:
    """(BI, num_warps) of ``silu_mul_kernel``."""
    interpreted = interpreter_enabled() if interpreted is None else interpreted
    BI = min(_pow2(I), 64 if interpreted else 1024)
    return BI, _warps(BI, interpreted)


_TICKETS: dict[tuple[str, int], Tensor] = {}


def _tickets(n: int, device: torch.device) -> Tensor:
    """Zeroed int32 tickets, one per (row, head), kept per device and reused: the kernel
    leaves them at zero, so no launch re-zeroes them (and a CUDA graph replays on the same
    buffer)."""
    key = (str(device), n)
    if key not in _TICKETS:
        _TICKETS[key] = torch.zeros(n, dtype=torch.int32, device=device)
    return _TICKETS[key]


def mixer_step(
    cell: Cell,
    xz: Tensor,
    conv_state: Tensor,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    A: Tensor,
    B: Tensor,
    b: Tensor,
    C: Tensor | None,
    c_state: Tensor | None,
    h_state: Tensor,
    gate_weight: Tensor,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    Bt, D = xz.shape[0], conv_state.shape[-1]
    H, DH, _, NH = B.shape
    N = h_state.shape[-1]
    BDH, BJ, warps = mixer_tile(DH, NH)
    J = triton.cdiv(NH, BJ)
    v = torch.empty(Bt, N, dtype=xz.dtype, device=xz.device)
    meansq = torch.empty(Bt, H * J, dtype=torch.float32, device=xz.device)
    mixer_step_kernel[(Bt, H, J)](
        xz_ptr=xz.contiguous(),
        conv_state_ptr=conv_state,
        conv_weight_ptr=conv_weight.contiguous(),
        conv_bias_ptr=conv_bias,
        mask_ptr=None if mask is None else mask.to(torch.int8).contiguous(),
        A_ptr=A.contiguous(),
        B_ptr=B.contiguous(),
        b_ptr=b.contiguous(),
        C_ptr=None if C is None else C.contiguous(),
        c_ptr=c_state,
        h_ptr=h_state,
        gate_weight_ptr=gate_weight,
        v_ptr=v,
        meansq_ptr=meansq,
        count_ptr=_tickets(Bt * H, xz.device),
        D=D,
        N=N,
        H=H,
        DH=DH,
        NH=NH,
        J=J,
        CELL=cell.KERNEL_ID,
        KC=conv_weight.shape[-1],
        BDH=BDH,
        BJ=BJ,
        num_warps=warps,
    )
    return v, meansq


def residual_norm(
    residual: Tensor | None,
    delta: Tensor,
    meansq: Tensor | None,
    gate_eps: float,
    residual_scale: Tensor | None,
    weight: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor]:
    Bt, d = delta.shape
    BD, BH, warps = norm_tile(d, 1 if meansq is None else meansq.shape[-1])
    hidden = torch.empty_like(delta)
    normed = torch.empty_like(delta)
    residual_norm_kernel[(Bt,)](
        residual_ptr=None if residual is None else residual.contiguous(),
        delta_ptr=delta.contiguous(),
        meansq_ptr=meansq,
        residual_scale_ptr=residual_scale,
        weight_ptr=weight,
        hidden_ptr=hidden,
        normed_ptr=normed,
        d=d,
        H=1 if meansq is None else meansq.shape[-1],
        gate_eps=gate_eps,
        eps=eps,
        BD=BD,
        BH=BH,
        num_warps=warps,
    )
    return hidden, normed


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    Bt, I = gate.shape
    out = torch.empty_like(gate)
    BI, warps = silu_tile(I)
    silu_mul_kernel[(Bt, triton.cdiv(I, BI))](
        gate_ptr=gate.contiguous(), up_ptr=up.contiguous(), out_ptr=out, I=I, BI=BI, num_warps=warps
    )
    return out


TRITON_OPS = SimpleNamespace(mixer_step=mixer_step, residual_norm=residual_norm, silu_mul=silu_mul, name="triton")

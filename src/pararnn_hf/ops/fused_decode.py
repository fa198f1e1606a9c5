"""One decoding step of the model in few launches (docs/design.md#cache): the ops between the
GEMMs of a block, as plain torch (this file, the reference) or as Triton kernels
(``ops/triton/fused_decode.py``, same signatures).

Per block and token: ``in_proj`` (GEMM), ``mixer_step`` (everything between in_proj and
out_proj: the conv tail's shift, the depthwise conv, SiLU, the cell's input projection and
step, and h · w · SiLU(g), the gate RMSNorm without its scale), ``out_proj`` (GEMM),
``residual_norm`` (the gate norm's scale, the residual add and the MLP's RMSNorm), the MLP's
gate and up GEMMs, ``silu_mul``, the down GEMM, and ``residual_norm`` again (the next block's
norm). The gate RMSNorm's scale ``rsqrt(mean(h^2) + eps)`` is one number per row, so it
commutes with ``out_proj`` and is applied after it, from the shares of the mean square
``mixer_step`` returns (``sum over a group of channels of h^2 / N``): the step itself then
needs no reduction across heads or channel blocks, and the norm divides by the cell width N,
not out_proj's width.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cells import Cell
from .transition import Transition


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
    """One token through a mixer, between ``in_proj`` and ``out_proj``.

    ``xz`` [Bt, 2D]: in_proj's output (x, then the gate g). ``conv_state`` [Bt, K-1, D] (the
    last conv inputs) and the cell state ``c_state`` (LSTM; None for the GRU) and ``h_state``
    [Bt, N] fp32 are updated in place. ``mask`` [Bt] (0: padding, an identity step).
    Returns ``v = h' * gate_weight * SiLU(g)`` [Bt, N] in xz's dtype and ``meansq`` [Bt, G]
    fp32, shares of mean(h'^2) over G groups of channels (a group's sum of squares / N; here
    one group per head, in the kernel one per block of channels): the gate RMSNorm's scale,
    applied after out_proj, is ``rsqrt(meansq.sum(-1) + eps)``.
    """
    D = conv_state.shape[-1]
    H, N = B.shape[0], h_state.shape[-1]
    x, g = xz[:, :D], xz[:, D:]
    if mask is not None:
        x = torch.where((mask != 0).view(-1, 1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    K = conv_weight.shape[-1]
    xp = torch.cat([conv_state.to(torch.float32), x.float().unsqueeze(1)], dim=1)  # [Bt, K, D]
    xc = (xp * conv_weight[:, 0, :].t().float()).sum(1)
    if conv_bias is not None:
        xc = xc + conv_bias.float()
    xc = F.silu(xc)
    if K > 1:
        conv_state.copy_(xp[:, 1:].to(conv_state.dtype))
    u = torch.einsum("bhi,higj->bghj", xc.view(-1, H, D // H), B.float()).flatten(-2) + b.float()
    prev = h_state.unsqueeze(1) if c_state is None else torch.stack([c_state, h_state], dim=1)
    new = Transition(cell, prev, u, A.float(), None if C is None else C.float()).output()
    if mask is not None:
        new = torch.where((mask != 0).view(-1, 1, 1), new, prev)
    h = new[:, -1]
    if c_state is not None:
        c_state.copy_(new[:, 0])
    h_state.copy_(h)
    v = (h * gate_weight.float() * F.silu(g.float())).to(xz.dtype)
    return v, h.pow(2).view(-1, H, N // H).sum(-1) / N


def residual_norm(
    residual: Tensor | None,
    delta: Tensor,
    meansq: Tensor | None,
    gate_eps: float,
    residual_scale: Tensor | None,
    weight: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """``hidden = residual · residual_scale + delta · scale`` (no residual: ``delta · scale``),
    ``scale = rsqrt(sum(meansq) + gate_eps)`` per row when ``meansq`` [Bt, G] (``mixer_step``'s)
    is given (the gate RMSNorm's) else 1; returns ``hidden`` and ``RMSNorm(hidden) ·
    weight``, both in delta's dtype (statistics in fp32)."""
    d = delta.float()
    if meansq is not None:
        d = d * torch.rsqrt(meansq.sum(-1, keepdim=True) + gate_eps)
    if residual is not None:
        r = residual.float()
        d = d + (r if residual_scale is None else r * residual_scale.float())
    hidden = d.to(delta.dtype)
    x = hidden.float()
    normed = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(delta.dtype)
    return hidden, normed


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """The SwiGLU product ``SiLU(gate) · up``, in gate's dtype (computed in fp32)."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


TORCH_OPS = SimpleNamespace(mixer_step=mixer_step, residual_norm=residual_norm, silu_mul=silu_mul, name="torch")


def decode_ops(device: torch.device, backend: str, needs_grad: bool) -> SimpleNamespace:
    """The decode ops to use: the Triton kernels on CUDA where Triton works (or under the
    interpreter when the backend is ``"triton"``), for inference; the torch ones otherwise."""
    if needs_grad or backend in ("torch", "sequential"):
        return TORCH_OPS
    try:
        from .triton import triton_usable
    except ImportError:  # the pure-PyTorch copy bundled into saved folders has no kernels
        return TORCH_OPS
    usable = triton_usable(device.type) and (device.type == "cuda" or backend == "triton")
    if not usable:
        return TORCH_OPS
    from .triton.fused_decode import TRITON_OPS

    return TRITON_OPS

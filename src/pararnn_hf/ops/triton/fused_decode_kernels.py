"""The decoding step's fused kernels (docs/design.md#cache), following the conventions at the
top of ``kernels.py``. References: ``ops/fused_decode.py`` (same math in torch).

- ``mixer_step_kernel``: grid (B, H, J), a program per batch row, head and block of ``BJ``
  cell channels (so that batch 1 still fills the GPU). Each reads its head's conv window and
  computes the conv and SiLU of the head's inputs, its block of the input projection
  (``B[h]``, [D/H, 3, N/H]), the cell step (state in place) and ``h' · w · SiLU(g)``; the
  last of the head's programs to arrive (an atomic ticket) shifts the head's conv tail. Each
  block's sum of ``h'^2`` leaves for the gate norm's scale, applied after out_proj.
- ``residual_norm_kernel``: grid (B,): that scale, the residual add and the next RMSNorm.
- ``silu_mul_kernel``: grid (B, cdiv(I, BI)): the SwiGLU product.
All math is fp32; activations are read and written in the model's dtype, states in fp32.
"""

import triton
import triton.language as tl

from .cells import gru_step, lstm_step


@triton.heuristics(
    {
        "HAS_MASK": lambda args: args["mask_ptr"] is not None,
        "HAS_CONV_BIAS": lambda args: args["conv_bias_ptr"] is not None,
    }
)
@triton.jit
def mixer_step_kernel(
    xz_ptr,
    conv_state_ptr,
    conv_weight_ptr,
    conv_bias_ptr,
    mask_ptr,
    A_ptr,
    B_ptr,
    b_ptr,
    C_ptr,
    c_ptr,
    h_ptr,
    gate_weight_ptr,
    v_ptr,
    meansq_ptr,
    count_ptr,
    D,
    N,
    H,
    DH,
    NH,
    J,
    CELL: tl.constexpr,
    KC: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr,
    BDH: tl.constexpr,
    BJ: tl.constexpr,
):
    """One token through one mixer between in_proj and out_proj (ops/fused_decode.py mixer_step).

    In: ``xz`` [B, 2D] (x, g), ``conv_state`` [B, KC-1, D] (updated in place), ``conv_weight``
    [D, 1, KC], ``conv_bias`` [D] or None, ``mask`` [B] or None, ``A`` [3, N], ``B`` [H, DH, 3,
    NH], ``b`` [3, N], ``C`` [2, N] or None, the state ``c`` (LSTM; None for the GRU) and ``h``
    [B, N] fp32 (updated in place), ``gate_weight`` [N], ``count`` [B, H] int32 zeros (left
    zero). Out: ``v`` [B, N] = h' * gate_weight * SiLU(g) in xz's dtype, ``meansq`` [B, H·J]
    fp32 (each program's sum of h'^2 over N: its share of the gate RMSNorm's mean square).
    Grid: (B, H, J), J = cdiv(NH, BJ): a program per row, head and block of BJ channels, so a
    batch-1 step still spreads over H·J programs. Each program reads the head's whole conv
    window (the projection mixes the head's inputs); the last of a head's J programs to take
    a ticket, when all have read it, shifts the head's conv tail in place and resets the ticket.
    """
    b = tl.program_id(0).to(tl.int64)
    hd = tl.program_id(1)
    blk = tl.program_id(2)
    i = tl.arange(0, BDH)
    im = i < DH
    ch = hd * DH + i  # this head's conv (and cell input) channels
    x = tl.load(xz_ptr + b * 2 * D + ch, mask=im, other=0.0).to(tl.float32)
    real = tl.full([], 1, tl.int1)
    if HAS_MASK:
        real = tl.load(mask_ptr + b) != 0
        x = tl.where(real, x, 0.0)
    acc = tl.load(conv_weight_ptr + ch * KC + KC - 1, mask=im, other=0.0).to(tl.float32) * x
    if HAS_CONV_BIAS:
        acc += tl.load(conv_bias_ptr + ch, mask=im, other=0.0).to(tl.float32)
    tail = conv_state_ptr + b * (KC - 1) * D + ch
    for k in tl.static_range(KC - 1):
        w = tl.load(conv_weight_ptr + ch * KC + k, mask=im, other=0.0).to(tl.float32)
        acc += w * tl.load(tail + k * D, mask=im, other=0.0).to(tl.float32)
    xc = acc * tl.sigmoid(acc)
    if KC > 1:
        # every thread of this program has read the tail (xc depends on it) before the ticket;
        # the ticket's release orders those reads before the last program's writes
        tl.debug_barrier()
        ticket = tl.atomic_add(count_ptr + b * H + hd, 1, sem="acq_rel")
        if ticket == J - 1:  # slot k takes slot k + 1, the last slot the new input
            for k in tl.static_range(KC - 2):
                tl.store(tail + k * D, tl.load(tail + (k + 1) * D, mask=im, other=0.0), mask=im)
            tl.store(tail + (KC - 2) * D, x.to(conv_state_ptr.dtype.element_ty), mask=im)
            tl.atomic_xchg(count_ptr + b * H + hd, 0, sem="acq_rel")
    j = blk * BJ + tl.arange(0, BJ)
    jm = j < NH
    n = hd * NH + j
    m2 = im[:, None] & jm[None, :]
    w_off = B_ptr + hd * DH * 3 * NH + i[:, None] * (3 * NH) + j[None, :]
    u0 = tl.sum(xc[:, None] * tl.load(w_off, mask=m2, other=0.0).to(tl.float32), axis=0)
    u1 = tl.sum(xc[:, None] * tl.load(w_off + NH, mask=m2, other=0.0).to(tl.float32), axis=0)
    u2 = tl.sum(xc[:, None] * tl.load(w_off + 2 * NH, mask=m2, other=0.0).to(tl.float32), axis=0)
    u0 += tl.load(b_ptr + n, mask=jm, other=0.0).to(tl.float32)
    u1 += tl.load(b_ptr + N + n, mask=jm, other=0.0).to(tl.float32)
    u2 += tl.load(b_ptr + 2 * N + n, mask=jm, other=0.0).to(tl.float32)
    A0 = tl.load(A_ptr + n, mask=jm, other=0.0).to(tl.float32)
    A1 = tl.load(A_ptr + N + n, mask=jm, other=0.0).to(tl.float32)
    A2 = tl.load(A_ptr + 2 * N + n, mask=jm, other=0.0).to(tl.float32)
    h_old = tl.load(h_ptr + b * N + n, mask=jm, other=0.0)
    if CELL == 0:
        h_new, _ = gru_step(h_old, u0, u1, u2, A0, A1, A2)
    else:
        C0 = tl.load(C_ptr + n, mask=jm, other=0.0).to(tl.float32)
        C1 = tl.load(C_ptr + N + n, mask=jm, other=0.0).to(tl.float32)
        c_old = tl.load(c_ptr + b * N + n, mask=jm, other=0.0)
        c_new, h_new, _, _, _, _ = lstm_step(c_old, h_old, u0, u1, u2, A0, A1, A2, C0, C1)
        c_new = tl.where(real, c_new, c_old)
        tl.store(c_ptr + b * N + n, c_new, mask=jm)
    h_new = tl.where(real, h_new, h_old)
    tl.store(h_ptr + b * N + n, h_new, mask=jm)
    g = tl.load(xz_ptr + b * 2 * D + D + n, mask=jm, other=0.0).to(tl.float32)
    v = h_new * tl.load(gate_weight_ptr + n, mask=jm, other=0.0).to(tl.float32) * (g * tl.sigmoid(g))
    tl.store(v_ptr + b * N + n, v.to(v_ptr.dtype.element_ty), mask=jm)
    ss = tl.sum(tl.where(jm, h_new * h_new, 0.0), axis=0)
    tl.store(meansq_ptr + b * H * J + hd * J + blk, ss / N)


@triton.heuristics(
    {
        "HAS_RESIDUAL": lambda args: args["residual_ptr"] is not None,
        "HAS_MEANSQ": lambda args: args["meansq_ptr"] is not None,
        "HAS_SCALE": lambda args: args["residual_scale_ptr"] is not None,
    }
)
@triton.jit
def residual_norm_kernel(
    residual_ptr,
    delta_ptr,
    meansq_ptr,
    residual_scale_ptr,
    weight_ptr,
    hidden_ptr,
    normed_ptr,
    d,
    H,
    gate_eps,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    HAS_MEANSQ: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BD: tl.constexpr,
    BH: tl.constexpr,
):
    """``hidden = residual (· residual_scale) + delta · scale`` and ``RMSNorm(hidden) · weight``
    (ops/fused_decode.py residual_norm). In: ``residual`` and ``delta`` [B, d], ``meansq`` [B, H]
    or None (scale = rsqrt(sum + gate_eps), else 1), ``residual_scale`` [] or None,
    ``weight`` [d]. Out: ``hidden``, ``normed`` [B, d] in delta's dtype. Grid: (B,)."""
    b = tl.program_id(0).to(tl.int64)
    x = tl.arange(0, BD)
    xm = x < d
    val = tl.load(delta_ptr + b * d + x, mask=xm, other=0.0).to(tl.float32)
    if HAS_MEANSQ:
        hh = tl.arange(0, BH)
        total = tl.sum(tl.load(meansq_ptr + b * H + hh, mask=hh < H, other=0.0), axis=0)
        val = val * tl.rsqrt(total + gate_eps)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + b * d + x, mask=xm, other=0.0).to(tl.float32)
        if HAS_SCALE:
            r = r * tl.load(residual_scale_ptr).to(tl.float32)
        val = val + r
    hidden = val.to(hidden_ptr.dtype.element_ty)
    tl.store(hidden_ptr + b * d + x, hidden, mask=xm)
    h32 = hidden.to(tl.float32)
    inv = tl.rsqrt(tl.sum(tl.where(xm, h32 * h32, 0.0), axis=0) / d + eps)
    w = tl.load(weight_ptr + x, mask=xm, other=0.0).to(tl.float32)
    tl.store(normed_ptr + b * d + x, (h32 * inv * w).to(normed_ptr.dtype.element_ty), mask=xm)


@triton.jit
def silu_mul_kernel(gate_ptr, up_ptr, out_ptr, I, BI: tl.constexpr):
    """SiLU(gate) · up (ops/fused_decode.py silu_mul). In/out: [B, I]. Grid: (B, cdiv(I, BI))."""
    b = tl.program_id(0).to(tl.int64)
    x = tl.program_id(1) * BI + tl.arange(0, BI)
    xm = x < I
    g = tl.load(gate_ptr + b * I + x, mask=xm, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + b * I + x, mask=xm, other=0.0).to(tl.float32)
    tl.store(out_ptr + b * I + x, (g * tl.sigmoid(g) * u).to(out_ptr.dtype.element_ty), mask=xm)

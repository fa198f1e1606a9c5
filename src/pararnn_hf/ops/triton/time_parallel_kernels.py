"""The time-parallel schedule's kernels: Newton and the adjoint parallel over time chunks as
well as over batch rows and channels (docs/design.md#kernels). They follow the conventions at
the top of ``kernels.py`` and share its helpers.

Grid ``(cdiv(N, BN), NC = cdiv(T, CH), B)``: one program per channel block, time chunk and
batch row. A Newton step on a whole sequence is a linear recurrence ``d_t = J_t d_{t-1} + r_t``;
each program scans its chunk from a zero entry (``d_loc``, and ``JP_t``, the product of the
chunk's Jacobians up to t), a small carry kernel runs the prefix over the chunk summaries
``(JP at the chunk end, d_loc at the chunk end)`` sequentially per channel block, and the next
launch applies ``d_t = d_loc_t + JP_t d_in`` (``d_in``: the carried ``d`` at the step before
the chunk). That launch also computes the next iterate's residual, Jacobian, local scan and
summary (one pass over memory per Newton step), reading the iterate from one state buffer and
writing the next into the other (a program must not overwrite what its neighbour still reads).
Nothing comes back to the host between steps: the residual of every iterate goes to a device
array (``atomic_max``), the carry kernel of step i stops the loop on the device (``ctrl``) when
iterate i is below tolerance or i reaches the cap, and the later launches return at once.

The adjoint ``lam_t = g_t + J_{t+1}^T lam_{t+1}`` is the same two-level scan in reverse time,
then each step's closed-form VJP.
"""

import triton
import triton.language as tl

from .cells import combine_2x2, combine_diagonal, gru_step, gru_vjp, lstm_step, lstm_vjp
from .kernels import _OPTIONAL_FLAGS, _cell_parameters, _chunk_inputs, _row, _scale, _u_offsets


@triton.jit
def _bounds(s0_ptr, first_reset_ptr, b, t, n, nmask, N, CELL: tl.constexpr, K: tl.constexpr):
    """What residuals are measured against, per element (ops/newton.py state_scales):
    max(1, |s0|) until the row's first reset, 1 after it (and for the LSTM's h), as [CH, BN]."""
    after = (t >= tl.load(first_reset_ptr + b))[:, None]
    h0 = tl.load(s0_ptr + b * K * N + (K - 1) * N + n, mask=nmask, other=0.0)
    if CELL == 1:
        bound_h = tl.full([t.shape[0], n.shape[0]], 1.0, tl.float32)
        c0 = tl.load(s0_ptr + b * K * N + n, mask=nmask, other=0.0)
        bound_c = tl.where(after, 1.0, tl.maximum(tl.abs(c0), 1.0)[None, :])
    else:
        bound_h = tl.where(after, 1.0, tl.maximum(tl.abs(h0), 1.0)[None, :])
        bound_c = bound_h
    return bound_c, bound_h


@triton.jit
def _linearise(pc, ph, sc, sh, u0, u1, u2, A0, A1, A2, C0, C1, real, keep, m2, bound_c, bound_h, CELL: tl.constexpr):
    """For the iterate (sc, sh) with its predecessors (pc, ph), unscaled by keep: the residual
    r = f(prev) - s, the worst relative residual, and the step Jacobians (keep and padding
    applied), as the chunked kernel computes them."""
    ph = keep * ph
    if CELL == 0:
        fh, J = gru_step(ph, u0, u1, u2, A0, A1, A2)
        rh = tl.where(m2, tl.where(real, fh, ph) - sh, 0.0)
        err = tl.max(tl.max(tl.abs(rh) / _scale(sh, bound_h), axis=1), axis=0)
        jhh = keep * tl.where(real, J, 1.0)
        rc = rh
        jcc = jhh
        jch = jhh
        jhc = jhh
    else:
        pc = keep * pc
        fc, fh, jcc, jch, jhc, jhh = lstm_step(pc, ph, u0, u1, u2, A0, A1, A2, C0, C1)
        rc = tl.where(m2, tl.where(real, fc, pc) - sc, 0.0)
        rh = tl.where(m2, tl.where(real, fh, ph) - sh, 0.0)
        err_c = tl.max(tl.max(tl.abs(rc) / _scale(sc, bound_c), axis=1), axis=0)
        err = tl.maximum(err_c, tl.max(tl.max(tl.abs(rh) / _scale(sh, bound_h), axis=1), axis=0))
        jcc = keep * tl.where(real, jcc, 1.0)
        jch = keep * tl.where(real, jch, 0.0)
        jhc = keep * tl.where(real, jhc, 0.0)
        jhh = keep * tl.where(real, jhh, 1.0)
    # NaN would be lost by the maximum: an unusable iterate counts as infinitely far
    err = tl.where(err == err, err, float("inf"))
    return rc, rh, err, jcc, jch, jhc, jhh


@triton.jit
def _local_scan(jcc, jch, jhc, jhh, rc, rh, CELL: tl.constexpr):
    """The chunk's linear recurrence from a zero entry: the products of its Jacobians up to
    each step and the local solution d_loc."""
    if CELL == 0:
        Phh, dh = tl.associative_scan((jhh, rh), 0, combine_diagonal)
        Pcc = Phh
        Pch = Phh
        Phc = Phh
        dc = dh
    else:
        Pcc, Pch, Phc, Phh, dc, dh = tl.associative_scan((jcc, jch, jhc, jhh, rc, rh), 0, combine_2x2)
    return Pcc, Pch, Phc, Phh, dc, dh


@triton.jit
def _store_summary(P_ptr, E_ptr, slot, n, nmask, last, Pcc, Pch, Phc, Phh, dc, dh, N, CELL: tl.constexpr):
    """The chunk's summary at its last step: products [KK, N] and d_loc [K, N] at ``slot``."""
    if CELL == 0:
        tl.store(P_ptr + slot * N + n, _row(Phh, last), mask=nmask)
        tl.store(E_ptr + slot * N + n, _row(dh, last), mask=nmask)
    else:
        tl.store(P_ptr + slot * 4 * N + n, _row(Pcc, last), mask=nmask)
        tl.store(P_ptr + slot * 4 * N + N + n, _row(Pch, last), mask=nmask)
        tl.store(P_ptr + slot * 4 * N + 2 * N + n, _row(Phc, last), mask=nmask)
        tl.store(P_ptr + slot * 4 * N + 3 * N + n, _row(Phh, last), mask=nmask)
        tl.store(E_ptr + slot * 2 * N + n, _row(dc, last), mask=nmask)
        tl.store(E_ptr + slot * 2 * N + N + n, _row(dh, last), mask=nmask)


@_OPTIONAL_FLAGS
@triton.jit
def tp_guess_kernel(
    u_ptr,
    bias_ptr,
    A_ptr,
    C_ptr,
    s0_ptr,
    mask_ptr,
    keep_ptr,
    first_reset_ptr,
    s_ptr,
    P_ptr,
    E_ptr,
    err_ptr,
    T,
    N,
    su_b,
    su_t,
    su_g,
    su_h,
    NH,
    NC,
    CELL: tl.constexpr,
    K: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CH: tl.constexpr,
    BN: tl.constexpr,
):
    """Newton's first iterate, f(s0, u_t) at every t (from s0 through the step's keep and
    padding), and its linearisation.

    In: ``u`` [B, T, 3, N], ``A`` [3, N], ``C`` [2, N] or None, ``s0`` [B, K, N], ``mask``
    [B, T] int8 or None, ``keep`` [B, T] fp32 or None, ``first_reset`` [B] int32 (T: none).
    Out: the iterate in ``s`` [B, T, K, N]; the chunk summaries ``P`` [B, NC, K*K, N] and ``E``
    [B, NC, K, N]; ``err[0]`` raised to this chunk's worst relative residual.
    Grid: (cdiv(N, BN), NC, B).
    """
    nb = tl.program_id(0)
    ci = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    local = tl.arange(0, CH)
    t = ci * CH + local
    tmask = t < T
    m2 = tmask[:, None] & nmask[None, :]
    last = (local == tl.minimum(CH, T - ci * CH) - 1)[:, None]
    A0, A1, A2, C0, C1 = _cell_parameters(A_ptr, C_ptr, n, nmask, N, CELL)
    u0, u1, u2, real, keep = _chunk_inputs(
        u_ptr,
        bias_ptr,
        mask_ptr,
        keep_ptr,
        b,
        t,
        n,
        tmask,
        nmask,
        T,
        N,
        su_b,
        su_t,
        su_g,
        su_h,
        NH,
        HAS_MASK,
        HAS_KEEP,
        HAS_BIAS,
    )
    h0 = tl.load(s0_ptr + b * K * N + (K - 1) * N + n, mask=nmask, other=0.0)[None, :]
    c0 = h0
    if CELL == 1:
        c0 = tl.load(s0_ptr + b * K * N + n, mask=nmask, other=0.0)[None, :]
    sc, sh = _first_iterate(c0, h0, u0, u1, u2, A0, A1, A2, C0, C1, real, keep, CELL)
    s_off = s_ptr + (b * T + t.to(tl.int64))[:, None] * (K * N) + n[None, :]
    tl.store(s_off + (K - 1) * N, sh, mask=m2)
    if CELL == 1:
        tl.store(s_off, sc, mask=m2)
    # the iterate at the step before the chunk, computed here (its program may not have run yet)
    tb = tl.maximum(ci * CH - 1, 0) + tl.zeros([1], tl.int32)
    v0, v1, v2, real_b, keep_b = _chunk_inputs(
        u_ptr,
        bias_ptr,
        mask_ptr,
        keep_ptr,
        b,
        tb,
        n,
        tb < T,
        nmask,
        T,
        N,
        su_b,
        su_t,
        su_g,
        su_h,
        NH,
        HAS_MASK,
        HAS_KEEP,
        HAS_BIAS,
    )
    before_c, before_h = _first_iterate(c0, h0, v0, v1, v2, A0, A1, A2, C0, C1, real_b, keep_b, CELL)
    if ci == 0:  # the first chunk's predecessor is the initial state itself
        before_c = c0
        before_h = h0
    tl.debug_barrier()
    pc, ph = _predecessors(s_off, before_c, before_h, m2, local, N, CELL, K)
    bound_c, bound_h = _bounds(s0_ptr, first_reset_ptr, b, t, n, nmask, N, CELL, K)
    rc, rh, err, jcc, jch, jhc, jhh = _linearise(
        pc, ph, sc, sh, u0, u1, u2, A0, A1, A2, C0, C1, real, keep, m2, bound_c, bound_h, CELL
    )
    Pcc, Pch, Phc, Phh, dc, dh = _local_scan(jcc, jch, jhc, jhh, rc, rh, CELL)
    _store_summary(P_ptr, E_ptr, b * NC + ci, n, nmask, last, Pcc, Pch, Phc, Phh, dc, dh, N, CELL)
    tl.atomic_max(err_ptr, err)


@triton.jit
def _first_iterate(c0, h0, u0, u1, u2, A0, A1, A2, C0, C1, real, keep, CELL: tl.constexpr):
    """f(s0, u_t) through the step's keep and padding (the chunked kernel's first guess)."""
    ph = keep * h0
    if CELL == 0:
        fh, _ = gru_step(ph, u0, u1, u2, A0, A1, A2)
        sh = tl.where(real, fh, ph)
        sc = sh
    else:
        pc = keep * c0
        fc, fh, _, _, _, _ = lstm_step(pc, ph, u0, u1, u2, A0, A1, A2, C0, C1)
        sh = tl.where(real, fh, ph)
        sc = tl.where(real, fc, pc)
    return sc, sh


@triton.jit
def _predecessors(s_off, before_c, before_h, m2, local, N, CELL: tl.constexpr, K: tl.constexpr):
    """Each step's predecessor in the iterate just stored at ``s_off`` (shifted loads after a
    barrier), the chunk's first step taking ``before`` ([1, BN])."""
    first = (local == 0)[:, None]
    pmask = m2 & (local > 0)[:, None]
    prev_off = s_off - K * N
    ph = tl.where(first, before_h, tl.load(prev_off + (K - 1) * N, mask=pmask, other=0.0))
    pc = ph
    if CELL == 1:
        pc = tl.where(first, before_c, tl.load(prev_off, mask=pmask, other=0.0))
    return pc, ph


@triton.jit
def tp_carry_kernel(
    P_ptr,
    E_ptr,
    carry_ptr,
    err_ptr,
    ctrl_ptr,
    it,
    tol,
    N,
    NC,
    MAX_ITERS,
    CELL: tl.constexpr,
    K: tl.constexpr,
    BN: tl.constexpr,
):
    """Newton step ``it``'s carries, or the end of the loop.

    If iterate ``it`` is below ``tol`` (``err[it]``, complete: every program of the previous
    launch has raised it) or ``it`` is the cap, it sets ``ctrl`` = (1, it) and returns. Else,
    per channel block, the prefix over the chunk summaries: ``carry[c]`` = the Newton update
    at the step before chunk c (0 for the first), ``carry[c + 1] = P[c] carry[c] + E[c]``.
    In: ``P`` [B, NC, K*K, N], ``E`` [B, NC, K, N], ``err`` [MAX_ITERS + 1], ``ctrl`` int32 [2].
    Out: ``carry`` [B, NC, K, N]. Grid: (cdiv(N, BN), B).
    """
    nb = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    e = tl.load(err_ptr + it)
    stop = (tl.load(ctrl_ptr) != 0) | (e <= tol) | (it >= MAX_ITERS)
    if stop:
        if tl.load(ctrl_ptr) == 0:
            tl.store(ctrl_ptr + 1, it)
        tl.store(ctrl_ptr, 1)
    else:
        xc = tl.zeros([BN], tl.float32)
        xh = tl.zeros([BN], tl.float32)
        for c in range(0, NC):
            slot = b * NC + c
            tl.store(carry_ptr + slot * K * N + (K - 1) * N + n, xh, mask=nmask)
            if CELL == 0:
                p = tl.load(P_ptr + slot * N + n, mask=nmask, other=0.0)
                xh = p * xh + tl.load(E_ptr + slot * N + n, mask=nmask, other=0.0)
            else:
                tl.store(carry_ptr + slot * K * N + n, xc, mask=nmask)
                pcc = tl.load(P_ptr + slot * 4 * N + n, mask=nmask, other=0.0)
                pch = tl.load(P_ptr + slot * 4 * N + N + n, mask=nmask, other=0.0)
                phc = tl.load(P_ptr + slot * 4 * N + 2 * N + n, mask=nmask, other=0.0)
                phh = tl.load(P_ptr + slot * 4 * N + 3 * N + n, mask=nmask, other=0.0)
                ec = tl.load(E_ptr + slot * 2 * N + n, mask=nmask, other=0.0)
                eh = tl.load(E_ptr + slot * 2 * N + N + n, mask=nmask, other=0.0)
                xc, xh = pcc * xc + pch * xh + ec, phc * xc + phh * xh + eh


@_OPTIONAL_FLAGS
@triton.jit
def tp_step_kernel(
    u_ptr,
    bias_ptr,
    A_ptr,
    C_ptr,
    s0_ptr,
    mask_ptr,
    keep_ptr,
    first_reset_ptr,
    src_ptr,
    dst_ptr,
    carry_ptr,
    P_ptr,
    E_ptr,
    err_ptr,
    ctrl_ptr,
    it,
    T,
    N,
    su_b,
    su_t,
    su_g,
    su_h,
    NH,
    NC,
    CELL: tl.constexpr,
    K: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CH: tl.constexpr,
    BN: tl.constexpr,
):
    """Newton step ``it``: iterate ``it`` (in ``src``) plus its update (the local scan, redone
    from ``src``, and the carry) is iterate ``it + 1`` (into ``dst``); then that iterate's
    linearisation, summary and residual (``err[it + 1]``), as ``tp_guess_kernel`` does for the
    first. Returns at once when the loop has stopped (``ctrl[0]``).
    In/out: as ``tp_guess_kernel``, with ``carry`` [B, NC, K, N]. Grid: (cdiv(N, BN), NC, B).
    """
    if tl.load(ctrl_ptr) == 0:
        nb = tl.program_id(0)
        ci = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        n = nb * BN + tl.arange(0, BN)
        nmask = n < N
        local = tl.arange(0, CH)
        t = ci * CH + local
        tmask = t < T
        m2 = tmask[:, None] & nmask[None, :]
        last = (local == tl.minimum(CH, T - ci * CH) - 1)[:, None]
        A0, A1, A2, C0, C1 = _cell_parameters(A_ptr, C_ptr, n, nmask, N, CELL)
        u0, u1, u2, real, keep = _chunk_inputs(
            u_ptr,
            bias_ptr,
            mask_ptr,
            keep_ptr,
            b,
            t,
            n,
            tmask,
            nmask,
            T,
            N,
            su_b,
            su_t,
            su_g,
            su_h,
            NH,
            HAS_MASK,
            HAS_KEEP,
            HAS_BIAS,
        )
        bound_c, bound_h = _bounds(s0_ptr, first_reset_ptr, b, t, n, nmask, N, CELL, K)
        h0 = tl.load(s0_ptr + b * K * N + (K - 1) * N + n, mask=nmask, other=0.0)[None, :]
        c0 = h0
        if CELL == 1:
            c0 = tl.load(s0_ptr + b * K * N + n, mask=nmask, other=0.0)[None, :]
        # iterate `it` and its predecessors, all in src (nobody writes src in this launch)
        src_off = src_ptr + (b * T + t.to(tl.int64))[:, None] * (K * N) + n[None, :]
        sh = tl.load(src_off + (K - 1) * N, mask=m2, other=0.0)
        sc = sh
        if CELL == 1:
            sc = tl.load(src_off, mask=m2, other=0.0)
        at0 = (t == 0)[:, None]
        pmask = m2 & (t > 0)[:, None]
        ph = tl.where(at0, h0, tl.load(src_off - K * N + (K - 1) * N, mask=pmask, other=0.0))
        pc = ph
        if CELL == 1:
            pc = tl.where(at0, c0, tl.load(src_off - K * N, mask=pmask, other=0.0))
        rc, rh, _, jcc, jch, jhc, jhh = _linearise(
            pc, ph, sc, sh, u0, u1, u2, A0, A1, A2, C0, C1, real, keep, m2, bound_c, bound_h, CELL
        )
        Pcc, Pch, Phc, Phh, dc, dh = _local_scan(jcc, jch, jhc, jhh, rc, rh, CELL)
        # the update: d_t = d_loc_t + JP_t d_in, d_in the update at the step before the chunk
        slot = b * NC + ci
        xh = tl.load(carry_ptr + slot * K * N + (K - 1) * N + n, mask=nmask, other=0.0)[None, :]
        if CELL == 0:
            sh = sh + (dh + Phh * xh)
            sc = sh
        else:
            xc = tl.load(carry_ptr + slot * K * N + n, mask=nmask, other=0.0)[None, :]
            sc = sc + (dc + (Pcc * xc + Pch * xh))
            sh = sh + (dh + (Phc * xc + Phh * xh))
        dst_off = dst_ptr + (b * T + t.to(tl.int64))[:, None] * (K * N) + n[None, :]
        tl.store(dst_off + (K - 1) * N, sh, mask=m2)
        if CELL == 1:
            tl.store(dst_off, sc, mask=m2)
        # the new iterate's predecessor of the chunk's first step: the old one plus its update
        tb = tl.maximum(ci * CH - 1, 0)
        before_h = tl.load(src_ptr + (b * T + tb) * K * N + (K - 1) * N + n, mask=nmask, other=0.0)[None, :] + xh
        before_c = before_h
        if CELL == 1:
            before_c = tl.load(src_ptr + (b * T + tb) * K * N + n, mask=nmask, other=0.0)[None, :] + xc
        if ci == 0:
            before_c = c0
            before_h = h0
        tl.debug_barrier()
        pc, ph = _predecessors(dst_off, before_c, before_h, m2, local, N, CELL, K)
        rc, rh, err, jcc, jch, jhc, jhh = _linearise(
            pc, ph, sc, sh, u0, u1, u2, A0, A1, A2, C0, C1, real, keep, m2, bound_c, bound_h, CELL
        )
        Pcc, Pch, Phc, Phh, dc, dh = _local_scan(jcc, jch, jhc, jhh, rc, rh, CELL)
        _store_summary(P_ptr, E_ptr, slot, n, nmask, last, Pcc, Pch, Phc, Phh, dc, dh, N, CELL)
        tl.atomic_max(err_ptr + it + 1, err)


@triton.jit
def tp_finish_kernel(s_ptr, other_ptr, ctrl_ptr, T, N, K: tl.constexpr, CH: tl.constexpr, BN: tl.constexpr):
    """The final iterate into ``s`` (buffer 0): copied from ``other`` (buffer 1) when the loop
    stopped at an odd iterate (``ctrl[1]``). Grid: (cdiv(N, BN), cdiv(T, CH), B)."""
    if tl.load(ctrl_ptr + 1) % 2 == 1:
        nb = tl.program_id(0)
        ci = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        n = nb * BN + tl.arange(0, BN)
        t = ci * CH + tl.arange(0, CH)
        m2 = (t < T)[:, None] & (n < N)[None, :]
        off = (b * T + t.to(tl.int64))[:, None] * (K * N) + n[None, :]
        for k in range(K):
            tl.store(s_ptr + off + k * N, tl.load(other_ptr + off + k * N, mask=m2, other=0.0), mask=m2)


@_OPTIONAL_FLAGS
@triton.jit
def tp_adjoint_local_kernel(
    u_ptr,
    bias_ptr,
    A_ptr,
    C_ptr,
    s0_ptr,
    s_ptr,
    mask_ptr,
    keep_ptr,
    g_ptr,
    P_ptr,
    E_ptr,
    T,
    N,
    su_b,
    su_t,
    su_g,
    su_h,
    NH,
    NC,
    CELL: tl.constexpr,
    K: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CH: tl.constexpr,
    BN: tl.constexpr,
):
    """The adjoint's chunk summaries. Within the chunk, ``lam_t = lam_loc_t + Q_t mu`` where
    ``lam_loc`` is the reverse scan of ``lam_t = g_t + J_{t+1}^T lam_{t+1}`` from a zero entry
    after the chunk, ``Q_t`` the product of the chunk's ``J^T`` from t on, and ``mu`` what
    enters at its last step from the next chunk. What this chunk hands to the one before is
    ``D mu`` with ``D`` the transposed Jacobian of its first step (keep and padding applied):
    the summary is ``M = D Q_first`` [B, NC, K*K, N] and ``V = D lam_loc_first`` [B, NC, K, N].
    In: as ``adjoint_backward_kernel``. Grid: (cdiv(N, BN), NC, B).
    """
    nb = tl.program_id(0)
    ci = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    local = tl.arange(0, CH)
    t = ci * CH + local
    tmask = t < T
    m2 = tmask[:, None] & nmask[None, :]
    first = (local == 0)[:, None]
    A0, A1, A2, C0, C1 = _cell_parameters(A_ptr, C_ptr, n, nmask, N, CELL)
    Qcc, Qch, Qhc, Qhh, lc, lh = _adjoint_local(
        u_ptr, bias_ptr, s_ptr, g_ptr, mask_ptr, keep_ptr, b, t, n, tmask, nmask, local, m2,
        A0, A1, A2, C0, C1, T, N, su_b, su_t, su_g, su_h, NH, CELL, K, HAS_MASK, HAS_KEEP, HAS_BIAS, CH,
    )  # fmt: skip
    # D: the transposed Jacobian of the chunk's first step at its predecessor
    t0 = ci * CH + tl.zeros([1], tl.int32)
    u0, u1, u2, real, keep = _chunk_inputs(
        u_ptr,
        bias_ptr,
        mask_ptr,
        keep_ptr,
        b,
        t0,
        n,
        t0 < T,
        nmask,
        T,
        N,
        su_b,
        su_t,
        su_g,
        su_h,
        NH,
        HAS_MASK,
        HAS_KEEP,
        HAS_BIAS,
    )
    pc, ph = _state_before(s_ptr, s0_ptr, b, ci * CH, n, nmask, T, N, CELL, K)
    qcc = _row(Qcc, first)[None, :]
    qch = _row(Qch, first)[None, :]
    qhc = _row(Qhc, first)[None, :]
    qhh = _row(Qhh, first)[None, :]
    vc = _row(lc, first)[None, :]
    vh = _row(lh, first)[None, :]
    slot = b * NC + ci
    if CELL == 0:
        _, J = gru_step(keep * ph, u0, u1, u2, A0, A1, A2)
        d = keep * tl.where(real, J, 1.0)
        tl.store(P_ptr + slot * N + n[None, :], d * qhh, mask=nmask[None, :])
        tl.store(E_ptr + slot * N + n[None, :], d * vh, mask=nmask[None, :])
    else:
        _, _, jcc, jch, jhc, jhh = lstm_step(keep * pc, keep * ph, u0, u1, u2, A0, A1, A2, C0, C1)
        # D = keep * (real ? J^T : I), J^T = [[jcc, jhc], [jch, jhh]]
        dcc = keep * tl.where(real, jcc, 1.0)
        dch = keep * tl.where(real, jhc, 0.0)
        dhc = keep * tl.where(real, jch, 0.0)
        dhh = keep * tl.where(real, jhh, 1.0)
        base = P_ptr + slot * 4 * N + n[None, :]
        tl.store(base, dcc * qcc + dch * qhc, mask=nmask[None, :])
        tl.store(base + N, dcc * qch + dch * qhh, mask=nmask[None, :])
        tl.store(base + 2 * N, dhc * qcc + dhh * qhc, mask=nmask[None, :])
        tl.store(base + 3 * N, dhc * qch + dhh * qhh, mask=nmask[None, :])
        tl.store(E_ptr + slot * 2 * N + n[None, :], dcc * vc + dch * vh, mask=nmask[None, :])
        tl.store(E_ptr + slot * 2 * N + N + n[None, :], dhc * vc + dhh * vh, mask=nmask[None, :])


@triton.jit
def _state_before(s_ptr, s0_ptr, b, tb, n, nmask, T, N, CELL: tl.constexpr, K: tl.constexpr):
    """The state before step ``tb`` (``s0`` for tb = 0) as [1, BN] rows (c, h)."""
    row = s_ptr + (b * T + tl.maximum(tb - 1, 0)) * K * N + n
    h = tl.load(row + (K - 1) * N, mask=nmask, other=0.0)
    c = h
    if CELL == 1:
        c = tl.load(row, mask=nmask, other=0.0)
    if tb == 0:
        h = tl.load(s0_ptr + b * K * N + (K - 1) * N + n, mask=nmask, other=0.0)
        c = h
        if CELL == 1:
            c = tl.load(s0_ptr + b * K * N + n, mask=nmask, other=0.0)
    return c[None, :], h[None, :]


@triton.jit
def _adjoint_local(
    u_ptr, bias_ptr, s_ptr, g_ptr, mask_ptr, keep_ptr, b, t, n, tmask, nmask, local, m2,
    A0, A1, A2, C0, C1, T, N, su_b, su_t, su_g, su_h, NH, CELL: tl.constexpr, K: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_KEEP: tl.constexpr, HAS_BIAS: tl.constexpr, CH: tl.constexpr,
):  # fmt: skip
    """The chunk's reverse scan of (J_{t+1}^T, g_t) from a zero entry after it: ``Q_t`` (the
    product of the transposed Jacobians from t to the chunk's end; identity past its last
    step, where the next chunk's contribution enters) and ``lam_loc_t``."""
    s_off = s_ptr + (b * T + t.to(tl.int64))[:, None] * (K * N) + n[None, :]
    g_off = g_ptr + (b * T + t.to(tl.int64))[:, None] * (K * N) + n[None, :]
    t1 = t + 1
    inner = (local < CH - 1) & (t1 < T)
    m1 = inner[:, None] & nmask[None, :]
    v0, v1, v2, real1, keep1 = _chunk_inputs(
        u_ptr,
        bias_ptr,
        mask_ptr,
        keep_ptr,
        b,
        t1,
        n,
        inner,
        nmask,
        T,
        N,
        su_b,
        su_t,
        su_g,
        su_h,
        NH,
        HAS_MASK,
        HAS_KEEP,
        HAS_BIAS,
    )
    sh = tl.load(s_off + (K - 1) * N, mask=m2, other=0.0)
    gh = tl.load(g_off + (K - 1) * N, mask=m2, other=0.0)
    if CELL == 0:
        _, J = gru_step(keep1 * sh, v0, v1, v2, A0, A1, A2)
        J = tl.where(m1, keep1 * tl.where(real1, J, 1.0), 1.0)
        Qhh, lh = tl.associative_scan((J, gh), 0, combine_diagonal, reverse=True)
        Qcc = Qhh
        Qch = Qhh
        Qhc = Qhh
        lc = lh
    else:
        sc = tl.load(s_off, mask=m2, other=0.0)
        gc = tl.load(g_off, mask=m2, other=0.0)
        _, _, jcc, jch, jhc, jhh = lstm_step(keep1 * sc, keep1 * sh, v0, v1, v2, A0, A1, A2, C0, C1)
        # J^T = [[jcc, jhc], [jch, jhh]]
        a = tl.where(m1, keep1 * tl.where(real1, jcc, 1.0), 1.0)
        bb = tl.where(m1, keep1 * tl.where(real1, jhc, 0.0), 0.0)
        c = tl.where(m1, keep1 * tl.where(real1, jch, 0.0), 0.0)
        d = tl.where(m1, keep1 * tl.where(real1, jhh, 1.0), 1.0)
        Qcc, Qch, Qhc, Qhh, lc, lh = tl.associative_scan((a, bb, c, d, gc, gh), 0, combine_2x2, reverse=True)
    return Qcc, Qch, Qhc, Qhh, lc, lh


@triton.jit
def tp_adjoint_carry_kernel(
    P_ptr, E_ptr, carry_ptr, ds0_ptr, N, NC, CELL: tl.constexpr, K: tl.constexpr, BN: tl.constexpr
):
    """The adjoint's carries, last chunk to first: ``carry[c]`` = what enters chunk c at its
    last step (0 for the last chunk), ``carry[c - 1] = E[c] + P[c] carry[c]``; what leaves the
    first chunk is ``dL/ds0``. In: ``P`` [B, NC, K*K, N], ``E`` [B, NC, K, N] from
    ``tp_adjoint_local_kernel``. Out: ``carry`` [B, NC, K, N], ``ds0`` [B, K, N].
    Grid: (cdiv(N, BN), B)."""
    nb = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    xc = tl.zeros([BN], tl.float32)
    xh = tl.zeros([BN], tl.float32)
    for i in range(0, NC):
        slot = b * NC + NC - 1 - i
        tl.store(carry_ptr + slot * K * N + (K - 1) * N + n, xh, mask=nmask)
        if CELL == 0:
            p = tl.load(P_ptr + slot * N + n, mask=nmask, other=0.0)
            xh = p * xh + tl.load(E_ptr + slot * N + n, mask=nmask, other=0.0)
        else:
            tl.store(carry_ptr + slot * K * N + n, xc, mask=nmask)
            pcc = tl.load(P_ptr + slot * 4 * N + n, mask=nmask, other=0.0)
            pch = tl.load(P_ptr + slot * 4 * N + N + n, mask=nmask, other=0.0)
            phc = tl.load(P_ptr + slot * 4 * N + 2 * N + n, mask=nmask, other=0.0)
            phh = tl.load(P_ptr + slot * 4 * N + 3 * N + n, mask=nmask, other=0.0)
            ec = tl.load(E_ptr + slot * 2 * N + n, mask=nmask, other=0.0)
            eh = tl.load(E_ptr + slot * 2 * N + N + n, mask=nmask, other=0.0)
            xc, xh = pcc * xc + pch * xh + ec, phc * xc + phh * xh + eh
    tl.store(ds0_ptr + b * K * N + (K - 1) * N + n, xh, mask=nmask)
    if CELL == 1:
        tl.store(ds0_ptr + b * K * N + n, xc, mask=nmask)


@_OPTIONAL_FLAGS
@triton.jit
def tp_adjoint_grad_kernel(
    u_ptr,
    bias_ptr,
    A_ptr,
    C_ptr,
    s0_ptr,
    s_ptr,
    mask_ptr,
    keep_ptr,
    g_ptr,
    carry_ptr,
    du_ptr,
    dA_ptr,
    dC_ptr,
    db_ptr,
    T,
    N,
    su_b,
    su_t,
    su_g,
    su_h,
    NH,
    NC,
    CELL: tl.constexpr,
    K: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CH: tl.constexpr,
    BN: tl.constexpr,
):
    """The adjoint in the chunk, ``lam_t = lam_loc_t + Q_t carry``, then every step's closed-form
    VJP (as ``adjoint_backward_kernel``). Out: ``du`` in ``u``'s layout, fp32; per chunk ``dA``
    [B, NC, 3, N], ``dC`` [B, NC, 2, N] or None and ``db`` [B, NC, 3, N] or None (summed by the
    caller).
    Grid: (cdiv(N, BN), NC, B)."""
    nb = tl.program_id(0)
    ci = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    local = tl.arange(0, CH)
    t = ci * CH + local
    tmask = t < T
    m2 = tmask[:, None] & nmask[None, :]
    A0, A1, A2, C0, C1 = _cell_parameters(A_ptr, C_ptr, n, nmask, N, CELL)
    Qcc, Qch, Qhc, Qhh, lc, lh = _adjoint_local(
        u_ptr, bias_ptr, s_ptr, g_ptr, mask_ptr, keep_ptr, b, t, n, tmask, nmask, local, m2,
        A0, A1, A2, C0, C1, T, N, su_b, su_t, su_g, su_h, NH, CELL, K, HAS_MASK, HAS_KEEP, HAS_BIAS, CH,
    )  # fmt: skip
    slot = b * NC + ci
    xh = tl.load(carry_ptr + slot * K * N + (K - 1) * N + n, mask=nmask, other=0.0)[None, :]
    if CELL == 0:
        lam_h = lh + Qhh * xh
        lam_c = lam_h
    else:
        xc = tl.load(carry_ptr + slot * K * N + n, mask=nmask, other=0.0)[None, :]
        lam_c = lc + (Qcc * xc + Qch * xh)
        lam_h = lh + (Qhc * xc + Qhh * xh)
    u0, u1, u2, real, keep = _chunk_inputs(
        u_ptr,
        bias_ptr,
        mask_ptr,
        keep_ptr,
        b,
        t,
        n,
        tmask,
        nmask,
        T,
        N,
        su_b,
        su_t,
        su_g,
        su_h,
        NH,
        HAS_MASK,
        HAS_KEEP,
        HAS_BIAS,
    )
    s_off = s_ptr + (b * T + t.to(tl.int64))[:, None] * (K * N) + n[None, :]
    at0 = (t == 0)[:, None]
    pmask = m2 & (t > 0)[:, None]
    ph = tl.load(s_off - K * N + (K - 1) * N, mask=pmask, other=0.0)
    ph = keep * tl.where(at0, tl.load(s0_ptr + b * K * N + (K - 1) * N + n, mask=nmask, other=0.0)[None, :], ph)
    lam_fh = tl.where(real & m2, lam_h, 0.0)
    du_off = du_ptr + _u_offsets(b, t, n, su_b, su_t, su_h, NH)
    if CELL == 0:
        d0, d1, d2, a0, a1, a2, _ = gru_vjp(ph, u0, u1, u2, A0, A1, A2, lam_fh)
    else:
        pc = tl.load(s_off - K * N, mask=pmask, other=0.0)
        pc = keep * tl.where(at0, tl.load(s0_ptr + b * K * N + n, mask=nmask, other=0.0)[None, :], pc)
        lam_fc = tl.where(real & m2, lam_c, 0.0)
        d0, d1, d2, a0, a1, a2, e0, e1, _, _ = lstm_vjp(pc, ph, u0, u1, u2, A0, A1, A2, C0, C1, lam_fc, lam_fh)
        tl.store(dC_ptr + slot * 2 * N + n, tl.sum(tl.where(m2, e0, 0.0), axis=0), mask=nmask)
        tl.store(dC_ptr + slot * 2 * N + N + n, tl.sum(tl.where(m2, e1, 0.0), axis=0), mask=nmask)
    tl.store(du_off, d0, mask=m2)
    tl.store(du_off + su_g, d1, mask=m2)
    tl.store(du_off + 2 * su_g, d2, mask=m2)
    if HAS_BIAS:
        tl.store(db_ptr + slot * 3 * N + n, tl.sum(tl.where(m2, d0, 0.0), axis=0), mask=nmask)
        tl.store(db_ptr + slot * 3 * N + N + n, tl.sum(tl.where(m2, d1, 0.0), axis=0), mask=nmask)
        tl.store(db_ptr + slot * 3 * N + 2 * N + n, tl.sum(tl.where(m2, d2, 0.0), axis=0), mask=nmask)
    tl.store(dA_ptr + slot * 3 * N + n, tl.sum(tl.where(m2, a0, 0.0), axis=0), mask=nmask)
    tl.store(dA_ptr + slot * 3 * N + N + n, tl.sum(tl.where(m2, a1, 0.0), axis=0), mask=nmask)
    tl.store(dA_ptr + slot * 3 * N + 2 * N + n, tl.sum(tl.where(m2, a2, 0.0), axis=0), mask=nmask)

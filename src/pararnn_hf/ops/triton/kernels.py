"""Fused Triton kernels: the chunked parallel-Newton forward, the adjoint backward and the
single decoding step, written once for both cells (docs/design.md#kernels).

Each program owns ``BN`` channels of one batch row and walks the time axis in chunks of
``CH`` steps. Within a chunk the Newton iteration runs on chip, starting from the exact state
carried in from the previous chunk: residual, Jacobian and a ``tl.associative_scan`` over time
(diagonal for the GRU, 2x2 blocks for the LSTM); the chunk's converged states are written
once and its last state is the next chunk's carry. The shift ``s_{t-1}`` inside a chunk goes
through the output buffer (stores, a barrier, shifted loads), which stays in cache.
Indexing is 64-bit; math is fp32 whatever the input dtype.

Conventions (every kernel here follows them):

- Names. ``x_ptr`` is the base pointer of global tensor ``x``; ``x_off`` a tile of pointers
  into it; ``*mask`` / ``m2`` boolean tiles saying which lanes are in bounds; ``t`` time
  indices ``[CH]``, ``n`` channel indices ``[BN]``, ``b`` the batch row. Tile values carry
  the math's names: ``sh``/``sc`` the state rows h/c, ``u0..u2`` the gate rows of ``u``,
  ``A0..A2``/``C0, C1`` parameter rows as ``[1, BN]``, ``jcc, jch, jhc, jhh`` a 2x2 Jacobian
  (rows c', h'; columns d/dc, d/dh), ``lam_*`` adjoints. Tiles are ``[CH, BN]`` (time x
  channels); per-step flags are ``[CH, 1]`` columns.
- The cell. ``CELL`` is the cell module's ``KERNEL_ID`` (0 = ParaGRU, 1 = ParaLSTM) and ``K``
  its number of state rows; both are constexprs, so each cell compiles to its own kernel.
- Layouts. ``u``/``du`` are ``[B, T, 3, H, NH]`` with strides ``su_*`` (the per-head GEMM's
  output as it lies; a plain ``[B, T, 3, N]`` is H = 1), states ``[B, T, K, N]`` with h the last row,
  ``A`` ``[3, N]``, ``C`` ``[2, N]``, flags ``[B, T]``; all contiguous.
- Optional inputs are passed as ``None`` (the padding mask, the reset flags, the bias ``b``
  and ``db``, the GRU's ``C`` and ``dC``); ``@triton.heuristics`` turns their presence into the ``HAS_*``
  constexprs, so an absent input costs neither a load nor a dummy tensor.
- Launches name every argument (``kernel[grid](u_ptr=u, ...)``).
"""

import triton
import triton.language as tl

from . import interpreter_enabled
from .cells import combine_2x2, combine_diagonal, gru_step, gru_vjp, lstm_step, lstm_vjp


def _configs(shapes: list[tuple[int, int, int]]) -> list[triton.Config]:
    """(CH, BN, num_warps) candidates; the interpreter has no driver to time them, so it gets
    one small tile (every element is Python work there)."""
    if interpreter_enabled():
        return [triton.Config({"CH": 8, "BN": 16}, num_warps=1)]
    return [triton.Config({"CH": ch, "BN": bn}, num_warps=w) for ch, bn, w in shapes]


# (CH, BN, num_warps) per cell (its KERNEL_ID). Chunk lengths trade scan depth against how
# often the chunk carry serialises; channel blocks trade programs in flight (B * N / BN)
# against per-program work. Each listed tile compiles for sm_80 and sm_90 under Triton 3.6
# and 3.9 without spilling where the registers run out (benchmarks/kernel_resources.py,
# BENCHMARKS.md "Kernel resources"); left out:
# - LSTM forward, BN = 64: 255 registers and 16-40 B spills per thread (Triton 3.6);
# - GRU forward, (32, 16, 2): ptxas spills 40 B at 168 registers on sm_80 (Triton 3.6);
# - LSTM backward, CH = 64: 255 registers and a 24 B spill on sm_80 (Triton 3.9);
# - LSTM backward, (32, 64, 8) with the bias read in the kernel: 8 B at 255 registers, sm_90;
# - taller GRU tiles, (128, 16, 4) and (128, 32, 8): 255 registers, forward spills 8-40 B and
#   backward up to 112 B on sm_90 (Triton 3.9).
ALL_SHAPES = [(16, 32, 4), (32, 32, 4), (64, 32, 8), (32, 64, 8), (16, 64, 4), (32, 16, 2)]
FORWARD_SHAPES = {
    0: [(16, 32, 4), (32, 32, 4), (64, 32, 8), (32, 64, 8), (16, 64, 4)],
    1: [(16, 32, 4), (32, 32, 4), (64, 32, 8), (32, 16, 2)],
}
BACKWARD_SHAPES = {0: ALL_SHAPES, 1: [(16, 32, 4), (32, 32, 4), (16, 64, 4), (32, 16, 2)]}
SEQUENCE_CONFIGS = _configs(ALL_SHAPES)


def _shape(config: triton.Config) -> tuple[int, int, int]:
    return config.kwargs["CH"], config.kwargs["BN"], config.num_warps


def configs_for(shapes_by_cell: dict[int, list[tuple[int, int, int]]], cell_id: int) -> list[triton.Config]:
    """The autotune configs a kernel tries for one cell."""
    if interpreter_enabled():
        return SEQUENCE_CONFIGS
    allowed = set(shapes_by_cell[cell_id])
    return [c for c in SEQUENCE_CONFIGS if _shape(c) in allowed]


def _per_cell(shapes_by_cell: dict[int, list[tuple[int, int, int]]]) -> dict:
    """The autotuner's ``prune_configs_by``: only the cell's own tiles (the launch passes CELL)."""

    def prune(configs, named_args, **kwargs):
        return configs_for(shapes_by_cell, kwargs["CELL"])

    return {"early_config_prune": prune}


STEP_SHAPES = [(128, 4), (256, 4), (512, 8)]  # (BN, num_warps) of the decoding step
STEP_CONFIGS = [triton.Config({"BN": bn}, num_warps=w) for bn, w in STEP_SHAPES]
if interpreter_enabled():
    STEP_CONFIGS = [triton.Config({"BN": 16}, num_warps=1)]
MIN_BN = min(c.kwargs["BN"] for c in SEQUENCE_CONFIGS)


@triton.jit
def _u_offsets(b, t, n, su_b, su_t, su_h, NH):
    """Element offsets [CH, BN] of gate row 0 of ``u`` at steps ``t`` and channels ``n``, for
    ``u`` laid out as [B, T, 3, H, NH] with any strides (``su_*``; the channel within a head
    is contiguous): the per-head GEMM's output is read where it lies, with no layout copy."""
    return b * su_b + t.to(tl.int64)[:, None] * su_t + ((n // NH).to(tl.int64) * su_h + n % NH)[None, :]


@triton.jit
def _chunk_inputs(
    u_ptr, bias_ptr, mask_ptr, keep_ptr, b, t, n, tmask, nmask, T, N, su_b, su_t, su_g, su_h, NH,
    HAS_MASK: tl.constexpr, HAS_KEEP: tl.constexpr, HAS_BIAS: tl.constexpr,
):  # fmt: skip
    """u rows (fp32, with the bias ``b`` [3, N] added here when given), and per-step 'real
    token' and 'keep state' as [CH, 1] columns."""
    m2 = tmask[:, None] & nmask[None, :]
    off = u_ptr + _u_offsets(b, t, n, su_b, su_t, su_h, NH)
    u0 = tl.load(off, mask=m2, other=0.0).to(tl.float32)
    u1 = tl.load(off + su_g, mask=m2, other=0.0).to(tl.float32)
    u2 = tl.load(off + 2 * su_g, mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u0 += tl.load(bias_ptr + n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        u1 += tl.load(bias_ptr + N + n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        u2 += tl.load(bias_ptr + 2 * N + n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    real = tmask
    if HAS_MASK:
        real = real & (tl.load(mask_ptr + b * T + t, mask=tmask, other=0) != 0)
    keep = tl.full(t.shape, 1.0, tl.float32)
    if HAS_KEEP:
        keep = tl.load(keep_ptr + b * T + t, mask=tmask, other=1.0)
    return u0, u1, u2, real[:, None], keep[:, None]


@triton.jit
def _cell_parameters(A_ptr, C_ptr, n, nmask, N, CELL: tl.constexpr):
    """Rows of A (and C for the LSTM; zeros for the GRU, which has none) as [1, BN]."""
    A0 = tl.load(A_ptr + n, mask=nmask, other=0.0)[None, :]
    A1 = tl.load(A_ptr + N + n, mask=nmask, other=0.0)[None, :]
    A2 = tl.load(A_ptr + 2 * N + n, mask=nmask, other=0.0)[None, :]
    if CELL == 1:
        C0 = tl.load(C_ptr + n, mask=nmask, other=0.0)[None, :]
        C1 = tl.load(C_ptr + N + n, mask=nmask, other=0.0)[None, :]
    else:
        C0 = tl.zeros_like(A0)
        C1 = tl.zeros_like(A0)
    return A0, A1, A2, C0, C1


@triton.jit
def _scale(s, bound):
    """What a residual is measured against: clamp(|s|, 1, bound) (ops/newton.py state_scales)."""
    return tl.maximum(tl.minimum(tl.abs(s), bound), 1.0)


@triton.jit
def _row(tile, select):
    """The row of a [CH, BN] tile where ``select`` ([CH, 1]) is true, as [BN]."""
    return tl.sum(tl.where(select, tile, 0.0), axis=0)


# presence of the optional inputs -> constexpr flags (None pointers compile away)
_OPTIONAL_FLAGS = triton.heuristics(
    {
        "HAS_MASK": lambda args: args["mask_ptr"] is not None,
        "HAS_KEEP": lambda args: args["keep_ptr"] is not None,
        "HAS_BIAS": lambda args: args["bias_ptr"] is not None,
    }
)


def tuning_keys(B: int, T: int, N: int) -> dict[str, int]:
    """What the chunked kernels' autotuning is keyed on besides N and the cell: log2 buckets of
    the programs launched (B * N / 32) and of T, so that a tile tuned at batch 8 is not reused
    at batch 1, where fewer, taller tiles fill the GPU differently."""
    return {"PROGRAMS_KEY": (B * -(-N // 32)).bit_length(), "T_KEY": max(T, 1).bit_length()}


@triton.autotune(
    configs=SEQUENCE_CONFIGS, key=["N", "CELL", "PROGRAMS_KEY", "T_KEY"], prune_configs_by=_per_cell(FORWARD_SHAPES)
)
@_OPTIONAL_FLAGS
@triton.jit
def newton_forward_kernel(
    u_ptr,
    bias_ptr,
    A_ptr,
    C_ptr,
    s0_ptr,
    mask_ptr,
    keep_ptr,
    s_ptr,
    res_ptr,
    iters_ptr,
    T,
    N,
    su_b,
    su_t,
    su_g,
    su_h,
    NH,
    PROGRAMS_KEY,
    T_KEY,
    tol,
    CELL: tl.constexpr,
    K: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MAX_ITERS: tl.constexpr,
    MIN_BN: tl.constexpr,
    CH: tl.constexpr,
    BN: tl.constexpr,
):
    """All states of the sequence by chunked Newton (ops/newton.py newton_forward).

    In: ``u`` [B, T, 3, H, NH] (fp32/bf16/fp16) with strides ``su_*`` (any layout in which a
    head's channels are contiguous), the bias ``b`` [3, N] or None (added here), ``A`` [3, N],
    ``C`` [2, N] or None, ``s0`` [B, K, N], ``mask`` [B, T] int8 or None, ``keep`` [B, T] fp32
    or None, ``T``, ``N``, the tuning buckets, the tolerance ``tol`` (relative to
    clamp(|s|, 1, bound)) and the iteration cap.
    Out: ``s`` [B, T, K, N] fp32; per program (slot ``b * cdiv(N, MIN_BN) + nb``) the worst
    final residual of its chunks in ``res`` and the most Newton updates any chunk needed in
    ``iters``. Grid: (B, cdiv(N, BN)).
    """
    b = tl.program_id(0).to(tl.int64)
    nb = tl.program_id(1)
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    A0, A1, A2, C0, C1 = _cell_parameters(A_ptr, C_ptr, n, nmask, N, CELL)
    h_carry = tl.load(s0_ptr + b * K * N + (K - 1) * N + n, mask=nmask, other=0.0)
    # residuals are measured relative to clamp(|s|, 1, bound), the bound of every later state of
    # their own row and channel (ops/newton.py state_scales): max(1, |s0|) until the row's
    # first reset, 1 after it and for the LSTM's h, which o * tanh(c) keeps in [-1, 1]
    if CELL == 1:
        start_bound_h = tl.full([1, BN], 1.0, tl.float32)
        c_carry = tl.load(s0_ptr + b * K * N + n, mask=nmask, other=0.0)
        start_bound_c = tl.maximum(tl.abs(c_carry), 1.0)[None, :]
    else:
        start_bound_h = tl.maximum(tl.abs(h_carry), 1.0)[None, :]
    worst = tl.zeros([], tl.float32)
    most_iters = tl.zeros([], tl.int32)
    local = tl.arange(0, CH)
    first = (local == 0)[:, None]
    reset_seen = tl.zeros([], tl.int32)  # from a row's first reset on, its states are in [-1, 1]
    for c0 in range(0, T, CH):
        t = c0 + local
        tmask = t < T
        m2 = tmask[:, None] & nmask[None, :]
        last = (local == tl.minimum(CH, T - c0) - 1)[:, None]
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
        prev_off = s_off - K * N
        pmask = m2 & (local > 0)[:, None]
        after_reset = (tl.cumsum((keep == 0.0).to(tl.int32), axis=0) + reset_seen) > 0  # [CH, 1]
        bound_h = tl.where(after_reset, 1.0, start_bound_h)
        if CELL == 1:
            bound_c = tl.where(after_reset, 1.0, start_bound_c)
        # initial guess: every step from the carried-in state
        ph = keep * tl.broadcast_to(h_carry[None, :], (CH, BN))
        if CELL == 0:
            fh, _ = gru_step(ph, u0, u1, u2, A0, A1, A2)
            sh = tl.where(real, fh, ph)
        else:
            pc = keep * tl.broadcast_to(c_carry[None, :], (CH, BN))
            fc, fh, _, _, _, _ = lstm_step(pc, ph, u0, u1, u2, A0, A1, A2, C0, C1)
            sh = tl.where(real, fh, ph)
            sc = tl.where(real, fc, pc)
        err = tl.full([], float("inf"), tl.float32)
        it = tl.zeros([], tl.int32)
        # err is always the residual of the current iterate: the loop stops once it is below
        # tol, or after MAX_ITERS updates plus the check of the last one
        while (err > tol) & (it <= MAX_ITERS):
            tl.store(s_off + (K - 1) * N, sh, mask=m2)
            if CELL == 1:
                tl.store(s_off, sc, mask=m2)
            tl.debug_barrier()
            ph = keep * tl.where(first, h_carry[None, :], tl.load(prev_off + (K - 1) * N, mask=pmask, other=0.0))
            if CELL == 0:
                fh, J = gru_step(ph, u0, u1, u2, A0, A1, A2)
                rh = tl.where(m2, tl.where(real, fh, ph) - sh, 0.0)
                err = tl.max(tl.max(tl.abs(rh) / _scale(sh, bound_h), axis=1), axis=0)
                J = keep * tl.where(real, J, 1.0)
                _, dh = tl.associative_scan((J, rh), 0, combine_diagonal)
                go = (err > tol) & (it < MAX_ITERS)
                sh = tl.where(go, sh + dh, sh)
            else:
                pc = keep * tl.where(first, c_carry[None, :], tl.load(prev_off, mask=pmask, other=0.0))
                fc, fh, jcc, jch, jhc, jhh = lstm_step(pc, ph, u0, u1, u2, A0, A1, A2, C0, C1)
                rc = tl.where(m2, tl.where(real, fc, pc) - sc, 0.0)
                rh = tl.where(m2, tl.where(real, fh, ph) - sh, 0.0)
                err_c = tl.max(tl.max(tl.abs(rc) / _scale(sc, bound_c), axis=1), axis=0)
                err = tl.maximum(err_c, tl.max(tl.max(tl.abs(rh) / _scale(sh, bound_h), axis=1), axis=0))
                jcc = keep * tl.where(real, jcc, 1.0)
                jch = keep * tl.where(real, jch, 0.0)
                jhc = keep * tl.where(real, jhc, 0.0)
                jhh = keep * tl.where(real, jhh, 1.0)
                _, _, _, _, dc, dh = tl.associative_scan((jcc, jch, jhc, jhh, rc, rh), 0, combine_2x2)
                go = (err > tol) & (it < MAX_ITERS)
                sc = tl.where(go, sc + dc, sc)
                sh = tl.where(go, sh + dh, sh)
            tl.debug_barrier()
            it += 1
        worst = tl.maximum(worst, err)
        most_iters = tl.maximum(most_iters, it - 1)
        reset_seen = tl.max(tl.max(after_reset.to(tl.int32), axis=1), axis=0)
        tl.store(s_off + (K - 1) * N, sh, mask=m2)
        h_carry = _row(sh, last)
        if CELL == 1:
            tl.store(s_off, sc, mask=m2)
            c_carry = _row(sc, last)
    # one slot per program; the buffers are sized for the smallest BN, unused slots stay 0
    pid = b * tl.cdiv(N, MIN_BN) + nb
    tl.store(res_ptr + pid, worst)
    tl.store(iters_ptr + pid, most_iters)


@triton.autotune(
    configs=SEQUENCE_CONFIGS, key=["N", "CELL", "PROGRAMS_KEY", "T_KEY"], prune_configs_by=_per_cell(BACKWARD_SHAPES)
)
@_OPTIONAL_FLAGS
@triton.jit
def adjoint_backward_kernel(
    u_ptr,
    bias_ptr,
    A_ptr,
    C_ptr,
    s0_ptr,
    s_ptr,
    mask_ptr,
    keep_ptr,
    g_ptr,
    du_ptr,
    dA_ptr,
    dC_ptr,
    ds0_ptr,
    db_ptr,
    T,
    N,
    su_b,
    su_t,
    su_g,
    su_h,
    NH,
    PROGRAMS_KEY,
    T_KEY,
    CELL: tl.constexpr,
    K: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CH: tl.constexpr,
    BN: tl.constexpr,
):
    """The adjoint backward (ops/recurrence.py adjoint_backward): lam_t = g_t + J_{t+1}^T
    lam_{t+1} by a reverse scan per chunk (chunks last to first, carrying J_{t+1}^T lam_{t+1}
    across), then the closed-form gradients at every step.

    In: ``u`` [B, T, 3, N], ``A`` [3, N], ``C`` [2, N] or None, ``s0`` [B, K, N], the solution
    ``s`` [B, T, K, N] fp32, ``mask``/``keep`` as in the forward, ``g = dL/ds`` [B, T, K, N].
    Out: ``du`` in ``u``'s layout (fp32), ``dA`` [B, 3, N], ``dC`` [B, 2, N] (or None) and
    ``db`` [B, 3, N] (or None: no bias) per batch row, summed by the caller; ``ds0`` [B, K, N].
    Grid: (B, cdiv(N, BN)).
    """
    b = tl.program_id(0).to(tl.int64)
    nb = tl.program_id(1)
    n = nb * BN + tl.arange(0, BN)
    nmask = n < N
    A0, A1, A2, C0, C1 = _cell_parameters(A_ptr, C_ptr, n, nmask, N, CELL)
    mu_h = tl.zeros([BN], tl.float32)  # J_{t+1}^T lam_{t+1} for the step after the current chunk
    mu_c = tl.zeros([BN], tl.float32)
    dA0 = tl.zeros([BN], tl.float32)
    dA1 = tl.zeros([BN], tl.float32)
    dA2 = tl.zeros([BN], tl.float32)
    dC0 = tl.zeros([BN], tl.float32)
    dC1 = tl.zeros([BN], tl.float32)
    db0 = tl.zeros([BN], tl.float32)
    db1 = tl.zeros([BN], tl.float32)
    db2 = tl.zeros([BN], tl.float32)
    local = tl.arange(0, CH)
    first = (local == 0)[:, None]
    n_chunks = tl.cdiv(T, CH)
    for ci in range(0, n_chunks):
        c0 = (n_chunks - 1 - ci) * CH
        t = c0 + local
        tmask = t < T
        m2 = tmask[:, None] & nmask[None, :]
        last = (local == tl.minimum(CH, T - c0) - 1)[:, None]
        s_off = s_ptr + (b * T + t.to(tl.int64))[:, None] * (K * N) + n[None, :]
        g_off = g_ptr + (b * T + t.to(tl.int64))[:, None] * (K * N) + n[None, :]
        # J_{t+1} (inside this chunk) at prev = s_t
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
        gh = tl.load(g_off + (K - 1) * N, mask=m2, other=0.0) + tl.where(last, mu_h[None, :], 0.0)
        if CELL == 0:
            _, J = gru_step(keep1 * sh, v0, v1, v2, A0, A1, A2)
            J = tl.where(m1, keep1 * tl.where(real1, J, 1.0), 0.0)
            _, lam_h = tl.associative_scan((J, gh), 0, combine_diagonal, reverse=True)
        else:
            sc = tl.load(s_off, mask=m2, other=0.0)
            gc = tl.load(g_off, mask=m2, other=0.0) + tl.where(last, mu_c[None, :], 0.0)
            _, _, jcc, jch, jhc, jhh = lstm_step(keep1 * sc, keep1 * sh, v0, v1, v2, A0, A1, A2, C0, C1)
            jcc = tl.where(m1, keep1 * tl.where(real1, jcc, 1.0), 0.0)
            jch = tl.where(m1, keep1 * tl.where(real1, jch, 0.0), 0.0)
            jhc = tl.where(m1, keep1 * tl.where(real1, jhc, 0.0), 0.0)
            jhh = tl.where(m1, keep1 * tl.where(real1, jhh, 1.0), 0.0)
            # the adjoint uses J^T: [[jcc, jhc], [jch, jhh]]
            _, _, _, _, lam_c, lam_h = tl.associative_scan((jcc, jhc, jch, jhh, gc, gh), 0, combine_2x2, reverse=True)
        # gradients of step t at prev = s_{t-1} (s0 for t = 0)
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
        at0 = (t == 0)[:, None]
        pmask = m2 & (t > 0)[:, None]
        ph = tl.load(s_off - K * N + (K - 1) * N, mask=pmask, other=0.0)
        ph = keep * tl.where(at0, tl.load(s0_ptr + b * K * N + (K - 1) * N + n, mask=nmask, other=0.0)[None, :], ph)
        lam_fh = tl.where(real & m2, lam_h, 0.0)
        du_off = du_ptr + _u_offsets(b, t, n, su_b, su_t, su_h, NH)
        if CELL == 0:
            d0, d1, d2, a0, a1, a2, dh = gru_vjp(ph, u0, u1, u2, A0, A1, A2, lam_fh)
            dh = keep * (dh + tl.where(real, 0.0, lam_h))
        else:
            pc = tl.load(s_off - K * N, mask=pmask, other=0.0)
            pc = keep * tl.where(at0, tl.load(s0_ptr + b * K * N + n, mask=nmask, other=0.0)[None, :], pc)
            lam_fc = tl.where(real & m2, lam_c, 0.0)
            d0, d1, d2, a0, a1, a2, e0, e1, dc, dh = lstm_vjp(pc, ph, u0, u1, u2, A0, A1, A2, C0, C1, lam_fc, lam_fh)
            dc = keep * (dc + tl.where(real, 0.0, lam_c))
            dh = keep * (dh + tl.where(real, 0.0, lam_h))
            dC0 += tl.sum(tl.where(m2, e0, 0.0), axis=0)
            dC1 += tl.sum(tl.where(m2, e1, 0.0), axis=0)
            mu_c = _row(dc, first)
        tl.store(du_off, d0, mask=m2)
        tl.store(du_off + su_g, d1, mask=m2)
        tl.store(du_off + 2 * su_g, d2, mask=m2)
        if HAS_BIAS:
            db0 += tl.sum(tl.where(m2, d0, 0.0), axis=0)
            db1 += tl.sum(tl.where(m2, d1, 0.0), axis=0)
            db2 += tl.sum(tl.where(m2, d2, 0.0), axis=0)
        dA0 += tl.sum(tl.where(m2, a0, 0.0), axis=0)
        dA1 += tl.sum(tl.where(m2, a1, 0.0), axis=0)
        dA2 += tl.sum(tl.where(m2, a2, 0.0), axis=0)
        mu_h = _row(dh, first)
    tl.store(ds0_ptr + b * K * N + (K - 1) * N + n, mu_h, mask=nmask)
    tl.store(dA_ptr + b * 3 * N + n, dA0, mask=nmask)
    tl.store(dA_ptr + b * 3 * N + N + n, dA1, mask=nmask)
    tl.store(dA_ptr + b * 3 * N + 2 * N + n, dA2, mask=nmask)
    if HAS_BIAS:
        tl.store(db_ptr + b * 3 * N + n, db0, mask=nmask)
        tl.store(db_ptr + b * 3 * N + N + n, db1, mask=nmask)
        tl.store(db_ptr + b * 3 * N + 2 * N + n, db2, mask=nmask)
    if CELL == 1:
        tl.store(ds0_ptr + b * K * N + n, mu_c, mask=nmask)
        tl.store(dC_ptr + b * 2 * N + n, dC0, mask=nmask)
        tl.store(dC_ptr + b * 2 * N + N + n, dC1, mask=nmask)


@triton.autotune(configs=STEP_CONFIGS, key=["N", "CELL"])
@triton.jit
def decode_step_kernel(u_ptr, A_ptr, C_ptr, s_ptr, out_ptr, N, CELL: tl.constexpr, K: tl.constexpr, BN: tl.constexpr):
    """One token through one layer's cell (ops/recurrence.py decode_step).

    In: ``u`` [B, 3, N], ``A`` [3, N] fp32, ``C`` [2, N] fp32 or None, the state ``s``
    [B, K, N] fp32. Out: the new state ``out`` [B, K, N] fp32. Grid: (B, cdiv(N, BN)).
    """
    b = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    nmask = n < N
    u_off = u_ptr + b * 3 * N + n
    u0 = tl.load(u_off, mask=nmask, other=0.0).to(tl.float32)
    u1 = tl.load(u_off + N, mask=nmask, other=0.0).to(tl.float32)
    u2 = tl.load(u_off + 2 * N, mask=nmask, other=0.0).to(tl.float32)
    A0 = tl.load(A_ptr + n, mask=nmask, other=0.0)
    A1 = tl.load(A_ptr + N + n, mask=nmask, other=0.0)
    A2 = tl.load(A_ptr + 2 * N + n, mask=nmask, other=0.0)
    h = tl.load(s_ptr + b * K * N + (K - 1) * N + n, mask=nmask, other=0.0)
    if CELL == 0:
        h_new, _ = gru_step(h, u0, u1, u2, A0, A1, A2)
    else:
        C0 = tl.load(C_ptr + n, mask=nmask, other=0.0)
        C1 = tl.load(C_ptr + N + n, mask=nmask, other=0.0)
        c = tl.load(s_ptr + b * K * N + n, mask=nmask, other=0.0)
        c_new, h_new, _, _, _, _ = lstm_step(c, h, u0, u1, u2, A0, A1, A2, C0, C1)
        tl.store(out_ptr + b * K * N + n, c_new, mask=nmask)
    tl.store(out_ptr + b * K * N + (K - 1) * N + n, h_new, mask=nmask)

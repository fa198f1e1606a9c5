"""The per-cell pieces of the Triton kernels: one step with its Jacobian, and its
vector-Jacobian product. They mirror ``pararnn_hf.cells.gru`` / ``lstm`` (docs/design.md#cells) on
register tiles; the shared skeleton in ``kernels.py`` calls them.

State rows are separate tiles (GRU: h; LSTM: c, h); a 2x2 LSTM Jacobian is four tiles
(jcc, jch, jhc, jhh) with rows (c', h') and columns (d/dc, d/dh). ``tanh`` is written with
``sigmoid`` because ``libdevice.tanh`` is a stub under the Triton interpreter.
"""

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def gru_step(h, uz, ur, uc, Az, Ar, Ac):
    """(h', J) for h' = (1 - z) h + z tanh(A_c (r h) + u_c)."""
    z = tl.sigmoid(Az * h + uz)
    r = tl.sigmoid(Ar * h + ur)
    ct = _tanh(Ac * (r * h) + uc)
    h_new = h + z * (ct - h)
    J = (1.0 - z) + (ct - h) * (z * (1.0 - z)) * Az + z * (1.0 - ct * ct) * Ac * (r + h * (r * (1.0 - r)) * Ar)
    return h_new, J


@triton.jit
def gru_vjp(h, uz, ur, uc, Az, Ar, Ac, lam):
    """(du_z, du_r, du_c, dA_z terms, dA_r terms, dA_c terms, dL/dh) for lam = dL/dh'."""
    z = tl.sigmoid(Az * h + uz)
    r = tl.sigmoid(Ar * h + ur)
    ct = _tanh(Ac * (r * h) + uc)
    dpz = lam * (ct - h) * (z * (1.0 - z))
    dpc = lam * z * (1.0 - ct * ct)
    dpr = dpc * Ac * h * (r * (1.0 - r))
    dh = lam * (1.0 - z) + dpz * Az + dpr * Ar + dpc * Ac * r
    return dpz, dpr, dpc, dpz * h, dpr * h, dpc * r * h, dh


@triton.jit
def lstm_step(c, h, uf, uo, uc, Af, Ao, Ac, Cf, Co):
    """(c', h', jcc, jch, jhc, jhh) of the coupled-gate LSTM with peepholes."""
    f = tl.sigmoid(Af * h + Cf * c + uf)
    ct = _tanh(Ac * h + uc)
    c_new = ct + f * (c - ct)
    o = tl.sigmoid(Ao * h + Co * c_new + uo)
    tc = _tanh(c_new)
    h_new = o * tc
    gap = (c - ct) * (f * (1.0 - f))
    jcc = f + gap * Cf
    jch = gap * Af + (1.0 - f) * (1.0 - ct * ct) * Ac
    D = (o * (1.0 - o)) * Co * tc + o * (1.0 - tc * tc)
    jhc = D * jcc
    jhh = tc * (o * (1.0 - o)) * Ao + D * jch
    return c_new, h_new, jcc, jch, jhc, jhh


@triton.jit
def lstm_vjp(c, h, uf, uo, uc, Af, Ao, Ac, Cf, Co, lam_c, lam_h):
    """(du_f, du_o, du_c, dA_f/o/c terms, dC_f/o terms, dL/dc, dL/dh) for lam = dL/d(c', h')."""
    f = tl.sigmoid(Af * h + Cf * c + uf)
    ct = _tanh(Ac * h + uc)
    c_new = ct + f * (c - ct)
    o = tl.sigmoid(Ao * h + Co * c_new + uo)
    tc = _tanh(c_new)
    dpo = lam_h * tc * (o * (1.0 - o))
    grad_c = lam_c + lam_h * ((o * (1.0 - o)) * Co * tc + o * (1.0 - tc * tc))
    dpf = grad_c * (c - ct) * (f * (1.0 - f))
    dpc = grad_c * (1.0 - f) * (1.0 - ct * ct)
    dc = grad_c * f + dpf * Cf
    dh = dpf * Af + dpo * Ao + dpc * Ac
    return dpf, dpo, dpc, dpf * h, dpo * h, dpc * h, dpf * c, dpo * c_new, dc, dh


@triton.jit
def combine_diagonal(j1, v1, j2, v2):
    """Compose x -> j1 x + v1 then x -> j2 x + v2 (per channel)."""
    return j2 * j1, j2 * v1 + v2


@triton.jit
def combine_2x2(a1, b1, c1, d1, p1, q1, a2, b2, c2, d2, p2, q2):
    """Compose x -> M1 x + v1 then x -> M2 x + v2 with M = [[a, b], [c, d]], v = (p, q)."""
    return (
        a2 * a1 + b2 * c1,
        a2 * b1 + b2 * d1,
        c2 * a1 + d2 * c1,
        c2 * b1 + d2 * d1,
        a2 * p1 + b2 * q1 + p2,
        c2 * p1 + d2 * q1 + q2,
    )

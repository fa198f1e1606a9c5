"""Parallel Newton solve of the whole sequence (docs/design.md#newton).

The T equations ``s_t = f(s_{t-1}, u_t)`` are one nonlinear system. With the residual
``r_t = f(s_{t-1}, u_t) - s_t`` and ``J_t = df/ds_{t-1}`` at the current iterate, a Newton
step solves the linear recurrence ``delta_t = J_t delta_{t-1} + r_t`` (a parallel scan) and
sets ``s += delta``. The initial guess is ``f(s0, u_t)`` for every t, computed in parallel.

Convergence is checked on the residual of the iterate actually returned: when it is not
below tolerance after ``max_iterations`` steps, the steps from the first unconverged time
onward are re-solved exactly by the sequential loop (Newton fixes the sequence left to
right, so the prefix is already exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cells import Cell
from .scan import parallel_linear_scan
from .sequential import sequential_solve
from .transition import Transition, shift_right

REPORT_SIZE = 6
# the Triton schedule that ran, as a number in the report (0: not the kernels)
SCHEDULE_CODES = {None: 0, "chunked": 1, "time_parallel": 2}


def report_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


@dataclass
class SolveInfo:
    """What one forward solve did, in the README's words: ``method`` is the backend that ran
    ("torch": parallel Newton in PyTorch, "sequential": the step loop, "triton": the fused
    kernels) and ``backend`` the one the layer was asked for ("auto" or one of those); the
    rest is Newton's report. ``fallback_from`` is the first time step the loop re-solved."""

    method: str
    backend: str | None = None
    iterations: int = 0
    residual: float = 0.0
    converged: bool = True
    fallback_from: int | None = None  # first time step re-solved sequentially
    finite: bool = True
    schedule: str | None = None  # the Triton kernels' schedule ("chunked", "time_parallel")

    def report(self, device: torch.device) -> Tensor:
        """The numbers as a small tensor: what the solve op returns beside the states (an op
        returns tensors only, and a compiled graph must not sync to read them)."""
        fallback = -1 if self.fallback_from is None else self.fallback_from
        values = [self.iterations, self.residual, float(self.converged), fallback, float(self.finite)]
        values.append(SCHEDULE_CODES[self.schedule])
        return torch.tensor(values, dtype=report_dtype(device), device=device)

    @classmethod
    def from_report(cls, method: str, report: Tensor, backend: str | None = None) -> SolveInfo:
        iterations, residual, converged, fallback, finite, code = report.tolist()
        fallback_from = None if fallback < 0 else int(fallback)
        schedule = {v: k for k, v in SCHEDULE_CODES.items()}[int(code)]
        return cls(method, backend, int(iterations), residual, bool(converged), fallback_from, bool(finite), schedule)


def state_scales(cell: Cell, s0: Tensor, keep: Tensor | None = None) -> Tensor | None:
    """The magnitude every state of a row, time, state row and channel is bounded by,
    broadcastable to ``[B, T, k, N]``: ``max(1, |s0|)``, since both cells are diagonal and keep
    ``|s_t| <= max(1, |s_{t-1}|)`` channel by channel; 1 from a row's first reset on (the
    state restarts from zero) and for the rows the cell keeps in [-1, 1] after any step
    (``cell.UNIT_ROWS``, the LSTM's h). Residuals are measured relative to
    ``clamp(|s|, 1, bound)``: each element meets the tolerance it would meet alone, whatever
    the other rows, channels and documents hold (one large initial state elsewhere must not
    loosen the test), and a state that has decayed from a large start is held to the
    absolute accuracy of an O(1) one. None when every bound is 1 (the usual zero or small
    initial state): then the residual needs no scaling at all."""
    scale = s0.abs().clamp_min(1.0)
    for i, name in enumerate(cell.STATE_ROWS):
        if name in cell.UNIT_ROWS:
            scale[:, i] = 1.0
    if not scale.numel() or bool(scale.max() <= 1.0):
        return None
    scale = scale.unsqueeze(1)
    if keep is not None:
        after_reset = torch.cumsum((keep == 0).to(torch.int32), dim=1) > 0  # [B, T, 1, 1]
        scale = torch.where(after_reset, torch.ones((), dtype=scale.dtype, device=scale.device), scale)
    return scale


# The loosest tolerance a layer accepts. A residual of 1e-2 relative to the state's scale is
# already 3e4 fp32 ulps: no correct solve needs more, and a looser one returns states that are
# far from the recurrence's (1.0 left them 64 % off) while reporting converged=True.
MAX_TOLERANCE = 1e-2


def default_tolerance(dtype: torch.dtype) -> float:
    """Max-abs residual accepted, relative to ``clamp(|s|, 1, bound)`` per element (``state_scales``).

    A converged fp32 iterate sits a few ulps (~1e-7) from ``f`` of its predecessor; 4e-6
    leaves room for that while Newton's quadratic convergence takes a 1e-3 residual below
    it in one more step. fp64 gets the same margin over its own rounding.
    """
    return 1e-11 if dtype == torch.float64 else 4e-6


def newton_forward(
    cell: Cell,
    u: Tensor,
    A: Tensor,
    C: Tensor | None,
    s0: Tensor,
    mask: Tensor | None = None,
    keep: Tensor | None = None,
    max_iterations: int = 8,
    tolerance: float | None = None,
    bias: Tensor | None = None,
) -> tuple[Tensor, SolveInfo]:
    """All states by parallel Newton (the reference of the Triton schedules: same arguments;
    ``u`` may be the per-head projection ``[B, T, 3, H, N/H]`` without its ``bias``)."""
    from .dispatch import dense_u

    u = dense_u(u, bias)
    tol = default_tolerance(u.dtype) if tolerance is None else tolerance
    B, T = u.shape[:2]
    info = SolveInfo("torch")
    s = Transition(cell, s0.unsqueeze(1).expand(B, T, *s0.shape[1:]), u, A, C, mask, keep).output()
    scale = state_scales(cell, s0, keep)
    rel = None
    for it in range(max_iterations + 1):
        step = Transition(cell, shift_right(s, s0), u, A, C, mask, keep)
        r = step.output() - s
        # relative to the element's own magnitude, floored at 1 and capped by its bound (so an
        # overshooting iterate cannot loosen the test)
        rel = r.abs() if scale is None else r.abs().div_(torch.minimum(s.abs(), scale).clamp_min_(1.0))
        info.residual = rel.amax().item() if rel.numel() else 0.0
        if not math.isfinite(info.residual):
            info.finite = False
            return s, info
        if info.residual <= tol or it == max_iterations:
            break
        s = s + parallel_linear_scan(step.jacobian(), r)
        info.iterations = it + 1
    if info.residual <= tol:
        return s, info
    info.converged = False
    bad = (rel.amax(dim=(0, 2, 3)) > tol).nonzero()
    t0 = int(bad[0]) if len(bad) else 0
    info.fallback_from = t0
    start = s0 if t0 == 0 else s[:, t0 - 1]
    tail = sequential_solve(
        cell,
        u[:, t0:],
        A,
        C,
        start,
        None if mask is None else mask[:, t0:],
        None if keep is None else keep[:, t0:],
    )
    s = torch.cat([s[:, :t0], tail], dim=1)
    return s, info

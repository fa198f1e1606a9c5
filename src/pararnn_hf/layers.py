"""``ParaGRU`` and ``ParaLSTM``: the recurrent layers, as ``torch.nn.Module``s.

Parameters are named and laid out as in the reference code (docs/design.md#cells): ``A`` [3, N],
``B`` [H, D_in/H, 3, N/H], ``b`` [3, N] and, for the LSTM, ``C`` [2, N]. The input
projection ``u = B·x + b`` is a block-diagonal (per-head) matmul done with ordinary torch ops,
so autograd turns ``dL/du`` from the solver into ``dL/dB``, ``dL/db`` and ``dL/dx``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from .cells import CELL_NAMES, Cell, gru, lstm
from .names import SCHEDULES
from .ops.dispatch import (
    BACKENDS,
    check_backend,
    check_schedule,
    compute_dtype,
    dense_u,
    select_method,
    select_step_method,
    solver_input,
)
from .ops.fused_decode import decode_ops
from .ops.newton import MAX_TOLERANCE, SolveInfo
from .ops.recurrence import NonFiniteSolve, decode_step, solve_op

State = Tensor | tuple[Tensor, Tensor]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _TorchInit:
    """The in-place initialisers ``reset_parameters`` uses outside Hugging Face models."""

    @staticmethod
    @torch.no_grad()
    def normal_(t: Tensor, mean: float, std: float) -> Tensor:
        return t.normal_(mean, std)

    @staticmethod
    @torch.no_grad()
    def uniform_(t: Tensor, a: float, b: float) -> Tensor:
        return t.uniform_(a, b)

    @staticmethod
    @torch.no_grad()
    def copy_(t: Tensor, other: Tensor) -> Tensor:
        return t.copy_(other)


def check_resets(resets: Tensor | None, where: str) -> Tensor | None:
    """``resets`` as bool. Only bool or 0/1 integers are accepted: a float or a 2 would be a
    reset for one consumer and not for another (the recurrence tests ``!= 0``, the conv counts
    documents), letting one document leak into the next."""
    if resets is None or not isinstance(resets, Tensor) or resets.dtype == torch.bool:
        return resets
    if resets.is_floating_point() or resets.is_complex():
        raise TypeError(f"{where}: resets must be bool or 0/1 integers, got dtype {resets.dtype}")
    # (a value check is a host sync, which a compiled graph skips: it keeps the dtype check)
    if resets.numel() and not torch.compiler.is_compiling() and bool(((resets != 0) & (resets != 1)).any()):
        raise ValueError(f"{where}: resets must hold only 0 and 1 (or be bool); got other values")
    return resets.bool()


def check_tolerance(value: Any, where: str) -> float | None:
    """A Newton tolerance: None (the dtype's default) or a number in (0, MAX_TOLERANCE]."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= MAX_TOLERANCE:
        raise ValueError(
            f"{where} must be a number in (0, {MAX_TOLERANCE}] or None, got {value!r}: a looser solve is not "
            "a solution of the recurrence"
        )
    return float(value)


def check_gate_bias(value: Any, where: str) -> None:
    """``init_gate_bias`` must be two finite numbers ``(lo, hi)``."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok:
        raise ValueError(f"{where} must be two finite numbers (lo, hi), got {value!r}")


class ParaRNNConvergenceWarning(RuntimeWarning):
    """Newton did not converge within the iteration cap; the exact loop finished the solve."""


class ParaRNNLayer(nn.Module):
    """Shared machinery; subclasses set ``cell`` to a cell-math module."""

    cell: Cell

    def __init__(
        self,
        input_size: int,
        state_size: int,
        num_heads: int = 1,
        backend: str = "auto",
        newton_max_iterations: int = 8,
        newton_tolerance: float | None = None,
        init_recurrent_std: float | None = None,
        init_input_bound: float | None = None,
        init_gate_bias: tuple[float, float] = (0.0, 1.0),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        triton_schedule: str = "auto",
    ) -> None:
        super().__init__()
        for key, value in (("input_size", input_size), ("state_size", state_size), ("num_heads", num_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if input_size % num_heads or state_size % num_heads:
            raise ValueError(
                f"input_size ({input_size}) and state_size ({state_size}) must both be divisible "
                f"by num_heads ({num_heads})"
            )
        if not isinstance(newton_max_iterations, int) or newton_max_iterations < 1:
            raise ValueError(f"newton_max_iterations must be an int >= 1, got {newton_max_iterations!r}")
        for key, value in (("init_recurrent_std", init_recurrent_std), ("init_input_bound", init_input_bound)):
            if value is not None and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf
            ):
                raise ValueError(f"{key} must be a finite number > 0 or None, got {value!r}")
        if dtype is not None and dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}")
        check_gate_bias(init_gate_bias, "init_gate_bias")
        self.input_size, self.state_size, self.num_heads = input_size, state_size, num_heads
        self.backend = backend  # these three are checked by their setters, also when assigned later
        self.triton_schedule = triton_schedule
        self.newton_max_iterations = newton_max_iterations
        self.newton_tolerance = newton_tolerance
        self.init_recurrent_std = init_recurrent_std
        self.init_input_bound = init_input_bound
        self.init_gate_bias = tuple(init_gate_bias)
        self.layer_name: str | None = None  # set by owning models for error messages
        self.last_solve_info: SolveInfo | None = None
        self._warned_convergence = False
        # check_steps() reads the latest step() state; True makes every step() check (a sync)
        self.check_every_step = False
        self._last_step_state: Tensor | None = None

        factory = {"device": device, "dtype": dtype}
        G, H, N = len(self.cell.GATE_ROWS), num_heads, state_size
        self.A = nn.Parameter(torch.empty(G, N, **factory))
        self.B = nn.Parameter(torch.empty(H, input_size // H, G, N // H, **factory))
        self.b = nn.Parameter(torch.empty(G, N, **factory))
        if self.cell.PEEPHOLE_ROWS:
            self.C = nn.Parameter(torch.empty(len(self.cell.PEEPHOLE_ROWS), N, **factory))
        else:
            self.register_parameter("C", None)
        self.reset_parameters()

    @property
    def backend(self) -> str:
        """The solver asked for (``ops.dispatch.BACKENDS``); a typo is a ``ValueError`` when
        it is set, not a silent fallback at the next forward."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value)

    @property
    def triton_schedule(self) -> str:
        """How the Triton kernels spread the sequence over the GPU: ``"chunked"`` (a program per
        batch row and channel block walks the time chunks), ``"time_parallel"`` (a program per
        chunk too, for batch-1 prefill and long sequences) or ``"auto"``
        (``ops.dispatch.select_schedule``). The torch and sequential backends ignore it."""
        return self._triton_schedule

    @triton_schedule.setter
    def triton_schedule(self, value: str) -> None:
        self._triton_schedule = check_schedule(value)

    @property
    def newton_tolerance(self) -> float | None:
        """Newton's stopping tolerance (None: the dtype's default), at most ``MAX_TOLERANCE``."""
        return self._newton_tolerance

    @newton_tolerance.setter
    def newton_tolerance(self, value: float | None) -> None:
        self._newton_tolerance = check_tolerance(value, "newton_tolerance")

    # ----------------------------------------------------------------------------- init
    def reset_parameters(self, init: Any = None) -> None:
        """Reference initialisation (docs/design.md#cells), each part overridable in the constructor.

        ``init`` provides ``normal_``, ``uniform_`` and ``copy_`` (default: plain torch);
        the Hugging Face models pass ``transformers.initialization`` so that weights loaded
        from a checkpoint are not re-initialised.
        """
        init = init or _TorchInit
        N, d_head = self.state_size, self.input_size // self.num_heads
        std = self.init_recurrent_std if self.init_recurrent_std is not None else 2 / math.sqrt(5 * N)
        bound = self.init_input_bound if self.init_input_bound is not None else math.sqrt(6 / (d_head + N))
        init.normal_(self.A, 0.0, std)
        if self.C is not None:
            init.normal_(self.C, 0.0, std)
        init.uniform_(self.B, -bound, bound)
        lo, hi = self.init_gate_bias
        bias = torch.zeros(self.b.shape, dtype=torch.float64)
        bias[0] = -torch.linspace(lo, hi, N, dtype=torch.float64)
        init.copy_(self.b, bias)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, state_size={self.state_size}, num_heads={self.num_heads}, "
            f"backend={self.backend!r}, triton_schedule={self.triton_schedule!r}"
        )

    # ----------------------------------------------------------------------------- helpers
    @property
    def _label(self) -> str:
        return self.layer_name or f"{type(self).__name__}({self.input_size}, {self.state_size})"

    @property
    def state_rows(self) -> int:
        return len(self.cell.STATE_ROWS)

    def project_heads(self, x: Tensor) -> Tensor:
        """``B·x`` without the bias, as one batched GEMM over the heads: ``[..., input_size] ->
        [..., 3, H, state_size / H]``, a view of the GEMM's output ``[H, tokens, 3, N/H]``. The
        kernels read it where it lies and add ``b`` themselves, so no layout copy or bias pass
        runs around them (docs/design.md#kernels)."""
        H, G = self.num_heads, len(self.cell.GATE_ROWS)
        lead = x.shape[:-1]
        xh = x.reshape(-1, H, self.input_size // H).transpose(0, 1)  # [H, tokens, D/H], a view
        out = torch.bmm(xh, self.B.reshape(H, self.input_size // H, G * (self.state_size // H)))
        u = out.view(H, *lead, G, self.state_size // H)
        return u.permute(*range(1, len(lead) + 1), len(lead) + 1, 0, len(lead) + 2)

    def project(self, x: Tensor) -> Tensor:
        """``u = B·x + b`` with per-head blocks: ``[..., input_size] -> [..., 3, state_size]``."""
        return self.project_heads(x).flatten(-2) + self.b

    def _check_input(self, x: Tensor, expected_rank: int, what: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{self._label}: {what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{self._label}: {what} has unsupported dtype {x.dtype}; expected one of {SUPPORTED_DTYPES}"
            )
        shape = "[batch, time, input_size]" if expected_rank == 3 else "[batch, input_size]"
        if x.dim() != expected_rank or x.shape[-1] != self.input_size:
            raise ValueError(
                f"{self._label}: {what} must have shape {shape} with input_size={self.input_size}; got {tuple(x.shape)}"
            )
        param_dtype = self.B.dtype
        if x.dtype != param_dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"{self._label}: {what} has dtype {x.dtype} but the layer's parameters are {param_dtype}; "
                f"cast one to the other (e.g. layer.to({x.dtype}))"
            )

    def _state_tensor(self, state: State | None, batch: int, x: Tensor, dtype: torch.dtype) -> Tensor:
        """The public state form (GRU: h; LSTM: (c, h)) as one ``[B, k, N]`` tensor."""
        k, N = self.state_rows, self.state_size
        if state is None:
            return x.new_zeros(batch, k, N, dtype=dtype)
        names = self.cell.STATE_ROWS
        if k == 1:
            if not isinstance(state, Tensor):
                raise TypeError(
                    f"{self._label}: initial_state must be a tensor h [batch, {N}], got {type(state).__name__}"
                )
            rows = (state,)
        else:
            if not (isinstance(state, (tuple, list)) and len(state) == k and all(isinstance(t, Tensor) for t in state)):
                raise TypeError(
                    f"{self._label}: initial_state must be a tuple of {k} tensors {names}, each [batch, {N}]"
                )
            rows = tuple(state)
        for name, t in zip(names, rows):
            if tuple(t.shape) != (batch, N):
                raise ValueError(
                    f"{self._label}: initial_state {name} must have shape ({batch}, {N}); got {tuple(t.shape)}"
                )
            if not t.is_floating_point():
                raise TypeError(f"{self._label}: initial_state {name} must be floating point, got {t.dtype}")
        return torch.stack([t.to(dtype) for t in rows], dim=-2)

    def _public_state(self, s: Tensor) -> State:
        if self.state_rows == 1:
            return s[..., 0, :]
        return tuple(s.unbind(-2))

    def _step_mask(self, m: Tensor | None, what: str, batch: int, time: int) -> Tensor | None:
        if m is None:
            return None
        if not isinstance(m, Tensor):
            raise TypeError(f"{self._label}: {what} must be a tensor [batch, time], got {type(m).__name__}")
        if tuple(m.shape) != (batch, time):
            raise ValueError(f"{self._label}: {what} must have shape ({batch}, {time}); got {tuple(m.shape)}")
        if what == "resets":
            m = check_resets(m, self._label)
        return (m != 0).view(batch, time, 1, 1)

    def _raise_non_finite(
        self,
        x: Tensor | None,
        s0: Tensor | None,
        u: Tensor | None = None,
        what: str = "input x",
        otherwise: str = "the recurrent state became NaN/Inf although inputs and parameters are finite",
    ) -> NoReturn:
        """Name the first non-finite culprit among the input, initial state and parameters."""
        named = ([] if x is None else [(what, x)]) + ([] if s0 is None else [("initial_state", s0)])
        named += [(f"parameter {n}", p) for n, p in self.named_parameters()]
        for label, t in named:
            if not torch.isfinite(t).all():
                where = " at a real (unmasked) position" if label.startswith("input") else ""
                raise FloatingPointError(f"{self._label}: {label} contains NaN or Inf{where}")
        if u is not None and not torch.isfinite(u).all():
            raise FloatingPointError(
                f"{self._label}: the input projection overflowed in {u.dtype} although x and the weights are finite"
            )
        raise FloatingPointError(f"{self._label}: {otherwise}")

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        initial_state: State | None = None,
        mask: Tensor | None = None,
        resets: Tensor | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, State]:
        """Run the recurrence over ``x`` ``[batch, time, input_size]``.

        ``mask`` [batch, time]: 1 = real token, 0 = padding (an identity step).
        ``resets`` [batch, time]: True = the state is zeroed before step t (packed documents).
        Returns ``y`` [batch, time, state_size] (= h) and, with ``return_state``, the final
        state (GRU: h; LSTM: (c, h)) in the compute dtype (fp32 for half inputs).
        """
        self._check_input(x, 3, "x")
        batch, time = x.shape[:2]
        dtype = compute_dtype(x.dtype)
        s0 = self._state_tensor(initial_state, batch, x, dtype)
        m = self._step_mask(mask, "mask", batch, time)
        r = self._step_mask(resets, "resets", batch, time)
        if time == 0 or batch == 0:
            # empty, but part of the graph (through the projection), so that a loss summed over
            # it backpropagates (zero gradients) like any other output
            y = self.project(x)[..., -1, :].to(x.dtype)
            return (y, self._public_state(s0)) if return_state else y
        keep = None if r is None else (~r).to(dtype)
        if m is not None:  # padding cannot reach the projection (or its gradients), whatever it holds
            x = torch.where(m.view(batch, time, 1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        u = self.project_heads(x)
        method = select_method(self.backend, u, self.state_rows)
        bias = self.b if method == "triton" else None
        if method != "triton":  # the torch solvers read a dense u, the bias added in fp32 as the kernels do
            u = dense_u(solver_input(u, method), self.b)
        A = self.A.to(dtype)
        C = None if self.C is None else self.C.to(dtype)
        args = (self.cell, u, A, C, s0, m, keep, method, self.newton_max_iterations, self.newton_tolerance, self._label)
        args += (self.triton_schedule, bias)
        if torch.compiler.is_compiling():
            # no host sync in a compiled graph: the op raises on NaN/Inf itself, and the
            # report stays unread (last_solve_info is not updated, no convergence warning)
            s, _ = solve_op(*args)
            return self._outputs(s, x.dtype, return_state)
        try:
            s, report = solve_op(*args)
        except NonFiniteSolve:
            self._raise_non_finite(x, s0, u)  # eager: name the culprit
        info = SolveInfo.from_report(method, report, self.backend)
        self.last_solve_info = info
        if not info.converged and not self._warned_convergence:
            self._warned_convergence = True
            warnings.warn(
                f"{self._label}: Newton did not converge in {self.newton_max_iterations} iterations "
                f"(residual {info.residual:.2e}); steps from t={info.fallback_from} were solved exactly "
                "by the sequential loop. Raise newton_max_iterations or use backend='sequential'.",
                ParaRNNConvergenceWarning,
                stacklevel=2,
            )
        return self._outputs(s, x.dtype, return_state)

    def _outputs(self, s: Tensor, dtype: torch.dtype, return_state: bool) -> Tensor | tuple[Tensor, State]:
        y = s[..., -1, :].to(dtype)
        return (y, self._public_state(s[:, -1])) if return_state else y

    def step(self, x_t: Tensor, state: State | None = None, mask: Tensor | None = None) -> tuple[Tensor, State]:
        """One O(1) recurrence step for decoding: ``x_t`` [batch, input_size] -> ``(y_t, new_state)``.

        ``mask`` [batch] (1 = real token, 0 = padding) makes a padded row's step the identity,
        as in ``forward``; it is applied without a host sync (shapes only), so a step stays
        capturable in a CUDA graph."""
        self._check_input(x_t, 2, "x_t")
        dtype = compute_dtype(x_t.dtype)
        s0 = self._state_tensor(state, x_t.shape[0], x_t, dtype)
        u = self.project_heads(x_t).to(dtype).flatten(-2) + self.b.to(dtype)
        C = None if self.C is None else self.C.to(dtype)
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if select_step_method(self.backend, u, needs_grad) == "triton":
            from .ops.triton.solve import triton_decode_step

            s = triton_decode_step(self.cell, u, self.A, self.C, s0)
        else:
            s = decode_step(self.cell, u, self.A.to(dtype), C, s0)
        if mask is not None:
            if not isinstance(mask, Tensor) or tuple(mask.shape) != (x_t.shape[0],):
                got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"{self._label}: the step mask must have shape ({x_t.shape[0]},); got {got}")
            s = torch.where((mask != 0).view(-1, 1, 1), s, s0)
        # No check per token: a NaN/Inf that enters the state stays in it at every later step
        # (every update multiplies or adds the previous state), so the latest state tells for
        # all steps since the last check. check_steps() (once per generate()) reads it.
        # detached: the check reads values, and a graph kept alive here would leak one step's
        # activations per layer and make the module un-deepcopy-able
        self._last_step_state = s.detach()
        if self.check_every_step:
            # as forward() does: the step's own input too, since an Inf can saturate the gates
            # and leave a finite state
            if not bool(torch.isfinite(u).all()):
                self._raise_non_finite(x_t, s0, u, what="input x_t")
            self.check_steps(x_t)
        return s[..., -1, :].to(x_t.dtype), self._public_state(s)

    def check_steps(self, x_t: Tensor | None = None) -> None:
        """Raise ``FloatingPointError`` if a ``step()`` since the last check produced a NaN/Inf
        state (one host sync); then start again."""
        state, self._last_step_state = self._last_step_state, None
        if state is not None and not bool(torch.isfinite(state).all()):
            self._raise_non_finite(
                x_t, None, what="input x_t", otherwise="a decoding step read or produced NaN/Inf (input or state)"
            )


class ParaGRU(ParaRNNLayer):
    """ParaGRU layer (docs/design.md#cells): diagonal recurrence, state h, gate rows (z, r, c)."""

    cell = gru


class ParaLSTM(ParaRNNLayer):
    """ParaLSTM layer (docs/design.md#cells): coupled input/forget gate with peepholes, state (c, h)."""

    cell = lstm


# The layer class of each ``config.cell``; with BACKENDS and CELL_NAMES, what the modeling code
# and the saved bundle read from here.
CELL_CLASSES: dict[str, type[ParaRNNLayer]] = {cls.cell.NAME: cls for cls in (ParaGRU, ParaLSTM)}
assert tuple(CELL_CLASSES) == CELL_NAMES

__all__ = [
    "BACKENDS",
    "CELL_CLASSES",
    "CELL_NAMES",
    "SCHEDULES",
    "ParaGRU",
    "ParaLSTM",
    "ParaRNNConvergenceWarning",
    "ParaRNNLayer",
    "check_resets",
    "decode_ops",
]

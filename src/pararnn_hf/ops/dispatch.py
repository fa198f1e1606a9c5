"""Backend choice (docs/design.md#backends): every backend question is answered here — which
solver runs a layer's forward (``select_method``), which runs a decoding step
(``select_step_method``), and in which dtype the solver computes and reads ``u``
(``compute_dtype``, ``solver_input``).

- ``torch``: parallel Newton + parallel adjoint scan, pure PyTorch, CPU and GPU.
- ``sequential``: the step loop forward (exact), same adjoint-scan backward.
- ``triton``: fused Triton kernels (CUDA; on CPU only under ``TRITON_INTERPRET=1``).
- ``auto``: the fastest exact path for the device and shape (see ``select_method``).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

try:
    from .triton import triton_usable
except ImportError:  # the pure-PyTorch copy bundled into saved model folders has no kernels

    def triton_usable(device_type: str) -> bool:
        return False


from ..names import BACKENDS, SCHEDULES  # what a user may ask for

# What actually runs ("auto" resolves to one of them).
METHODS = BACKENDS[1:]

logger = logging.getLogger("pararnn_hf")
_logged: set[tuple[str, str]] = set()

# On CPU the loop does one cell evaluation per step while Newton does 4-6 over the whole
# sequence plus scans on the same cores, so the loop wins once a step has enough elements
# to amortise PyTorch's per-op overhead (a few microseconds). With e = batch * state rows
# * N elements per step, the parallel solve is faster for e <= 128 at any length, and for
# e <= 512 once the sequence is long enough to amortise Newton's fixed cost (forward and
# forward+backward alike; 2-core x86 CPU, tuned allocator; BENCHMARKS.md, "CPU crossover").
CPU_NEWTON_MAX_STEP_ELEMENTS = 128
CPU_NEWTON_LONG_MAX_STEP_ELEMENTS = 512
CPU_NEWTON_LONG_MIN_T = 256


def _cpu_prefers_newton(T: int, step_elements: int) -> bool:
    if T == 1:
        return False
    if step_elements <= CPU_NEWTON_MAX_STEP_ELEMENTS:
        return True
    return step_elements <= CPU_NEWTON_LONG_MAX_STEP_ELEMENTS and T >= CPU_NEWTON_LONG_MIN_T


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    return backend


def check_triton(device_type: str) -> None:
    if not triton_usable(device_type):
        raise RuntimeError(
            f"backend='triton' cannot run on {device_type} tensors here: it needs CUDA tensors and Triton, or "
            "TRITON_INTERPRET=1 set before pararnn_hf is imported to run the kernels in the CPU interpreter"
        )


def select_method(backend: str, u: Tensor, state_rows: int) -> str:
    """The backend that runs the forward solve of ``u`` ``[B, T, G, N]``: one of ``METHODS``
    (``backend`` itself unless it is ``"auto"``)."""
    if backend in ("torch", "sequential"):
        return backend
    if backend == "triton":
        check_triton(u.device.type)
        if u.dtype == torch.float64:
            raise TypeError(
                "backend='triton' computes in float32 and would round a float64 layer silently; "
                "use backend='torch' or 'auto' for float64"
            )
        return "triton"
    B, T, N = sequence_shape(u)
    if u.device.type == "cpu":
        method = "torch" if _cpu_prefers_newton(T, B * state_rows * N) else "sequential"
    else:  # the kernels compute in float32: float64 stays on the torch solver
        method = "triton" if triton_usable(u.device.type) and u.dtype != torch.float64 else "torch"
    key = (u.device.type, method)
    if key not in _logged and not torch.compiler.is_compiling():
        _logged.add(key)
        logger.info("pararnn_hf: backend 'auto' runs the %r backend on %s", method, u.device.type)
    return method


def compute_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """The recurrence's dtype: fp64 for fp64, else fp32. The state is carried over thousands
    of steps, where bf16/fp16 rounding would accumulate."""
    return torch.float64 if x_dtype == torch.float64 else torch.float32


def sequence_shape(u: Tensor) -> tuple[int, int, int]:
    """(B, T, N) of ``u`` as the solvers take it: ``[B, T, 3, N]``, or ``[B, T, 3, H, N/H]`` as
    the per-head projection produces it."""
    return u.shape[0], u.shape[1], u.shape[3] * (u.shape[4] if u.dim() == 5 else 1)


def dense_u(u: Tensor, bias: Tensor | None = None) -> Tensor:
    """``u`` as ``[B, T, 3, N]`` with the bias added: what the torch solvers read (the kernels
    read the projection where it lies and add the bias themselves)."""
    if u.dim() == 5:
        u = u.flatten(-2)
    return u if bias is None else u + bias.to(u.dtype)


def solver_input(u: Tensor, method: str) -> Tensor:
    """``u`` as the chosen solver reads it: the kernels read bf16/fp16 ``u`` as is (and
    compute in fp32); the torch solvers get it in the compute dtype."""
    return u if method == "triton" else u.to(compute_dtype(u.dtype))


# "auto" picks the time-parallel schedule when the chunked one would leave most of the GPU
# idle: it launches one program per batch row and block of CHUNKED_BN channels, walking the
# whole sequence, so below one program per SM it cannot fill the device; the time-parallel one
# launches T / CH times more, each doing a few passes over memory per Newton step, which pays
# once the sequence holds several of its chunks. Thresholds to be refined by measurement
# (benchmarks/gpu_check.sh times both schedules side by side).
CHUNKED_BN = 32
TIME_PARALLEL_MIN_T = 256


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown triton_schedule {schedule!r}; expected one of {SCHEDULES}")
    return schedule


def select_schedule(schedule: str, u: Tensor) -> str:
    """The Triton schedule that runs the solve of ``u`` ``[B, T, G, N]``: ``schedule`` itself
    unless it is ``"auto"`` (see the thresholds above; the interpreter on CPU, which has no SM
    count, runs the chunked one)."""
    check_schedule(schedule)
    if schedule != "auto":
        return schedule
    B, T, N = sequence_shape(u)
    if u.device.type != "cuda" or T < TIME_PARALLEL_MIN_T:
        return "chunked"
    sms = torch.cuda.get_device_properties(u.device).multi_processor_count
    return "time_parallel" if B * -(-N // CHUNKED_BN) < sms else "chunked"


def select_step_method(backend: str, u: Tensor, needs_grad: bool) -> str:
    """The decoding-step method, ``"triton"`` (the one-launch kernel) or ``"torch"``, for ``u``
    ``[B, G, N]`` in the compute dtype. The kernel has no backward and computes in fp32, so
    it serves inference of fp32-state layers only."""
    if u.dtype != torch.float32 or needs_grad:
        return "torch"
    if backend == "triton":
        check_triton(u.device.type)
        return "triton"
    if backend == "auto" and u.device.type == "cuda" and triton_usable("cuda"):
        return "triton"
    return "torch"

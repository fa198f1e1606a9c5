"""Solvers for the ParaRNN recurrences: scans, parallel Newton, the loop, dispatch."""

from .dispatch import BACKENDS, select_method
from .newton import SolveInfo, default_tolerance, newton_forward
from .recurrence import NonFiniteSolve, adjoint_backward, decode_step, solve_op
from .scan import adjoint_scan, parallel_linear_scan, sequential_linear_scan
from .sequential import sequential_solve
from .transition import Transition

__all__ = [
    "adjoint_backward",
    "decode_step",
    "BACKENDS",
    "NonFiniteSolve",
    "SolveInfo",
    "Transition",
    "adjoint_scan",
    "default_tolerance",
    "newton_forward",
    "parallel_linear_scan",
    "select_method",
    "sequential_linear_scan",
    "sequential_solve",
    "solve_op",
]

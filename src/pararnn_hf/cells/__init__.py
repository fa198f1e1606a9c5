"""Cell math: one module per cell, each satisfying the ``Cell`` protocol below.

States are ``[..., k, N]`` (k = len(STATE_ROWS)); every function broadcasts over the
leading dimensions so one step and a whole sequence share the code.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor

from ..names import CELL_NAMES as NAMES
from . import gru, lstm


class Cell(Protocol):
    """What the solvers, layers and kernels read from a cell module (docs/design.md#cells)."""

    NAME: str  # the config's ``cell`` value
    KERNEL_ID: int  # the ``CELL`` constexpr of the Triton kernels
    STATE_ROWS: tuple[str, ...]  # rows of the state, e.g. ("c", "h"); h is always the last
    UNIT_ROWS: tuple[str, ...]  # state rows kept in [-1, 1] by every step (Newton's scale)
    GATE_ROWS: tuple[str, ...]  # rows of u, A and b
    PEEPHOLE_ROWS: tuple[str, ...]  # rows of C (empty: the cell has no C)

    def gates(self, prev: Tensor, u: Tensor, A: Tensor, C: Tensor | None) -> Any:
        """The gate activations of one step."""

    def output(self, prev: Tensor, g: Any) -> Tensor:
        """The new state ``f(prev, u)``."""

    def jacobian(self, prev: Tensor, g: Any, A: Tensor, C: Tensor | None) -> Tensor:
        """``df/dprev`` as k x k blocks ``[..., k, k, N]``."""

    def vjp(
        self, prev: Tensor, g: Any, A: Tensor, C: Tensor | None, lam: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """``(dL/du, dL/dA, dL/dC, dL/dprev)`` for ``lam = dL/df``."""


CELLS: dict[str, Cell] = {gru.NAME: gru, lstm.NAME: lstm}
CELL_NAMES: tuple[str, ...] = NAMES
assert tuple(CELLS) == CELL_NAMES, "the cell modules and names.CELL_NAMES disagree"


def get_cell(name: str) -> Cell:
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; expected one of {CELL_NAMES}") from None


__all__ = ["CELLS", "CELL_NAMES", "Cell", "get_cell", "gru", "lstm"]

"""Cell math: one module per cell, each with the same functions.

A cell module provides ``NAME``, ``STATE_ROWS`` (rows of the state, e.g. ("c", "h")),
``GATE_ROWS`` (rows of ``u``, ``A`` and ``b``), ``PEEPHOLE_ROWS`` (rows of ``C``) and

- ``gates(prev, u, A, C)``: the gate activations of one step,
- ``output(prev, gates)``: the new state ``f(prev, u)``,
- ``jacobian(prev, gates, A, C)``: ``df/dprev`` as k x k blocks ``[..., k, k, N]``,
- ``vjp(prev, gates, A, C, lam)``: ``(dL/du, dL/dA, dL/dC, dL/dprev)`` for ``lam = dL/df``.

States are ``[..., k, N]`` (k = len(STATE_ROWS)); every function broadcasts over the
leading dimensions so one step and a whole sequence share the code.
"""

from __future__ import annotations

from types import ModuleType

from . import gru, lstm

CELLS: dict[str, ModuleType] = {gru.NAME: gru, lstm.NAME: lstm}


def get_cell(name: str) -> ModuleType:
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; expected one of {sorted(CELLS)}") from None


__all__ = ["CELLS", "get_cell", "gru", "lstm"]

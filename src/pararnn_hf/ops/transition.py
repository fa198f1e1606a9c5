"""One transition of the recurrence with padding and document resets (docs/design.md#masks).

With ``keep_t = 1 - reset_t`` and ``m_t`` the attention mask, the step actually solved is

    prev'  = keep_t * s_{t-1}
    s_t    = f(prev', u_t)     where m_t = 1
    s_t    = prev'             where m_t = 0      (identity: Jacobian I, residual 0)

so a padded position leaves the state untouched (zeroing x alone would not: the biases move
it) and a reset cuts the dependence on the previous document (Jacobian 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import Cell


class Transition:
    """The step at given ``(prev, u)``: gates are computed once and shared by the output,
    the Jacobian and the vector-Jacobian product.

    ``mask`` is a bool tensor and ``keep`` a float tensor, both broadcastable to the state
    ``[..., k, N]`` (trailing dims ``1, 1``), or None when there is no padding / no reset.
    """

    def __init__(
        self,
        cell: Cell,
        prev: Tensor,
        u: Tensor,
        A: Tensor,
        C: Tensor | None,
        mask: Tensor | None = None,
        keep: Tensor | None = None,
    ) -> None:
        self.cell, self.A, self.C, self.mask, self.keep = cell, A, C, mask, keep
        self.prev = prev if keep is None else prev * keep
        self.gates = cell.gates(self.prev, u, A, C)

    def output(self) -> Tensor:
        new = self.cell.output(self.prev, self.gates)
        return new if self.mask is None else torch.where(self.mask, new, self.prev)

    def jacobian(self) -> Tensor:
        J = self.cell.jacobian(self.prev, self.gates, self.A, self.C)
        if self.mask is not None:
            k = J.shape[-3]
            eye = torch.eye(k, dtype=J.dtype, device=J.device).unsqueeze(-1)
            J = torch.where(self.mask.unsqueeze(-1), J, eye)
        if self.keep is not None:
            J = J * self.keep.unsqueeze(-1)
        return J

    def vjp(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """``(dL/du, dL/dA, dL/dC, dL/dprev)`` for ``lam = dL/ds_t``."""
        lam_f = lam if self.mask is None else torch.where(self.mask, lam, 0.0)
        du, dA, dC, d_prev = self.cell.vjp(self.prev, self.gates, self.A, self.C, lam_f)
        if self.mask is not None:
            d_prev = d_prev + torch.where(self.mask, 0.0, lam)
        if self.keep is not None:
            d_prev = d_prev * self.keep
        return du, dA, dC, d_prev


def shift_right(s: Tensor, s0: Tensor) -> Tensor:
    """``prev_t = s_{t-1}`` along dim 1, with ``prev_0 = s0``."""
    return torch.cat([s0.unsqueeze(1), s[:, :-1]], dim=1)

"""Cell math against the docs/design.md#cells equations written out independently, and the closed-form
Jacobians and vector-Jacobian products against autograd."""

import pytest
import torch

from helpers import rel_err
from pararnn_hf import ParaGRU, ParaLSTM
from pararnn_hf.cells import get_cell, gru, lstm
from pararnn_hf.ops.transition import Transition

# pure torch: CI's second pass (another transformers release) skips it
pytestmark = pytest.mark.torch_only


def spec_projection(x, B, b, H):
    """u[:, g, h*(N/H)+j] = sum_i x[:, h*d+i] B[h, i, g, j] + b[g, h*(N/H)+j], as explicit loops."""
    N = b.shape[1]
    d = x.shape[-1] // H
    u = b.clone().expand(x.shape[0], 3, N).clone()
    for head in range(H):
        for g in range(3):
            u[:, g, head * (N // H) : (head + 1) * (N // H)] += x[:, head * d : (head + 1) * d] @ B[head, :, g, :]
    return u


def spec_gru_step(h, x, A, B, b, H):
    """docs/design.md#cells ParaGRU."""
    u = spec_projection(x, B, b, H)
    z = torch.sigmoid(A[0] * h + u[:, 0])
    r = torch.sigmoid(A[1] * h + u[:, 1])
    c = torch.tanh(A[2] * (r * h) + u[:, 2])
    return (1 - z) * h + z * c


def spec_lstm_step(c, h, x, A, B, b, C, H):
    """docs/design.md#cells ParaLSTM (peephole on the new c)."""
    u = spec_projection(x, B, b, H)
    f = torch.sigmoid(A[0] * h + C[0] * c + u[:, 0])
    c_tilde = torch.tanh(A[2] * h + u[:, 2])
    c_new = f * c + (1 - f) * c_tilde
    o = torch.sigmoid(A[1] * h + C[1] * c_new + u[:, 1])
    return c_new, o * torch.tanh(c_new)


@pytest.mark.parametrize("heads", [1, 2, 3])
def test_gru_step_matches_spec_equations(heads):
    layer = ParaGRU(6 * heads, 4 * heads, num_heads=heads, dtype=torch.float64)
    with torch.no_grad():
        layer.A.normal_(0, 0.7)
        layer.b.normal_()
    x = torch.randn(5, layer.input_size, dtype=torch.float64)
    h = torch.randn(5, layer.state_size, dtype=torch.float64)
    y, h_new = layer.step(x, h)
    expected = spec_gru_step(h, x, layer.A, layer.B, layer.b, heads)
    assert rel_err(h_new, expected) < 1e-14
    assert rel_err(y, expected) < 1e-14


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_lstm_step_matches_spec_equations(heads):
    layer = ParaLSTM(4 * heads, 3 * heads, num_heads=heads, dtype=torch.float64)
    with torch.no_grad():
        layer.A.normal_(0, 0.7)
        layer.C.normal_(0, 0.7)
        layer.b.normal_()
    x = torch.randn(5, layer.input_size, dtype=torch.float64)
    c, h = torch.randn(5, layer.state_size, dtype=torch.float64), torch.randn(5, layer.state_size, dtype=torch.float64)
    y, (c_new, h_new) = layer.step(x, (c, h))
    c_exp, h_exp = spec_lstm_step(c, h, x, layer.A, layer.B, layer.b, layer.C, heads)
    assert rel_err(c_new, c_exp) < 1e-14
    assert rel_err(h_new, h_exp) < 1e-14
    assert rel_err(y, h_exp) < 1e-14


def _random_step(cell, N=7, batch=3):
    k = len(cell.STATE_ROWS)
    A = torch.randn(3, N, dtype=torch.float64)
    C = torch.randn(2, N, dtype=torch.float64) if cell.PEEPHOLE_ROWS else None
    u = torch.randn(batch, 3, N, dtype=torch.float64)
    prev = torch.randn(batch, k, N, dtype=torch.float64)
    return A, C, u, prev


def _dense_jacobian(cell, prev, u, A, C, mask=None, keep=None):
    """Autograd Jacobian of one sample's step, [k, N, k, N]."""
    return torch.autograd.functional.jacobian(lambda p: Transition(cell, p, u, A, C, mask, keep).output(), prev)


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("masked,reset", [(False, False), (True, False), (False, True), (True, True)])
def test_jacobian_matches_autograd(name, masked, reset):
    cell = get_cell(name)
    A, C, u, prev = _random_step(cell, batch=1)
    u, prev = u[0], prev[0]
    mask = torch.tensor(not masked).view(1, 1)
    keep = torch.tensor(0.0 if reset else 1.0, dtype=torch.float64).view(1, 1)
    J = Transition(cell, prev, u, A, C, mask, keep).jacobian()  # [k, k, N]
    dense = _dense_jacobian(cell, prev, u, A, C, mask, keep)  # [k, N, k, N]
    k, N = prev.shape
    for i in range(k):
        for j in range(k):
            block = dense[i, :, j, :]
            assert torch.allclose(block, torch.diag(J[i, j]), atol=1e-14, rtol=0)
            assert torch.count_nonzero(block - torch.diag(torch.diagonal(block))) == 0  # diagonal blocks


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_vjp_matches_autograd(name):
    cell = get_cell(name)
    A, C, u, prev = _random_step(cell)
    mask = torch.tensor([True, False, True]).view(3, 1, 1)
    keep = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64).view(3, 1, 1)
    leaves = [t.clone().requires_grad_() for t in (u, A, prev)]
    C_leaf = C.clone().requires_grad_() if C is not None else None
    out = Transition(cell, leaves[2], leaves[0], leaves[1], C_leaf, mask, keep).output()
    lam = torch.randn_like(out)
    out.backward(lam)
    du, dA, dC, d_prev = Transition(cell, prev, u, A, C, mask, keep).vjp(lam)
    assert rel_err(du, leaves[0].grad) < 1e-14
    assert rel_err(dA, leaves[1].grad) < 1e-14
    assert rel_err(d_prev, leaves[2].grad) < 1e-14
    if C is not None:
        assert rel_err(dC, C_leaf.grad) < 1e-14
    else:
        assert dC is None


def test_cell_registry():
    assert get_cell("gru") is gru and get_cell("lstm") is lstm
    with pytest.raises(ValueError, match="unknown cell 'rnn'"):
        get_cell("rnn")

"""Gradients of the adjoint-scan backward: gradcheck in float64 for every input, and float32
gradients against autograd through the float64 step loop at T=1000."""

import pytest
import torch
from torch.func import functional_call

from helpers import LAYERS, reference_forward, rel_err, state_rows
from pararnn_hf import ParaLSTM

# pure torch: CI's second pass (another transformers release) skips it
pytestmark = pytest.mark.torch_only


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("backend", ["torch", "sequential"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck_every_input(name, backend, with_mask):
    layer = LAYERS[name](
        4, 6, num_heads=2, backend=backend, init_recurrent_std=0.5, newton_tolerance=1e-14, dtype=torch.float64
    )
    with torch.no_grad():
        layer.b.normal_(0, 0.5)
    batch, T = 2, 9
    x = torch.randn(batch, T, 4, dtype=torch.float64, requires_grad=True)
    state = [torch.randn(batch, 6, dtype=torch.float64, requires_grad=True) for _ in layer.cell.STATE_ROWS]
    mask = resets = None
    if with_mask:
        mask = torch.ones(batch, T)
        mask[1, :3] = 0
        mask[0, 5] = 0
        resets = torch.zeros(batch, T, dtype=torch.bool)
        resets[0, 4] = True
        resets[1, 7] = True
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]

    def fn(x, *rest):
        p, s = rest[: len(names)], rest[len(names) :]
        init = s[0] if len(s) == 1 else tuple(s)
        y, final = functional_call(
            layer,
            dict(zip(names, p)),
            (x,),
            {"initial_state": init, "mask": mask, "resets": resets, "return_state": True},
        )
        return (y, *state_rows(final))

    assert torch.autograd.gradcheck(fn, (x, *params, *state), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("backend", ["torch", "sequential"])
def test_float32_gradients_match_float64_loop_autograd_T1000(name, backend):
    layer = LAYERS[name](32, 48, num_heads=2, backend=backend, init_recurrent_std=0.3)
    x = torch.randn(2, 1000, 32, requires_grad=True)
    h0 = torch.randn(2, 48) * 0.3
    init = h0.requires_grad_() if name == "gru" else (h0.requires_grad_(), torch.zeros(2, 48, requires_grad=True))
    w = torch.randn(2, 1000, 48)
    (layer(x, initial_state=init) * w).sum().backward()

    ref = LAYERS[name](32, 48, num_heads=2, dtype=torch.float64)
    ref.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    x64 = x.detach().double().requires_grad_()
    init64 = tuple(t.detach().double().requires_grad_() for t in state_rows(init))
    y64, _ = reference_forward(ref, x64, init64[0] if name == "gru" else init64)
    (y64 * w.double()).sum().backward()

    assert rel_err(x.grad, x64.grad) < 1e-5
    for (n, p), (_, p64) in zip(layer.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad, p64.grad) < 1e-5, n
    for t, t64 in zip(state_rows(init), init64):
        assert rel_err(t.grad, t64.grad) < 1e-5


def _graph_size(y):
    seen, stack = set(), [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(fn for fn, _ in node.next_functions)
    return len(seen)


@pytest.mark.parametrize("backend", ["sequential", "torch", "auto"])
def test_backward_builds_no_graph_over_time(backend):
    """Training on CPU must not record T steps: the autograd graph does not grow with T."""
    layer = ParaLSTM(16, 16, backend=backend)
    short = _graph_size(layer(torch.randn(1, 10, 16, requires_grad=True)))
    long = _graph_size(layer(torch.randn(1, 500, 16, requires_grad=True)))
    assert short == long < 40

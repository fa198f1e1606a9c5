"""The Triton kernels' two schedules against each other and the torch backend, under the
interpreter (8-step chunks, 16-channel blocks): the time-parallel schedule (a program per
channel block, time chunk and batch row; the carries across chunks by a prefix over chunk
summaries) and the chunked one, forward and gradients, both cells, at lengths of one step,
one partial chunk, several chunks and many chunks, with initial states, left padding, resets
on and inside chunk boundaries, bf16 inputs, and inputs Newton cannot solve (the fallback).

Tolerances as tests/test_triton.py: the fp32 schedules agree with the fp32 torch backend to a
few 1e-7 relative; 2e-6 leaves room for the scans' and the dA/dC sums' orders, 3e-5 at 300
steps for Newton's stopping error (both solvers stop at the same residual tolerance, not at
the same iterate)."""

import pytest
import torch

from helpers import LAYERS, rel_err, tiny_config
from pararnn_hf import ParaGRU, ParaRNNConfig, ParaRNNConvergenceWarning
from pararnn_hf.ops.dispatch import select_schedule
from pararnn_hf.ops.triton import solve as triton_solve
from pararnn_hf.ops.triton.time_parallel import tiles, triton_time_parallel_forward
from test_triton import DEVICE, assert_close

pytestmark = pytest.mark.torch_only


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    monkeypatch.setattr(triton_solve, "FILL_OUTPUTS_WITH_NAN", True)


def run(layer, x, init, mask, resets, backend, schedule="auto"):
    layer.backend, layer.triton_schedule = backend, schedule
    layer.zero_grad()
    xb = x.detach().clone().requires_grad_()
    initb = tuple(t.detach().clone().requires_grad_() for t in init)
    y, state = layer(
        xb, initial_state=initb[0] if len(initb) == 1 else initb, mask=mask, resets=resets, return_state=True
    )
    final = state if isinstance(state, tuple) else (state,)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device, y.dtype)
    ((y * w).sum() + sum((f * (i + 2)).sum() for i, f in enumerate(final))).backward()
    if backend == "triton":
        assert layer.last_solve_info.schedule == schedule
    return {
        "y": y.detach(),
        "final": [f.detach() for f in final],
        "dx": xb.grad,
        "dinit": [t.grad for t in initb],
        "params": {n: p.grad.clone() for n, p in layer.named_parameters()},
    }


def problem(name, B, T, N, dtype=torch.float32, seed=0):
    torch.manual_seed(seed + T)
    layer = LAYERS[name](N, N, num_heads=2, init_recurrent_std=0.4).to(DEVICE, dtype)
    with torch.no_grad():
        layer.b.add_(0.3 * torch.randn_like(layer.b))
    x = torch.randn(B, T, N, device=DEVICE, dtype=dtype)
    init = tuple((0.8 * torch.randn(B, N, device=DEVICE)).to(dtype) for _ in layer.cell.STATE_ROWS)
    mask = torch.ones(B, T, dtype=torch.long, device=DEVICE)
    resets = torch.zeros(B, T, dtype=torch.bool, device=DEVICE)
    if B > 1:
        mask[1, : T // 3] = 0  # left padding
    # resets exactly on chunk boundaries (8, 16) and inside chunks
    resets[0, [t for t in (3, 8, 13, 16, 150, 256, 261) if t < T]] = True
    return layer, x, init, mask, resets


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("T", [1, 7, 37])
def test_time_parallel_equals_chunked_and_torch(name, T):
    """N = 24: two channel blocks, the second one partial."""
    layer, x, init, mask, resets = problem(name, 2, T, 24)
    ref = run(layer, x, init, mask, resets, "torch")
    for schedule in ("time_parallel", "chunked"):
        assert_close(run(layer, x, init, mask, resets, "triton", schedule), ref, 2e-6, 2e-6)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_time_parallel_over_many_chunks(name):
    """300 steps: 38 chunks, resets on boundaries (256) and inside them."""
    layer, x, init, mask, resets = problem(name, 1, 300, 16)
    ref = run(layer, x, init, mask, resets, "torch")
    assert_close(run(layer, x, init, mask, resets, "triton", "time_parallel"), ref, 3e-5, 3e-5)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_one_chunk_is_the_chunked_schedule_bit_for_bit(name):
    """Within one chunk both schedules start from f(s0, u) and take the same Newton steps:
    the same states, to the bit."""
    layer, x, init, mask, resets = problem(name, 2, 7, 20)
    cell = layer.cell
    with torch.no_grad():
        u = layer.project(x)
        s0 = torch.stack(init, dim=-2).float()
        keep = (~resets).float().view(2, 7, 1, 1)
        m = (mask != 0).view(2, 7, 1, 1)
        C = None if layer.C is None else layer.C.float()
        a, info_a = triton_time_parallel_forward(cell, u, layer.A, C, s0, m, keep, 8, None)
        b, info_b = triton_solve.triton_newton_forward(cell, u, layer.A, C, s0, m, keep, 8, None)
    assert torch.equal(a, b)
    assert info_a.iterations == info_b.iterations


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_bf16_inputs_read_as_they_are(name):
    """Both schedules read the same bf16 u and carry fp32 states: they agree at the fp32
    tolerance; outputs and input gradients are rounded to bf16."""
    layer, x, init, mask, resets = problem(name, 2, 37, 16, dtype=torch.bfloat16)
    chunked = run(layer, x, init, mask, resets, "triton", "chunked")
    assert_close(run(layer, x, init, mask, resets, "triton", "time_parallel"), chunked, 2e-6, 1e-2)


def test_inputs_newton_cannot_solve_fall_back_to_the_exact_loop():
    layer = ParaGRU(8, 16, backend="triton", triton_schedule="time_parallel", init_recurrent_std=6.0)
    layer.newton_max_iterations = 1
    with torch.no_grad():
        layer.B.mul_(4)
    layer.to(DEVICE)
    x = torch.randn(1, 30, 8, device=DEVICE)
    with pytest.warns(ParaRNNConvergenceWarning):
        y = layer(x)
    info = layer.last_solve_info
    assert not info.converged and info.fallback_from == 0 and info.schedule == "time_parallel"
    layer.backend = "sequential"
    assert rel_err(y, layer(x)) < 1e-6


def test_the_schedule_is_a_layer_and_config_setting():
    layer = ParaGRU(8, 8, triton_schedule="time_parallel")
    assert layer.triton_schedule == "time_parallel"
    with pytest.raises(ValueError, match=r"unknown triton_schedule 'fast'; expected one of \('auto', 'chunked'"):
        layer.triton_schedule = "fast"
    with pytest.raises(ValueError, match="triton_schedule must be one of"):
        ParaRNNConfig(triton_schedule="fast")
    from pararnn_hf import ParaRNNForCausalLM

    model = ParaRNNForCausalLM(tiny_config("gru", triton_schedule="chunked"))
    assert model.model.layers[1].mixer.cell.triton_schedule == "chunked"
    # the torch and sequential backends ignore it
    layer.backend = "torch"
    layer(torch.randn(1, 5, 8))
    assert layer.last_solve_info.schedule is None


def test_auto_runs_the_chunked_schedule_where_there_is_no_sm_count():
    assert select_schedule("auto", torch.zeros(1, 4096, 3, 1024)) == "chunked"
    assert select_schedule("time_parallel", torch.zeros(1, 4, 3, 8)) == "time_parallel"
    assert tiles(LAYERS["gru"].cell)[0] == 8  # the interpreter's chunk length, which these tests rely on

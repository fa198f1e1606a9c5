"""ParaGRU / ParaLSTM module API: parameters and init, step(), dtypes, and clear errors."""

import math

import pytest
import torch

from helpers import LAYERS, reference_forward, rel_err, state_rows
from pararnn_hf import ParaGRU, ParaLSTM

# pure torch: CI's second pass (another transformers release) skips it
pytestmark = pytest.mark.torch_only


def test_parameter_names_and_layouts():
    gru = ParaGRU(12, 8, num_heads=4)
    assert {n: tuple(p.shape) for n, p in gru.named_parameters()} == {"A": (3, 8), "B": (4, 3, 3, 2), "b": (3, 8)}
    lstm = ParaLSTM(12, 8, num_heads=2)
    assert {n: tuple(p.shape) for n, p in lstm.named_parameters()} == {
        "A": (3, 8),
        "B": (2, 6, 3, 4),
        "b": (3, 8),
        "C": (2, 8),
    }


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_reference_initialisation(name):
    N, D, H = 512, 256, 2
    layer = LAYERS[name](D, N, num_heads=H)
    std = 2 / math.sqrt(5 * N)
    assert abs(layer.A.std().item() / std - 1) < 0.05 and abs(layer.A.mean().item()) < 0.2 * std
    if layer.C is not None:
        assert abs(layer.C.std().item() / std - 1) < 0.05
    bound = math.sqrt(6 / (D // H + N))
    assert layer.B.abs().max().item() <= bound and layer.B.abs().max().item() > 0.99 * bound
    assert torch.allclose(layer.b[0], -torch.linspace(0, 1, N))
    assert torch.count_nonzero(layer.b[1:]) == 0


def test_initialisation_is_configurable():
    layer = ParaGRU(8, 400, init_recurrent_std=0.01, init_input_bound=0.05, init_gate_bias=(1.0, 3.0))
    assert abs(layer.A.std().item() - 0.01) < 0.002
    assert layer.B.abs().max().item() <= 0.05
    assert torch.allclose(layer.b[0], -torch.linspace(1, 3, 400))


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_step_chained_equals_forward(name, dtype):
    layer = LAYERS[name](10, 6, num_heads=2, dtype=dtype, init_recurrent_std=0.4)
    x = torch.randn(3, 25, 10, dtype=dtype)
    h0 = torch.randn(3, 6, dtype=dtype)
    state = h0 if name == "gru" else (h0, -h0)
    y_full, final = layer(x, initial_state=state, return_state=True)
    ys = []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_err(torch.stack(ys, 1), y_full) < tol
    for a, b in zip(state_rows(state), state_rows(final)):
        assert rel_err(a, b) < tol


def test_step_from_no_state_starts_at_zero():
    layer = ParaLSTM(4, 4)
    x = torch.randn(2, 4)
    y, (c, h) = layer.step(x)
    y0, (c0, h0) = layer.step(x, (torch.zeros(2, 4), torch.zeros(2, 4)))
    assert torch.equal(y, y0) and torch.equal(c, c0) and torch.equal(h, h0)


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_use_fp32_recurrence(name, dtype):
    layer = LAYERS[name](16, 24, num_heads=2, init_recurrent_std=0.3)
    x = torch.randn(2, 200, 16)
    y32 = layer(x)
    layer_half = LAYERS[name](16, 24, num_heads=2).to(dtype)
    layer_half.load_state_dict(layer.state_dict())
    y, state = layer_half(x.to(dtype), return_state=True)
    assert y.dtype == dtype
    assert (state if name == "gru" else state[0]).dtype == torch.float32
    # bf16 carries 8 bits of mantissa: the projection's rounding gives ~1e-2 relative error
    assert rel_err(y, y32) < (2e-2 if dtype == torch.bfloat16 else 3e-3)
    assert layer_half.last_solve_info.converged


def test_empty_sequence_returns_initial_state():
    layer = ParaGRU(4, 5)
    h0 = torch.randn(2, 5)
    y, h = layer(torch.randn(2, 0, 4), initial_state=h0, return_state=True)
    assert y.shape == (2, 0, 5) and torch.equal(h, h0)


def test_multi_head_projection_is_block_diagonal():
    """Head h of u only sees head h of x."""
    layer = ParaGRU(6, 9, num_heads=3, dtype=torch.float64)
    x = torch.zeros(1, 1, 6, dtype=torch.float64)
    x[..., 2:4] = 1.0  # only head 1 of the input
    u = layer.project(x) - layer.b
    assert torch.count_nonzero(u[..., 0:3]) == 0 and torch.count_nonzero(u[..., 6:9]) == 0
    assert torch.count_nonzero(u[..., 3:6]) == 9


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"input_size": 10, "state_size": 8, "num_heads": 4}, ValueError, r"divisible by num_heads \(4\)"),
        ({"input_size": 8, "state_size": 10, "num_heads": 4}, ValueError, "divisible by num_heads"),
        ({"input_size": 0, "state_size": 8}, ValueError, "input_size must be a positive int"),
        ({"input_size": 8, "state_size": 8, "backend": "cuda"}, ValueError, "unknown backend 'cuda'"),
        ({"input_size": 8, "state_size": 8, "newton_max_iterations": 0}, ValueError, "newton_max_iterations"),
        ({"input_size": 8, "state_size": 8, "newton_tolerance": -1.0}, ValueError, "newton_tolerance"),
        ({"input_size": 8, "state_size": 8, "dtype": torch.int32}, TypeError, "dtype must be one of"),
        ({"input_size": 8, "state_size": 8, "init_gate_bias": (0,)}, ValueError, "init_gate_bias must be two finite"),
        ({"input_size": 8, "state_size": 8, "init_gate_bias": 5}, ValueError, "init_gate_bias must be two finite"),
        (
            {"input_size": 8, "state_size": 8, "init_gate_bias": (0, float("nan"))},
            ValueError,
            "init_gate_bias must be two finite",
        ),
    ],
)
def test_bad_construction_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        ParaGRU(**kwargs)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_a_step_with_gradients_keeps_no_graph_alive(name):
    """step() remembers its latest state for check_steps(); held with its graph, it leaked one
    step's activations per layer and made deepcopy and torch.save fail."""
    import copy
    import io

    layer = LAYERS[name](8, 6, num_heads=2)
    y, state = layer.step(torch.randn(2, 8))
    y.sum().backward()  # the graph is used and freed as in a training loop
    assert layer._last_step_state is not None and layer._last_step_state.grad_fn is None
    copy.deepcopy(layer)
    torch.save(layer, io.BytesIO())


def test_a_backend_typo_set_after_construction_is_refused_at_once():
    layer = ParaGRU(8, 6, num_heads=2)
    with pytest.raises(ValueError, match=r"unknown backend 'sequentail'; expected one of"):
        layer.backend = "sequentail"
    assert layer.backend == "auto"
    layer.backend = "sequential"
    layer(torch.randn(1, 4, 8))
    assert layer.last_solve_info.method == "sequential"
    with pytest.raises(ValueError, match=r"newton_tolerance must be a number in \(0, 0.01\]"):
        layer.newton_tolerance = 1.0
    with pytest.raises(ValueError, match=r"newton_tolerance must be a number in \(0, 0.01\]"):
        ParaGRU(8, 6, newton_tolerance=0.5)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_check_every_step_checks_the_steps_input_as_forward_does(name):
    """An Inf input saturates the gates and can leave a finite state: forward() refuses it,
    and so must a checked step()."""
    layer = LAYERS[name](8, 6, num_heads=2)
    x = torch.randn(2, 8)
    x[0, 3] = float("inf")
    with pytest.raises(FloatingPointError, match="input x"):
        layer(x.unsqueeze(1))
    layer.check_every_step = True
    with pytest.raises(FloatingPointError, match="input x_t contains NaN or Inf"):
        layer.step(x)


def test_bad_inputs_raise_clear_errors():
    gru, lstm = ParaGRU(8, 6), ParaLSTM(8, 6)
    x = torch.randn(2, 5, 8)
    with pytest.raises(
        ValueError, match=r"x must have shape \[batch, time, input_size\] with input_size=8; got \(2, 5\)"
    ):
        gru(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"input_size=8; got \(2, 5, 7\)"):
        gru(torch.randn(2, 5, 7))
    with pytest.raises(TypeError, match="unsupported dtype torch.int64"):
        gru(torch.ones(2, 5, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the layer's parameters are torch.float32"):
        gru(x.double())
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 5\); got \(2, 4\)"):
        gru(x, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"resets must have shape \(2, 5\); got \(5,\)"):
        gru(x, resets=torch.zeros(5))
    with pytest.raises(ValueError, match=r"initial_state h must have shape \(2, 6\); got \(2, 5\)"):
        gru(x, initial_state=torch.zeros(2, 5))
    with pytest.raises(TypeError, match=r"initial_state must be a tuple of 2 tensors \('c', 'h'\)"):
        lstm(x, initial_state=torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"initial_state c must have shape \(2, 6\)"):
        lstm(x, initial_state=(torch.zeros(3, 6), torch.zeros(2, 6)))
    with pytest.raises(ValueError, match=r"x_t must have shape \[batch, input_size\]"):
        gru.step(x)
    with pytest.raises(TypeError, match="initial_state must be a tensor h"):
        gru.step(x[:, 0], (torch.zeros(2, 6),))


def test_reference_helper_is_independent_of_backend_choice():
    """Guard for the other tests: the float64 helper reproduces a float64 layer exactly."""
    layer = ParaLSTM(6, 4, dtype=torch.float64, backend="sequential")
    x = torch.randn(2, 30, 6, dtype=torch.float64)
    assert rel_err(layer(x), reference_forward(layer, x)[0]) < 1e-15

"""torch.compile(fullgraph=True) and torch.export see the recurrence as one opaque custom op
(ops/recurrence.py): the model compiles without graph breaks or host syncs, in training and
evaluation, with the same outputs and gradients as eager (inductor on CPU)."""

from __future__ import annotations

import pytest
import torch

from helpers import LAYERS, rel_err, tiny_model

CELLS = ["gru", "lstm"]


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (2, 13), generator=g)
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    resets = torch.zeros(2, 13, dtype=torch.bool)
    resets[0, 7] = True  # a packed document boundary
    return {"input_ids": ids, "attention_mask": mask, "resets": resets, "use_cache": False}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("cell", CELLS)
def test_fullgraph_compiled_training_step_matches_eager(cell):
    """Forward and backward of a compiled model equal eager within 1e-5 (float32)."""
    model = tiny_model(cell).train()
    batch = _batch(model)
    labels = batch["input_ids"].clone()

    eager = model(**batch, labels=labels)
    eager.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    compiled = torch.compile(model, fullgraph=True)
    out = compiled(**batch, labels=labels)
    out.loss.backward()
    assert rel_err(out.logits, eager.logits) < 1e-5
    for name, p in model.named_parameters():
        assert rel_err(p.grad, grads[name]) < 1e-5, name


@pytest.mark.parametrize("cell", CELLS)
def test_fullgraph_compiled_eval_and_export_match_eager(cell):
    model = tiny_model(cell)
    batch = _batch(model, seed=1)
    with torch.no_grad():
        eager = model(**batch).logits
        compiled = torch.compile(model, fullgraph=True)(**batch).logits
    assert rel_err(compiled, eager) < 1e-5

    exported = torch.export.export(model, (), batch)
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert any("pararnn_hf.recurrence_forward" in op for op in ops), "the solve should be one opaque op"
    with torch.no_grad():
        again = exported.module()(**batch).logits
    assert rel_err(again, eager) < 1e-6


@pytest.mark.parametrize("backend", ["torch", "sequential", "triton"])
@pytest.mark.parametrize("cell", CELLS)
def test_every_backend_compiles_as_the_same_op(cell, backend):
    """The layer alone, each backend (triton in the interpreter on CPU), forward and backward.
    aot_eager traces exactly what inductor receives (the op's fake and autograd registrations);
    the model tests above run inductor itself."""
    layer = LAYERS[cell](8, 12, num_heads=2, backend=backend)
    x = torch.randn(2, 9, 8, requires_grad=True)
    y = layer(x)
    (y * torch.arange(12.0)).sum().backward()
    dx, dA = x.grad.clone(), layer.A.grad.clone()
    x.grad, layer.A.grad = None, None

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    yc = compiled(x)
    (yc * torch.arange(12.0)).sum().backward()
    assert rel_err(yc, y) < 1e-6 and rel_err(x.grad, dx) < 1e-6 and rel_err(layer.A.grad, dA) < 1e-6


def test_compiled_layer_still_refuses_nan_inputs():
    """Without host syncs in the graph the op itself checks what it reads."""
    layer = LAYERS["gru"](4, 4)
    x = torch.randn(1, 5, 4)
    x[0, 2, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or Inf in what the recurrence reads"):
        torch.compile(layer, fullgraph=True)(x)
    with pytest.raises(FloatingPointError, match="input x contains NaN or Inf"):  # eager names it
        layer(x)

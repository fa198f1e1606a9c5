"""The fused decoding step and the fast generation path (docs/design.md#cache).

- The Triton kernels (interpreter) against their torch reference, same signature: the mixer
  step for both cells, fp32 within 1e-6 relative (one fp32 computation in another order) and
  bf16 activations within 2e-2 (bf16 rounding: the interpreter's converting stores round toward
  zero), batch > 1, rows that are padding, conv kernels of 1 to 5 taps; the residual norm and
  the SwiGLU product.
- One decoding step of a 2-layer model launches a pinned number of ops.
- generate(): the fast path gives transformers' tokens (greedy), reproducible samples with a
  seed, a left-padded batch equals its rows alone, and pararnn-hf generate and lm-eval's
  generate_until take it.
"""

import pytest
import torch
from transformers import GenerationMixin

from helpers import rel_err, tiny_model
from pararnn_hf.cells import gru, lstm
from pararnn_hf.decoding import fast_generation_plan, generate_tokens, next_tokens
from pararnn_hf.ops.fused_decode import TORCH_OPS
from pararnn_hf.ops.triton import interpreter_enabled
from pararnn_hf.ops.triton.fused_decode import TRITON_OPS

CELLS = {"gru": gru, "lstm": lstm}
# the kernels' tests run on CUDA where there is one (gpu_check.sh's tests step), else interpreted
DEVICE = "cuda" if torch.cuda.is_available() and not interpreter_enabled() else "cpu"


def mixer_inputs(cell, KC, dtype, Bt=3, H=2, D=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, DH, NH = D, D // H, D // H

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dtype)

    return dict(
        xz=r(Bt, 2 * D),
        conv_state=r(Bt, KC - 1, D),
        conv_weight=r(D, 1, KC),
        conv_bias=r(D),
        A=r(3, N, scale=0.4),
        B=r(H, DH, 3, NH, scale=0.3),
        b=r(3, N),
        C=r(2, N, scale=0.4) if cell is lstm else None,
        c_state=torch.randn(Bt, N, generator=g) if cell is lstm else None,
        h_state=torch.randn(Bt, N, generator=g),
        gate_weight=r(N),
        mask=torch.tensor([1, 0, 1]),  # row 1 is padding: an identity step
    )


def run_mixer(ops, cell, inputs):
    """(v, the row's mean square, conv tail, h, c) after one step: the kernel splits the mean
    square over channel blocks, the reference over heads; their sums must agree."""
    args = {k: (v.clone().to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    v, meansq = ops.mixer_step(cell, **args)
    out = v, meansq.sum(-1), args["conv_state"], args["h_state"], args["c_state"]
    return tuple(None if t is None else t.cpu() for t in out)


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("KC", [1, 2, 4, 5])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_fused_mixer_step_equals_its_reference(name, KC, dtype, tol):
    cell = CELLS[name]
    inputs = mixer_inputs(cell, KC, dtype)
    fused, ref = run_mixer(TRITON_OPS, cell, inputs), run_mixer(TORCH_OPS, cell, inputs)
    for a, b in zip(fused, ref):
        if b is not None:
            assert rel_err(a.float(), b.float()) < (tol if a.dtype != torch.float32 or dtype == torch.float32 else 1e-6)
    # the padding row kept its state and conv tail
    assert torch.equal(ref[3][1], inputs["h_state"][1])
    if KC > 1:
        assert torch.equal(fused[2][1, -1], torch.zeros_like(fused[2][1, -1]))


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_the_mixer_step_split_over_channel_blocks_steps_like_the_reference(name):
    """Heads of 128 channels run as 4 programs of 32 each (grid (B, H, 4)): the last program of
    a head shifts its conv tail once all have read it, and leaves the tickets at zero, so
    three steps in a row match the reference step by step."""
    from pararnn_hf.ops.triton import fused_decode

    cell = CELLS[name]
    assert fused_decode.mixer_tile(128, 128)[1] == 32
    state = mixer_inputs(cell, 4, torch.float32, D=256)
    ref = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    fused = {k: (v.clone().to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        xz = torch.randn(3, 512, generator=g)
        ref["xz"], fused["xz"] = xz, xz.to(DEVICE)
        v_ref, ms_ref = TORCH_OPS.mixer_step(cell, **ref)
        v, ms = TRITON_OPS.mixer_step(cell, **fused)
        assert ms.shape == (3, 2 * 4) and ms_ref.shape == (3, 2)
        assert rel_err(v.cpu(), v_ref) < 1e-6 and rel_err(ms.sum(-1).cpu(), ms_ref.sum(-1)) < 1e-6
        for key in ("conv_state", "h_state", "c_state"):
            if ref[key] is not None:
                assert rel_err(fused[key].cpu(), ref[key]) < 1e-6, key
    assert not fused_decode._tickets(3 * 2, torch.device(DEVICE)).any()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
def test_fused_residual_norm_and_silu_mul_equal_their_references(dtype, tol):
    g = torch.Generator().manual_seed(1)
    r, d = (torch.randn(3, 40, generator=g).to(dtype) for _ in range(2))
    w = torch.randn(40, generator=g).to(dtype)
    meansq, scale = torch.rand(3, 2, generator=g), torch.tensor(0.7).to(dtype)

    def on(device, args):
        return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)

    for args in (
        (r, d, meansq, 1e-6, scale, w, 1e-6),
        (None, d, None, 0.0, None, w, 1e-5),
        (r, d, None, 0.0, None, w, 1e-6),
    ):
        for a, b in zip(TRITON_OPS.residual_norm(*on(DEVICE, args)), TORCH_OPS.residual_norm(*args)):
            assert rel_err(a.float().cpu(), b.float()) < tol
    up = torch.randn(3, 70, generator=g).to(dtype)
    gate = d[:, :35].repeat(1, 2)
    fused = TRITON_OPS.silu_mul(*on(DEVICE, (gate, up)))
    assert rel_err(fused.float().cpu(), TORCH_OPS.silu_mul(gate, up).float()) < tol


@pytest.mark.parametrize("name,expand", [("gru", 1), ("lstm", 1), ("gru", 2)])
def test_the_fused_step_in_a_model_equals_the_one_shot_forward(name, expand):
    """Decoding token by token through the fused step (Triton backend: the kernels) gives the
    logits of one forward over the whole sequence; also with a cell wider than the model
    (expand 2: the gate norm averages over the cell width, not out_proj's)."""
    model = tiny_model(name, backend="triton", expand=expand).to(DEVICE)
    ids = torch.randint(3, 300, (2, 12), device=DEVICE)
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :5], use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        steps = [model.decode_step(ids[:, t : t + 1], cache) for t in range(5, 12)]
    assert rel_err(torch.stack(steps, 1), full[:, 5:]) < 2e-6  # Newton's fp32 stopping error


def test_one_decoding_step_launches_a_pinned_number_of_ops():
    """Per layer and token: 5 GEMMs (in_proj, out_proj, the MLP's gate, up, down) and 4 fused
    kernels (mixer step, 2 residual norms, SiLU·mul); with the embedding, the first norm and
    the head, a 2-layer step is 11 GEMMs and embedding ops and 9 kernels. The aten ops beside
    them are the kernels' output allocations and the GEMMs (docs/design.md#cache)."""
    from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

    from pararnn_hf.ops.triton import fused_decode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    launches = []
    for kernel in ("mixer_step_kernel", "residual_norm_kernel", "silu_mul_kernel"):
        original = getattr(fused_decode, kernel)

        class Counting:
            def __init__(self, original, name):
                self.original, self.name = original, name

            def __getitem__(self, grid):
                launches.append(self.name)
                launch = self.original[grid]

                def run(*args, **kwargs):
                    # the interpreter runs each kernel as torch ops: keep them out of the log,
                    # as a GPU launch is one op
                    with _disable_current_modes():
                        return launch(*args, **kwargs)

                return run

        setattr(fused_decode, kernel, Counting(original, kernel))
    try:
        model = tiny_model("gru", backend="triton").to(DEVICE)
        ids = torch.randint(3, 300, (2, 6), device=DEVICE)
        with torch.no_grad():
            out = model(ids, use_cache=True)
            cache = out.cache if hasattr(out, "cache") else out.past_key_values
            with Log() as log:
                model.decode_step(ids[:, -1:], cache)
    finally:
        for kernel in ("mixer_step_kernel", "residual_norm_kernel", "silu_mul_kernel"):
            setattr(fused_decode, kernel, getattr(fused_decode, kernel).original)
    assert sorted(launches) == sorted(
        ["mixer_step_kernel"] * 2 + ["residual_norm_kernel"] * 5 + ["silu_mul_kernel"] * 2
    )
    # besides the kernels, only the embedding and the GEMMs compute; the rest are views and
    # the kernels' output allocations. Pinned so that the count cannot silently grow back.
    views, allocations = {"slice", "select", "t", "view"}, {"empty", "empty_like"}
    computing = [op for op in log.ops if op not in views | allocations]
    assert computing == ["embedding"] + ["mm"] * 11, log.ops
    assert len(log.ops) == 41, log.ops


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_fast_generate_equals_transformers_generate(name):
    model = tiny_model(name)
    ids = torch.randint(3, 300, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, :3] = 0
    ids[mask == 0] = 0
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    assert fast_generation_plan(model, (), kwargs) is not None
    stock = GenerationMixin.generate(model, **kwargs)
    assert torch.equal(model.generate(**kwargs), stock)
    # what only transformers' generate does goes there: beams, penalties, scores
    for extra in (
        {"num_beams": 2},
        {"repetition_penalty": 1.3},
        {"output_scores": True, "return_dict_in_generate": True},
    ):
        assert fast_generation_plan(model, (), {**kwargs, **extra}) is None


def test_a_batch_equals_its_rows_alone_and_samples_repeat_with_a_seed():
    model = tiny_model("lstm")
    prompts = [torch.randint(3, 300, (n,)) for n in (4, 9, 6)]
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        ids[i, 9 - len(p) :], mask[i, 9 - len(p) :] = p, 1
    batch = generate_tokens(model, ids, mask, 8, eos_token_id=None, mode="eager")
    for i, p in enumerate(prompts):
        alone = generate_tokens(model, p[None], None, 8, eos_token_id=None, mode="eager")
        assert torch.equal(batch[i, 9:], alone[0, len(p) :])
    sample = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, eos_token_id=None, mode="eager")
    a = generate_tokens(model, ids, mask, 12, generator=torch.Generator().manual_seed(3), **sample)
    b = generate_tokens(model, ids, mask, 12, generator=torch.Generator().manual_seed(3), **sample)
    c = generate_tokens(model, ids, mask, 12, generator=torch.Generator().manual_seed(4), **sample)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    x = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_p=0.9)
    torch.manual_seed(5)
    assert torch.equal(x, model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_p=0.9))


def test_sampling_follows_transformers_warpers():
    """Temperature, top-k, top-p: only the tokens transformers' warpers keep are ever drawn."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    kept = TopPLogitsWarper(0.7)(None, TopKLogitsWarper(10)(None, logits / 0.5)) > float("-inf")
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        drawn = next_tokens(logits, True, 0.5, 10, 0.7, g)
        assert kept.gather(1, drawn).all()


def test_decode_capture_is_a_checked_config_key():
    from pararnn_hf import ParaRNNConfig

    with pytest.raises(ValueError, match="decode_capture must be one of"):
        ParaRNNConfig(decode_capture="sometimes")
    model = tiny_model("gru", decode_capture="off")
    ids = torch.randint(3, 300, (1, 5))
    assert torch.equal(
        model.generate(ids, max_new_tokens=5, do_sample=False),
        GenerationMixin.generate(model, ids, max_new_tokens=5, do_sample=False),
    )


def test_the_cli_and_lm_eval_take_the_fast_path(model_dir, monkeypatch, tmp_path):
    import pararnn_hf.decoding as decoding
    from pararnn_hf.cli import main
    from pararnn_hf.eval import run_eval

    calls = []
    real = decoding.fast_generate

    def counting(model, plan):
        calls.append(plan["input_ids"].shape)
        return real(model, plan)

    monkeypatch.setattr(decoding, "fast_generate", counting)
    assert main(["generate", "--model", str(model_dir), "--prompt", "import os", "--max-new-tokens", "4"]) == 0
    assert len(calls) == 1
    run_eval(str(model_dir), ["pararnn_stdlib_complete"], output=str(tmp_path / "r.json"), limit=2, batch_size=2)
    assert len(calls) > 1  # generate_until went through it too


def test_the_compiled_step_is_reused_by_later_calls():
    """A second compiled decoding with a new cache of the same shapes (the next generate()
    call, the next lm-eval batch) compiles nothing: the cache buffers are the step's
    arguments, not constants of its graph (else every call would recompile, and after
    dynamo's recompile limit silently run eager)."""
    from torch._dynamo.utils import counters

    from pararnn_hf.decoding import greedy_generate

    model = tiny_model("gru")
    ids = torch.randint(3, 300, (2, 5))
    first = greedy_generate(model, ids, max_new_tokens=6, mode="compile")
    compiled = counters["stats"]["unique_graphs"]
    for prompt in (ids, ids.flip(1)):
        out = greedy_generate(model, prompt, max_new_tokens=6, mode="compile")
        assert torch.equal(out, GenerationMixin.generate(model, prompt, max_new_tokens=6, do_sample=False))
    assert counters["stats"]["unique_graphs"] == compiled
    assert first.shape == out.shape
    # another model of the same structure may share the graph, never the first model's weights
    other = tiny_model("gru")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5 * torch.randn_like(p))
    out = greedy_generate(other, ids, max_new_tokens=6, mode="compile")
    assert torch.equal(out, GenerationMixin.generate(other, ids, max_new_tokens=6, do_sample=False))
    assert not torch.equal(out, first)

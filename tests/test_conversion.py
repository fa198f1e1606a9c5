"""Conversion: exact round trips with the reference layouts, reference cells against the cell
equations (docs/design.md#cells), Llama upcycling, dtype and sharding, and every error case."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import rel_err, tiny_llama, tiny_model, tiny_tokenizer
from pararnn_hf import ParaGRU, ParaLSTM, ParaRNNForCausalLM
from pararnn_hf.cli import main
from pararnn_hf.conversion import ConversionError, from_llama, from_reference, to_reference
from test_cells import spec_gru_step, spec_lstm_step

CELLS = ["gru", "lstm"]


def same_weights(a: ParaRNNForCausalLM, b: ParaRNNForCausalLM) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def saved(tmp_path):
    """A saved tiny model; by default in the reference LM's block layout (a scaled mixer
    residual, MLP blocks without one), which ``to_reference`` can write as an LM."""

    def make(cell="gru", **kw):
        model = tiny_model(cell, **{"mixer_residual_scale": True, "mlp_residual": False, **kw})
        with torch.no_grad():  # non-default values everywhere, so a dropped weight shows
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        folder = tmp_path / f"hf-{cell}"
        model.save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        return model, folder

    return make


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_to_reference_and_back_is_bit_exact(cell, fmt, saved, tmp_path):
    model, folder = saved(cell)
    index = to_reference(str(folder), tmp_path / "ref", fmt=fmt, show_progress=False)
    assert index["cells"] == [f"cells/layer_{k}.{fmt}" for k in range(2)]
    ref = tmp_path / "ref"
    lm_keys = set(torch.load(ref / "lm.pt") if fmt == "pt" else load_file(ref / "lm.safetensors"))
    assert {
        "embedding.weight",
        "final_norm.weight",
        "blocks.0.rnn_cell.A",
        "blocks.1.1.w1.weight",
        "blocks.2.conv.conv.weight",
        "blocks.3.0.weight",
    } <= lm_keys
    from_reference(
        tmp_path / "back-lm", lm=str(ref / index["lm"]), config=str(ref / "config.json"), show_progress=False
    )
    assert same_weights(ParaRNNForCausalLM.from_pretrained(tmp_path / "back-lm"), model)
    from_reference(
        tmp_path / "back-cells",
        cells=[str(ref / c) for c in index["cells"]],
        config=str(ref / "config.json"),
        base=str(folder),
        show_progress=False,
    )
    back = ParaRNNForCausalLM.from_pretrained(tmp_path / "back-cells")
    assert same_weights(back, model)
    assert (tmp_path / "back-cells" / "tokenizer.json").is_file()  # copied from --base


def test_lm_layout_config_is_inferred_from_shapes(saved, tmp_path):
    model, folder = saved("lstm", conv_kernel=3)
    index = to_reference(str(folder), tmp_path / "ref", show_progress=False)
    (tmp_path / "ref" / "lm.pararnn.json").unlink()  # shapes alone
    from_reference(tmp_path / "back", lm=str(tmp_path / "ref" / index["lm"]), show_progress=False)
    back = ParaRNNForCausalLM.from_pretrained(tmp_path / "back")
    assert back.config.cell == "lstm" and back.config.conv_kernel == 3 and back.config.tie_word_embeddings
    assert back.config.mixer_residual_scale and not back.config.mlp_residual
    assert same_weights(back, model)


def random_reference_cell(cell, D, N, H):
    cell_dict = {"A": torch.randn(3, N) * 0.5, "B": torch.randn(H, D // H, 3, N // H) * 0.3, "b": torch.randn(3, N)}
    if cell == "lstm":
        cell_dict["C"] = torch.randn(2, N) * 0.5
    return {k: v.double() for k, v in cell_dict.items()}


@pytest.mark.parametrize("cell", CELLS)
def test_reference_cell_in_a_layer_matches_the_spec_equations(cell, tmp_path):
    """Convert a reference cell into a model, then run its layer against docs/design.md#cells written out."""
    model = tiny_model(cell, hidden_size=16, num_heads=4)
    model.save_pretrained(tmp_path / "base")
    cells = [random_reference_cell(cell, 16, 16, 4) for _ in range(2)]
    paths = []
    for k, c in enumerate(cells):
        paths.append(str(tmp_path / f"cell{k}.pt"))
        torch.save({f"rnn_cell.{n}": v.float() for n, v in c.items()}, paths[-1])
    from_reference(tmp_path / "out", cells=paths, base=str(tmp_path / "base"), show_progress=False)
    layer = ParaRNNForCausalLM.from_pretrained(tmp_path / "out").model.layers[1].mixer.cell.double()
    ref = cells[1]
    x = torch.randn(3, 16, dtype=torch.float64)
    h = torch.randn(3, 16, dtype=torch.float64)
    if cell == "gru":
        y, _ = layer.step(x, h)
        expected = spec_gru_step(
            h, x, ref["A"].float().double(), ref["B"].float().double(), ref["b"].float().double(), 4
        )
    else:
        c = torch.randn(3, 16, dtype=torch.float64)
        y, _ = layer.step(x, (c, h))
        _, expected = spec_lstm_step(c, h, x, *(ref[n].float().double() for n in ("A", "B", "b", "C")), 4)
    assert torch.allclose(y, expected, atol=1e-12)


def test_one_file_with_prefixed_layers_and_fsdp_wrappers(tmp_path):
    model = tiny_model("gru")
    model.save_pretrained(tmp_path / "base")
    cells = [random_reference_cell("gru", 32, 32, 2) for _ in range(2)]
    state = {
        f"_fsdp_wrapped_module.layers.{k}._fsdp_wrapped_module.rnn_cell.{n}": v.float()
        for k, c in enumerate(cells)
        for n, v in c.items()
    }
    save_file(state, tmp_path / "all.safetensors")
    report = from_reference(
        tmp_path / "out",
        cells=[str(tmp_path / "all.safetensors")],
        config=str(tmp_path / "base" / "config.json"),
        show_progress=False,
    )
    assert "freshly initialised" in report["rest"]
    out = ParaRNNForCausalLM.from_pretrained(tmp_path / "out")
    for k in range(2):
        assert torch.equal(out.model.layers[k].mixer.cell.A, cells[k]["A"].float())
        assert torch.equal(out.model.layers[k].mixer.cell.B, cells[k]["B"].float())


def test_diagonal_matrices_are_accepted(tmp_path):
    tiny_model("lstm").save_pretrained(tmp_path / "base")
    cells = [random_reference_cell("lstm", 32, 32, 2) for _ in range(2)]
    for c in cells:
        c["A"], c["C"] = torch.diag_embed(c["A"]), torch.diag_embed(c["C"])
    paths = [str(tmp_path / f"c{k}.pt") for k in range(2)]
    for c, p in zip(cells, paths):
        torch.save({n: v.float() for n, v in c.items()}, p)
    from_reference(tmp_path / "out", cells=paths, base=str(tmp_path / "base"), show_progress=False)
    out = ParaRNNForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(out.model.layers[0].mixer.cell.C, torch.diagonal(cells[0]["C"].float(), dim1=-2, dim2=-1))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda c: c.update(extra=torch.zeros(1)), r"unknown keys \['extra'\]"),
        (lambda c: c.pop("b"), r"missing keys \['b'\]"),
        (lambda c: c.update(A=torch.zeros(3, 31)), r"A has shape \(3, 31\), expected \(3, 32\)"),
        (lambda c: c.update(B=torch.zeros(4, 8, 3, 8)), "B has 4 heads but the config has num_heads=2"),
        (lambda c: c.update(A=torch.ones(3, 32, 32)), "non-zero off-diagonal entries"),
        (lambda c: c.update(C=torch.zeros(2, 32)), r"unknown keys \['C'\] \(a ParaLSTM peephole C"),
    ],
)
def test_bad_reference_cells_raise_and_leave_nothing(tmp_path, mutate, match):
    tiny_model("gru").save_pretrained(tmp_path / "base")
    cells = [{n: v.float() for n, v in random_reference_cell("gru", 32, 32, 2).items()} for _ in range(2)]
    mutate(cells[1])
    paths = [str(tmp_path / f"c{k}.safetensors") for k in range(2)]
    for c, p in zip(cells, paths):
        save_file(c, p)
    with pytest.raises(ConversionError, match=match):
        from_reference(tmp_path / "out", cells=paths, base=str(tmp_path / "base"), show_progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out")]  # no temp folder left


def test_layer_count_mismatch(tmp_path):
    tiny_model("gru").save_pretrained(tmp_path / "base")
    path = str(tmp_path / "c.pt")
    torch.save({n: v.float() for n, v in random_reference_cell("gru", 32, 32, 2).items()}, path)
    with pytest.raises(ConversionError, match="has no per-layer prefix; one file for several layers"):
        from_reference(tmp_path / "out", cells=[path], base=str(tmp_path / "base"), show_progress=False)
    with pytest.raises(ConversionError, match="cells for 3 layers, but the config has num_hidden_layers=2"):
        from_reference(tmp_path / "out", cells=[path] * 3, base=str(tmp_path / "base"), show_progress=False)


def test_truncated_and_corrupt_files(tmp_path, saved):
    _, folder = saved("gru")
    index = to_reference(str(folder), tmp_path / "ref", show_progress=False)
    lm = tmp_path / "ref" / index["lm"]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(lm.read_bytes()[: lm.stat().st_size // 2])
    with pytest.raises(ConversionError, match="truncated, corrupt or not a checkpoint"):
        from_reference(tmp_path / "out", lm=str(truncated), show_progress=False)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConversionError, match="truncated, corrupt"):
        from_reference(tmp_path / "out", lm=str(garbage), show_progress=False)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        from_reference(tmp_path / "out", lm=str(tmp_path / "missing.pt"), show_progress=False)
    assert not (tmp_path / "out").exists()


def test_lm_checkpoint_with_unknown_or_missing_keys(tmp_path, saved):
    _, folder = saved("gru")
    index = to_reference(str(folder), tmp_path / "ref", show_progress=False)
    state = load_file(tmp_path / "ref" / index["lm"])
    save_file({**state, "blocks.9.extra": torch.zeros(1)}, tmp_path / "extra.safetensors")
    with pytest.raises(ConversionError, match=r"unknown keys \['blocks.9.extra'\]"):
        from_reference(
            tmp_path / "o1",
            lm=str(tmp_path / "extra.safetensors"),
            config=str(tmp_path / "ref" / "config.json"),
            show_progress=False,
        )
    del state["blocks.2.out_proj.weight"]
    save_file(state, tmp_path / "missing.safetensors")
    with pytest.raises(ConversionError, match="missing key 'blocks.2.out_proj.weight' for layer 1"):
        from_reference(tmp_path / "o2", lm=str(tmp_path / "missing.safetensors"), show_progress=False)


def test_existing_target_is_refused_unless_overwrite(tmp_path, saved):
    _, folder = saved("gru")
    target = tmp_path / "ref"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        to_reference(str(folder), target, show_progress=False)
    assert (target / "keep.txt").read_text() == "mine"
    to_reference(str(folder), target, overwrite=True, show_progress=False)
    assert (target / "index.json").is_file() and not (target / "keep.txt").exists()


def test_dtype_and_sharding(tmp_path, saved):
    model, folder = saved("lstm")
    index = to_reference(str(folder), tmp_path / "ref", show_progress=False)
    from_reference(
        tmp_path / "bf16",
        lm=str(tmp_path / "ref" / index["lm"]),
        dtype="bfloat16",
        max_shard_size="20KB",
        show_progress=False,
    )
    files = os.listdir(tmp_path / "bf16")
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    loaded = ParaRNNForCausalLM.from_pretrained(tmp_path / "bf16")
    assert loaded.model.layers[0].mixer.cell.A.dtype == torch.bfloat16
    assert torch.equal(loaded.model.layers[0].mixer.cell.A, model.model.layers[0].mixer.cell.A.bfloat16())
    assert (tmp_path / "bf16" / "README.md").read_text().startswith("---\nlibrary_name: transformers")


@pytest.fixture
def llama_folder(tmp_path):
    llama = tiny_llama(kv_heads=2, tied=False)
    folder = tmp_path / "llama"
    llama.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return llama, folder


@pytest.mark.parametrize("cell", CELLS)
def test_from_llama_keeps_embeddings_norms_and_mlp_outputs(cell, llama_folder, tmp_path):
    llama, folder = llama_folder
    report = from_llama(str(folder), tmp_path / "up", cell=cell, show_progress=False)
    assert "tokenizer.json" in report["tokenizer"]
    model = ParaRNNForCausalLM.from_pretrained(tmp_path / "up").eval()
    assert model.config.cell == cell and model.config.rms_norm_eps == 1e-5
    x = torch.randn(2, 5, 32)
    for k in range(2):
        src, dst = llama.model.layers[k], model.model.layers[k]
        assert torch.equal(dst.mlp(dst.mlp_norm(x)), src.mlp(src.post_attention_layernorm(x)))
        assert torch.equal(dst.mixer.norm.weight, src.input_layernorm.weight)
    assert torch.equal(model.model.embed_tokens.weight, llama.model.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight, llama.lm_head.weight)
    ids = torch.randint(0, 300, (1, 7))
    assert model(ids).logits.shape == (1, 7, 300)


def test_from_llama_rejects_other_architectures(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConversionError, match="is a 'gpt2' model"):
        from_llama(str(tmp_path / "gpt2"), tmp_path / "out", show_progress=False)


def test_cli_round_trip(tmp_path, saved, capsys):
    model, folder = saved("gru")
    assert (
        main(["convert", "to-reference", "--model", str(folder), "--out", str(tmp_path / "ref"), "--no-progress"]) == 0
    )
    index = json.loads((tmp_path / "ref" / "index.json").read_text())
    assert (
        main(
            [
                "convert",
                "from-reference",
                "--lm",
                str(tmp_path / "ref" / index["lm"]),
                "--config",
                str(tmp_path / "ref" / "config.json"),
                "--out",
                str(tmp_path / "back"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert same_weights(ParaRNNForCausalLM.from_pretrained(tmp_path / "back"), model)
    with pytest.raises(SystemExit, match="already exists"):
        main(["convert", "to-reference", "--model", str(folder), "--out", str(tmp_path / "ref")])
    with pytest.raises(SystemExit, match="either --cells"):
        main(["convert", "from-reference", "--out", str(tmp_path / "x")])


def test_layer_classes_are_the_ones_converted():
    assert ParaGRU.cell.NAME == "gru" and ParaLSTM.cell.NAME == "lstm"


# ----------------------------------------------------------------------------- fidelity


def test_float64_checkpoints_are_not_rounded_through_float32(tmp_path, saved):
    _, folder = saved("lstm")
    model = ParaRNNForCausalLM.from_pretrained(folder).double()
    with torch.no_grad():  # values float32 cannot hold
        for p in model.parameters():
            p.add_(1e-9 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "f64")
    to_reference(str(tmp_path / "f64"), tmp_path / "ref", dtype="float64", show_progress=False)
    for dtype in ("float64", None):
        out = tmp_path / f"back-{dtype}"
        from_reference(out, lm=str(tmp_path / "ref" / "lm.safetensors"), dtype=dtype, show_progress=False)
        back = ParaRNNForCausalLM.from_pretrained(out, dtype=torch.float64)
        assert same_weights(back, model), dtype


def rms(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def reference_layout_lm(state, cell, ids, heads):
    """The reference LM training layout written out from its equations, float64:
    x = x * residual_scale + mixer(x) for each mixer block, x = mlp(norm(x)) (no residual)
    for each MLP block; the mixer is norm -> in_proj -> causal depthwise conv -> SiLU ->
    cell -> RMSNorm(h) * SiLU(gate) -> out_proj."""
    S = {k: v.double() for k, v in state.items()}
    x = S["embedding.weight"][ids]
    layers = len({k.split(".")[1] for k in S if k.startswith("blocks.")}) // 2
    for k in range(layers):
        p, q = f"blocks.{2 * k}.", f"blocks.{2 * k + 1}."
        xi, g = (rms(x, S[p + "norm.weight"]) @ S[p + "in_proj.weight"].T).chunk(2, -1)
        w, bias = S[p + "conv.conv.weight"], S[p + "conv.conv.bias"]
        K = w.shape[-1]
        padded = torch.nn.functional.pad(xi.transpose(1, 2), (K - 1, 0))
        a = torch.nn.functional.silu(torch.nn.functional.conv1d(padded, w, bias, groups=w.shape[0])).transpose(1, 2)
        A, B, b = S[p + "rnn_cell.A"], S[p + "rnn_cell.B"], S[p + "rnn_cell.b"]
        N = A.shape[1]
        h = torch.zeros(ids.shape[0], N, dtype=torch.float64)
        c = torch.zeros_like(h)
        ys = []
        for t in range(ids.shape[1]):
            if cell == "gru":
                h = spec_gru_step(h, a[:, t], A, B, b, heads)
            else:
                c, h = spec_lstm_step(c, h, a[:, t], A, B, b, S[p + "rnn_cell.C"], heads)
            ys.append(h)
        y = torch.stack(ys, 1)
        mixed = (rms(y, S[p + "gate_norm.weight"]) * torch.nn.functional.silu(g)) @ S[p + "out_proj.weight"].T
        x = x * S[p + "residual_scale"] + mixed
        xn = rms(x, S[q + "0.weight"])
        gate, up = xn @ S[q + "1.w1.weight"].T, xn @ S[q + "1.w3.weight"].T
        x = (torch.nn.functional.silu(gate) * up) @ S[q + "1.w2.weight"].T
    x = rms(x, S["final_norm.weight"])
    return x @ S.get("lm_head.weight", S["embedding.weight"]).T


@pytest.mark.parametrize("cell", CELLS)
def test_reference_lm_layout_with_residual_scale_converts_exactly(cell, tmp_path, saved):
    """Reference checkpoints have a scalar residual_scale per mixer block and MLP blocks
    without a residual: they convert to the same logits and write back bit-exactly."""
    _, folder = saved(cell)
    to_reference(str(folder), tmp_path / "ours", show_progress=False)
    state = load_file(str(tmp_path / "ours" / "lm.safetensors"))
    for k in range(2):  # the reference's shape (1,), and a bare scalar, are both read
        state[f"blocks.{2 * k}.residual_scale"] = torch.tensor([0.5 + k + 0.123]) if k else torch.tensor(0.623)
    save_file(state, str(tmp_path / "reference.safetensors"))
    untied = {**state, "lm_head.weight": torch.randn_like(state["embedding.weight"])}  # to tell them apart
    save_file(untied, str(tmp_path / "untied.safetensors"))
    ids = torch.randint(3, 300, (2, 9))
    for name, weights in (("reference", state), ("untied", untied)):
        from_reference(tmp_path / name / "hf", lm=str(tmp_path / f"{name}.safetensors"), show_progress=False)
        model = ParaRNNForCausalLM.from_pretrained(tmp_path / name / "hf").double()
        assert model.config.mixer_residual_scale and not model.config.mlp_residual
        assert model.config.tie_word_embeddings == (name == "reference")
        expected = reference_layout_lm(weights, cell, ids, model.config.num_heads)
        with torch.no_grad():
            assert rel_err(model(ids).logits, expected) < 1e-10
    to_reference(str(tmp_path / "reference" / "hf"), tmp_path / "again", show_progress=False)
    again = load_file(str(tmp_path / "again" / "lm.safetensors"))
    assert again.keys() == state.keys()
    assert all(torch.equal(again[k], state[k].reshape(again[k].shape)) for k in state)
    assert all(again[f"blocks.{2 * k}.residual_scale"].shape == (1,) for k in range(2))
    with pytest.raises(ConversionError, match="head is not tied to the embedding, while the reference's is"):
        to_reference(str(tmp_path / "untied" / "hf"), tmp_path / "no", show_progress=False)


def test_lm_keys_outside_the_layout_are_still_refused(tmp_path, saved):
    _, folder = saved("gru")
    to_reference(str(folder), tmp_path / "ours", show_progress=False)
    state = load_file(str(tmp_path / "ours" / "lm.safetensors"))
    for block in (0, 1, 2):  # blocks 0 and 2 are mixers; the MLP block 1 has no residual_scale
        state[f"blocks.{block}.residual_scale"] = torch.tensor(1.0)
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ConversionError, match=r"unknown keys \['blocks\.1\.residual_scale'\]"):
        from_reference(tmp_path / "x", lm=str(tmp_path / "odd.safetensors"), show_progress=False)


def test_an_untied_head_under_a_tied_config_is_refused(tmp_path, saved):
    """A config that omits tie_word_embeddings (default True) must not let the checkpoint's own
    lm_head overwrite the embedding."""
    _, folder = saved("gru")
    to_reference(str(folder), tmp_path / "ref", show_progress=False)
    lm = tmp_path / "ref" / "lm.safetensors"
    state = load_file(str(lm))
    save_file({**state, "lm_head.weight": torch.randn_like(state["lm_head.weight"])}, str(lm))
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    del config["tie_word_embeddings"]
    (tmp_path / "tied.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="lm_head.weight differs from embedding.weight.*tie_word_embeddings"):
        from_reference(
            tmp_path / "out", lm=str(tmp_path / "ref" / "lm.safetensors"), config=str(tmp_path / "tied.json")
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cell", CELLS)
def test_the_round_trip_through_the_reference_layout_keeps_every_setting(cell, tmp_path, saved):
    """to-reference writes a sidecar beside lm.safetensors with what the tensors do not carry
    (norm epsilon, token ids, ...); from-reference --lm reads it back: same config, same
    logits, and generation still stops at EOS."""
    model, folder = saved(
        cell, rms_norm_eps=1e-5, mixer_residual_scale=True, mlp_residual=False, newton_max_iterations=6
    )
    to_reference(str(folder), tmp_path / "ref", show_progress=False)
    assert (tmp_path / "ref" / "lm.pararnn.json").is_file()
    from_reference(tmp_path / "back", lm=str(tmp_path / "ref" / "lm.safetensors"), show_progress=False)
    back = ParaRNNForCausalLM.from_pretrained(tmp_path / "back").eval()
    for key in ("rms_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id", "newton_max_iterations"):
        assert getattr(back.config, key) == getattr(model.config, key), key
    ids = torch.randint(3, 300, (2, 9))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)
    # an EOS a few tokens in: both stop there, and pad the finished row the same way
    step = model.generate(ids[:1], max_new_tokens=3, do_sample=False)[0, -1].item()
    model.config.eos_token_id = back.config.eos_token_id = step
    model.generation_config.eos_token_id = back.generation_config.eos_token_id = step
    a = model.generate(ids, max_new_tokens=8, do_sample=False)
    b = back.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b) and (a[0, 9:] == step).any()


def test_a_sidecar_of_another_checkpoint_is_refused(tmp_path, saved):
    _, folder = saved("gru")
    to_reference(str(folder), tmp_path / "ref", show_progress=False)
    side = tmp_path / "ref" / "lm.pararnn.json"
    data = json.loads(side.read_text())
    data["config"]["hidden_size"] = 64
    side.write_text(json.dumps(data))
    with pytest.raises(ConversionError, match=r"lm.pararnn.json gives hidden_size=64 but the checkpoint's tensors"):
        from_reference(tmp_path / "out", lm=str(tmp_path / "ref" / "lm.safetensors"), show_progress=False)


def test_cells_into_a_base_keep_the_base_dtype_and_shape(tmp_path, saved):
    model, folder = saved("gru")
    index = to_reference(str(folder), tmp_path / "ref", dtype="bfloat16", show_progress=False)
    cells = [str(tmp_path / "ref" / c) for c in index["cells"]]
    from_reference(tmp_path / "out", cells=cells, base=str(folder), show_progress=False)
    out = ParaRNNForCausalLM.from_pretrained(tmp_path / "out")
    assert out.dtype == torch.float32
    base_only = {k: v for k, v in model.state_dict().items() if ".cell." not in k}
    got = out.state_dict()
    assert all(torch.equal(got[k], v) for k, v in base_only.items())  # not rounded through bf16
    assert torch.equal(got["model.layers.0.mixer.cell.A"], model.model.layers[0].mixer.cell.A.bfloat16().float())
    # a config with more layers than the base would leave the extra layers random: refused
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (tmp_path / "deeper.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="does not match the model in .*missing keys: model.layers.2"):
        from_reference(tmp_path / "deeper", cells=cells[:1] * 3, config=str(tmp_path / "deeper.json"), base=str(folder))
    assert not (tmp_path / "deeper").exists()


@pytest.mark.parametrize("cell", CELLS)
def test_to_reference_writes_what_the_reference_language_model_loads(cell, tmp_path, saved):
    """The reference's RNNLanguageModel (re-implemented with its module tree and key names in
    tests/reference_lm.py) loads lm.safetensors strictly and computes our logits."""
    from reference_lm import RNNLanguageModel

    model, folder = saved(cell)
    to_reference(str(folder), tmp_path / "ref", show_progress=False)
    cfg = model.config
    reference = RNNLanguageModel(
        cell, cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_heads, cfg.intermediate_size
    )
    reference.load_state_dict(load_file(str(tmp_path / "ref" / "lm.safetensors")), strict=True)
    ids = torch.randint(3, 300, (2, 11))
    for layer in model.model.layers:  # both run the exact loop, in fp32 (the reference's norms
        layer.mixer.cell.backend = "sequential"  # compute in fp32 whatever the model's dtype)
    with torch.no_grad():  # the same ops, some in another order: a few ulp
        assert rel_err(reference(ids), model(ids).logits) < 1e-6


def test_a_model_the_reference_layout_cannot_express_is_refused_or_written_as_cells(tmp_path, saved):
    model, folder = saved("gru", mixer_residual_scale=False, mlp_residual=True)
    with pytest.raises(ConversionError, match="standard pre-norm residual ones.*--cells-only"):
        to_reference(str(folder), tmp_path / "ref", show_progress=False)
    assert not (tmp_path / "ref").exists()
    index = to_reference(str(folder), tmp_path / "ref", cells_only=True, show_progress=False)
    assert index["lm"] is None and sorted(p.name for p in (tmp_path / "ref").iterdir()) == [
        "cells",
        "config.json",
        "index.json",
    ]
    layer = ParaGRU(32, 32, num_heads=2)  # the reference's layer: loads a cell file strictly
    layer.load_state_dict(load_file(str(tmp_path / "ref" / index["cells"][1])), strict=True)
    assert torch.equal(layer.A, model.model.layers[1].mixer.cell.A)
    with pytest.raises(SystemExit, match="^pararnn-hf convert: .*cannot be written in the reference's LM layout"):
        main(["convert", "to-reference", "--model", str(folder), "--out", str(tmp_path / "x"), "--no-progress"])


def test_from_llama_keeps_the_checkpoints_dtype_unless_told(llama_folder, tmp_path):
    llama, folder = llama_folder
    llama.to(torch.bfloat16).save_pretrained(tmp_path / "bf16-llama")
    from_llama(str(tmp_path / "bf16-llama"), tmp_path / "up", show_progress=False)
    weights = load_file(str(tmp_path / "up" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    up = ParaRNNForCausalLM.from_pretrained(tmp_path / "up")
    assert torch.equal(up.model.embed_tokens.weight, llama.model.embed_tokens.weight)  # copied, not rounded twice
    from_llama(str(tmp_path / "bf16-llama"), tmp_path / "up32", dtype="float32", show_progress=False)
    assert {t.dtype for t in load_file(str(tmp_path / "up32" / "model.safetensors")).values()} == {torch.float32}

"""Upcycling (docs/design.md#upcycling): attention init, the distillation losses against their
references, each stage on tiny random Llamas made here (GQA on and off, tied embeddings on and
off), resume within a stage, the saved folder, and the CLI's one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import rel_err, tiny_llama, tiny_tokenizer
from pararnn_hf.distill.attention_init import (
    CANDIDATE_SCALE,
    AttentionInitError,
    attention_init_,
    repeat_kv,
)
from pararnn_hf.distill.losses import alignment_loss, kd_loss, kd_loss_reference

TEXT = (
    "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, item):\n        self.items.append(item)\n"
    "import os\nimport sys\nfor i in range(10):\n    print(i)\nwhile True:\n    break\n"
)


def llama_folder(tmp_path, kv_heads=2, tied=False, name="llama"):
    folder = tmp_path / name
    tiny_llama(kv_heads, tied).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def data_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for i in range(40):
        (folder / f"f{i}.py").write_text(TEXT.replace("10", str(i)) * 3)
    return folder


def student_of(teacher, cell="gru", seed=0):
    from pararnn_hf.conversion.convert import llama_student

    return llama_student(teacher, cell, None, seed).float()


# --------------------------------------------------------------------------- stage 1


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_attention_init_maps_the_projections_and_is_deterministic(kv_heads, cell):
    teacher = tiny_llama(kv_heads)
    a, b = student_of(teacher, cell, seed=1), student_of(teacher, cell, seed=2)
    assert not torch.equal(a.model.layers[0].mixer.in_proj.weight, b.model.layers[0].mixer.in_proj.weight)
    for s in (a, b):
        attention_init_(s, teacher, max_timescale=64)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if ".mixer." in name:
            assert torch.equal(pa, pb), name  # nothing random is left in a mixer
    attn, mixer = teacher.model.layers[1].self_attn, a.model.layers[1].mixer
    D = a.config.d_inner
    v = repeat_kv(attn.v_proj.weight, 4, kv_heads, 8)
    assert torch.equal(mixer.in_proj.weight[:D], v)
    if kv_heads < 4:  # query heads 0 and 1 share kv head 0
        assert torch.equal(v[:8], v[8:16]) and torch.equal(v[:8], attn.v_proj.weight[:8])
    assert torch.equal(mixer.in_proj.weight[D:], attn.q_proj.weight)
    assert torch.equal(mixer.out_proj.weight, attn.o_proj.weight)
    w = mixer.conv.weight
    assert torch.equal(w[:, 0, -1], torch.ones(D)) and not w[:, 0, :-1].any() and not mixer.conv.bias.any()


def test_attention_init_parts_can_be_left_out_and_the_gate_can_come_from_k():
    teacher = tiny_llama(2)
    fresh = student_of(teacher, seed=3)
    s = student_of(teacher, seed=3)
    assert attention_init_(s, teacher, parts=["gate", "cell"], gate_from="k") == ["gate", "cell"]
    m, f = s.model.layers[0].mixer, fresh.model.layers[0].mixer
    D = s.config.d_inner
    assert torch.equal(m.in_proj.weight[:D], f.in_proj.weight[:D])  # value: untouched
    assert torch.equal(m.in_proj.weight[D:], repeat_kv(teacher.model.layers[0].self_attn.k_proj.weight, 4, 2, 8))
    assert torch.equal(m.out_proj.weight, f.out_proj.weight) and torch.equal(m.conv.weight, f.conv.weight)
    with pytest.raises(AttentionInitError, match="unknown init parts"):
        attention_init_(s, teacher, parts=["values"])
    with pytest.raises(AttentionInitError, match="gate_from"):
        attention_init_(s, teacher, gate_from="v")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_initial_cell_is_a_leaky_integrator_with_spread_time_constants(cell):
    """A = 0 (gates ignore the state); from zero, a constant input x gives, per channel,
    h_t = (1 - (1 - 1/tau)^t) · tanh(s·x) (GRU; the LSTM's h is o·tanh of that)."""
    teacher = tiny_llama(4)
    s = student_of(teacher, cell)
    attention_init_(s, teacher, max_timescale=64)
    layer = s.model.layers[0].mixer.cell
    x = torch.full((1, 50, layer.B.shape[0] * layer.B.shape[1]), 0.5, dtype=torch.float64)
    layer = layer.double()
    layer.backend = "sequential"  # the exact loop: the comparison is with the closed form
    with torch.no_grad():
        y = layer(x)
    if cell == "gru":
        rate = torch.sigmoid(layer.b[0])
        target = torch.tanh(torch.tensor(CANDIDATE_SCALE * 0.5, dtype=torch.float64))
        expect = (1 - (1 - rate) ** torch.arange(1, 51, dtype=torch.float64).view(-1, 1)) * target
        assert rel_err(y[0], expect) < 1e-6  # the layer works in fp32 on these inputs
    rate = torch.sigmoid(layer.b[0]) if cell == "gru" else 1 - torch.sigmoid(layer.b[0])
    tau = 1 / rate
    assert tau.min().item() == pytest.approx(2.0) and tau.max().item() == pytest.approx(64.0)
    assert bool((y[0, 1:].abs() >= y[0, :-1].abs() - 1e-12).all())  # integrates, monotonically


def test_attention_init_refuses_a_width_it_cannot_map():
    from transformers import LlamaConfig, LlamaForCausalLM

    teacher = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            head_dim=16,
            intermediate_size=48,
        )
    )
    s = student_of(teacher)
    with pytest.raises(AttentionInitError, match=r"4 heads x 16 = 64 wide.*cell 32"):
        attention_init_(s, teacher)
    attention_init_(s, teacher, parts=["conv", "cell"])  # what does not need the width still maps


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("chunk", [1, 5, 1024])
@pytest.mark.parametrize("temperature,ce_weight", [(1.0, 0.0), (2.0, 0.5)])
def test_chunked_kd_loss_and_its_gradient_equal_the_reference(chunk, temperature, ce_weight):
    """fp32 logits computed chunk by chunk vs float64 whole logits: within 1e-5 relative."""
    g = torch.Generator().manual_seed(0)
    B, T, d, V = 2, 7, 6, 11
    hidden = torch.randn(B, T, d, generator=g, requires_grad=True)
    head = torch.randn(V, d, generator=g, requires_grad=True)
    t_hidden, t_head = torch.randn(B, T, d, generator=g), torch.randn(V, d, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = -100  # padding / document starts
    loss = kd_loss(
        hidden, head, lambda rows: t_hidden.reshape(-1, d)[rows] @ t_head.t(), labels, temperature, ce_weight, chunk
    )
    loss.backward()
    h64, w64 = hidden.detach().double().requires_grad_(), head.detach().double().requires_grad_()
    ref = kd_loss_reference(h64 @ w64.t(), (t_hidden @ t_head.t()).double(), labels, temperature, ce_weight)
    ref.backward()
    assert abs(loss.item() - ref.item()) / abs(ref.item()) < 1e-5
    assert rel_err(hidden.grad.double(), h64.grad) < 1e-5 and rel_err(head.grad.double(), w64.grad) < 1e-5


def test_kd_loss_is_zero_for_the_teacher_itself_and_alignment_is_relative():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(1, 5, 4, generator=g), torch.randn(9, 4, generator=g)
    labels = torch.randint(0, 9, (1, 5), generator=g)
    assert kd_loss(h, w, lambda rows: h.reshape(-1, 4)[rows] @ w.t(), labels).item() == pytest.approx(0, abs=1e-6)
    t = torch.randn(2, 3, 4, generator=g)
    assert alignment_loss(torch.zeros_like(t), t).item() == pytest.approx(1.0)
    assert alignment_loss(1000 * t, 1000 * t * 1.1).item() == pytest.approx(alignment_loss(t, 1.1 * t).item())
    mask = torch.tensor([[True, False, True], [True, True, True]])
    t2 = t.clone()
    t2[0, 1] = 1e6  # a padded position cannot matter
    assert alignment_loss(t, t2, mask).item() == 0.0


# --------------------------------------------------------------------------- the command


def upcycle(tmp_path, teacher, out, *extra, align=2048, kd=2048):
    from pararnn_hf.cli import main

    return main(
        [
            "upcycle",
            "--teacher",
            str(teacher),
            "--data",
            str(data_folder(tmp_path)),
            "--seq_len",
            "32",
            "--align-tokens",
            str(align),
            "--kd_tokens",
            str(kd),
            "--per_device_train_batch_size",
            "4",
            "--learning_rate",
            "3e-3",
            "--logging_steps",
            "1",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--output_dir",
            str(out),
            *extra,
        ]
    )


def stage_losses(out):
    state = json.loads((out / "trainer_state.json").read_text()) if (out / "trainer_state.json").exists() else None
    return state


@pytest.mark.parametrize("kv_heads,tied,cell", [(4, False, "gru"), (2, True, "gru"), (2, False, "lstm")])
def test_upcycle_runs_both_stages_with_falling_losses_and_saves_a_loadable_folder(tmp_path, kv_heads, tied, cell):
    from transformers import AutoModelForCausalLM

    from pararnn_hf.distill import UpcycleTrainer

    logs = []
    original = UpcycleTrainer.log

    def record(self, entry, *a, **k):
        original(self, entry, *a, **k)
        logs.append(dict(entry))

    UpcycleTrainer.log = record
    try:
        teacher = llama_folder(tmp_path, kv_heads, tied)
        out = tmp_path / "student"
        assert upcycle(tmp_path, teacher, out, "--cell", cell, align=8 * 128, kd=8 * 128) == 0
    finally:
        UpcycleTrainer.log = original
    align = [e["align_loss"] for e in logs if "align_loss" in e]
    kd = [e["kd_loss"] for e in logs if "kd_loss" in e]
    assert len(align) == 8 and len(kd) == 8
    assert all(torch.isfinite(torch.tensor(align + kd)))
    assert sum(align[-3:]) < sum(align[:3]) and sum(kd[-3:]) < sum(kd[:3])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "ParaRNNForCausalLM" and model.config.cell == cell
    assert model.config.tie_word_embeddings == tied
    ids = torch.tensor([[1, 5, 6, 7]])
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape == (1, 8)
    card = (out / "README.md").read_text()
    assert f"Upcycled from {teacher}" in card and "1,024 tokens" in card
    summary = json.loads((out / "upcycle_summary.json").read_text())
    assert summary["align_steps"] == 8 and summary["kd_steps"] == 8
    assert (out / "tokenizer.json").is_file()


def test_upcycle_resumes_inside_the_stage_it_stopped_in(tmp_path):
    """Checkpoints every 3 steps of 4 align + 4 kd steps; resuming from checkpoint-3 runs step
    4 as alignment and steps 5-8 as distillation, and ends where the first run ended."""
    from pararnn_hf.distill import UpcycleTrainer

    teacher = llama_folder(tmp_path)
    out = tmp_path / "student"
    flags = ("--save_strategy", "steps", "--save_steps", "3", "--seed", "1")
    assert upcycle(tmp_path, teacher, out, *flags, align=4 * 128, kd=4 * 128) == 0
    first = json.loads((out / "upcycle_summary.json").read_text())
    assert (out / "checkpoint-3").is_dir()
    stages = []
    original = UpcycleTrainer.compute_loss

    def spy(self, model, inputs, *a, **k):
        if model.training:
            stages.append((self.state.global_step, self.stage()))
        return original(self, model, inputs, *a, **k)

    UpcycleTrainer.compute_loss = spy
    try:
        assert upcycle(tmp_path, teacher, out, *flags, "--resume_from_checkpoint", str(out / "checkpoint-3"),
                       "--overwrite", align=4 * 128, kd=4 * 128) == 0  # fmt: skip
    finally:
        UpcycleTrainer.compute_loss = original
    assert stages == [(3, "align"), (4, "kd"), (5, "kd"), (6, "kd"), (7, "kd")]
    again = json.loads((out / "upcycle_summary.json").read_text())
    assert again["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-4)


def test_upcycle_mixers_only_and_lora_give_ordinary_folders(tmp_path):
    from pararnn_hf import ParaRNNForCausalLM
    from pararnn_hf.conversion.convert import llama_student

    teacher = llama_folder(tmp_path)
    base = llama_student(tiny_llama(), "gru", None, 0)
    for mode in ("mixers", "lora"):
        out = tmp_path / mode
        assert upcycle(tmp_path, teacher, out, "--train_params", mode, align=128 * (mode == "lora"), kd=4 * 128) == 0
        assert not (out / "adapter_config.json").exists()
        model = ParaRNNForCausalLM.from_pretrained(out)
        mlp, ref = model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
        assert torch.equal(mlp, ref) == (mode == "mixers")  # LoRA's merged update moves the MLP
        assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)


def test_upcycle_cli_errors_are_one_line(tmp_path, capsys):
    from helpers import tiny_config
    from pararnn_hf import ParaRNNForCausalLM
    from pararnn_hf.cli import main

    def error(*argv):
        with pytest.raises(SystemExit) as info:
            main(["upcycle", *argv, "--output_dir", str(tmp_path / "o")])
        text = str(info.value.code)
        assert text.startswith("pararnn-hf upcycle: ") and "\n" not in text, text
        return text

    assert "no config.json" in error("--teacher", str(tmp_path / "missing"))
    assert "no such file" in error("--gguf", str(tmp_path / "missing.gguf"))
    assert "one of --teacher DIR or --gguf FILE" in error()
    rnn = tmp_path / "rnn"
    ParaRNNForCausalLM(tiny_config()).save_pretrained(rnn)
    assert "'pararnn' model" in error("--teacher", str(rnn))
    big = llama_folder(tmp_path, name="big_vocab")
    tiny_tokenizer(400).save_pretrained(big)  # more tokens than the model's 300 embeddings
    assert "vocabularies do not match" in error("--teacher", str(big), "--data", str(data_folder(tmp_path)))
    teacher = llama_folder(tmp_path)
    assert "--init_parts: unknown" in error("--teacher", str(teacher), "--init_parts", "value,keys")
    assert "--max_steps" in error("--teacher", str(teacher), "--max_steps", "5")
    assert "--kd_temperature" in error("--teacher", str(teacher), "--kd-temperature", "0")
    assert "nothing to train" in error("--teacher", str(teacher), "--align_tokens", "0", "--kd_tokens", "0")


def test_the_upcycling_protocol_runs_records_and_skips_what_it_recorded(tmp_path):
    """benchmarks/bench_upcycle.py at toy sizes: the teacher, every arm once, one record per
    run; started again it trains nothing and the records stay as they were."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_upcycle.py"
    out = tmp_path / "u"

    def run(*argv):
        done = subprocess.run([sys.executable, str(script), *argv, "--smoke", "--out", str(out)],
                              capture_output=True, text=True, timeout=600, cwd=script.parent)  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    run("run")
    records = sorted((out / "runs").glob("*.json"))
    assert len(records) == 9 and (out / "teacher.json").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in records}
    assert "training" not in run("run")
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == stamps
    table = run("report")
    assert "| gru | D |" in table and "| lstm | A |" in table and "D - A =" in table
    # a run killed midway (after its checkpoint at step 2 of 3) resumes there: it trains the one
    # step left, not all three again, and ends where the uninterrupted run ended
    import shutil

    lost = out / "runs" / "gru_D_seed0.json"
    before = json.loads(lost.read_text())
    lost.unlink()
    shutil.rmtree(out / "scratch" / "gru_D_seed0" / "checkpoint-3")
    log = run("run")
    after = json.loads(lost.read_text())
    assert after["resumed_from"].endswith("checkpoint-2") and "gru_D_seed0: resuming" in log
    assert sum(line.startswith("{'loss'") for line in log.splitlines()) == 1  # step 3's log alone
    assert after["train_loss"] == before["train_loss"]
    assert after["eval_32"] == pytest.approx(before["eval_32"], rel=1e-6)  # resume restores RNG and data order
    assert after["data_seed"] == before["data_seed"] == 0


def write_gguf(path, llama, tokenizer):
    """``llama`` and ``tokenizer`` as llama.cpp's converter writes them: metadata, a GPT-2 style
    BPE vocabulary, and q/k rows permuted into its rotary layout."""
    import gguf
    import numpy as np

    cfg = llama.config
    heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]) if getattr(cfg, "rope_parameters", None)
                         else float(cfg.rope_theta))  # fmt: skip
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv_: kv_[1])
    specials = {t["id"] for t in spec["added_tokens"]}
    tokens = [t for t, _ in vocab] + [f"<unused{i}>" for i in range(cfg.vocab_size - len(vocab))]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    merges = spec["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)

    def permute(t, n):
        rows = t.shape[0]
        return t.reshape(n, 2, rows // n // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    sd = {k: v.detach().float().numpy() for k, v in llama.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names = {
            "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
        }  # fmt: skip
        for g, h in names.items():
            w.add_tensor(f"blk.{i}.{g}.weight", np.ascontiguousarray(sd[p + h + ".weight"]))
        w.add_tensor(f"blk.{i}.attn_q.weight", np.ascontiguousarray(permute(sd[p + "self_attn.q_proj.weight"], heads)))
        w.add_tensor(f"blk.{i}.attn_k.weight", np.ascontiguousarray(permute(sd[p + "self_attn.k_proj.weight"], kv)))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_upcycle_from_a_gguf_file(tmp_path):
    """A tiny Llama written as GGUF reads back (through transformers) with the same logits, and
    upcycles from the file alone."""
    pytest.importorskip("gguf")  # the [gguf] extra; CI's dev install has it
    from transformers import AutoModelForCausalLM

    from pararnn_hf.distill.run import UpcycleArguments, load_teacher

    llama, tokenizer = tiny_llama(2), tiny_tokenizer()
    path = tmp_path / "gguf" / "tiny-llama-f32.gguf"
    path.parent.mkdir()
    write_gguf(path, llama, tokenizer)
    model, tok, source = load_teacher(UpcycleArguments(gguf=str(path)))
    ids = torch.tensor([tokenizer("def add(a, b):\n    return a + b").input_ids])
    assert tok("def add(a, b):").input_ids == tokenizer("def add(a, b):").input_ids
    with torch.no_grad():
        assert rel_err(model(ids).logits, llama(ids).logits) < 1e-5
    out = tmp_path / "student"
    from pararnn_hf.cli import main

    argv = ["upcycle", "--gguf", str(path), "--data", str(data_folder(tmp_path)), "--seq_len", "32",
            "--align_tokens", "256", "--kd_tokens", "256", "--per_device_train_batch_size", "4",
            "--save_strategy", "no", "--report_to", "none", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 2 and f"Upcycled from {path}" in (out / "README.md").read_text()


def test_gguf_without_the_package_is_one_line(tmp_path, monkeypatch):
    from pararnn_hf import extras
    from pararnn_hf.cli import main

    real = extras._importable
    monkeypatch.setattr(extras, "_importable", lambda m: m != "gguf" and real(m))
    import pararnn_hf.distill.run as run

    monkeypatch.setattr(run, "_importable", extras._importable)
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(SystemExit) as info:
        main(["upcycle", "--gguf", str(tmp_path / "x.gguf"), "--output_dir", str(tmp_path / "o")])
    assert "pip install gguf" in str(info.value.code) and "\n" not in str(info.value.code)


@pytest.mark.once  # end to end: CI runs it on one transformers release
def test_two_process_gloo_upcycle_matches_one_process(tmp_path):
    """DDP over 2 CPU processes with 2 sequences each = 1 process with 4, through both stages
    (alignment leaves every non-mixer parameter without a gradient: DDP is told so)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    teacher, data = llama_folder(tmp_path), data_folder(tmp_path)
    common = ["upcycle", "--teacher", str(teacher), "--data", str(data), "--seq_len", "32",
              "--align_tokens", str(2 * 128), "--kd_tokens", str(2 * 128), "--logging_steps", "1",
              "--learning_rate", "3e-3", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
              "--seed", "0", "--dataloader_num_workers", "0", "--save_strategy", "no"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "pararnn_hf.cli", *common, "--per_device_train_batch_size", "4",
                    "--output_dir", str(single)], check=True, env=env, capture_output=True, timeout=600)  # fmt: skip
    config = Path(__file__).resolve().parents[1] / "configs" / "accelerate_ddp_cpu.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
         "29519", "-m", "pararnn_hf.cli", *common, "--per_device_train_batch_size", "2", "--ddp_backend", "gloo",
         "--output_dir", str(ddp)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("saved to") == 1

    def losses(folder):  # Trainer's "loss": the mean over the processes
        return [e["loss"] for e in json.loads((folder / "log_history.json").read_text()) if "loss" in e]

    one, two = losses(single), losses(ddp)
    assert len(one) == len(two) == 4 and all(math.isfinite(v) for v in two)
    # not equal to the last digit: the alignment loss is a ratio of sums over the batch, and
    # each process takes its own half's ratio (DDP averages the gradients of the two)
    assert torch.allclose(torch.tensor(two), torch.tensor(one), rtol=0.15), (one, two)


@pytest.mark.parametrize("chunk", [2, 1024])
def test_top_k_kd_loss_and_its_gradient_equal_the_reference(chunk):
    from pararnn_hf.distill.losses import top_k_logits

    g = torch.Generator().manual_seed(2)
    B, T, d, V, k = 2, 5, 6, 13, 4
    hidden = torch.randn(B, T, d, generator=g, requires_grad=True)
    head = torch.randn(V, d, generator=g, requires_grad=True)
    t_logits = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    values, index = top_k_logits(t_logits.reshape(-1, V), k)
    loss = kd_loss(hidden, head, lambda rows: (values[rows], index[rows]), labels, 1.5, 0.3, chunk)
    loss.backward()
    h64, w64 = hidden.detach().double().requires_grad_(), head.detach().double().requires_grad_()
    ref = kd_loss_reference(h64 @ w64.t(), t_logits.double(), labels, 1.5, 0.3, top_k=k)
    ref.backward()
    assert abs(loss.item() - ref.item()) / abs(ref.item()) < 1e-5
    assert rel_err(hidden.grad.double(), h64.grad) < 1e-5 and rel_err(head.grad.double(), w64.grad) < 1e-5


def test_a_second_run_reads_the_teacher_cache_and_distils_the_same(tmp_path, monkeypatch):
    from pararnn_hf.distill.teacher import Teacher

    teacher = llama_folder(tmp_path)
    cache = tmp_path / "cache"
    calls = []
    real = Teacher.final_hidden

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(Teacher, "final_hidden", counting)
    flags = ("--kd_top_k", "8", "--teacher_cache", str(cache), "--seed", "3")
    assert upcycle(tmp_path, teacher, tmp_path / "one", *flags, align=0, kd=4 * 128) == 0
    first_calls = len(calls)
    # 4 steps x 4 windows; this corpus repeats itself, and equal windows share an entry
    assert first_calls == 4 and 8 <= len(list(cache.glob("*/*.safetensors"))) <= 16
    assert upcycle(tmp_path, teacher, tmp_path / "two", *flags, align=0, kd=4 * 128) == 0
    assert len(calls) == first_calls  # every window came from the cache
    one = json.loads((tmp_path / "one" / "upcycle_summary.json").read_text())
    two = json.loads((tmp_path / "two" / "upcycle_summary.json").read_text())
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6)
    with pytest.raises(SystemExit, match="caches"):
        upcycle(tmp_path, teacher, tmp_path / "three", "--kd_top_k", "4", "--teacher_cache", str(cache), kd=128)
    with pytest.raises(SystemExit, match="--kd_top_k K"):
        upcycle(tmp_path, teacher, tmp_path / "four", "--teacher_cache", str(cache), kd=128)

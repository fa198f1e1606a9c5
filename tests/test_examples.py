"""The scripts in examples/ run as a user would run them (a shell, a saved tiny model, a few
steps) and do what their docstrings say."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(cmd, tmp_path, **kw):
    # the venv's console scripts (pararnn-hf, lm_eval) first on PATH, as an activated venv has them
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PATH=path, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, **kw)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_finetune_lora_on_own_text_files(model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = tmp_path / "my_texts"
    data.mkdir()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for p in sorted(p for p in stdlib.glob("*.py") if 2_000 < p.stat().st_size < 6_000)[:12]:
        shutil.copy(p, data / p.name)
    out = tmp_path / "lora-out"
    args = ["--model", str(model_dir), "--data", str(data), "--output_dir", str(out)]
    args += ["--max_steps", "4", "--seq_len", "32", "--batch_size", "2", "--learning_rate", "1e-2"]
    stdout = run([sys.executable, str(EXAMPLES / "finetune_lora.py"), *args], tmp_path)
    assert "held-out loss" in stdout and f"adapter saved to {out}" in stdout
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"in_proj", "out_proj"}
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    x = torch.randint(3, 300, (1, 20))
    with torch.no_grad():
        before = base(x).logits.clone()
        tuned = PeftModel.from_pretrained(base, out)
        after = tuned(x).logits
        merged = tuned.merge_and_unload()(x).logits
    assert not torch.allclose(before, after)  # the adapter learned something
    assert torch.allclose(merged, after, atol=1e-5)


def test_pipeline_batch_generation_equals_one_prompt_at_a_time(model_dir, tmp_path):
    prompts = ["def add(a, b):", "import os", "class Stack:\n    def push(self, item):"]
    common = [sys.executable, str(EXAMPLES / "pipeline_generate.py"), "--model", str(model_dir)]
    common += ["--max_new_tokens", "8", "--device", "cpu", "--prompts", *prompts]
    batched = run([*common, "--batch_size", "3"], tmp_path)
    single = run([*common, "--batch_size", "1"], tmp_path)
    assert batched == single
    assert batched.count("--- ") == 3 and all(repr(p) in batched for p in prompts)


@pytest.mark.once  # end to end: CI runs it on one transformers release
def test_evaluate_with_stock_lm_eval_gives_our_scores(model_dir, tmp_path):
    from pararnn_hf.eval import run_eval

    flags = ["--limit", "8", "--batch_size", "4", "--device", "cpu"]
    run(["bash", str(EXAMPLES / "evaluate_with_lm_eval.sh"), str(model_dir), str(tmp_path / "stock"), *flags], tmp_path)
    files = [Path(d, f) for d, _, fs in os.walk(tmp_path / "stock") for f in fs if f.endswith(".json")]
    stock = json.loads(files[0].read_text())["results"]
    ours = run_eval(str(model_dir), ["pararnn_stdlib_nextline", "pararnn_stdlib_ppl"], batch_size=4, limit=8)["results"]
    assert stock["pararnn_stdlib_nextline"]["acc,none"] == pytest.approx(ours["pararnn_stdlib_nextline"]["acc,none"])
    ppl = next(k for k in ours["pararnn_stdlib_ppl"] if k.startswith("word_perplexity"))
    assert stock["pararnn_stdlib_ppl"][ppl] == pytest.approx(ours["pararnn_stdlib_ppl"][ppl], rel=1e-6)

"""Run in a virtualenv with only the core install (`pip install -e . torch==...`): the model
loads, runs and generates; training and evaluation say which extra they need."""

import importlib.util
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM

import pararnn_hf
from pararnn_hf import ParaRNNConfig, ParaRNNForCausalLM

for module in ("accelerate", "lm_eval", "datasets", "matplotlib", "evaluate"):
    assert importlib.util.find_spec(module) is None, f"{module} is installed: this is not a core-only venv"

config = ParaRNNConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=2, cell="lstm")
torch.manual_seed(0)
model = ParaRNNForCausalLM(config).eval()
ids = torch.randint(0, 64, (2, 9))
with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)
    for remote in (False, True):
        loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()
        with torch.no_grad():
            assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6), remote
        out = loaded.generate(ids[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 13), out.shape
    commands = (
        (["train", "--output_dir", f"{folder}/x"], "train"),
        (["eval", "--model", folder, "--tasks", "x"], "eval"),
    )
    for argv, extra in commands:
        run = subprocess.run([sys.executable, "-m", "pararnn_hf.cli", *argv], capture_output=True, text=True)
        assert run.returncode != 0 and f"needs the optional dependencies [{extra}]" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr, run.stderr
print(f"core-only install OK: pararnn_hf {pararnn_hf.__version__}, torch {torch.__version__}")

"""Saved folders load with trust_remote_code=True where pararnn_hf cannot be imported (the
bundled pure-PyTorch layers), and use the installed package when it can."""

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import tiny_model
from pararnn_hf.modeling.bundle import BUNDLED_MODULES, PACKAGE_ROOT

BLOCK_IMPORT = """
import builtins
_real_import = builtins.__import__
def _blocked(name, *args, **kwargs):
    if name == "pararnn_hf" or name.startswith("pararnn_hf."):
        raise ImportError("pararnn_hf is blocked in this process")
    return _real_import(name, *args, **kwargs)
builtins.__import__ = _blocked
"""

LOAD_AND_RUN = """
import json, sys, torch
from transformers import AutoModelForCausalLM
folder, ids_path, out_path = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
ids = torch.load(ids_path)
with torch.no_grad():
    logits = model(ids).logits
generated = model.generate(ids[:1], max_new_tokens=6, do_sample=False)
cell = model.model.layers[0].mixer.cell
torch.save({"logits": logits, "generated": generated}, out_path)
print(json.dumps({"model": type(model).__module__, "cell": type(cell).__module__ + "." + type(cell).__name__}))
"""


def run_in_subprocess(tmp_path, folder, ids, block: bool):
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent((BLOCK_IMPORT if block else "") + LOAD_AND_RUN))
    torch.save(ids, tmp_path / "ids.pt")
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return info, torch.load(tmp_path / "out.pt")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_remote_code_without_the_package(cell, tmp_path):
    model = tiny_model(cell)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    ids = torch.randint(3, 300, (2, 10))
    info, out = run_in_subprocess(tmp_path, folder, ids, block=True)
    assert info["model"].startswith("transformers_modules.")
    assert info["cell"].startswith("_pararnn_hf_bundle_") and info["cell"].endswith(f"layers.Para{cell.upper()}")
    with torch.no_grad():
        assert torch.equal(out["logits"], model(ids).logits)
    assert torch.equal(out["generated"], model.generate(ids[:1], max_new_tokens=6, do_sample=False))


def test_remote_code_with_the_package_uses_its_layers(tmp_path):
    model = tiny_model("gru")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    ids = torch.randint(3, 300, (1, 6))
    info, out = run_in_subprocess(tmp_path, folder, ids, block=False)
    assert info["model"].startswith("transformers_modules.")
    assert info["cell"] == "pararnn_hf.layers.ParaGRU"
    with torch.no_grad():
        assert torch.equal(out["logits"], model(ids).logits)


def test_bundle_embeds_the_current_sources(tmp_path):
    tiny_model("gru").save_pretrained(tmp_path)
    bundle = (tmp_path / "pararnn_core.py").read_text()
    for rel in BUNDLED_MODULES.values():
        assert repr((PACKAGE_ROOT / rel).read_text()) in bundle, rel
    # nothing outside the standard library is imported at the bundle's top level
    top_imports = [line for line in bundle.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in {"importlib", "sys"} for line in top_imports), top_imports


def test_bundle_sources_do_not_import_outside_the_bundle():
    """Bundled modules may import torch, the standard library and each other only."""
    allowed = {"torch", "math", "warnings", "types", "typing", "dataclasses", "logging", "__future__"}
    for rel in BUNDLED_MODULES.values():
        for node in ast.walk(ast.parse((PACKAGE_ROOT / rel).read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{rel} imports {name}"


def test_saved_config_lists_the_remote_classes(tmp_path):
    tiny_model("gru").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pararnn.ParaRNNConfig",
        "AutoModel": "modeling_pararnn.ParaRNNModel",
        "AutoModelForCausalLM": "modeling_pararnn.ParaRNNForCausalLM",
        "AutoModelForSequenceClassification": "modeling_pararnn.ParaRNNForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_pararnn.ParaRNNForTokenClassification",
    }
    assert config["model_type"] == "pararnn"

"""The `pararnn-hf` command line."""

import subprocess
import sys

from helpers import tiny_model, tiny_tokenizer
from pararnn_hf.cli import main


def test_info_runs():
    out = subprocess.run([sys.executable, "-m", "pararnn_hf.cli", "info"], capture_output=True, text=True, check=True)
    assert "pararnn_hf" in out.stdout and "backends      auto, torch, sequential, triton" in out.stdout


def test_generate_streams_the_greedy_continuation(tmp_path, capsys):
    model, tok = tiny_model("lstm"), tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--prompt", "import os", "--max-new-tokens", "7"]) == 0
    printed = capsys.readouterr().out
    expected = model.generate(
        **tok(["import os"], return_tensors="pt"), max_new_tokens=7, do_sample=False, pad_token_id=0
    )
    assert printed.strip() == tok.decode(expected[0], skip_special_tokens=True).strip()


def test_generate_compile_prints_the_same_greedy_text(tmp_path, capsys):
    import pytest

    model, tok = tiny_model("gru"), tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    base = ["generate", "--model", str(tmp_path), "--prompt", "import os", "--max-new-tokens", "9"]
    assert main(base) == 0
    streamed = capsys.readouterr().out
    assert main([*base, "--compile"]) == 0
    assert capsys.readouterr().out.strip() == streamed.strip()
    with pytest.raises(SystemExit, match="--compile decodes greedily"):
        main([*base, "--compile", "--do-sample"])


def test_generate_with_beams_and_sampling_options(tmp_path, capsys):
    model, tok = tiny_model("gru"), tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    base = ["generate", "--model", str(tmp_path), "--prompt", "def", "--max-new-tokens", "4"]
    assert main([*base, "--num-beams", "3"]) == 0
    assert capsys.readouterr().out.startswith("def")
    sampling = [*base, "--do-sample", "--seed", "3", "--top-k", "5"]
    assert main(sampling) == 0
    first = capsys.readouterr().out
    assert main(sampling) == 0
    assert capsys.readouterr().out == first  # the seed makes sampling repeatable


def test_generate_rejects_a_folder_without_a_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pararnn_hf.cli", "generate", "--model", str(tmp_path), "--prompt", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "is not a saved model folder (no config.json)" in proc.stderr


def test_generate_rejects_a_model_without_tokenizer(tmp_path):
    tiny_model("gru").save_pretrained(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "pararnn_hf.cli", "generate", "--model", str(tmp_path), "--prompt", "x"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "has no tokenizer files" in proc.stderr


def test_demo_flags_reach_the_demo(monkeypatch):
    seen = {}
    monkeypatch.setattr("pararnn_hf.training.demo.run_demo", lambda **kw: seen.update(kw))
    assert main(["demo", "--eval-limit", "3", "--steps", "2", "--cell", "lstm"]) == 0
    assert seen["eval_limit"] == 3 and seen["steps"] == 2 and seen["cell"] == "lstm"


def test_eval_offers_every_backend():
    from pararnn_hf import BACKENDS
    from pararnn_hf.cli import build_parser

    for backend in BACKENDS:
        args = build_parser().parse_args(["eval", "--model", "m", "--solver-backend", backend])
        assert args.solver_backend == backend

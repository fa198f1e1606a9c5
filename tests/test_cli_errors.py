"""Bad input gets one line ``pararnn-hf <cmd>: <what is wrong>`` and a non-zero exit from the
CLI, and a typed error naming the argument from the Python API; never a traceback."""

import json
import subprocess
import sys
import warnings

import pytest
import torch

from helpers import tiny_model
from pararnn_hf import ParaRNNConfig
from pararnn_hf.cli import main
from pararnn_hf.data import load_corpus


def fails(argv, cmd, match):
    with pytest.raises(SystemExit) as info:
        main(argv)
    message = str(info.value.code)
    assert message.startswith(f"pararnn-hf {cmd}: "), message
    assert "\n" not in message, message
    assert match in message, message
    return message


def test_generate_argument_errors(model_dir, tmp_path):
    fails(["generate", "--model", str(model_dir), "--prompt", "x", "--max-new-tokens", "0"], "generate", "at least 1")
    fails(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"], "generate", "no such model folder")
    fails(["generate", "--model", str(model_dir), "--prompt", ""], "generate", "the prompt is empty")
    if not torch.cuda.is_available():
        fails(["generate", "--model", str(model_dir), "--prompt", "x", "--device", "cuda"], "generate", "CUDA is not")
    fails(["generate", "--model", str(model_dir), "--prompt", "x", "--device", "gpu0"], "generate", "is not a device")


def test_generate_without_tokenizer_files_says_so(tmp_path):
    tiny_model("gru").save_pretrained(tmp_path / "bare")
    fails(["generate", "--model", str(tmp_path / "bare"), "--prompt", "x"], "generate", "has no tokenizer files")


def test_corrupt_weights(model_dir, tmp_path):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    fails(["generate", "--model", str(model_dir), "--prompt", "x"], "generate", "cannot load the model")
    fails(
        ["convert", "to-reference", "--model", str(model_dir), "--out", str(tmp_path / "r"), "--no-progress"],
        "convert",
        "cannot load the model",
    )
    fails(["eval", "--model", str(model_dir), "--limit", "1"], "eval", "cannot load the model")


def test_convert_config_files_of_the_wrong_shape(tmp_path):
    cells = tmp_path / "cell.pt"
    torch.save({"A": torch.zeros(3, 8)}, cells)
    for content, match in (([1, 2], "must hold a JSON object"), ({"hidden_size": "32"}, "hidden_size must be")):
        (tmp_path / "c.json").write_text(json.dumps(content))
        fails(
            [
                "convert",
                "from-reference",
                "--cells",
                str(cells),
                "--config",
                str(tmp_path / "c.json"),
                "--out",
                str(tmp_path / "o"),
            ],
            "convert",
            match,
        )


def test_card_with_malformed_files(model_dir, tmp_path):
    (tmp_path / "r.json").write_text('{"results": {"task": 3}}')
    fails(["card", str(model_dir), "--results", str(tmp_path / "r.json")], "card", "must be an object of metrics")
    (model_dir / "train_summary.json").write_text('{"train_loss": "low"}')
    fails(["card", str(model_dir)], "card", "train_loss must be a number")
    (model_dir / "train_summary.json").write_text("[1")
    fails(["card", str(model_dir)], "card", "is not valid JSON")
    (model_dir / "train_summary.json").unlink()
    (model_dir / "config.json").write_text('{"model_type": "pararnn", "hidden_size": -1}')
    fails(["card", str(model_dir)], "card", "not a usable ParaRNN config")


def test_train_argument_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in ("100", "-5"):
        fails(["train", "--output_dir", "run", "--validation_percent", value], "train", "--validation_percent must")
    fails(["train", "--output_dir", "run", "--model", "missing"], "train", "no saved model folder there")
    assert not (tmp_path / "run").exists()


def test_unexpected_errors_are_one_line_in_a_subprocess(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pararnn_hf.cli", "card", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"pararnn-hf card: {tmp_path} is not a saved model folder (no config.json)"
    ]


def test_api_errors_name_the_argument():
    with pytest.raises(ValueError, match="hidden_size must be a positive int, got '32'"):
        ParaRNNConfig(hidden_size="32")
    with pytest.raises(ValueError, match="init_recurrent_std must be a finite number > 0"):
        ParaRNNConfig(init_recurrent_std=float("inf"))
    model = tiny_model("gru")
    with pytest.raises(ValueError, match="the prompt is empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(ValueError, match="validation_percent must"):
        load_corpus("builtin", validation_percent=100)


def test_binary_and_non_utf8_corpus_files_are_skipped_with_a_count(tmp_path):
    (tmp_path / "good.txt").write_text("def f():\n    return 1\n" * 20)
    (tmp_path / "other.txt").write_text("x = 2\n" * 20)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 20)
    (tmp_path / "blob.py").write_bytes(b"\x00\x01\x02binary\x00" * 50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = load_corpus([str(tmp_path)], validation_percent=0)
    assert any("skipped 2 file(s) that are not UTF-8 text" in str(w.message) for w in caught)
    assert not any("\ufffd" in t or "\x00" in t for t in corpus.train + corpus.validation)


def test_eval_include_paths_are_checked(model_dir, tmp_path):
    fails(["eval", "--model", str(model_dir), "--include-path", str(tmp_path / "none")], "eval", "no such folder")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "bad.yaml").write_text("task: [unclosed\n")
    fails(["eval", "--model", str(model_dir), "--include-path", str(tmp_path / "tasks")], "eval", "not valid YAML")
    (tmp_path / "empty").mkdir()
    fails(["eval", "--model", str(model_dir), "--include-path", str(tmp_path / "empty")], "eval", "no task YAML")

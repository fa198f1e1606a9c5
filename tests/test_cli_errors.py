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
    fails(
        ["generate", "--model", str(model_dir), "--prompt", "x", "--max-new-tokens", "0"],
        "generate",
        "--max-new-tokens must be an integer >= 1, got '0'",
    )
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


def test_train_values_out_of_range_are_refused_before_any_work(tmp_path, monkeypatch):
    """Each would train nothing, drop data or fail after the run; none creates the folder."""
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--max_steps", "-1", "--num_train_epochs", "-1"], "--num_train_epochs (with --max_steps -1) must be"),
        (["--max_steps", "0"], "--max_steps must be an integer >= 1, or -1"),
        (["--max_eval_sequences", "-1"], "--max_eval_sequences must be an integer >= 1, got -1"),
        (["--max_eval_sequences", "0"], "--max_eval_sequences must be an integer >= 1, got 0"),
        (["--eval_strategy", "steps", "--eval_steps", "0"], "--eval_steps must be a finite number > 0, got 0.0"),
        (["--weight_decay", "nan"], "--weight_decay must be a finite number >= 0, got nan"),
        (["--learning_rate", "inf"], "--learning_rate must be a finite number > 0, got inf"),
        (["--seq_len", "1"], "--seq_len must be an integer >= 2, got 1"),
        (["--max_steps", "abc"], "--max_steps: invalid int value: 'abc'"),
    ]
    for extra, match in cases:
        fails(["train", "--output_dir", "run", *extra], "train", match)
    assert not (tmp_path / "run").exists()


def test_train_needs_an_output_dir_and_a_writable_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(["train"], "train", "give --output_dir DIR")
    assert not (tmp_path / "trainer_output").exists()
    fails(["train", "--output_dir", "."], "train", "is the current directory")
    (tmp_path / "a-file").write_text("x")
    fails(["train", "--output_dir", "a-file/run"], "train", "cannot write the output folder a-file/run")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    with read_only(readonly):
        fails(["train", "--output_dir", str(readonly / "run")], "train", "cannot write the output folder")


class read_only:
    """A folder nobody may write into, root included (chattr +i where the file system allows
    it, else the permission bits for a non-root user, else a refusing probe)."""

    def __init__(self, folder):
        self.folder = folder

    def __enter__(self):
        import os

        self.how = None
        if os.geteuid() != 0:
            self.folder.chmod(0o555)
            self.how = "chmod"
        elif subprocess.run(["chattr", "+i", str(self.folder)], capture_output=True).returncode == 0:
            self.how = "chattr"
        else:
            import tempfile

            self.patch = pytest.MonkeyPatch()
            real = tempfile.NamedTemporaryFile

            def refusing(*args, dir=None, **kwargs):
                if dir is not None and str(dir).startswith(str(self.folder)):
                    raise PermissionError(13, "Read-only file system")
                return real(*args, dir=dir, **kwargs)

            self.patch.setattr(tempfile, "NamedTemporaryFile", refusing)
        return self.folder

    def __exit__(self, *exc):
        if self.how == "chmod":
            self.folder.chmod(0o755)
        elif self.how == "chattr":
            subprocess.run(["chattr", "-i", str(self.folder)], check=True)
        else:
            self.patch.undo()


def test_demo_values_out_of_range_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got '0'"),
        (["--prompt", ""], "--prompt must be some text, got ''"),
        (["--eval-limit", "-1"], "--eval-limit must be an integer >= 1, got '-1'"),
        (["--steps", "0"], "--steps must be an integer >= 1, got '0'"),
        (["--steps", "-1"], "--steps must be an integer >= 1, got '-1'"),
        (["--max-eval-sequences", "0"], "--max-eval-sequences must be an integer >= 1"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number > 0, got 'nan'"),
    ]
    for extra, match in cases:
        fails(["demo", "--output", "d", *extra], "demo", match)
    from pararnn_hf.training.demo import run_demo

    with pytest.raises(ValueError, match="--eval-limit must be an integer >= 1, got 0"):
        run_demo(output="d", eval_limit=0)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "README.md").write_text("# my notes\n")
    fails(["demo", "--output", "d"], "demo", "not a card pararnn-hf wrote")  # before training, not after
    assert not (tmp_path / "d" / "config.json").exists()


def test_eval_values_out_of_range_are_refused_before_any_work(model_dir):
    argv = ["eval", "--model", str(model_dir)]
    fails([*argv, "--batch-size", "abc"], "eval", "--batch-size must be an integer >= 1, 'auto' or 'auto:N'")
    fails([*argv, "--batch-size", "0"], "eval", "--batch-size must be an integer >= 1")
    fails([*argv, "--num-fewshot", "-1"], "eval", "--num-fewshot must be an integer >= 0")
    fails([*argv, "--prefill-chunk-size", "0"], "eval", "--prefill-chunk-size must be an integer >= 1")
    fails([*argv, "--prefill-chunk-size", "-1"], "eval", "--prefill-chunk-size must be an integer >= 1")
    fails([*argv, "--limit", "0"], "eval", "--limit must be a finite number > 0")
    from pararnn_hf.eval.lm import ParaRNNLM

    with pytest.raises(ValueError, match="prefill_chunk_size must be an integer >= 1, got -1"):
        ParaRNNLM(str(model_dir), prefill_chunk_size="-1")


@pytest.mark.parametrize(
    "content,match",
    [(b"", "config.json is empty"), (b"\xff\xfe{}", "config.json is not UTF-8"), (b"[1, 2]", "got a list")],
)
def test_an_unreadable_config_json_is_named(model_dir, content, match):
    (model_dir / "config.json").write_bytes(content)
    fails(["generate", "--model", str(model_dir), "--prompt", "x"], "generate", match)
    fails(["eval", "--model", str(model_dir)], "eval", match)
    fails(["train", "--model", str(model_dir), "--output_dir", str(model_dir.parent / "t")], "train", match)


def test_a_parameter_that_training_drives_to_nan_is_named_with_its_step(tmp_path):
    """Not the first layer's "input x": the parameter that turned NaN, and the update that did it."""
    from transformers import TrainerCallback, TrainingArguments

    from pararnn_hf.training.trainer import ParaRNNTrainer

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")

    ids = torch.randint(3, 300, (8, 12))
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=2, report_to="none",
        use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = ParaRNNTrainer(model=tiny_model("gru").train(), args=args, train_dataset=data, callbacks=[Poison()])
    with pytest.raises(
        FloatingPointError,
        match=r"training step 3: parameter model.layers.0.mlp.up_proj.weight turned NaN/Inf in the update of step 2",
    ):
        trainer.train()


def test_generate_and_convert_values_out_of_range_are_refused_before_any_work(model_dir, tmp_path):
    argv = ["generate", "--model", str(model_dir), "--prompt", "x"]
    fails([*argv, "--temperature", "inf"], "generate", "--temperature must be a finite number > 0, got 'inf'")
    fails([*argv, "--top-p", "2"], "generate", "--top-p must be a finite number in (0, 1], got '2'")
    fails([*argv, "--top-p", "nan"], "generate", "--top-p must be a finite number in (0, 1], got 'nan'")
    fails([*argv, "--num-beams", "0"], "generate", "--num-beams must be an integer >= 1")
    (model_dir / "generation_config.json").write_text(json.dumps({"max_length": -5}))
    fails(argv, "generate", "generation_config.json: max_length must be an integer >= 1, got -5")
    (model_dir / "generation_config.json").write_text("[]")
    fails(argv, "generate", "generation_config.json must hold a JSON object")
    out = str(tmp_path / "o")
    fails(
        ["convert", "from-llama", "--model", str(model_dir), "--num-heads", "0", "--out", out],
        "convert from-llama",
        "--num-heads must be an integer >= 1",
    )
    cells = tmp_path / "cell.pt"
    torch.save({"A": torch.zeros(3, 8)}, cells)
    for tokenizer, match in ((tmp_path / "none", "no such folder"), (tmp_path, "holds no tokenizer files")):
        fails(
            [
                "convert",
                "from-reference",
                "--cells",
                str(cells),
                "--base",
                str(model_dir),
                "--tokenizer",
                str(tokenizer),
                "--out",
                out,
            ],
            "convert",
            f"--tokenizer {tokenizer}: {match}",
        )
    assert not (tmp_path / "o").exists()

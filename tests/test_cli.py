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
    with pytest.raises(SystemExit, match="--compile captures the fast path's step"):
        main([*base, "--compile", "--num-beams", "2"])


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


HELP_COMMANDS = [
    ["info"],
    ["demo"],
    ["train"],
    ["convert", "from-reference"],
    ["convert", "to-reference"],
    ["convert", "from-llama"],
    ["eval"],
    ["card"],
    ["generate"],
]


def _help(argv, capsys) -> str:
    import pytest

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_every_long_option_answers_to_both_spellings(capsys):
    """transformers users type --max-new-tokens, lm_eval and TrainingArguments users
    --max_new_tokens: every subcommand's --help lists both for each long option."""
    import re

    for argv in HELP_COMMANDS:
        text = _help(argv, capsys)
        options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", text))
        assert options, argv
        for option in options:
            body = option[2:]
            if "-" in body or "_" in body:
                other = "--" + (body.replace("-", "_") if "-" in body else body.replace("_", "-"))
                assert other in options, f"{' '.join(argv)}: {option} without {other}"


def test_underscore_spellings_parse_to_the_same_arguments():
    from pararnn_hf.cli import build_parser

    dashed = build_parser().parse_args(["generate", "--model", "m", "--prompt", "p", "--max-new-tokens", "5"])
    under = build_parser().parse_args(["generate", "--model", "m", "--prompt", "p", "--max_new_tokens", "5"])
    assert vars(dashed) == vars(under) and under.max_new_tokens == 5


def test_version_flag(capsys):
    import pytest

    from pararnn_hf import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"pararnn-hf {__version__}"


def test_lm_eval_output_path_meaning(tmp_path):
    from pararnn_hf.cli import lm_eval_output_file

    assert lm_eval_output_file(str(tmp_path / "r.json"), "/models/m") == str(tmp_path / "r.json")
    folder_form = lm_eval_output_file(str(tmp_path / "out"), "/models/m")
    assert folder_form.startswith(str(tmp_path / "out" / "__models__m" / "results_")) and folder_form.endswith(".json")
    assert lm_eval_output_file(None, "m") is None


def test_card_names_the_model_once(model_dir):
    import pytest

    assert main(["card", "--model", str(model_dir)]) == 0
    assert main(["card", str(model_dir)]) == 0  # the positional form still works
    with pytest.raises(SystemExit, match="give the model folder once"):
        main(["card", str(model_dir), "--model", str(model_dir / "x")])
    with pytest.raises(SystemExit, match="which model folder"):
        main(["card"])


def test_version_help_and_argument_errors_load_neither_torch_nor_transformers():
    """They answer before anything heavy is imported (the package's names load lazily and it
    registers with transformers only once transformers is imported)."""
    code = (
        "import sys\n"
        "from pararnn_hf.cli import main\n"
        "for argv in (['--version'], ['--help'], ['generate', '--help'], ['eval', '--batch-size', 'abc']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exit:\n"
        "        print(exit, file=sys.stderr)\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "False False"
    assert "pararnn-hf eval: --batch-size must be an integer >= 1, 'auto' or 'auto:N'" in run.stderr


def test_importing_the_package_registers_the_auto_classes_in_either_order():
    for first, second in (("pararnn_hf", "transformers"), ("transformers", "pararnn_hf")):
        code = (
            f"import {first}\nimport {second}\n"
            "from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification\n"
            "c = AutoConfig.for_model('pararnn', vocab_size=50, hidden_size=16, num_hidden_layers=1, num_heads=2)\n"
            "print(type(AutoModelForSequenceClassification.from_config(c)).__name__,"
            " type(AutoModelForTokenClassification.from_config(c)).__name__)\n"
        )
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.split() == ["ParaRNNForSequenceClassification", "ParaRNNForTokenClassification"]

"""lm-eval offline on the bundled tasks (registered `pararnn` model and the stock `hf` route),
batch-size invariance, model cards and their metadata, presets' parameter counts."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import tiny_model, tiny_tokenizer
from pararnn_hf import ParaRNNConfig, ParaRNNForCausalLM
from pararnn_hf.cli import main
from pararnn_hf.eval import LOCAL_TASKS, run_eval, tasks_path, write_local_tasks
from pararnn_hf.model_cards import CardError, preset_files, render_card, validate_card_text, write_card
from pararnn_hf.model_cards.stamp import is_unedited
from pararnn_hf.presets import count_parameters, preset_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evalmodel") / "tiny-gru"
    tiny_model("gru").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def results(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalresults") / "results.json"
    return run_eval(str(model_dir), ["pararnn_stdlib"], output=str(out), batch_size=4, limit=6), out


@pytest.fixture(scope="module")
def full_results(results, tmp_path_factory):
    """The same numbers recorded as a run on whole tasks (no --limit): what a card may publish
    as metadata. (Evaluating the bundled tasks in full would take minutes on the CPU.)"""
    data = json.loads(results[1].read_text())
    data["config"]["limit"] = None
    data["n-samples"] = {t: {"original": 10, "effective": 10} for t in data["results"]}
    out = tmp_path_factory.mktemp("evalresults") / "full.json"
    out.write_text(json.dumps(data))
    return out


def test_bundled_tasks_run_offline(results):
    summary, path = results
    res = summary["results"]
    assert set(LOCAL_TASKS) <= set(res)
    assert 0.0 <= res["pararnn_stdlib_nextline"]["acc,none"] <= 1.0
    assert res["pararnn_stdlib_ppl"]["byte_perplexity,none"] > 1.0
    assert 0.0 <= res["pararnn_stdlib_complete"]["char_similarity,none"] <= 1.0
    assert json.loads(path.read_text())["results"] == json.loads(json.dumps(res, default=str))


def test_batch_size_does_not_change_scores(model_dir):
    tasks = ["pararnn_stdlib_nextline", "pararnn_stdlib_complete"]
    one = run_eval(str(model_dir), tasks, batch_size=1, limit=8)["results"]
    four = run_eval(str(model_dir), tasks, batch_size=4, limit=8)["results"]
    for task, key in [
        ("pararnn_stdlib_nextline", "acc,none"),
        ("pararnn_stdlib_nextline", "acc_norm,none"),
        ("pararnn_stdlib_complete", "exact_match,none"),
        ("pararnn_stdlib_complete", "char_similarity,none"),
    ]:
        assert one[task][key] == pytest.approx(four[task][key], abs=1e-9), (task, key)


def test_print_tasks_path_names_the_installed_task_folder(tmp_path):
    """Scripts pass this folder to stock lm_eval --include_path (examples/evaluate_with_lm_eval.sh,
    tested in test_examples.py, does)."""
    printed = subprocess.run(
        [sys.executable, "-m", "pararnn_hf.cli", "eval", "--print-tasks-path"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert printed.returncode == 0 and printed.stdout.strip() == str(tasks_path())
    assert {p.name for p in tasks_path().glob("*.yaml")} >= {f"{t}.yaml" for t in LOCAL_TASKS}


def test_unknown_task_and_missing_model(model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"unknown lm-eval tasks \['no_such_task'\]"):
        run_eval(str(model_dir), ["no_such_task"])
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        run_eval(str(tmp_path), ["pararnn_stdlib_ppl"])


def test_results_reach_a_valid_card(model_dir, full_results, tmp_path):
    path = full_results
    text = render_card(model_dir, path, repo_id="someone/tiny-gru")
    validate_card_text(text)
    from huggingface_hub import ModelCard

    card = ModelCard(text)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    by_task = {(r.dataset_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    expected = json.loads(path.read_text())["results"]["pararnn_stdlib_nextline"]["acc,none"]
    assert by_task[("pararnn_stdlib_nextline", "accuracy")] == pytest.approx(expected)
    assert "someone/tiny-gru" in text and "ParaGRU" in text


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda t: t.replace("license: apache-2.0\n", ""), "license is missing"),
        (lambda t: t.replace("pipeline_tag: text-generation", "pipeline_tag: fill-mask"), "pipeline_tag must be"),
        (lambda t: t.replace("library_name: transformers", "library_name: keras"), "library_name must be"),
        (lambda t: t.replace("---\n", "", 1), "does not start with a YAML"),
        (lambda t: t.replace("      value: ", "      valu: ", 1), "model-index does not parse"),
    ],
)
def test_bad_card_metadata_is_rejected(model_dir, full_results, edit, match):
    text = render_card(model_dir, full_results)
    with pytest.raises(CardError, match=match):
        validate_card_text(edit(text))


def test_limited_results_are_labelled_and_kept_out_of_the_metadata(model_dir, results):
    """Numbers from --limit runs are estimates: the card says on how much, and model-index
    (what the Hub shows as the model's scores) holds only results on whole tasks."""
    summary, path = results
    text = render_card(model_dir, path)
    validate_card_text(text)
    assert "model-index" not in text.split("---\n", 2)[1]  # the YAML metadata
    counts = summary["n-samples"]["pararnn_stdlib_nextline"]
    assert counts["effective"] == 6 < counts["original"]
    assert f"| pararnn_stdlib_nextline (on 6 of {counts['original']} examples) | accuracy |" in text
    assert "evaluated with `--limit`" in text


def test_card_takes_the_training_context_from_the_run(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    assert "| training context | not recorded (the config's max_position_embeddings hint is" in render_card(folder)
    (folder / "train_summary.json").write_text(json.dumps({"seq_len": 64, "corpus": "x", "train_loss": 1.0}))
    assert "| training context | 64 tokens (the sequence length it was trained on;" in render_card(folder)


def test_write_card_keeps_a_users_readme(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    (folder / "README.md").write_text("# my own notes\n")
    with pytest.raises(FileExistsError, match="not a card pararnn-hf wrote"):
        write_card(folder)
    assert (folder / "README.md").read_text() == "# my own notes\n"
    write_card(folder, overwrite=True)
    write_card(folder)  # ours now: rewritten without --overwrite
    validate_card_text((folder / "README.md").read_text())


@pytest.mark.parametrize("writer", ["card", "convert"])
def test_a_generated_readme_is_rewritten_only_while_nobody_edited_it(model_dir, tmp_path, writer):
    """A README pararnn-hf wrote (card, or a conversion's stub) is regenerated; the same README
    with one character changed is the user's and needs --overwrite."""
    folder = tmp_path / "m"
    if writer == "card":
        shutil.copytree(model_dir, folder)
        write_card(folder)
    else:
        from pararnn_hf.conversion import from_reference, to_reference

        ref = tmp_path / "ref"
        index = to_reference(str(model_dir), ref, cells_only=True, show_progress=False)
        from_reference(folder, cells=[str(ref / c) for c in index["cells"]], base=str(model_dir), show_progress=False)
    ours = (folder / "README.md").read_text()
    assert is_unedited(ours)
    write_card(folder)  # unedited: regenerated without --overwrite
    for edited in (ours.replace("# ", "# My ", 1), ours + "\nmy notes\n", ours.replace("pararnn", "Pararnn", 1)):
        (folder / "README.md").write_text(edited)
        assert not is_unedited(edited)
        with pytest.raises(FileExistsError, match="not a card pararnn-hf wrote and nobody edited since"):
            write_card(folder)
        assert (folder / "README.md").read_text() == edited
    write_card(folder, overwrite=True)
    assert is_unedited((folder / "README.md").read_text())


def test_eval_never_replaces_a_file_unasked_nor_a_models_own_files(model_dir, tmp_path):
    argv = ["eval", "--model", str(model_dir), "--tasks", "pararnn_stdlib_ppl", "--limit", "1"]
    (tmp_path / "results.json").write_text("mine")
    with pytest.raises(SystemExit, match="results.json already exists; pass --overwrite"):
        main([*argv, "--output", str(tmp_path / "results.json")])
    assert (tmp_path / "results.json").read_text() == "mine"
    config = (model_dir / "config.json").read_bytes()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        with pytest.raises(SystemExit, match="one of the model folder's own files"):
            main([*argv, "--output", str(model_dir / name), "--overwrite"])
    assert (model_dir / "config.json").read_bytes() == config
    assert main([*argv, "--output", str(tmp_path / "results.json"), "--overwrite"]) == 0
    assert "results" in json.loads((tmp_path / "results.json").read_text())
    assert main(argv) == 0  # the default, MODEL/eval_results.json, the first time
    with pytest.raises(SystemExit, match="eval_results.json already exists"):
        main(argv)


def test_cli_eval_then_card(model_dir, tmp_path, capsys):
    """lm_eval's flag spellings and --output_path meaning (a folder gets <model>/results_*.json),
    then the card from those results, naming the model with --model as everywhere else."""
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir, folder)
    argv = ["eval", "--model", str(folder), "--tasks", "pararnn_stdlib_nextline", "--limit", "4", "--batch_size", "2"]
    assert main([*argv, "--output_path", str(tmp_path / "out")]) == 0
    written = list((tmp_path / "out").glob("*/results_*.json"))
    assert len(written) == 1 and written[0].parent.name == str(folder).replace("/", "__")
    assert "pararnn_stdlib_nextline" in capsys.readouterr().out
    assert main(["card", "--model", str(folder), "--results", str(written[0])]) == 0
    text = (folder / "README.md").read_text()
    assert "pararnn_stdlib_nextline (on 4 of" in text and "model-index" not in text.split("---\n", 2)[1]


@pytest.mark.parametrize("size,nominal", [("400m", 400e6), ("1b", 1e9), ("7b", 7e9)])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_presets_parameter_counts(size, nominal, cell):
    stored = json.loads(preset_files()[f"para{cell}-{size}"].read_text())
    stored.pop("model_type", None)
    config = ParaRNNConfig(**stored)
    assert config.to_dict() | {"transformers_version": None} == preset_config(size, cell).to_dict() | {
        "transformers_version": None
    }
    counted = count_parameters(config)
    with torch.device("meta"):
        actual = sum(p.numel() for p in ParaRNNForCausalLM(config).parameters())
    assert counted == actual
    assert abs(counted / nominal - 1) < 0.1, counted


def test_card_usage_snippet_runs_as_written(model_dir, tmp_path):
    """The card's Python snippet, pointed at the folder, runs where pararnn_hf is not installed
    and without a "run custom code?" prompt (stdin closed, as in a script)."""
    import re

    text = render_card(model_dir, repo_id=str(model_dir))
    code = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    script = "import sys\nsys.modules['pararnn_hf'] = None  # not installed\n" + code
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Do you wish to run the custom code" not in run.stdout + run.stderr
    assert run.stdout.strip().startswith("def main(")


def test_a_copy_of_the_tasks_loads_its_data_from_beside_it(tmp_path):
    """The YAMLs find their data through utils.py wherever the folder is (no path in the YAML)."""
    import importlib.util

    copy = write_local_tasks(tmp_path / "tasks")
    shipped = sorted(p.name for p in tasks_path().iterdir() if p.name != "__pycache__")
    assert sorted(p.name for p in copy.iterdir()) == shipped
    assert "DATA_DIR" not in "".join(p.read_text() for p in copy.glob("*.yaml"))
    spec = importlib.util.spec_from_file_location("copied_task_utils", copy / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    assert utils.DATA == copy / "data"
    assert len(utils.stdlib_ppl(version=1.0)["test"]) == 24


def test_eval_records_n_shot_logs_samples_and_takes_lm_evals_flags(model_dir, tmp_path, capsys):
    """--num_fewshot shows in the table and the JSON as lm_eval records it; --log_samples writes
    lm_eval's samples files beside the results; --model_args, --seed and --gen_kwargs are
    lm_eval's."""
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(model_dir), "--tasks", "pararnn_stdlib_nextline", "--limit", "2"]
    argv += ["--num_fewshot", "1", "--log_samples", "--output", str(out), "--seed", "3"]
    argv += ["--model_args", "dtype=float32,prefill_chunk_size=4", "--gen_kwargs", "max_gen_toks=4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if "pararnn_stdlib_nextline" in line)
    assert [c.strip() for c in row.split("|")][4] == "1"  # the n-shot column
    data = json.loads(out.read_text())
    assert data["n-shot"] == {"pararnn_stdlib_nextline": 1} and data["config"]["num_fewshot"] == 1
    assert data["config"]["random_seed"] == 3 and data["config"]["fewshot_seed"] == 3
    samples = list(tmp_path.glob("samples_pararnn_stdlib_nextline_*.jsonl"))
    assert len(samples) == 1 and f"samples written to {samples[0]}" in printed
    lines = [json.loads(line) for line in samples[0].read_text().splitlines()]
    assert len(lines) == 2 and {"doc", "resps", "filtered_resps", "acc"} <= set(lines[0])
    with pytest.raises(SystemExit, match="give the model as --model DIR"):
        main([*argv[:7], "--model_args", "pretrained=x"])
    with pytest.raises(SystemExit, match="--seed must be one integer or four"):
        main([*argv[:7], "--seed", "1,2"])


def test_importing_pararnn_hf_eval_registers_the_lm_eval_model():
    code = "import pararnn_hf.eval\nfrom lm_eval.api.registry import get_model\nprint(get_model('pararnn').__name__)\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ParaRNNLM"

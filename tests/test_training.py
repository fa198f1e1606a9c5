"""Training with Trainer: the loss falls, resuming is exact, outputs are protected, the CLI,
a 2-process (gloo) run matches one process, and the demo runs end to end."""

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from pararnn_hf.cli import main
from pararnn_hf.training import DataArguments, ModelArguments, run_training

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_heads": 2, "intermediate_size": 64, "cell": "gru"}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """About forty small standard-library modules as a local corpus."""
    folder = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    picked = sorted(p for p in stdlib.glob("*.py") if 2_000 < p.stat().st_size < 12_000)[:40]
    for p in picked:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PARARNN_HF_CACHE", str(tmp_path_factory.getbasetemp() / "pararnn-cache"))


def tiny_config_file(folder: Path, **overrides) -> str:
    path = folder / "tiny.json"
    path.write_text(json.dumps({**TINY, **overrides}))
    return str(path)


def training_args(out, **kw) -> TrainingArguments:
    base = dict(
        output_dir=str(out),
        max_steps=30,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=3e-3,
        logging_steps=5,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return TrainingArguments(**{**base, **kw})


def test_training_lowers_the_loss_and_writes_plot_and_summary(tmp_path, corpus_dir):
    summary = run_training(
        ModelArguments(config=tiny_config_file(tmp_path)),
        DataArguments(data=[str(corpus_dir)], seq_len=64, vocab_size=512),
        training_args(tmp_path / "out"),
    )
    history = json.loads((tmp_path / "out" / "log_history.json").read_text())
    losses = [e["loss"] for e in history if "loss" in e]
    # uniform guessing over the 512-token vocabulary costs ln 512 = 6.24 nats; 30 steps of a
    # 2-layer model take 0.53 off it (deterministic since the split ignores where files lie)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    assert summary["eval_loss"] < math.log(512) - 0.3
    assert (tmp_path / "out" / "loss_curves.png").stat().st_size > 1000
    assert summary["eval_perplexity"] == pytest.approx(math.exp(summary["eval_loss"]))
    for f in ("config.json", "model.safetensors", "tokenizer.json", "train_summary.json", "modeling_pararnn.py"):
        assert (tmp_path / "out" / f).is_file(), f


def test_resume_from_checkpoint_continues_with_identical_loss(tmp_path, corpus_dir):
    config = tiny_config_file(tmp_path, cell="lstm")
    data = DataArguments(data=[str(corpus_dir)], seq_len=48, vocab_size=512)
    full_summary = run_training(
        ModelArguments(config=config),
        data,
        training_args(tmp_path / "full", max_steps=10, logging_steps=1, save_strategy="steps", save_steps=5),
    )
    full = json.loads((tmp_path / "full" / "log_history.json").read_text())
    checkpoint = tmp_path / "full" / "checkpoint-5"
    assert checkpoint.is_dir()
    # Trainer runs with use_cache off; what it saves has it on, as any saved model
    for folder in (checkpoint, tmp_path / "full"):
        assert json.loads((folder / "config.json").read_text())["use_cache"] is True
    resumed_summary = run_training(
        ModelArguments(config=config),
        data,
        training_args(tmp_path / "resumed", max_steps=10, logging_steps=1, resume_from_checkpoint=str(checkpoint)),
    )
    # the summary's train loss covers the whole run, not only the steps after the resume
    assert resumed_summary["train_loss"] == pytest.approx(full_summary["train_loss"], rel=1e-4)
    resumed = json.loads((tmp_path / "resumed" / "log_history.json").read_text())
    after = {e["step"]: e["loss"] for e in full if "loss" in e and e["step"] > 5}
    again = {e["step"]: e["loss"] for e in resumed if "loss" in e and e["step"] > 5}
    assert sorted(after) == sorted(again) == [6, 7, 8, 9, 10]
    for step in after:
        assert again[step] == pytest.approx(after[step], rel=1e-5), step


def test_output_folder_with_a_model_is_not_overwritten(tmp_path, corpus_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"holds an incomplete model \(config.json: it holds no model weights\)"):
        run_training(
            ModelArguments(config=tiny_config_file(tmp_path)),
            DataArguments(data=[str(corpus_dir)], seq_len=32, vocab_size=300),
            training_args(out),
        )
    assert (out / "config.json").read_text() == "{}"


@pytest.mark.parametrize(
    "data_kw,train_kw,match",
    [
        ({"seq_len": 10_000_000}, {}, "fewer than one sequence"),
        ({"seq_len": 512}, {"per_device_train_batch_size": 4096}, "fewer than one batch"),
    ],
)
def test_data_that_does_not_fit_is_a_clear_error(tmp_path, corpus_dir, data_kw, train_kw, match):
    with pytest.raises(ValueError, match=match):
        run_training(
            ModelArguments(config=tiny_config_file(tmp_path)),
            DataArguments(data=[str(corpus_dir)], vocab_size=300, **data_kw),
            training_args(tmp_path / "out", **train_kw),
        )


def test_bad_model_arguments(tmp_path, corpus_dir):
    data = DataArguments(data=[str(corpus_dir)], seq_len=32, vocab_size=300)
    with pytest.raises(ValueError, match="choose one of --preset, --config and --model"):
        run_training(
            ModelArguments(preset="demo", config=tiny_config_file(tmp_path)), data, training_args(tmp_path / "a")
        )
    with pytest.raises(FileNotFoundError, match="no such config file"):
        run_training(ModelArguments(config=str(tmp_path / "missing.json")), data, training_args(tmp_path / "b"))
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        run_training(ModelArguments(preset="huge"), data, training_args(tmp_path / "c"))


def test_cli_train_then_fine_tune(tmp_path, corpus_dir, capsys):
    common = [
        "--data",
        str(corpus_dir),
        "--seq_len",
        "32",
        "--per_device_train_batch_size",
        "2",
        "--report_to",
        "none",
        "--use_cpu",
        "--disable_tqdm",
        "true",
    ]
    first = tmp_path / "pretrained"
    assert (
        main(
            [
                "train",
                "--config",
                tiny_config_file(tmp_path),
                "--vocab_size",
                "400",
                "--max_steps",
                "3",
                "--output_dir",
                str(first),
                *common,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "perplexity" in out
    # the plan, before the first step: steps, tokens (3 steps of 2 sequences of 32) and the folder
    assert "pararnn-hf train: 3 steps, 192 tokens (" in out and f"of 32 per epoch) into {first.resolve()}" in out
    tuned = tmp_path / "tuned"
    assert (
        main(
            [
                "train",
                "--model",
                str(first),
                "--max_steps",
                "2",
                "--learning_rate",
                "1e-4",
                "--output_dir",
                str(tuned),
                *common,
            ]
        )
        == 0
    )
    assert (
        json.loads((tuned / "train_summary.json").read_text())["parameters"]
        == json.loads((first / "train_summary.json").read_text())["parameters"]
    )
    with pytest.raises(SystemExit, match="already holds a finished model"):
        main(["train", "--model", str(first), "--max_steps", "1", "--output_dir", str(tuned), *common])
    assert (
        main(["train", "--model", str(first), "--max_steps", "1", "--output_dir", str(tuned), "--overwrite", *common])
        == 0
    )


def _losses(folder: Path) -> list[float]:
    return [e["loss"] for e in json.loads((folder / "log_history.json").read_text()) if "loss" in e]


@pytest.mark.once  # end to end: CI runs it on one transformers release
def test_two_process_gloo_run_matches_one_process(tmp_path, corpus_dir):
    """DDP over 2 CPU processes with 2 sequences each = 1 process with 4 (same global batch),
    launched by the README's accelerate recipe."""
    config = tiny_config_file(tmp_path)
    common = [
        "train",
        "--config",
        config,
        "--data",
        str(corpus_dir),
        "--seq_len",
        "48",
        "--vocab_size",
        "400",
        "--max_steps",
        "4",
        "--logging_steps",
        "1",
        "--learning_rate",
        "3e-3",
        "--report_to",
        "none",
        "--use_cpu",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        "--dataloader_num_workers",
        "0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = tmp_path / "single"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pararnn_hf.cli",
            *common,
            "--per_device_train_batch_size",
            "4",
            "--output_dir",
            str(single),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(Path(__file__).resolve().parents[1] / "configs" / "accelerate_ddp_cpu.yaml"),
            "--main_process_port",
            "29517",
            "-m",
            "pararnn_hf.cli",
            *common,
            "--per_device_train_batch_size",
            "2",
            "--save_steps",
            "2",
            "--ddp_backend",
            "gloo",
            "--output_dir",
            str(ddp),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("saved to") == 1  # rank 0 reports; the other rank stays quiet
    assert proc.stdout.count("pararnn-hf train: world size 2 (gloo) on cpu") == 1
    assert json.loads((ddp / "train_summary.json").read_text())["world_size"] == 2
    # each checkpoint went through one staging folder that both processes wrote their RNG state into
    for step in (2, 4):
        assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors"} <= {
            p.name for p in (ddp / f"checkpoint-{step}").iterdir()
        }
    assert not [p.name for p in ddp.iterdir() if p.name.startswith(".")]
    assert json.loads((single / "train_summary.json").read_text())["world_size"] == 1
    one, two = _losses(single), _losses(ddp)
    assert len(one) == len(two) == 4
    assert torch.allclose(torch.tensor(two), torch.tensor(one), rtol=1e-4), (one, two)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fsdp2_on_two_gloo_processes_saves_the_model_one_process_trains(tmp_path, cell):
    """torch's FSDP2 (fully_shard per block, as accelerate wraps) on 2 CPU processes: every
    parameter is sharded, and the gathered checkpoint reloads with from_pretrained and gives
    the logits of the same model trained unsharded on the whole batch."""
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).parent))
    import fsdp_worker

    out = tmp_path / "fsdp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29523" if cell == "gru" else "29524",
            str(Path(fsdp_worker.__file__)),
            str(out),
            cell,
        ],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    n_tensors = len(list(fsdp_worker.build(cell).parameters()))
    assert f"FSDP shards {n_tensors} of {n_tensors} parameter tensors over 2 processes" in proc.stdout
    assert "returned a view tensor" not in proc.stderr  # the blocks hand back copies of their states
    reference = fsdp_worker.build(cell)
    fsdp_worker.train(reference, fsdp_worker.batches())
    sharded = AutoModelForCausalLM.from_pretrained(out)
    x = torch.randint(0, 400, (2, 30))
    with torch.no_grad():
        a, b = sharded(x).logits, reference(x).logits
    # float32 sums in another order (each rank's half, then the mean over ranks): 1e-5 is
    # ~100 ulp of the logits' scale, far below what one differing step would change
    assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_fsdp_is_refused_on_the_cpu(tmp_path):
    """accelerate runs a CPU launch as DDP and drops --fsdp silently: refused in one line."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pararnn_hf.cli",
            "train",
            "--use_cpu",
            "--fsdp",
            "full_shard",
            "--output_dir",
            str(tmp_path / "never"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("pararnn-hf train: --fsdp needs GPUs")
    assert "Traceback" not in proc.stderr and not (tmp_path / "never").exists()


@pytest.mark.once  # end to end: CI runs it on one transformers release
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PARARNN_HF_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pararnn_hf.cli",
            "demo",
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--max-eval-sequences",
            "2",
            "--max-new-tokens",
            "5",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "reloaded with AutoModelForCausalLM as ParaRNNForCausalLM" in proc.stdout
    assert "held-out loss" in proc.stdout and f"model + tokenizer : {out}" in proc.stdout
    assert "lm-eval (bundled tasks): next-line choice accuracy" in proc.stdout
    assert (out / "eval_results.json").is_file() and "model-index" in (out / "README.md").read_text()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["corpus"] == "builtin:python-stdlib" and math.isfinite(summary["eval_perplexity"])
    again = subprocess.run(
        [sys.executable, "-m", "pararnn_hf.cli", "demo", "--steps", "1", "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode != 0 and "already holds a finished model" in again.stderr


def test_train_refuses_an_accelerate_launch_that_started_one_process_of_several(monkeypatch, tmp_path):
    """accelerate's CPU launcher asked for 2 processes without mpirun starts one: refused in one
    line before any work, naming the recipe that works."""
    from pararnn_hf.cli import main

    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit, match="asked for several processes but started one"):
        main(["train", "--output_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
    monkeypatch.setenv("WORLD_SIZE", "2")  # a real multi-process launch passes the check
    from pararnn_hf.cli import check_launch

    check_launch()

"""Nothing the user saved is lost: unsafe output folders are refused, ``--overwrite`` swaps
folders so that a SIGKILL at any point leaves the old or the new complete folder, the next run
cleans what a killed run left, training never replaces or mixes an earlier run's results
unasked, and eval checks that it can write its results before it runs."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pararnn_hf.cli import main
from pararnn_hf.model_files import finished_model_files
from pararnn_hf.output_guard import (
    UnsafeOutputError,
    atomic_folder,
    check_target,
    check_writable_file,
    clean_stale_temporaries,
)
from pararnn_hf.training.checkpoints import checkpoint_problem
from pararnn_hf.training.run import check_output_dir, resolve_resume, resume_target

GUARD = Path(__file__).resolve().parents[1] / "src" / "pararnn_hf" / "output_guard.py"


def cli(*args, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "pararnn_hf.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_to_reference_into_the_current_folder_is_refused_and_deletes_nothing(tmp_path, model_dir, monkeypatch):
    before = files_of(tmp_path)
    for out in (".", ""):  # as typed in a shell
        proc = cli("convert", "to-reference", "--model", "model", "--out", out, "--overwrite", cwd=tmp_path)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pararnn-hf convert: "), proc.stderr
    for out in (str(tmp_path), str(model_dir), str(tmp_path.parent), "model/.."):
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit, match="^pararnn-hf convert: the output .* (is|contains) "):
            main(["convert", "to-reference", "--model", "model", "--out", out, "--overwrite", "--no-progress"])
    assert files_of(tmp_path) == before


@pytest.mark.parametrize(
    "out,keep,match",
    [
        (".", [], "is the current directory"),
        ("..", [], "contains the current directory"),
        ("", [], "empty"),
        ("in", ["in/model.safetensors"], "contains the input"),
        ("in", ["in"], "is the input"),
        ("/", [], "root"),
    ],
)
def test_unsafe_targets_are_refused(tmp_path, monkeypatch, out, keep, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    with pytest.raises(UnsafeOutputError, match=match):
        check_target(out, overwrite=True, keep=keep)


def test_a_folder_inside_the_input_or_beside_it_is_allowed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    assert check_target("in/converted", overwrite=False, keep=["in"]) == (tmp_path / "in" / "converted").resolve()
    assert check_target("out", overwrite=False, keep=["in"]) == (tmp_path / "out").resolve()


KILLED_WRITER = textwrap.dedent(
    """
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location("output_guard", sys.argv[1])
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    if sys.argv[3] == "rename":  # a system without an atomic exchange of two names
        guard._exchange = lambda a, b: False
    with guard.atomic_folder(sys.argv[2], overwrite=True) as tmp:
        for i in range(20):
            (tmp / f"part{i}.txt").write_text("new")
            if i == 10 and os.environ.get("PARARNN_HF_KILL_AT") == "mid-write":
                os.kill(os.getpid(), signal.SIGKILL)
    """
)


def make_old(target: Path) -> None:
    target.mkdir()
    for i in range(20):
        (target / f"part{i}.txt").write_text("old")


def state_of(target: Path) -> str:
    contents = {p.read_text() for p in target.iterdir()}
    assert len(list(target.iterdir())) == 20 and len(contents) == 1, "a partial folder is at the target"
    return contents.pop()


@pytest.mark.parametrize(
    "mode,point,expected",
    [
        ("exchange", "mid-write", "old"),
        ("exchange", "written", "old"),
        ("exchange", "before-swap", "old"),
        ("exchange", "after-swap", "new"),
        ("rename", "mid-write", "old"),
        ("rename", "before-swap", "old"),
        ("rename", "between-renames", None),  # the target is missing until the next run restores it
        ("rename", "after-swap", "new"),
    ],
)
def test_sigkill_at_any_point_keeps_a_complete_folder(tmp_path, mode, point, expected):
    target = tmp_path / "out"
    make_old(target)
    env = {**os.environ, "PARARNN_HF_KILL_AT": point}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(GUARD), str(target), mode], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.pararnn-")]
    assert leftovers, "the kill left no temporaries: it did not happen where the test meant"
    if expected is None:
        assert not target.exists()
    else:
        assert state_of(target) == expected
    # the next run restores a folder moved aside, then removes the killed run's temporaries
    clean_stale_temporaries(target)
    assert state_of(target) == (expected or "old")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.pararnn-")]
    with atomic_folder(target, overwrite=True) as tmp:
        (tmp / "done.txt").write_text("new run")
    assert [p.name for p in target.iterdir()] == ["done.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_temporaries_of_a_live_run_or_other_names_are_left_alone(tmp_path):
    target = tmp_path / "out"
    live = tmp_path / f".out.pararnn-new-{os.getpid()}-abc"
    other = tmp_path / ".out.somebody-elses"
    live.mkdir(), other.mkdir()
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".out.pararnn-new-{int(dead_pid.stdout)}-xyz"
    dead.mkdir()
    clean_stale_temporaries(target)
    assert live.exists() and other.exists() and not dead.exists()


def test_converted_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "out", overwrite=False) as tmp:
            (tmp / "a").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


# ----------------------------------------------------------------------------- training


def fake_checkpoint(folder: Path, step: int, truncate: str | None = None) -> Path:
    """A checkpoint folder with the files Trainer writes (tiny); ``truncate`` cuts one in half."""
    import torch
    from safetensors.torch import save_file

    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.ones(64)}, str(path / "model.safetensors"))
    torch.save({"state": {}}, path / "optimizer.pt")
    (path / "config.json").write_text("{}")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    if truncate:
        data = (path / truncate).read_bytes()
        (path / truncate).write_bytes(data[: len(data) // 2])
    return path


def test_train_refuses_a_folder_with_checkpoints_of_a_killed_run(tmp_path):
    out = tmp_path / "run"
    fake_checkpoint(out, 10)
    fake_checkpoint(out, 20)
    with pytest.raises(FileExistsError, match="checkpoints of an earlier run.*--resume_from_checkpoint.*--overwrite"):
        check_output_dir(out, overwrite=False, resume=None)
    # resuming that run in place is fine, and so is starting over with --overwrite
    assert check_output_dir(out, overwrite=False, resume=str(out / "checkpoint-20")) == []
    assert check_output_dir(out, overwrite=False, resume=True) == []
    assert [p.name for p in check_output_dir(out, overwrite=True, resume=None)] == ["checkpoint-10", "checkpoint-20"]


@pytest.mark.parametrize(
    "damage,problem",
    [
        (None, None),
        ("model.safetensors", r"model.safetensors is truncated"),
        ("optimizer.pt", "optimizer.pt is truncated or not a torch file"),
        ("trainer_state.json", "trainer_state.json is truncated or unreadable"),
    ],
)
def test_checkpoint_completeness_is_read_off_the_files(tmp_path, damage, problem):
    path = fake_checkpoint(tmp_path, 3, truncate=damage)
    found = checkpoint_problem(path)
    assert found is None if problem is None else re.search(problem, found), found
    (path / "trainer_state.json").unlink()
    assert checkpoint_problem(path) == "trainer_state.json is missing"


def test_resume_takes_the_newest_complete_checkpoint_and_names_what_it_skips(tmp_path):
    out = tmp_path / "run"
    fake_checkpoint(out, 2)
    fake_checkpoint(out, 4)
    fake_checkpoint(out, 6, truncate="model.safetensors")
    said = []
    assert resolve_resume(out, True, said.append) == str(out / "checkpoint-4")
    assert said == [
        "pararnn-hf train: skipping incomplete checkpoint-6 (model.safetensors is truncated "
        f"({(out / 'checkpoint-6' / 'model.safetensors').stat().st_size} of "
        f"{(out / 'checkpoint-4' / 'model.safetensors').stat().st_size} bytes)); resuming from checkpoint-4"
    ]
    with pytest.raises(
        ValueError, match=r"checkpoint-6: model.safetensors is truncated.*newest complete.*checkpoint-4"
    ):
        resolve_resume(out, str(out / "checkpoint-6"), said.append)
    # the advice of a refused start points at a complete checkpoint, not the newest folder
    with pytest.raises(FileExistsError, match=r"--resume_from_checkpoint \S*checkpoint-4 \(or true\)"):
        check_output_dir(out, overwrite=False, resume=None)
    for step in (2, 4):
        shutil.rmtree(out / f"checkpoint-{step}")
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint .checkpoint-6 .model.safetensors"):
        resolve_resume(out, True, said.append)


def test_a_folder_with_an_interrupted_final_save_is_not_a_finished_model(tmp_path, model_dir):
    assert finished_model_files(model_dir) == ["config.json", "model.safetensors"]
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert finished_model_files(model_dir) == []
    fake_checkpoint(model_dir, 5)
    assert check_output_dir(model_dir, overwrite=False, resume=True) == []


UPDATED = textwrap.dedent(
    """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("output_guard", sys.argv[1])
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    if sys.argv[3] == "in-place":  # a parent folder that takes no new entries
        guard._can_swap = lambda target: False
    with guard.updated_folder(sys.argv[2], carry=lambda name: name != "weights.bin") as tmp:
        (tmp / "config.json").write_text("new")
        (tmp / "weights.bin").write_text("new")
    """
)


def make_run_folder(target: Path) -> None:
    (target / "checkpoint-2").mkdir(parents=True)
    (target / "checkpoint-2" / "state.json").write_text("kept")
    (target / "log.json").write_text("kept")
    (target / "config.json").write_text("old")
    (target / "weights.bin").write_text("old")


@pytest.mark.parametrize(
    "mode,point,expected",
    [
        ("swap", "model-written", "old"),
        ("swap", "before-swap", "old"),
        ("swap", "after-swap", "new"),
        ("swap", None, "new"),
        ("in-place", "model-written", "old"),
        ("in-place", "moved-weights.bin", "unfinished"),
        ("in-place", "moved-config.json", "unfinished"),
        ("in-place", None, "new"),
    ],
)
def test_a_final_save_killed_at_any_point_leaves_a_whole_model_or_no_finished_one(tmp_path, mode, point, expected):
    """The final model replaces the output folder's model files in one swap (or, where the
    parent takes no new entries, with config.json leaving first and arriving last), carrying
    the checkpoints and logs over: a SIGKILL leaves the old model, the new one, or a folder
    that nobody takes for a finished model; never a mix, and the checkpoints always."""
    target = tmp_path / "run"
    make_run_folder(target)
    env = {**os.environ, "PARARNN_HF_KILL_AT": point or ""}
    proc = subprocess.run(
        [sys.executable, "-c", UPDATED, str(GUARD), str(target), mode], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == (0 if point is None else -signal.SIGKILL), proc.stderr
    assert (target / "checkpoint-2" / "state.json").read_text() == "kept"
    assert (target / "log.json").read_text() == "kept"
    if expected == "unfinished":
        assert not (target / "config.json").exists()
    else:
        assert {(target / n).read_text() for n in ("config.json", "weights.bin")} == {expected}
    if point is None:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
        assert sorted(p.name for p in target.iterdir()) == ["checkpoint-2", "config.json", "log.json", "weights.bin"]


def train_cli(*args, cwd, kill_write=None, kill_at=None):
    """``pararnn-hf train`` in a subprocess: a tiny model on a tiny local corpus, a checkpoint
    every 2 steps; ``kill_write`` half-writes the matching weight file, then SIGKILLs."""
    env = {**os.environ, "PARARNN_HF_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    script = [str(Path(__file__).parent / "killed_save.py")] if kill_write else ["-m", "pararnn_hf.cli"]
    env["KILL_WRITE_MATCH"] = kill_write or ""
    env["PARARNN_HF_KILL_AT"] = kill_at or ""
    common = ["--data", "corpus", "--seq_len", "32", "--vocab_size", "300", "--per_device_train_batch_size", "2"]
    common += ["--save_steps", "2", "--logging_steps", "1", "--report_to", "none", "--use_cpu", "--disable_tqdm"]
    common += ["true", "--max_eval_sequences", "2"]
    return subprocess.run(
        [sys.executable, *script, "train", *args, *common], cwd=cwd, env=env, capture_output=True, text=True
    )


def tiny_corpus(folder: Path) -> None:
    (folder / "corpus").mkdir()
    for i in range(12):
        (folder / "corpus" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 40)
    (folder / "tiny.json").write_text(
        json.dumps({"hidden_size": 16, "num_hidden_layers": 1, "num_heads": 2, "intermediate_size": 32})
    )


def test_killed_saves_never_cost_a_checkpoint_and_resume_finds_the_newest_whole_one(tmp_path):
    tiny_corpus(tmp_path)
    run = tmp_path / "run"
    train = ["--config", "tiny.json", "--max_steps", "6", "--output_dir", "run"]
    # 1. a crash in the middle of writing checkpoint-4's weights
    proc = train_cli(*train, cwd=tmp_path, kill_write=r"/checkpoint-4/model\.safetensors$")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-2"]
    assert checkpoint_problem(run / "checkpoint-2") is None
    # a checkpoint from a run of an older version or another tool, cut off mid-write
    fake_checkpoint(run, 6, truncate="model.safetensors")
    # 2. a real SIGKILL after checkpoint-4 is written but before it is renamed into place;
    # the run resumes from checkpoint-2 and says that it skips the incomplete checkpoint-6
    proc = train_cli(*train, "--resume_from_checkpoint", "true", cwd=tmp_path, kill_at="checkpoint-written")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "skipping incomplete checkpoint-6 (model.safetensors is truncated" in proc.stdout
    assert "resuming from checkpoint-2" in proc.stdout
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-6"]
    # 3. a crash in the middle of the final save: checkpoint-6 is whole, the folder is no model
    proc = train_cli(*train, "--resume_from_checkpoint", "true", cwd=tmp_path, kill_write=r"\.run\.pararnn-new-")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert checkpoint_problem(run / "checkpoint-6") is None and finished_model_files(run) == []
    # 4. resuming finishes the run; nothing of the killed runs is left behind
    proc = train_cli(*train, "--resume_from_checkpoint", "true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint-6" in proc.stdout and "skipping" not in proc.stdout
    assert finished_model_files(run) == ["config.json", "model.safetensors"]
    assert not [p.name for p in tmp_path.iterdir() if ".pararnn-" in p.name]
    assert not [p.name for p in run.iterdir() if ".pararnn-" in p.name]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run)


def test_fine_tuning_in_place_killed_mid_save_keeps_the_original_model(tmp_path, model_dir):
    tiny_corpus(tmp_path)
    before = files_of(model_dir)
    proc = train_cli(
        "--model", str(model_dir), "--max_steps", "1", "--output_dir", str(model_dir), "--overwrite",
        cwd=tmp_path, kill_write=r"\.model\.pararnn-new-",
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    after = files_of(model_dir)
    assert {k: v for k, v in after.items() if k in before} == before  # the original, bit for bit


def test_resuming_never_replaces_a_finished_model_unasked(tmp_path, model_dir):
    other = fake_checkpoint(tmp_path / "other-run", 5)
    with pytest.raises(FileExistsError, match="already holds a finished model.*resuming would replace it"):
        check_output_dir(model_dir, overwrite=False, resume=str(other))
    fake_checkpoint(tmp_path / "mine", 3)
    with pytest.raises(FileExistsError, match="checkpoints of another run"):
        check_output_dir(tmp_path / "mine", overwrite=False, resume=str(other))
    assert check_output_dir(model_dir, overwrite=True, resume=str(other)) == []


def test_resume_flag_values():
    assert resume_target("true") is True and resume_target("last") is True
    assert resume_target("false") is None and resume_target(None) is None
    assert resume_target("runs/checkpoint-3") == "runs/checkpoint-3"


def test_train_cli_refuses_before_any_work(tmp_path, model_dir):
    fake_checkpoint(tmp_path / "run", 10)
    proc = cli("train", "--output_dir", "run", "--max_steps", "2", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("pararnn-hf train: "), proc.stderr
    assert "checkpoints of an earlier run" in proc.stderr
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint-10"]
    before = files_of(model_dir)
    proc = cli(
        "train",
        "--output_dir",
        str(model_dir),
        "--resume_from_checkpoint",
        str(tmp_path / "run" / "checkpoint-10"),
        cwd=tmp_path,
    )
    assert proc.returncode != 0 and "already holds a finished model" in proc.stderr
    assert files_of(model_dir) == before


# ----------------------------------------------------------------------------- eval


def test_eval_checks_its_output_before_running(tmp_path, model_dir):
    (tmp_path / "a-file").write_text("x")
    results = str(tmp_path / "a-file" / "results.json")
    proc = cli("eval", "--model", str(model_dir), "--output", results, cwd=tmp_path)
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("pararnn-hf eval: cannot write") and "is not a folder" in line, proc.stderr
    assert "Traceback" not in proc.stderr


def test_writable_file_check(tmp_path):
    with pytest.raises(IsADirectoryError):
        check_writable_file(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        check_writable_file("")
    assert check_writable_file(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    assert not (tmp_path / "new").exists()  # the check creates nothing


def test_eval_results_are_written_whole_and_the_task_folder_removed(tmp_path, model_dir, monkeypatch):
    import tempfile

    from pararnn_hf.eval import run_eval

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmpdir"))
    (tmp_path / "tmpdir").mkdir()
    out = tmp_path / "results.json"
    summary = run_eval(str(model_dir), ["pararnn_stdlib_ppl"], output=str(out), limit=2, batch_size=2)
    assert json.loads(out.read_text())["results"].keys() == summary["results"].keys()
    assert list((tmp_path / "tmpdir").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "results.json", "tmpdir"]


def test_model_dir_is_untouched_by_a_refused_conversion(tmp_path, model_dir):
    before = files_of(model_dir)
    proc = cli("convert", "to-reference", "--model", str(model_dir), "--out", str(model_dir), cwd=tmp_path)
    assert proc.returncode != 0 and files_of(model_dir) == before

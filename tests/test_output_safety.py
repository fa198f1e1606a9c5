"""Nothing the user saved is lost: unsafe output folders are refused, ``--overwrite`` swaps
folders so that a SIGKILL at any point leaves the old or the new complete folder, the next run
cleans what a killed run left, training never replaces or mixes an earlier run's results
unasked, and eval checks that it can write its results before it runs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pararnn_hf.cli import main
from pararnn_hf.output_guard import (
    UnsafeOutputError,
    atomic_folder,
    check_target,
    check_writable_file,
    clean_stale_temporaries,
)
from pararnn_hf.training.run import check_output_dir, resume_target

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


def test_train_refuses_a_folder_with_checkpoints_of_a_killed_run(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-20").mkdir()
    with pytest.raises(FileExistsError, match="checkpoints of an earlier run.*--resume_from_checkpoint.*--overwrite"):
        check_output_dir(out, overwrite=False, resume=None)
    # resuming that run in place is fine, and so is starting over with --overwrite
    assert check_output_dir(out, overwrite=False, resume=str(out / "checkpoint-20")) == []
    assert check_output_dir(out, overwrite=False, resume=True) == []
    assert [p.name for p in check_output_dir(out, overwrite=True, resume=None)] == ["checkpoint-10", "checkpoint-20"]


def test_resuming_never_replaces_a_finished_model_unasked(tmp_path, model_dir):
    other = tmp_path / "other-run" / "checkpoint-5"
    other.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already holds a finished model.*resuming would replace it"):
        check_output_dir(model_dir, overwrite=False, resume=str(other))
    (tmp_path / "mine" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="checkpoints of another run"):
        check_output_dir(tmp_path / "mine", overwrite=False, resume=str(other))
    assert check_output_dir(model_dir, overwrite=True, resume=str(other)) == []


def test_resume_flag_values():
    assert resume_target("true") is True and resume_target("last") is True
    assert resume_target("false") is None and resume_target(None) is None
    assert resume_target("runs/checkpoint-3") == "runs/checkpoint-3"


def test_train_cli_refuses_before_any_work(tmp_path, model_dir):
    (tmp_path / "run" / "checkpoint-10").mkdir(parents=True)
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

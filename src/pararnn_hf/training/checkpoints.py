"""Trainer checkpoints written whole and found whole (docs/design.md#outputs).

``Trainer`` writes ``checkpoint-N`` in place, file by file, and a crash midway leaves a folder
that looks like a checkpoint but does not load. Here each checkpoint is written into a hidden
staging folder beside it and renamed into place once every process has written its part; old
checkpoints leave by rename before they are deleted. Resuming reads each candidate's files
(trainer state, weights, optimizer and RNG archives) and takes the newest complete one, naming
any incomplete one it skips (left by older versions or other tools).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..model_files import file_problem, weights_problem
from ..output_guard import kill_point, pid_alive, replace_folder

PREFIX = "checkpoint"
_CHECKPOINT = re.compile(rf"^{PREFIX}-(\d+)$")
_STAGING = re.compile(rf"^\.{PREFIX}-\d+\.pararnn-(new|old)-(\d+)-ckpt$")


def checkpoint_step(path: Path) -> int | None:
    m = _CHECKPOINT.match(path.name)
    return int(m.group(1)) if m else None


def checkpoints(out: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``out``, oldest step first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be resumed from (a file missing, truncated or unreadable), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such checkpoint folder"
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "trainer_state.json is missing"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return "trainer_state.json is truncated or unreadable"
    problem = weights_problem(folder)
    if problem:
        return problem
    for path in sorted(folder.iterdir()):
        if path.is_file():
            problem = file_problem(path)
            if problem:
                return problem
    return None


def sort_by_completeness(out: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``out``'s checkpoints split into complete ones and incomplete ones with the reason."""
    complete, incomplete = [], []
    for path in checkpoints(out):
        problem = checkpoint_problem(path)
        if problem:
            incomplete.append((path, problem))
        else:
            complete.append(path)
    return complete, incomplete


def describe_incomplete(incomplete: list[tuple[Path, str]]) -> str:
    return "; ".join(f"{p.name} ({why})" for p, why in incomplete)


def staging_folder(run_dir: str | Path, step: int, owner_pid: int) -> Path:
    """Where every process writes its part of ``checkpoint-<step>`` before the rename. The name
    is the same in every process (``owner_pid`` is the main process's), so each one's RNG
    state lands in the same folder."""
    return Path(run_dir) / f".{PREFIX}-{step}.pararnn-new-{owner_pid}-ckpt"


def clean_staging(run_dir: str | Path) -> list[Path]:
    """Remove the staging folders that killed runs left in ``run_dir`` (never a live one's)."""
    removed = []
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return removed
    for entry in run_dir.iterdir():
        m = _STAGING.match(entry.name)
        if m and not pid_alive(int(m.group(2))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def publish(staged: Path, final: Path) -> None:
    """Rename the complete ``staged`` checkpoint to ``final`` (replacing an older checkpoint of
    the same step whole, as a resumed run re-saving it does)."""
    kill_point("checkpoint-written")
    if final.exists():
        replace_folder(staged, final)
    else:
        os.rename(staged, final)


def rotate(run_dir: str | Path, limit: int | None, keep: str | None) -> list[Path]:
    """Trainer's ``save_total_limit``: delete the oldest checkpoints beyond ``limit``, never the
    newest nor ``keep`` (the best one). Each leaves by rename first, so a crash mid-delete
    leaves a hidden temporary, not a half-deleted ``checkpoint-N``."""
    if not limit or limit <= 0:
        return []
    found = checkpoints(run_dir)
    protected = {found[-1].resolve()} if found else set()
    if keep:
        protected.add(Path(keep).resolve())
    removed, remaining = [], len(found)
    for path in found:
        if remaining <= max(limit, len(protected)):
            break
        if path.resolve() in protected:
            continue
        aside = path.with_name(f".{path.name}.pararnn-old-{os.getpid()}-ckpt")
        os.rename(path, aside)
        shutil.rmtree(aside, ignore_errors=True)
        removed.append(path)
        remaining -= 1
    return removed

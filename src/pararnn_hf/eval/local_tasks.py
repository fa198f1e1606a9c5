"""The bundled lm-eval tasks: YAMLs, their data and loaders, shipped in the package.

The installed ``tasks`` folder is an lm-eval include path as it is: the YAMLs load their data
through ``!function utils.*`` loaders that read it from beside them, wherever lm_eval runs
(``pararnn-hf eval --print-tasks-path`` prints the folder)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_TASKS = ("pararnn_stdlib_ppl", "pararnn_stdlib_nextline", "pararnn_stdlib_complete")
LOCAL_GROUP = "pararnn_stdlib"
STANDARD_TASKS = (
    "lambada_openai",
    "hellaswag",
    "piqa",
    "arc_easy",
    "arc_challenge",
    "winogrande",
    "openbookqa",
    "wikitext",
)


def tasks_path() -> Path:
    """The installed task folder, for ``lm_eval --include_path``."""
    return TASKS_DIR


def write_local_tasks(folder: str | Path | None = None) -> Path:
    """Copy the bundled tasks (YAMLs, loaders and data) into ``folder`` (a new temporary folder
    by default), e.g. to edit them; the copy works as an include path like the original."""
    out = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="pararnn_tasks_"))
    out.mkdir(parents=True, exist_ok=True)
    for yaml in sorted(TASKS_DIR.glob("*.yaml")):
        shutil.copy(yaml, out / yaml.name)
    shutil.copy(TASKS_DIR / "utils.py", out / "utils.py")
    shutil.copytree(TASKS_DIR / "data", out / "data", dirs_exist_ok=True)
    return out

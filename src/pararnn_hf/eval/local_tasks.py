"""The bundled lm-eval tasks: YAML templates and data shipped in the package.

lm-eval resolves a task's ``data_files`` against the working directory, so the templates are
written out with absolute data paths into a folder that is then given as an include path."""

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


def write_local_tasks(folder: str | Path | None = None) -> Path:
    """Write the bundled task YAMLs (with absolute data paths) and their helpers into ``folder``
    (a new temporary folder by default); returns it, for ``--include_path``."""
    out = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="pararnn_tasks_"))
    out.mkdir(parents=True, exist_ok=True)
    data_dir = (TASKS_DIR / "data").as_posix()
    for yaml in sorted(TASKS_DIR.glob("*.yaml")):
        (out / yaml.name).write_text(yaml.read_text().replace("{DATA_DIR}", data_dir))
    shutil.copy(TASKS_DIR / "utils.py", out / "utils.py")
    return out

"""What a saved model folder holds, read without loading it: its ``config.json`` checked, which
files belong to the model, and whether its weights were written whole.

The CLI reads the config here before anything else, so that an empty, non-UTF-8 or
non-object ``config.json`` is named as such (not blamed on the tokenizer). Training asks
whether a folder holds a *finished* model, and whether a checkpoint is complete, by reading
each weight file's own structure (a safetensors header and its data size, a zip directory),
never by loading tensors.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)

# Files that save_pretrained, a tokenizer's save_pretrained or Trainer write for a model, and
# that a new save of the model replaces (stale shards of an older save included).
_MODEL_FILE = re.compile(
    r"^(config\.json|generation_config\.json|training_args\.bin|"
    r".*\.safetensors|.*\.safetensors\.index\.json|pytorch_model.*\.bin|pytorch_model\.bin\.index\.json|"
    r"configuration_pararnn\.py|modeling_pararnn\.py|pararnn_core\.py)$"
)


def is_model_file(name: str) -> bool:
    """A file name that belongs to a saved model (config, weights, tokenizer, remote code)."""
    return bool(_MODEL_FILE.match(name)) or name in TOKENIZER_FILES


def read_config(folder: str | Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict; ``FileNotFoundError`` or ``ValueError`` naming the file
    and what is wrong with it (missing, empty, not UTF-8, not JSON, not an object)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a saved model folder (no {CONFIG_NAME})")
    raw = path.read_bytes()
    if not raw.strip():
        raise ValueError(f"{path} is empty; the model folder is incomplete")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object of config keys, got a {type(values).__name__}")
    return values


def safetensors_problem(path: Path) -> str | None:
    """What makes a ``.safetensors`` file unreadable (truncated, bad header), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name} is truncated (its header alone needs {n} bytes)"
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return f"{path.name} has an unreadable header ({type(err).__name__})"
    if not isinstance(header, dict):
        return f"{path.name} has an unreadable header"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            return f"{path.name} has an unreadable header entry {key!r}"
    if size < 8 + n + end:
        return f"{path.name} is truncated ({size} of {8 + n + end} bytes)"
    return None


def torch_file_problem(path: Path) -> str | None:
    """What makes a ``torch.save`` file (a zip archive) unreadable, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return f"{path.name} is truncated or not a torch file"
    return None


def file_problem(path: Path) -> str | None:
    if path.suffix == ".safetensors":
        return safetensors_problem(path)
    if path.suffix in (".bin", ".pt", ".pth"):
        return torch_file_problem(path)
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return f"{path.name} is truncated or not JSON"
    return None


def weights_problem(folder: str | Path) -> str | None:
    """What is wrong with a folder's model weights (none, an index naming missing shards, a
    truncated file), or None when they are whole."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            problem = file_problem(index)
            if problem:
                return problem
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
            if not shards:
                return f"{index_name} names no weight files"
            for shard in shards:
                if not (folder / shard).is_file():
                    return f"{shard}, named in {index_name}, is missing"
                problem = file_problem(folder / shard)
                if problem:
                    return problem
            return None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return file_problem(folder / name)
    return "it holds no model weights"


def finished_model_files(folder: str | Path) -> list[str]:
    """The files that make ``folder`` a finished model (its config and whole weights), or [] when
    it does not hold one."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() or weights_problem(folder) is not None:
        return []
    weights = re.compile(r"^(model.*\.safetensors|model\.safetensors\.index\.json|pytorch_model.*\.bin.*)$")
    return [CONFIG_NAME] + sorted(p.name for p in folder.iterdir() if p.is_file() and weights.match(p.name))

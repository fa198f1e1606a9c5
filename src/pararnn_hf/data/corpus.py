"""Text corpora as lists of documents (docs/design.md#data).

- ``builtin``: the source of the running Python's standard library (about 13 MB of real text on
  every machine that runs Python), one document per module; tests and site-packages are
  excluded; the train/validation split is by module, fixed by a hash of its path.
- local files: ``.txt``/``.md``/``.py`` (one document per file) and ``.jsonl`` (one document per
  line, from its ``"text"`` field), or folders of them.
- ``hf:NAME[:CONFIG]``: a Hugging Face dataset that is already in the local cache (no download).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sysconfig
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst"}
EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class Corpus:
    """A named corpus split into documents."""

    name: str
    train: list[str]
    validation: list[str]

    def fingerprint(self) -> str:
        """Stable id of the content, for on-disk caches."""
        h = hashlib.sha256(self.name.encode())
        for split in (self.train, self.validation):
            h.update(str(len(split)).encode())
            for doc in split:
                h.update(hashlib.sha256(doc.encode("utf-8", "replace")).digest())
        return h.hexdigest()[:16]


def _in_validation(key: str, validation_percent: float) -> bool:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 10_000
    return bucket < validation_percent * 100


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests or installed packages."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in base.rglob("*.py"):
        rel = path.relative_to(base)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        files.append(path)
    return sorted(files)


def builtin_corpus(validation_percent: float = 2.0, root: str | os.PathLike | None = None) -> Corpus:
    base = Path(root or sysconfig.get_paths()["stdlib"])
    train, validation = [], []
    for path in stdlib_files(base):
        text = path.read_bytes().decode("utf-8", "replace")
        if not text.strip():
            continue
        key = path.relative_to(base).as_posix()
        (validation if _in_validation(key, validation_percent) else train).append(text)
    if not train or not validation:
        raise ValueError(f"the standard library at {base} gave no usable documents")
    return Corpus("builtin:python-stdlib", train, validation)


def _read_documents(path: Path, key: str) -> Iterable[tuple[str, str]]:
    """(split key, text) pairs from one file; ``key`` names the file independently of where
    the corpus lies, so the train/validation split is the same on every machine."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{i + 1}: not valid JSON ({err.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f'{path}:{i + 1}: each JSONL line needs a string "text" field')
                yield f"{key}:{i}", record["text"]
    else:
        yield key, path.read_bytes().decode("utf-8")


def local_corpus(paths: Iterable[str | os.PathLike], validation_percent: float = 2.0) -> Corpus:
    files: list[tuple[Path, str]] = []  # (file, its name relative to the folder given)
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES | {".jsonl"})
            if not found:
                raise ValueError(f"{p} holds no .txt, .md, .py, .rst or .jsonl files")
            files.extend((f, f.relative_to(p).as_posix()) for f in found)
        else:
            files.append((p, p.name))
    docs, skipped = [], []
    for f, name in files:
        try:
            found = [(key, text) for key, text in _read_documents(f, name) if text.strip()]
        except UnicodeDecodeError:  # binary or another encoding: decoding would invent U+FFFD text
            skipped.append(str(f))
            continue
        if any("\x00" in text for _, text in found):
            skipped.append(str(f))
            continue
        docs.extend(found)
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} file(s) that are not UTF-8 text (binary or another encoding), e.g. {skipped[0]}",
            stacklevel=2,
        )
    if not docs:
        raise ValueError(f"the corpus {', '.join(str(f) for f, _ in files)} is empty")
    train = [t for k, t in docs if not _in_validation(k, validation_percent)]
    validation = [t for k, t in docs if _in_validation(k, validation_percent)]
    if not validation:  # tiny corpora: hold out the last document
        train, validation = train[:-1] or train, train[-1:]
    return Corpus("local:" + ",".join(sorted(name for _, name in files)), train, validation)


@contextlib.contextmanager
def _hub_offline(datasets_module):
    """Offline mode for the duration of a load, even when huggingface_hub and datasets were
    imported (and read their environment switches) before: nothing is downloaded at run time."""
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE, datasets_module.config.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = datasets_module.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, datasets_module.config.HF_HUB_OFFLINE = saved


def hf_corpus(spec: str, text_field: str = "text", validation_percent: float = 2.0) -> Corpus:
    """``NAME`` or ``NAME:CONFIG`` of a dataset already in the local Hugging Face cache."""
    name, _, config = spec.partition(":")
    try:
        import datasets
    except ImportError:
        raise ImportError("hf: corpora need the `datasets` package (pip install datasets)") from None
    try:
        with _hub_offline(datasets):
            ds = datasets.load_dataset(name, config or None)
    except Exception as err:  # the datasets library raises many types for "not cached"
        raise ValueError(
            f"the dataset {spec!r} is not in the local Hugging Face cache ({type(err).__name__}: {err}); "
            "download it once on a machine with network access"
        ) from None
    splits = list(ds)
    if text_field not in ds[splits[0]].column_names:
        raise ValueError(f"dataset {spec!r} has no {text_field!r} column (columns: {ds[splits[0]].column_names})")
    train_split = "train" if "train" in ds else splits[0]
    train = [t for t in ds[train_split][text_field] if t and t.strip()]
    val_split = next((s for s in ("validation", "valid", "test") if s in ds), None)
    if val_split is not None:
        validation = [t for t in ds[val_split][text_field] if t and t.strip()]
    else:
        keys = [f"{i}" for i in range(len(train))]
        validation = [t for k, t in zip(keys, train) if _in_validation(k, validation_percent)]
        train = [t for k, t in zip(keys, train) if not _in_validation(k, validation_percent)]
    return Corpus(f"hf:{spec}", train, validation)


def check_validation_percent(validation_percent: float) -> None:
    if not isinstance(validation_percent, (int, float)) or not 0 <= validation_percent < 100:
        raise ValueError(
            f"--validation_percent must be at least 0 and below 100 (a share of documents), got {validation_percent!r}"
        )


def load_corpus(source: str | list[str] = "builtin", validation_percent: float = 2.0) -> Corpus:
    """``"builtin"``, ``"hf:NAME[:CONFIG]"``, or one or more local paths."""
    check_validation_percent(validation_percent)
    sources = [source] if isinstance(source, str) else list(source)
    if sources == ["builtin"]:
        return builtin_corpus(validation_percent)
    if len(sources) == 1 and sources[0].startswith("hf:"):
        return hf_corpus(sources[0][3:], validation_percent=validation_percent)
    return local_corpus(sources, validation_percent)

"""A cache of the teacher's top-k logits per training window, so that a later distillation
run (another student, another arm, a restart) reads them instead of running the teacher.

Whole logits do not fit on disk (a 2048-token window of a 128k vocabulary is 0.5 GB in bf16),
so the cache keeps each position's ``k`` largest logits and their ids, and the KL is taken over
those (the teacher renormalised over its top k, the student read at the same ids; ``kd_loss``
accepts either form, and the whole-logits reference checks both). A window is keyed by the
SHA-256 of its token ids and ``k``, so the cache is valid for any run over the same teacher
and tokenizer, whatever order the windows come in. The folder records the teacher it belongs to
(``teacher.json``) and refuses another one. Each entry is one safetensors file, written to a
temporary name and renamed: a killed run leaves whole entries or none.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor


class TeacherCacheError(ValueError):
    """The cache folder belongs to another teacher or top-k."""


class TeacherLogitsCache:
    def __init__(self, folder: str | os.PathLike, teacher_id: str, top_k: int) -> None:
        if top_k < 1:
            raise ValueError(f"the teacher cache keeps the top k logits; k must be >= 1, got {top_k}")
        self.folder, self.top_k = Path(folder), top_k
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"teacher": teacher_id, "top_k": top_k}
        stamp = self.folder / "teacher.json"
        if stamp.is_file():
            found = json.loads(stamp.read_text())
            if found != meta:
                raise TeacherCacheError(
                    f"{self.folder} caches {found}, not {meta}: use another folder for this teacher or top-k"
                )
        else:
            tmp = stamp.with_name(f".teacher.json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, stamp)
        self.hits = self.misses = 0

    def _path(self, ids: Tensor, mask: Tensor | None) -> Path:
        key = hashlib.sha256(ids.to(torch.int64).cpu().numpy().tobytes())
        if mask is not None and not bool(mask.all()):  # padding changes what the teacher sees
            key.update(mask.to(torch.int8).cpu().numpy().tobytes())
        digest = key.hexdigest()
        return self.folder / digest[:2] / f"{digest}.k{self.top_k}.safetensors"

    def get(self, ids: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        """(values [B, T, k], ids [B, T, k]) for every window of ``ids`` [B, T] (with its
        ``mask``), or None when any window is missing."""
        rows = []
        for b, row in enumerate(ids):
            path = self._path(row, None if mask is None else mask[b])
            if not path.is_file():
                self.misses += 1
                return None
            rows.append(load_file(path))
        self.hits += len(rows)
        values = torch.stack([r["values"] for r in rows]).to(ids.device)
        index = torch.stack([r["index"] for r in rows]).to(ids.device)
        return values, index

    def put(self, ids: Tensor, mask: Tensor | None, values: Tensor, index: Tensor) -> None:
        """Store each window's top-k logits (``values``/``index`` [B, T, k])."""
        for b, (row, v, i) in enumerate(zip(ids, values, index)):
            path = self._path(row, None if mask is None else mask[b])
            if path.is_file():
                continue
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"values": v.detach().to(torch.float32).cpu().contiguous(),
                       "index": i.to(torch.int32).cpu().contiguous()}, str(tmp))  # fmt: skip
            os.replace(tmp, path)

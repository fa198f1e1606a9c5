"""Regenerates the bundled evaluation data from the held-out standard-library modules.

    python -m pararnn_hf.eval.make_task_data

The files are committed (the tasks must not depend on the Python that runs them); this script
documents, and reproduces on the same Python version, how they were made. Every item comes
from modules of the built-in corpus's validation split, which training never sees.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from ..data import builtin_corpus

DATA_DIR = Path(__file__).resolve().parent / "tasks" / "data"
CONTEXT_LINES = 6


def _usable(line: str) -> bool:
    stripped = line.strip()
    return 12 <= len(stripped) <= 90 and not stripped.startswith("#")


def _windows(docs: list[str]):
    """(preceding lines, line) pairs from every module."""
    for doc in docs:
        lines = doc.splitlines()
        for i in range(CONTEXT_LINES, len(lines)):
            if _usable(lines[i]):
                yield "\n".join(lines[i - CONTEXT_LINES : i]) + "\n", lines[i]


def make(seed: int = 1234, n_ppl: int = 24, n_mc: int = 120, n_gen: int = 48) -> dict[str, int]:
    corpus = builtin_corpus()
    rng = random.Random(seed)
    docs = corpus.validation
    DATA_DIR.mkdir(parents=True, exist_ok=True)

    # 1. held-out perplexity: chunks of ~1500 characters cut at line ends
    chunks = []
    for doc in docs:
        lines, current = doc.splitlines(keepends=True), ""
        for line in lines:
            if len(current) + len(line) > 1500 and current.strip():
                chunks.append(current)
                current = ""
            current += line
    ppl = [{"text": t} for t in rng.sample(chunks, min(n_ppl, len(chunks)))]

    windows = list(_windows(docs))
    rng.shuffle(windows)
    all_lines = sorted({line for _, line in windows})

    # 2. multiple choice: the real next line against three lines from elsewhere
    mc = []
    for context, line in windows[:n_mc]:
        distractors = []
        while len(distractors) < 3:
            cand = rng.choice(all_lines)
            if cand.strip() != line.strip() and cand not in distractors:
                distractors.append(cand)
        choices = distractors + [line]
        rng.shuffle(choices)
        mc.append({"context": context, "choices": choices, "label": choices.index(line)})

    # 3. generation: complete a line of code from its first half
    gen = []
    for context, line in windows[n_mc : n_mc + n_gen]:
        cut = max(4, len(line) // 2)
        cut = line.rfind(" ", 0, cut) + 1 or cut  # split at a space when there is one
        gen.append({"prompt": context + line[:cut], "target": line[cut:]})

    for name, items in (("stdlib_ppl", ppl), ("stdlib_nextline", mc), ("stdlib_complete", gen)):
        with (DATA_DIR / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
    meta = {
        "python": sys.version.split()[0],
        "seed": seed,
        "modules": len(docs),
        "stdlib_ppl": len(ppl),
        "stdlib_nextline": len(mc),
        "stdlib_complete": len(gen),
    }
    (DATA_DIR / "SOURCE.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


if __name__ == "__main__":
    print(make())

"""The learning-rate sweep behind ``bench_quality.py``: which run comes next, given the runs
already recorded, and the records themselves (one JSON file per finished run).

The plan, per model, in this order (models take turns inside each phase, so a sweep cut
short still covers every model):

1. the grid of peak learning rates, seed 0;
2. while the best rate sits at an edge of what was tried, one more rate a factor
   ``STEP`` beyond that edge (at most ``max_extend`` per side);
3. every seed at the best rate and at its tried neighbours.

"Best" is the lowest mean validation loss over the seeds run at that rate. Adding seeds can
move the best rate; the plan then goes on from there, so ``next_run`` returning None means
the sweep is settled. A run is recorded only once it finished (written to a temporary name,
then renamed), so a killed sweep resumes with the run it was in.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

GRID = (1e-3, 2e-3, 4e-3, 8e-3)
STEP = 2.0


@dataclass(frozen=True)
class RunKey:
    model: str
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}_lr{self.lr:.3g}_seed{self.seed}"


def _same_lr(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def load_runs(folder: str | Path) -> list[dict]:
    """Every finished run recorded in ``folder`` (files ``*.json``), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    runs = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a JSON run record ({err}); delete it to rerun that run") from err
        missing = {"model", "lr", "seed", "eval_loss"} - set(record)
        if missing:
            raise ValueError(f"{path}: run record lacks {sorted(missing)}; delete it to rerun that run")
        runs.append(record)
    return runs


def write_run(folder: str | Path, record: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{RunKey(record['model'], record['lr'], record['seed']).name}.json"
    write_json(path, record, indent=1)
    return path


def write_json(path: Path, data: dict, indent: int | None = None) -> None:
    """Writes ``path`` whole or not at all (a temporary name per process, then a rename), so a
    killed writer or two workers writing at once never leave a torn file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    os.replace(tmp, path)


def losses_by_lr(runs: list[dict], model: str) -> dict[float, list[float]]:
    """Validation losses per tried learning rate (one per seed run), rates ascending."""
    table: dict[float, list[float]] = {}
    for r in runs:
        if r["model"] != model:
            continue
        lr = next((k for k in table if _same_lr(k, r["lr"])), r["lr"])
        table.setdefault(lr, []).append(r["eval_loss"])
    return dict(sorted(table.items()))


def best_lr(runs: list[dict], model: str) -> float | None:
    table = losses_by_lr(runs, model)
    if not table:
        return None
    return min(table, key=lambda lr: statistics.fmean(table[lr]))


def _done(runs: list[dict], key: RunKey) -> bool:
    return any(r["model"] == key.model and r["seed"] == key.seed and _same_lr(r["lr"], key.lr) for r in runs)


def _extension(runs: list[dict], model: str, lo: float, hi: float, max_extend: int) -> RunKey | None:
    """The seed-0 run one step beyond the tried rates while the best sits at that edge."""
    tried = sorted(losses_by_lr(runs, model))
    best = best_lr(runs, model)
    below = sum(lr < lo and not _same_lr(lr, lo) for lr in tried)
    above = sum(lr > hi and not _same_lr(lr, hi) for lr in tried)
    if _same_lr(best, tried[0]) and below < max_extend:
        return RunKey(model, tried[0] / STEP, 0)
    if _same_lr(best, tried[-1]) and above < max_extend:
        return RunKey(model, tried[-1] * STEP, 0)
    return None


def next_run(
    runs: list[dict],
    models: list[str],
    grid: tuple[float, ...] = GRID,
    seeds: int = 2,
    max_extend: int = 2,
    busy: frozenset[RunKey] = frozenset(),
) -> RunKey | None:
    """The next run the sweep needs, or None when it is settled or waits on ``busy`` runs
    (taken by other workers): a model with a grid or extension run in progress gets no run
    that depends on it; its seed runs may go on beside each other."""
    for lr in sorted(grid):
        for model in models:
            key = RunKey(model, lr, 0)
            if key not in busy and not _done(runs, key):
                return key
    # what follows depends on results. A run in progress at seed 0 can still change which
    # rates are tried, so its model waits. One at a later seed cannot add a rate, only move
    # the best through the mean: the other seeds may run beside it (at worst one of them lands
    # beside the new best instead of at it, and is still a recorded seed).
    models = [m for m in models if not any(k.model == m and k.seed == 0 for k in busy)]
    lo, hi = min(grid), max(grid)
    for model in models:
        key = _extension(runs, model, lo, hi, max_extend)
        if key is not None and not any(k.model == model for k in busy):
            return key
    for model in models:
        if _extension(runs, model, lo, hi, max_extend) is not None:
            continue  # waits for its seed run in progress, which decides whether to extend
        tried, best = sorted(losses_by_lr(runs, model)), best_lr(runs, model)
        i = next(i for i, lr in enumerate(tried) if _same_lr(lr, best))
        for lr in tried[max(0, i - 1) : i + 2]:
            for seed in range(seeds):
                key = RunKey(model, lr, seed)
                if key not in busy and not _done(runs, key):
                    return key
    return None


def claim(folder: str | Path, key: RunKey) -> Path | None:
    """Marks ``key`` as taken by this process; None when another live process has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key.name}.claim"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return path


def active_claims(folder: str | Path) -> frozenset[RunKey]:
    """Runs other live processes are training; claims of dead processes are removed."""
    folder = Path(folder)
    taken = set()
    for path in folder.glob("*.claim") if folder.is_dir() else ():
        try:
            pid = int(path.read_text() or 0)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, FileNotFoundError):
            path.unlink(missing_ok=True)  # the worker died mid-run: the run is to do again
            continue
        except PermissionError:
            pass  # alive, another user's
        model, lr, seed = path.stem.rsplit("_", 2)
        taken.add(RunKey(model, float(lr[2:]), int(seed[4:])))
    return frozenset(taken)


def summary(runs: list[dict], model: str) -> dict | None:
    """Best rate, its mean loss, spread (max - min over seeds) and seed count."""
    table = losses_by_lr(runs, model)
    if not table:
        return None
    lr = best_lr(runs, model)
    losses = table[lr]
    return {
        "lr": lr,
        "mean": statistics.fmean(losses),
        "spread": max(losses) - min(losses),
        "seeds": len(losses),
        "losses": losses,
    }

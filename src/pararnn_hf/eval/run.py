"""Running lm-eval offline on a saved model: the bundled tasks always, the standard ones when
their datasets are in the local Hugging Face cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..extras import require_extras
from ..output_guard import check_output_file, write_text_atomically
from .local_tasks import tasks_path


def _offline() -> None:
    """No hub calls: lm-eval and datasets read these when they load data."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def run_eval(
    model_dir: str,
    tasks: list[str],
    output: str | None = None,
    include_path: list[str] | None = None,
    batch_size: int | str = 8,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    device: str = "cpu",
    model_args: dict[str, Any] | None = None,
    log_samples: bool = False,
    overwrite: bool = False,
    gen_kwargs: str | dict[str, Any] | None = None,
    seeds: tuple[int | None, int | None, int | None, int | None] = (0, 1234, 1234, 1234),
) -> dict[str, Any]:
    """Evaluate ``model_dir`` with lm-eval's ``simple_evaluate``; writes ``output`` (JSON) when
    given (an existing file only with ``overwrite``) and returns ``{"results": ..., "config": ...}``.

    As ``lm_eval``: ``model_args`` go to the model (``solver_backend``, ``prefill_chunk_size``,
    HFLM's own such as ``dtype``), ``gen_kwargs`` to every generation task, ``seeds`` are the
    python, numpy, torch and few-shot seeds, and ``log_samples`` writes one
    ``samples_<task>_<time>.jsonl`` per task beside ``output`` (lm_eval's own writer)."""
    require_extras("run_eval", "eval")
    _offline()
    from . import lm as _lm  # noqa: F401  (registers the "pararnn" model)

    if output:
        check_output_file(output, overwrite)  # before the evaluation, so its results cannot be lost
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model folder (no config.json)")
    for folder in include_path or []:
        check_task_folder(folder)
    if log_samples and not output:
        raise ValueError("log_samples writes its files beside the results: give an output file too")
    summary, samples = _evaluate(
        model_dir,
        tasks,
        [str(tasks_path())] + list(include_path or []),
        batch_size,
        limit,
        num_fewshot,
        device,
        model_args,
        log_samples,
        gen_kwargs,
        seeds,
    )
    if output:
        write_text_atomically(output, json.dumps(summary, indent=2, default=str))
    if log_samples:
        summary["samples_files"] = write_samples(output, samples)
    return summary


def write_samples(output: str, samples: dict[str, list]) -> list[str]:
    """Each task's logged samples as lm_eval writes them (its ``EvaluationTracker``), in
    ``samples_<task>_<time>.jsonl`` beside the results file."""
    from datetime import datetime

    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(Path(output).with_suffix(".json")))
    tracker.date_id = datetime.now().isoformat().replace(":", "-")  # what save_results_aggregated sets
    for task, task_samples in samples.items():
        tracker.save_results_samples(task_name=task, samples=task_samples)
    return sorted(str(p) for p in Path(output).parent.glob(f"samples_*_{tracker.date_id}.jsonl"))


def check_task_folder(folder: str) -> None:
    """An ``--include-path`` folder must exist and hold task YAMLs that parse."""
    import yaml

    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"--include-path {folder}: no such folder")
    files = sorted(path.rglob("*.yaml")) + sorted(path.rglob("*.yml"))
    if not files:
        raise ValueError(f"--include-path {folder}: holds no task YAML files")

    class _AnyTagLoader(yaml.SafeLoader):
        """lm-eval YAMLs use tags such as ``!function``; their values need not resolve here."""

    _AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)
    for f in files:
        try:
            yaml.load(f.read_text(encoding="utf-8"), Loader=_AnyTagLoader)
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ValueError(f"--include-path: {f} is not valid YAML: {err}".replace("\n", " ")) from None


def _evaluate(
    model_dir, tasks, paths, batch_size, limit, num_fewshot, device, model_args, log_samples, gen_kwargs, seeds
):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # indexing lm-eval's own thousands of task files takes seconds: only when asked for one
    manager = TaskManager(include_path=paths, include_defaults=False)
    if not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=paths)
    unknown = [t for t in tasks if t not in set(manager.all_tasks)]
    if unknown:
        raise ValueError(
            f"unknown lm-eval tasks {unknown}; bundled: pararnn_stdlib, "
            "pararnn_stdlib_ppl, pararnn_stdlib_nextline, pararnn_stdlib_complete"
        )
    out = simple_evaluate(
        model="pararnn",
        model_args={"pretrained": model_dir, "device": device, **(model_args or {})},
        tasks=tasks,
        batch_size=batch_size,
        limit=limit,
        num_fewshot=num_fewshot,
        task_manager=manager,
        log_samples=log_samples,
        bootstrap_iters=0,
        gen_kwargs=gen_kwargs,
        random_seed=seeds[0],
        numpy_random_seed=seeds[1],
        torch_random_seed=seeds[2],
        fewshot_random_seed=seeds[3],
    )
    summary = {
        "model": str(Path(model_dir).resolve()),
        "results": out["results"],
        "n-shot": out.get("n-shot", {}),
        "higher_is_better": out.get("higher_is_better", {}),
        "n-samples": out.get("n-samples", {}),
        "versions": out.get("versions", {}),
        "config": {k: v for k, v in out.get("config", {}).items() if k != "model_args"},
    }
    summary["config"]["num_fewshot"] = num_fewshot
    return summary, out.get("samples", {})

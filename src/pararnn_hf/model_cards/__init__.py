"""Hub model cards: a template with YAML metadata (``model-index`` from lm-eval results), a
writer for saved model folders, and a local metadata check."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..output_guard import write_text_atomically
from .stamp import is_unedited, stamp

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "template.md"
PIPELINE_TAGS = {"text-generation"}
# (metric key in lm-eval results, metric type for the Hub, display name)
METRICS = [
    ("acc,none", "accuracy", "accuracy"),
    ("acc_norm,none", "accuracy", "normalized accuracy"),
    ("exact_match,none", "exact_match", "exact match"),
    ("char_similarity,none", "char_similarity", "character similarity"),
    ("word_perplexity,none", "perplexity", "word perplexity"),
    ("byte_perplexity,none", "perplexity", "byte perplexity"),
    ("bits_per_byte,none", "bits_per_byte", "bits per byte"),
]


class CardError(ValueError):
    """The card's metadata would not pass the Hub's model-card validation."""


def eval_results_from_lm_eval(results: dict[str, Any], model_name: str):
    """``huggingface_hub.EvalResult``s from lm-eval's ``results`` section."""
    from huggingface_hub import EvalResult

    out = []
    for task, metrics in results.items():
        for key, metric_type, name in METRICS:
            value = metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.append(
                    EvalResult(
                        task_type="text-generation",
                        task_name="Text Generation",
                        dataset_type=task,
                        dataset_name=task,
                        metric_type=metric_type,
                        metric_name=name,
                        metric_value=float(value),
                    )
                )
    return out


def validate_card_text(text: str) -> None:
    """Check the YAML metadata locally the way the Hub does (parseable, known pipeline tag,
    library name, license, a ``model-index`` that parses into evaluation results)."""
    import yaml
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    if not text.startswith("---\n"):
        raise CardError("the card does not start with a YAML metadata block")
    try:
        meta = yaml.safe_load(text.split("---\n", 2)[1])
    except yaml.YAMLError as err:
        raise CardError(f"the metadata is not valid YAML: {err}") from None
    if not isinstance(meta, dict):
        raise CardError("the metadata block is not a mapping")
    if meta.get("library_name") != "transformers":
        raise CardError(f"library_name must be 'transformers', got {meta.get('library_name')!r}")
    if meta.get("pipeline_tag") not in PIPELINE_TAGS:
        raise CardError(f"pipeline_tag must be one of {sorted(PIPELINE_TAGS)}, got {meta.get('pipeline_tag')!r}")
    if not isinstance(meta.get("license"), str) or not meta["license"]:
        raise CardError("license is missing")
    if "model-index" in meta:
        try:
            name, results = model_index_to_eval_results(meta["model-index"])
        except (KeyError, TypeError, ValueError) as err:
            raise CardError(f"model-index does not parse: {err}") from None
        if not name or not results:
            raise CardError("model-index has no model name or no results")
    card = ModelCard(text)  # huggingface_hub's own parser must accept it too
    if card.data.to_dict().get("library_name") != "transformers":
        raise CardError("huggingface_hub did not read the metadata back")


def _limited_tasks(data: dict[str, Any]) -> dict[str, str]:
    """Tasks evaluated on part of their data (lm-eval's ``--limit``), each with how much."""
    samples = data.get("n-samples") if isinstance(data.get("n-samples"), dict) else {}
    limit = (data.get("config") or {}).get("limit") if isinstance(data.get("config"), dict) else None
    limited = {}
    for task in data["results"]:
        counts = samples.get(task) if isinstance(samples.get(task), dict) else {}
        original, effective = counts.get("original"), counts.get("effective")
        if isinstance(original, int) and isinstance(effective, int) and effective < original:
            limited[task] = f"{effective} of {original} examples"
        elif limit is not None and not counts:
            limited[task] = f"--limit {limit}"
    return limited


def _lm_eval_results(path: str | Path | None) -> tuple[dict[str, Any], dict[str, str]]:
    """lm-eval's ``results`` section, and the tasks that were evaluated on part of their data."""
    if path is None:
        return {}, {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such results file: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CardError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise CardError(f"{path} has no lm-eval 'results' section")
    for task, metrics in data["results"].items():
        if not isinstance(metrics, dict):
            raise CardError(f"{path}: results[{task!r}] must be an object of metrics, got {type(metrics).__name__}")
    return data["results"], _limited_tasks(data)


def _train_summary(path: Path) -> dict[str, Any]:
    """``train_summary.json`` if present, checked: the card prints its numbers."""
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CardError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(summary, dict):
        raise CardError(f"{path} must hold a JSON object")
    for key in ("train_loss", "eval_loss", "eval_perplexity"):
        value = summary.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise CardError(f"{path}: {key} must be a number, got {value!r}")
    return summary


def _evaluation_text(results: dict[str, Any], limited: dict[str, str]) -> str:
    rows = []
    for task, metrics in results.items():
        for key, _, name in METRICS:
            value = metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                part = f" (on {limited[task]})" if task in limited else ""
                rows.append(f"| {task}{part} | {name} | {value:.4g} |")
    if not rows:
        return "Not evaluated yet: run `pararnn-hf eval --model DIR --tasks pararnn_stdlib --output results.json`."
    text = "lm-eval (`pararnn-hf eval`):\n\n| task | metric | value |\n|---|---|---|\n" + "\n".join(rows)
    if limited:
        text += (
            "\n\nTasks marked with a part of their data were evaluated with `--limit`: their numbers are "
            "estimates from that part and are left out of the card's `model-index` metadata."
        )
    return text


def _context_text(summary: dict[str, Any], config) -> str:
    """The sequence length the run trained on (its own record), else what the config hints."""
    seq_len = summary.get("seq_len")
    if isinstance(seq_len, int) and not isinstance(seq_len, bool):
        return f"{seq_len} tokens (the sequence length it was trained on; the recurrence has no positional limit)"
    return (
        f"not recorded (the config's max_position_embeddings hint is {config.max_position_embeddings}; "
        "the recurrence has no positional limit)"
    )


def render_card(
    model_dir: str | Path,
    results_path: str | Path | None = None,
    license: str = "apache-2.0",
    model_name: str | None = None,
    repo_id: str | None = None,
    language: list[str] | None = None,
    datasets: list[str] | None = None,
) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    from ..modeling import ParaRNNConfig
    from ..presets import count_parameters

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json)")
    try:
        config = ParaRNNConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise CardError(f"{folder / 'config.json'} is not a usable ParaRNN config: {err}") from None
    summary = _train_summary(folder / "train_summary.json")
    results, limited = _lm_eval_results(results_path)
    name = model_name or folder.resolve().name
    params = count_parameters(config)
    data = ModelCardData(
        license=license,
        language=language or ["code", "en"],
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["pararnn", f"para{config.cell}", "rnn", "recurrent", "text-generation"],
        datasets=datasets,
        model_name=name,
        # only results on whole tasks are published as metadata
        eval_results=eval_results_from_lm_eval({t: m for t, m in results.items() if t not in limited}, name) or None,
    )
    if summary:
        nan = float("nan")
        losses = tuple(
            nan if summary.get(k) is None else summary[k] for k in ("train_loss", "eval_loss", "eval_perplexity")
        )
        training = (
            f"Trained with `pararnn-hf` on `{summary.get('corpus')}`: {summary.get('train_sequences')} "
            f"packed sequences ({summary.get('train_tokens_per_epoch')} tokens per epoch), final train loss "
            f"{losses[0]:.4f}, held-out loss {losses[1]:.4f} (perplexity {losses[2]:.2f})."
        )
    else:
        training = "No training record (`train_summary.json`) was found next to the weights."
    cell_text = (
        "diagonal recurrence, gates z, r, c"
        if config.cell == "gru"
        else "coupled input/forget gate with peepholes, 2x2 block-diagonal recurrence"
    )
    limitations = (
        "A small research model: it has not been aligned or filtered, and reproduces the style of its "
        "training data. Perplexities on different tokenizers are not comparable."
    )
    card = ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=name,
        cell_upper=config.cell.upper(),
        cell_text=cell_text,
        parameters=f"{params / 1e9:.2f}B"
        if params >= 1e9
        else f"{params / 1e6:.1f}M"
        if params >= 1e6
        else f"{params:,}",
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        d_inner=config.d_inner,
        heads=config.num_heads,
        vocab=config.vocab_size,
        context=_context_text(summary, config),
        repo_id=repo_id or name,
        training=training,
        evaluation=_evaluation_text(results, limited),
        limitations=limitations,
    )
    text = stamp(str(card))
    validate_card_text(text)
    return text


def preset_files() -> dict[str, Path]:
    """The bundled preset configs: ``para{gru,lstm}-{400m,1b,7b}.json``."""
    return {p.stem: p for p in sorted((HERE / "presets").glob("*.json"))}


def write_preset_files() -> list[Path]:
    """(Re)write the preset configs from ``pararnn_hf.presets`` (32k vocabulary)."""
    from ..presets import preset_config

    written = []
    for size in ("400m", "1b", "7b"):
        for cell in ("gru", "lstm"):
            path = HERE / "presets" / f"para{cell}-{size}.json"
            values = preset_config(size, cell, vocab_size=32000).to_dict()
            values.pop("transformers_version", None)
            path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
            written.append(path)
    return written


def write_card(
    model_dir: str | Path, results_path: str | Path | None = None, overwrite: bool = False, **kwargs
) -> Path:
    """Write ``README.md`` into the model folder. A README that this tool did not write, or that
    was edited since (``stamp.is_unedited``), is kept unless ``overwrite``."""
    path = check_card_target(model_dir, overwrite)
    write_text_atomically(path, render_card(model_dir, results_path, **kwargs))
    return path


def check_card_target(model_dir: str | Path, overwrite: bool) -> Path:
    """``model_dir/README.md``, unless it holds a README that pararnn-hf did not write or that
    was edited since (then ``FileExistsError`` without ``overwrite``)."""
    path = Path(model_dir) / "README.md"
    if path.exists() and not overwrite and not is_unedited(path.read_text(errors="replace")):
        raise FileExistsError(
            f"{path} exists and is not a card pararnn-hf wrote and nobody edited since; pass --overwrite to replace it"
        )
    return path

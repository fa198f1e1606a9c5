"""Conversions between reference ParaRNN checkpoints, Hugging Face folders and Llama-style
models (docs/design.md#conversion). Every function writes its output folder atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..model_cards.stamp import marker_line, stamp
from ..model_files import TOKENIZER_FILES
from ..modeling import ParaRNNConfig, ParaRNNForCausalLM
from ..output_guard import atomic_folder, check_target
from .io import DTYPES, ConversionError, load_state_dict, progress
from .reference import (
    CELL_KEYS,
    cells_from_files,
    config_from_lm_and_sidecar,
    hf_from_lm,
    infer_config_from_lm,
    lm_from_hf,
    lm_layout_problems,
    sidecar,
    sidecar_path,
)


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def _source_dtype(tensors) -> torch.dtype:
    """The floating dtype of a checkpoint's tensors (the widest, if they are mixed)."""
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        if dtype in dtypes:
            return dtype
    return torch.float32


def _load_config(path: str | os.PathLike) -> ParaRNNConfig:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no such config file: {path}")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ConversionError(f"{path} must hold a JSON object of ParaRNNConfig keys, got {type(values).__name__}")
    for key in ("model_type", "auto_map", "architectures", "transformers_version", "dtype", "torch_dtype"):
        values.pop(key, None)
    try:
        return ParaRNNConfig(**values)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"{path}: {err}") from None


def _load_model(model_dir: str | os.PathLike, strict: bool = False, **kwargs) -> ParaRNNForCausalLM:
    """A saved ParaRNN folder; a missing, truncated or corrupt one is a ConversionError. With
    ``strict``, every weight of the model must come from the folder (a ``config`` with more
    layers or other shapes would leave some freshly initialised)."""
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"no saved model folder at {model_dir} (no config.json)")
    try:
        model, info = ParaRNNForCausalLM.from_pretrained(model_dir, output_loading_info=True, **kwargs)
    except Exception as err:  # safetensors, torch and transformers raise many types for bad files
        text = " ".join(str(err).split())
        raise ConversionError(f"cannot load the model in {model_dir} ({type(err).__name__}: {text})") from None
    if strict:
        problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        problems = {k: [str(x) for x in v] for k, v in problems.items() if v}
        if problems:
            what = "; ".join(
                f"{k.replace('_', ' ')}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}" for k, v in problems.items()
            )
            raise ConversionError(
                f"the config does not match the model in {model_dir} ({what}); give a config of the same "
                "shape as --base, or leave --config out to use the base's own"
            )
    return model


def _copy_tokenizer(source: str | os.PathLike | None, target: Path) -> list[str]:
    copied = []
    if source is not None:
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, target / name)
                copied.append(name)
    return copied


def write_card_stub(folder: Path, config: ParaRNNConfig, provenance: str) -> None:
    """A minimal Hub model card; ``pararnn-hf card`` writes the full one."""
    text = (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\n"
        f"tags:\n- pararnn\n- para{config.cell}\n- rnn\n---\n{marker_line('convert')}\n\n"
        f"# Para{config.cell.upper()} language model\n\n{provenance}\n\n"
        f"- {config.num_hidden_layers} layers, width {config.hidden_size}, cell width {config.d_inner}, "
        f"{config.num_heads} heads, vocabulary {config.vocab_size}\n\n"
        "```python\nimport pararnn_hf  # or trust_remote_code=True without the package\n"
        "from transformers import AutoModelForCausalLM\n"
        'model = AutoModelForCausalLM.from_pretrained("PATH")\n```\n'
    )
    (folder / "README.md").write_text(stamp(text))


def _save(model: ParaRNNForCausalLM, tmp: Path, dtype: torch.dtype | None, max_shard_size: str) -> None:
    if dtype is not None:
        model.to(dtype)
    model.save_pretrained(tmp, max_shard_size=max_shard_size)


def from_reference(
    out: str | os.PathLike,
    cells: list[str] | None = None,
    lm: str | None = None,
    config: str | None = None,
    base: str | None = None,
    tokenizer: str | None = None,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Reference cells (``cells``, one file per layer or one file for all) or a whole LM-layout
    checkpoint (``lm``) -> a Hugging Face folder. With ``cells``, the other weights come from
    ``base`` (a saved ParaRNN folder) or are freshly initialised; the report says which."""
    if bool(cells) == bool(lm):
        raise ValueError("pass either --cells (reference cell state dicts) or --lm (a whole LM checkpoint)")
    inputs = [*(cells or []), lm, config, base, tokenizer]
    check_target(out, overwrite, keep=inputs)  # before the work, not after
    if tokenizer is not None:
        if not Path(tokenizer).is_dir():
            raise FileNotFoundError(f"--tokenizer {tokenizer}: no such folder")
        if not any((Path(tokenizer) / name).is_file() for name in TOKENIZER_FILES):
            raise FileNotFoundError(f"--tokenizer {tokenizer}: holds no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    torch_dtype = _dtype(dtype)
    report: dict = {"out": str(out)}
    if lm:
        state = load_state_dict(lm)
        beside = sidecar_path(lm)
        if config:
            cfg = _load_config(config)
        elif beside.is_file():  # written by to-reference: what the tensors do not carry
            cfg = config_from_lm_and_sidecar(state, beside)
        else:
            cfg = infer_config_from_lm(state)
        hf_state = hf_from_lm(state, cfg)
        # built in the dtype it is saved in: loading float64 weights into float32 would round them
        model = ParaRNNForCausalLM(cfg).to(torch_dtype or _source_dtype(hf_state.values()))
        _load_exact(model, hf_state, f"{lm}")
        report["rest"] = "all weights from the LM checkpoint"
    else:
        if config is None and base is None:
            raise ValueError("--cells needs --config CONFIG.json or --base DIR to know the model shape")
        cfg = _load_config(config) if config else _load_config(base)
        if base:
            model = _load_model(base, strict=True, config=cfg)
            report["rest"] = f"non-cell weights from {base}"
        else:
            torch.manual_seed(seed)
            model = ParaRNNForCausalLM(cfg)
            report["rest"] = f"non-cell weights freshly initialised (seed {seed})"
        states = [load_state_dict(p) for p in progress(cells, "reading cells", show_progress)]
        layer_cells = cells_from_files(states, [str(p) for p in cells], cfg)
        # the base's own dtype: its weights are not rounded to the cells' (bf16 cells widen exactly)
        model.to(torch_dtype or (model.dtype if base else _source_dtype(v for c in layer_cells for v in c.values())))
        with torch.no_grad():
            for k, cell in enumerate(progress(layer_cells, "placing cells", show_progress)):
                target = model.model.layers[k].mixer.cell
                for name, value in cell.items():
                    getattr(target, name).copy_(value)
    with atomic_folder(out, overwrite, keep=inputs) as tmp:
        _save(model, tmp, torch_dtype, max_shard_size)
        report["tokenizer"] = _copy_tokenizer(tokenizer or base, tmp)
        write_card_stub(
            tmp,
            cfg,
            f"Converted from reference ParaRNN weights ({lm or ', '.join(map(str, cells))}); {report['rest']}.",
        )
    return report


def _load_exact(model: ParaRNNForCausalLM, hf_state: dict[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict()
    for key, value in hf_state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"{where}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
            )
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ConversionError(f"{where}: missing {missing}, unexpected {unexpected}")


def to_reference(
    model_dir: str,
    out: str | os.PathLike,
    dtype: str | None = None,
    fmt: str = "safetensors",
    overwrite: bool = False,
    show_progress: bool = True,
    cells_only: bool = False,
) -> dict:
    """A Hugging Face folder -> the reference layouts: ``lm.<fmt>`` (the whole LM training
    layout, what the reference's ``RNNLanguageModel`` loads) with its sidecar,
    ``cells/layer_<k>.<fmt>`` (each layer's cell) and ``index.json``. A model the LM layout
    cannot express is refused, naming why; ``cells_only`` writes the cells alone."""
    if fmt not in ("safetensors", "pt"):
        raise ValueError(f"unknown format {fmt!r}; expected safetensors or pt")
    torch_dtype = _dtype(dtype)
    check_target(out, overwrite, keep=[model_dir])
    model = _load_model(model_dir)
    cfg = model.config
    if not cells_only:
        problems = lm_layout_problems(cfg)
        if problems:
            raise ConversionError(
                f"{model_dir} cannot be written in the reference's LM layout: {'; '.join(problems)}. Pass "
                "--cells-only to write the cell tensors alone, which the reference's layers load"
            )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if torch_dtype is not None:
        state = {k: v.to(torch_dtype) for k, v in state.items()}
    with atomic_folder(out, overwrite, keep=[model_dir]) as tmp:
        (tmp / "cells").mkdir()
        if not cells_only:
            _write(lm_from_hf(state, cfg), tmp / f"lm.{fmt}", fmt)
        cell_files = []
        for k in progress(range(cfg.num_hidden_layers), "writing cells", show_progress):
            cell = {n: state[f"model.layers.{k}.mixer.cell.{n}"] for n in CELL_KEYS[cfg.cell]}
            name = f"cells/layer_{k}.{fmt}"
            _write(cell, tmp / name, fmt)
            cell_files.append(name)
        cfg.to_json_file(str(tmp / "config.json"))
        side = None
        if not cells_only:
            side = sidecar_path(tmp / f"lm.{fmt}")
            side.write_text(json.dumps(sidecar(cfg, f"lm.{fmt}"), indent=2))
        index = {
            "format": "pararnn-reference",
            "cell": cfg.cell,
            "num_layers": cfg.num_hidden_layers,
            "lm": None if cells_only else f"lm.{fmt}",
            "cells": cell_files,
            "config": "config.json",
            "sidecar": None if side is None else side.name,
            "source": str(model_dir),
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=2))
    return index


def _write(state: dict[str, torch.Tensor], path: Path, fmt: str) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")


def check_llama_config(src_cfg, where: str) -> None:
    """Refuse, naming ``where``, a model whose blocks do not map onto ParaRNN's."""
    if getattr(src_cfg, "model_type", None) not in LLAMA_FAMILY:
        raise ConversionError(
            f"{where} is a {src_cfg.model_type!r} model; Llama, Mistral or Qwen2/3-style decoders are supported"
        )
    if getattr(src_cfg, "hidden_act", "silu") != "silu" or getattr(src_cfg, "mlp_bias", False):
        raise ConversionError(f"{where}: only SwiGLU MLPs without bias (hidden_act='silu') map onto ParaRNN's MLP")


def llama_student(
    source, cell: str = "gru", num_heads: int | None = None, seed: int = 0, show_progress: bool = False
) -> ParaRNNForCausalLM:
    """A ParaRNN of ``source``'s shape and dtype (a loaded Llama-family CausalLM): its
    embeddings, norms, MLPs and head copied, each attention block replaced by a fresh mixer
    (seeded by ``seed``)."""
    src_cfg = source.config
    d = src_cfg.hidden_size
    heads = num_heads or next(h for h in (8, 4, 2, 1) if d % h == 0)
    cfg = ParaRNNConfig(
        vocab_size=src_cfg.vocab_size,
        hidden_size=d,
        num_hidden_layers=src_cfg.num_hidden_layers,
        cell=cell,
        num_heads=heads,
        intermediate_size=src_cfg.intermediate_size,
        rms_norm_eps=src_cfg.rms_norm_eps,
        tie_word_embeddings=bool(getattr(src_cfg, "tie_word_embeddings", False)),
        max_position_embeddings=src_cfg.max_position_embeddings,
        initializer_range=src_cfg.initializer_range,
        pad_token_id=src_cfg.pad_token_id,
        bos_token_id=src_cfg.bos_token_id,
        eos_token_id=src_cfg.eos_token_id,
    )
    torch.manual_seed(seed)
    model = ParaRNNForCausalLM(cfg).to(source.dtype)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(source.model.embed_tokens.weight)
        model.model.norm.weight.copy_(source.model.norm.weight)
        if not cfg.tie_word_embeddings:
            model.lm_head.weight.copy_(source.lm_head.weight)
        for k in progress(range(cfg.num_hidden_layers), "copying layers", show_progress):
            src, dst = source.model.layers[k], model.model.layers[k]
            dst.mixer.norm.weight.copy_(src.input_layernorm.weight)
            dst.mlp_norm.weight.copy_(src.post_attention_layernorm.weight)
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(dst.mlp, name).weight.copy_(getattr(src.mlp, name).weight)
    return model


def from_llama(
    llama_dir: str,
    out: str | os.PathLike,
    cell: str = "gru",
    num_heads: int | None = None,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Upcycle a Llama/Mistral-style model: embeddings, norms, MLPs and head are copied, every
    attention block becomes a fresh ParaRNN mixer of the same width; the tokenizer is copied."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_target(out, overwrite, keep=[llama_dir])
    if not (Path(llama_dir) / "config.json").is_file():
        raise FileNotFoundError(f"no saved model folder at {llama_dir} (no config.json)")
    check_llama_config(AutoConfig.from_pretrained(llama_dir), llama_dir)
    # in the checkpoint's own dtype (a bf16 Llama gives a bf16 folder, not one twice its size)
    source = AutoModelForCausalLM.from_pretrained(llama_dir, dtype="auto")
    model = llama_student(source, cell, num_heads, seed, show_progress)
    cfg, heads = model.config, model.config.num_heads
    with atomic_folder(out, overwrite, keep=[llama_dir]) as tmp:
        _save(model, tmp, _dtype(dtype), max_shard_size)
        tokenizer = _copy_tokenizer(llama_dir, tmp)
        write_card_stub(
            tmp,
            cfg,
            f"Upcycled from {llama_dir}: embeddings, norms, MLPs and head copied; each "
            "attention block replaced by a freshly initialised ParaRNN mixer.",
        )
    return {"out": str(out), "layers": cfg.num_hidden_layers, "num_heads": heads, "tokenizer": tokenizer}

"""The reference ParaRNN layouts and their mapping to this package's Hugging Face names.

Cell state dicts: ``A`` [3, N], ``B`` [H, D/H, 3, N/H], ``b`` [3, N] and, for ParaLSTM, ``C``
[2, N] (docs/design.md#cells). ``A`` and ``C`` may also come as stacks of diagonal matrices [r, N, N].

The LM training layout: ``blocks.{2k}`` is layer k's mixer (``norm``, ``in_proj``,
``conv.conv``, ``rnn_cell.*``, ``gate_norm``, ``out_proj``), ``blocks.{2k+1}`` its MLP (``0`` the
norm, ``1.w1``/``1.w3``/``1.w2`` the SwiGLU gate/up/down projections), then ``embedding``,
``final_norm`` and ``lm_head``. The reference's own checkpoints of this layout also hold a
learnable scalar ``blocks.{2k}.residual_scale`` (``x = x * residual_scale + mixer(x)``) and their
MLP blocks have no residual (``x = mlp(norm(x))``): a checkpoint with ``residual_scale`` keys is
read as that model (``mixer_residual_scale=True, mlp_residual=False``), and such a model writes
them back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..modeling import ParaRNNConfig
from .io import ConversionError

CELL_KEYS = {"gru": ("A", "B", "b"), "lstm": ("A", "B", "b", "C")}

# (reference suffix under blocks.{2k} or blocks.{2k+1}, which block, HF suffix under model.layers.{k})
LAYER_MAP = [
    ("norm.weight", 0, "mixer.norm.weight"),
    ("in_proj.weight", 0, "mixer.in_proj.weight"),
    ("conv.conv.weight", 0, "mixer.conv.weight"),
    ("conv.conv.bias", 0, "mixer.conv.bias"),
    ("rnn_cell.A", 0, "mixer.cell.A"),
    ("rnn_cell.B", 0, "mixer.cell.B"),
    ("rnn_cell.b", 0, "mixer.cell.b"),
    ("rnn_cell.C", 0, "mixer.cell.C"),
    ("gate_norm.weight", 0, "mixer.gate_norm.weight"),
    ("out_proj.weight", 0, "mixer.out_proj.weight"),
    ("residual_scale", 0, "mixer.residual_scale"),
    ("0.weight", 1, "mlp_norm.weight"),
    ("1.w1.weight", 1, "mlp.gate_proj.weight"),
    ("1.w3.weight", 1, "mlp.up_proj.weight"),
    ("1.w2.weight", 1, "mlp.down_proj.weight"),
]
GLOBAL_MAP = [
    ("embedding.weight", "model.embed_tokens.weight"),
    ("final_norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
]


def expected_cell_shapes(config: ParaRNNConfig) -> dict[str, tuple[int, ...]]:
    N, H = config.d_inner, config.num_heads
    shapes = {"A": (3, N), "B": (H, N // H, 3, N // H), "b": (3, N)}
    if config.cell == "lstm":
        shapes["C"] = (2, N)
    return shapes


def _undiagonal(name: str, value: torch.Tensor, rows: int, N: int, where: str) -> torch.Tensor:
    """[rows, N] as is; [rows, N, N] must be diagonal and gives its diagonals."""
    if value.dim() == 3 and tuple(value.shape) == (rows, N, N):
        diag = torch.diagonal(value, dim1=-2, dim2=-1)
        off = value - torch.diag_embed(diag)
        if torch.count_nonzero(off):
            raise ConversionError(
                f"{where}: {name} is a [{rows}, {N}, {N}] matrix stack with non-zero off-diagonal entries; "
                "ParaRNN cells need diagonal recurrence matrices"
            )
        return diag.contiguous()
    return value


def cell_from_reference(state: dict[str, torch.Tensor], config: ParaRNNConfig, where: str) -> dict[str, torch.Tensor]:
    """Validate one layer's reference cell dict against the config and return it as ``A, B, b[, C]``."""
    expected = expected_cell_shapes(config)
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown:
        hint = " (a ParaLSTM peephole C in a ParaGRU config?)" if unknown == ["C"] else ""
        raise ConversionError(f"{where}: unknown keys {unknown}{hint}; a {config.cell} cell has {sorted(expected)}")
    if missing:
        raise ConversionError(f"{where}: missing keys {missing}; a {config.cell} cell has {sorted(expected)}")
    out = {}
    N = config.d_inner
    for name, shape in expected.items():
        value = state[name]
        if name in ("A", "C"):
            value = _undiagonal(name, value, shape[0], N, where)
        if name == "B" and value.dim() == 4 and value.shape[0] != shape[0]:
            raise ConversionError(
                f"{where}: B has {value.shape[0]} heads but the config has num_heads={config.num_heads}"
            )
        if tuple(value.shape) != shape:
            raise ConversionError(f"{where}: {name} has shape {tuple(value.shape)}, expected {shape}")
        out[name] = value
    return out


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def split_layers(state: dict[str, torch.Tensor], where: str) -> list[dict[str, torch.Tensor]]:
    """One file holding every layer's cell under a per-layer prefix (``layers.3.rnn_cell.A``,
    ``blocks.6.rnn_cell.A``, ``3.A``...) -> a list of cell dicts in layer order."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        prefix, _, name = key.rpartition(".")
        if not prefix:
            raise ConversionError(
                f"{where}: key {key!r} has no per-layer prefix; one file for several layers needs keys such as "
                "'layers.0.A', otherwise pass one file per layer"
            )
        groups.setdefault(prefix, {})[name] = value
    return [groups[p] for p in sorted(groups, key=_natural_key)]


def cells_from_files(states: list[dict[str, torch.Tensor]], names: list[str], config: ParaRNNConfig):
    """Per-layer cell dicts from either one file per layer or one file with every layer."""
    L = config.num_hidden_layers
    if len(states) == 1 and L > 1:
        layers = split_layers(states[0], names[0])
        where = [f"{names[0]} (layer {i})" for i in range(len(layers))]
    else:  # one file per layer; keys may carry a prefix such as rnn_cell.
        layers = [{k.rpartition(".")[2]: v for k, v in s.items()} for s in states]
        where = list(names)
    if len(layers) != L:
        raise ConversionError(f"got cells for {len(layers)} layers, but the config has num_hidden_layers={L}")
    return [cell_from_reference(layer, config, w) for layer, w in zip(layers, where)]


def infer_config_from_lm(state: dict[str, torch.Tensor], **overrides) -> ParaRNNConfig:
    """A ParaRNNConfig read off the shapes of an LM-layout state dict."""
    try:
        vocab, d = state["embedding.weight"].shape
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
        L = (max(blocks) + 1) // 2
        d_inner = state["blocks.0.in_proj.weight"].shape[0] // 2
        heads = state["blocks.0.rnn_cell.B"].shape[0]
        kernel = state["blocks.0.conv.conv.weight"].shape[-1]
        intermediate = state["blocks.1.1.w1.weight"].shape[0]
    except KeyError as err:
        raise ConversionError(f"not an LM-layout checkpoint: missing {err.args[0]!r}") from None
    tied = "lm_head.weight" not in state or torch.equal(state["lm_head.weight"], state["embedding.weight"])
    reference_blocks = "blocks.0.residual_scale" in state
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=d,
        num_hidden_layers=L,
        expand=d_inner // d,
        num_heads=heads,
        conv_kernel=kernel,
        intermediate_size=intermediate,
        tie_word_embeddings=tied,
        cell="lstm" if "blocks.0.rnn_cell.C" in state else "gru",
        mixer_residual_scale=reference_blocks,
        mlp_residual=not reference_blocks,
    )
    if d_inner % d:
        raise ConversionError(f"in_proj gives a cell width {d_inner} that is not a multiple of the width {d}")
    kwargs.update(overrides)
    return ParaRNNConfig(**kwargs)


# The config keys that the LM layout's tensors determine (infer_config_from_lm); a sidecar
# adds every other key, and must agree with the tensors on these.
SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "expand",
    "num_heads",
    "conv_kernel",
    "intermediate_size",
    "tie_word_embeddings",
    "cell",
    "mixer_residual_scale",
    "mlp_residual",
)
_NOT_CONFIG = ("model_type", "auto_map", "architectures", "transformers_version", "dtype", "torch_dtype")
SIDECAR_FORMAT = "pararnn-reference-sidecar"


def sidecar_path(lm_file: str | Path) -> Path:
    """The sidecar of a reference LM file: ``lm.safetensors`` -> ``lm.pararnn.json``."""
    lm_file = Path(lm_file)
    return lm_file.with_name(f"{lm_file.name.split('.')[0]}.pararnn.json")


def sidecar(config: ParaRNNConfig, lm_name: str) -> dict:
    """What an exact round trip needs beside an LM-layout file: the config keys its tensors do
    not carry (norm epsilon, token ids, solver and initialisation settings...)."""
    values = {k: v for k, v in config.to_dict().items() if k not in _NOT_CONFIG}
    return {"format": SIDECAR_FORMAT, "file": lm_name, "config": values}


def config_from_lm_and_sidecar(state: dict[str, torch.Tensor], path: Path) -> ParaRNNConfig:
    """The LM's config: shapes from its tensors, the rest from the sidecar at ``path``, which
    must agree with the tensors (a sidecar of another checkpoint is refused by name)."""
    inferred = infer_config_from_lm(state)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        values = dict(data["config"])
        if data.get("format") != SIDECAR_FORMAT:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise ConversionError(f"{path} is not a pararnn-hf sidecar (JSON with format {SIDECAR_FORMAT!r})") from None
    for key in SHAPE_KEYS:
        if key in values and values[key] != getattr(inferred, key):
            raise ConversionError(
                f"{path} gives {key}={values[key]!r} but the checkpoint's tensors give {getattr(inferred, key)!r}: "
                "the sidecar belongs to another checkpoint; remove it, or pass --config"
            )
    extras = {k: v for k, v in values.items() if k not in SHAPE_KEYS and k not in _NOT_CONFIG}
    try:
        return infer_config_from_lm(state, **extras)
    except (TypeError, ValueError) as err:
        raise ConversionError(f"{path}: {err}") from None


def _in_model(hf_suffix: str, config: ParaRNNConfig) -> bool:
    if hf_suffix.endswith("cell.C"):
        return config.cell == "lstm"
    if hf_suffix.endswith("residual_scale"):
        return config.mixer_residual_scale
    return True


def hf_from_lm(state: dict[str, torch.Tensor], config: ParaRNNConfig) -> dict[str, torch.Tensor]:
    """LM-layout state dict -> ParaRNNForCausalLM state dict (every key accounted for)."""
    out, used = {}, set()
    for k in range(config.num_hidden_layers):
        for suffix, which, hf in LAYER_MAP:
            key = f"blocks.{2 * k + which}.{suffix}"
            if not _in_model(hf, config):
                continue
            if key not in state:
                raise ConversionError(f"missing key {key!r} for layer {k}")
            value = state[key]
            if suffix == "residual_scale":
                if value.numel() != 1:
                    raise ConversionError(f"{key} must be a scalar, got shape {tuple(value.shape)}")
                value = value.reshape(())
            out[f"model.layers.{k}.{hf}"] = value
            used.add(key)
        cell_keys = {n: out[f"model.layers.{k}.mixer.cell.{n}"] for n in CELL_KEYS[config.cell]}
        for n, v in cell_from_reference(cell_keys, config, f"layer {k} rnn_cell").items():
            out[f"model.layers.{k}.mixer.cell.{n}"] = v
    head, embedding = state.get("lm_head.weight"), state.get("embedding.weight")
    if config.tie_word_embeddings and head is not None and embedding is not None and not torch.equal(head, embedding):
        # loading both into one tied matrix would silently keep whichever comes last
        raise ConversionError(
            "the config ties the head to the embedding (tie_word_embeddings is true, the default when the key is "
            "missing), but the checkpoint's lm_head.weight differs from embedding.weight; set "
            '"tie_word_embeddings": false in the config'
        )
    for ref, hf in GLOBAL_MAP:
        if ref in state:
            out[hf] = state[ref]
            used.add(ref)
        elif ref != "lm_head.weight" or not config.tie_word_embeddings:
            raise ConversionError(f"missing key {ref!r}")
    unknown = sorted(set(state) - used)
    if unknown:
        raise ConversionError(f"unknown keys {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def lm_layout_problems(config: ParaRNNConfig) -> list[str]:
    """Why a model cannot be written as the reference's LM (empty when it can): that LM has a
    learnable ``residual_scale`` per mixer block, MLP blocks without a residual, and a head
    tied to the embedding."""
    problems = []
    if not config.mixer_residual_scale or config.mlp_residual:
        problems.append(
            "its blocks are the standard pre-norm residual ones (mixer_residual_scale=False, mlp_residual=True), "
            "while the reference's scale the mixer residual and give the MLP none"
        )
    if not config.tie_word_embeddings:
        problems.append("its head is not tied to the embedding, while the reference's is")
    return problems


def lm_from_hf(hf_state: dict[str, torch.Tensor], config: ParaRNNConfig) -> dict[str, torch.Tensor]:
    """ParaRNNForCausalLM state dict -> LM-layout state dict (the inverse of ``hf_from_lm``),
    keyed and shaped as the reference's ``RNNLanguageModel.state_dict()``: ``residual_scale``
    of shape (1,), and ``lm_head.weight`` present (a copy of the tied embedding)."""
    out = {}
    for k in range(config.num_hidden_layers):
        for suffix, which, hf in LAYER_MAP:
            key = f"model.layers.{k}.{hf}"
            if key in hf_state:
                value = hf_state[key]
                out[f"blocks.{2 * k + which}.{suffix}"] = value.reshape(1) if suffix == "residual_scale" else value
    for ref, hf in GLOBAL_MAP:
        # safetensors refuses two names for one storage: the tied head is written as a copy
        out[ref] = hf_state[hf].clone() if ref == "lm_head.weight" and config.tie_word_embeddings else hf_state[hf]
    return out

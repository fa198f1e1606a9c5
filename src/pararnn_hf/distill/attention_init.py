"""Stage 1 of upcycling: each ParaRNN mixer initialised from the attention block it replaces
(docs/design.md#upcycling).

- ``value``: the value half of ``in_proj`` from ``v_proj``, repeated over the GQA groups, so
  that what the mixer carries through time is what attention averaged;
- ``gate``: the gate half of ``in_proj`` from ``q_proj`` (or ``k_proj``): the output gate
  SiLU(g) reads the same projection of the token that attention used to choose what to read;
- ``out``: ``out_proj`` from ``o_proj``;
- ``conv``: the depthwise conv as an identity tap (the current token, weight 1, bias 0);
- ``cell``: a near-linear leaky integrator. The recurrent weights ``A`` (and the LSTM's
  peepholes ``C``) are zero, so the gates do not depend on the state; the candidate reads its
  own channel (``B`` the identity on the candidate row, zero on the gate rows) at a small
  scale where tanh is nearly linear; the update gate's bias sets a time constant per
  channel, spread log-uniformly from 2 to ``max_timescale`` tokens within every head, so each
  head sees every range of the context that attention covered. The LSTM's output gate starts
  nearly open.
Each part can be left out (``parts``) to measure what it is worth; what is left out keeps the
fresh initialisation of ``convert from-llama``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

INIT_PARTS = ("value", "gate", "out", "conv", "cell")
GATE_SOURCES = ("q", "k")
# the candidate's input scale: silu(v) of order 1 stays where tanh is within ~5 % of linear
CANDIDATE_SCALE = 0.3
LSTM_OUTPUT_GATE_BIAS = 4.0  # sigmoid(4) = 0.98: h = o·tanh(c) passes c nearly unchanged
MIN_TIMESCALE = 2.0  # a time constant of 1 is a gate of exactly 1 (an infinite bias)


class AttentionInitError(ValueError):
    """The teacher's attention cannot be mapped onto the student's mixer."""


def attention_shapes(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of a Llama-family config."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv, head_dim


def repeat_kv(weight: torch.Tensor, heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """A k/v projection ``[kv_heads · head_dim, d]`` repeated to one block per query head, as
    grouped-query attention reads it: query head ``j`` uses kv head ``j // (heads / kv_heads)``."""
    return weight.view(kv_heads, head_dim, -1).repeat_interleave(heads // kv_heads, dim=0).reshape(heads * head_dim, -1)


def timescales(channels: int, max_timescale: float) -> torch.Tensor:
    """``channels`` time constants spread log-uniformly over [MIN_TIMESCALE, max_timescale]."""
    if channels == 1:
        return torch.tensor([float(max_timescale)], dtype=torch.float64)
    return torch.logspace(math.log10(MIN_TIMESCALE), math.log10(max_timescale), channels, dtype=torch.float64)


def leaky_integrator_(cell: nn.Module, max_timescale: float) -> None:
    """The cell's parameters set so that it starts as a leaky integrator of its candidate input
    (see the module docstring). ``cell`` is a ParaGRU or ParaLSTM layer."""
    H, DH, _, NH = cell.B.shape
    if DH != NH:
        raise AttentionInitError(
            f"the cell's heads take {DH} inputs for {NH} channels; the identity input needs them equal"
        )
    tau = timescales(NH, max_timescale).repeat(H)  # every head spans every range
    rate = (1.0 / tau).clamp(1e-6, 1 - 1e-6)  # the share of the new candidate per step
    rows = tuple(cell.cell.GATE_ROWS)  # GRU (z, r, c), LSTM (f, o, c)
    with torch.no_grad():
        cell.A.zero_()
        if getattr(cell, "C", None) is not None:
            cell.C.zero_()
        cell.B.zero_()
        cell.B[:, :, rows.index("c"), :] = torch.eye(DH, dtype=cell.B.dtype, device=cell.B.device) * CANDIDATE_SCALE
        cell.b.zero_()
        if cell.cell.NAME == "gru":  # h' = (1 - z) h + z c~: z is the rate
            cell.b[rows.index("z")] = torch.logit(rate).to(cell.b.dtype)
        else:  # c' = f c + (1 - f) c~: f is the retention; o nearly open
            cell.b[rows.index("f")] = torch.logit(1 - rate).to(cell.b.dtype)
            cell.b[rows.index("o")] = LSTM_OUTPUT_GATE_BIAS


def check_mappable(teacher_config, student_config, parts: Iterable[str]) -> None:
    """Refuse, naming the sizes, what cannot be mapped: the value/gate/out maps need the
    attention width (heads · head dim) to equal the student's cell width."""
    parts = set(parts)
    unknown = parts - set(INIT_PARTS)
    if unknown:
        raise AttentionInitError(f"unknown init parts {sorted(unknown)}; choose from {', '.join(INIT_PARTS)}")
    heads, kv, head_dim = attention_shapes(teacher_config)
    if heads % kv:
        raise AttentionInitError(f"{heads} query heads are not a multiple of {kv} key/value heads")
    width = heads * head_dim
    if parts & {"value", "gate", "out"} and width != student_config.d_inner:
        raise AttentionInitError(
            f"the teacher's attention is {heads} heads x {head_dim} = {width} wide and the student's cell "
            f"{student_config.d_inner}; the value/gate/out maps need them equal (leave those parts out with "
            "--init-parts conv,cell, or --init fresh)"
        )


def attention_init_(
    student,
    teacher,
    parts: Iterable[str] = INIT_PARTS,
    gate_from: str = "q",
    max_timescale: float = 256.0,
) -> list[str]:
    """Initialise every mixer of ``student`` (a ParaRNNForCausalLM made by ``from-llama``)
    from ``teacher``'s attention (a Llama-family CausalLM of the same depth and width), in
    place. Returns the parts applied. Deterministic: no random numbers are drawn."""
    asked = set(parts)
    check_mappable(teacher.config, student.config, asked)
    parts = [p for p in INIT_PARTS if p in asked]
    if gate_from not in GATE_SOURCES:
        raise AttentionInitError(f"gate_from must be one of {GATE_SOURCES}, got {gate_from!r}")
    if max_timescale < MIN_TIMESCALE:
        raise AttentionInitError(f"max_timescale must be >= {MIN_TIMESCALE}, got {max_timescale}")
    heads, kv, head_dim = attention_shapes(teacher.config)
    D = student.config.d_inner
    for layer, block in zip(student.model.layers, teacher.model.layers):
        mixer, attn = layer.mixer, block.self_attn
        with torch.no_grad():
            W = mixer.in_proj.weight
            if "value" in parts:
                W[:D] = repeat_kv(attn.v_proj.weight, heads, kv, head_dim).to(W.dtype)
            if "gate" in parts:
                src = attn.q_proj.weight if gate_from == "q" else repeat_kv(attn.k_proj.weight, heads, kv, head_dim)
                W[D:] = src.to(W.dtype)
            if "out" in parts:
                mixer.out_proj.weight.copy_(attn.o_proj.weight)
            if "conv" in parts:
                mixer.conv.weight.zero_()
                mixer.conv.weight[:, 0, -1] = 1.0  # the last tap reads the current token
                if mixer.conv.bias is not None:
                    mixer.conv.bias.zero_()
        if "cell" in parts:
            leaky_integrator_(mixer.cell, max_timescale)
    return parts

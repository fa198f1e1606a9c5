"""ParaRNN language models for Hugging Face Transformers (docs/design.md#model, #cache).

This file is copied verbatim into saved model folders (with ``configuration_pararnn.py`` and
a self-contained ``pararnn_core.py``), so it imports only torch, transformers and its two
siblings. The recurrent layers come from ``pararnn_core``: the installed package (with its
kernels) when it can be imported, else the pure-PyTorch copy bundled in the folder.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)

from .configuration_pararnn import ParaRNNConfig
from .pararnn_core import CELL_CLASSES, check_resets, core_source, decode_ops

AUTO_MAP = {
    "AutoConfig": "configuration_pararnn.ParaRNNConfig",
    "AutoModel": "modeling_pararnn.ParaRNNModel",
    "AutoModelForCausalLM": "modeling_pararnn.ParaRNNForCausalLM",
    "AutoModelForSequenceClassification": "modeling_pararnn.ParaRNNForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_pararnn.ParaRNNForTokenClassification",
}


# The standard outputs name the cache field ``cache`` from transformers 5.24 on and
# ``past_key_values`` before; use whichever this installation has.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _output_with_cache(cls: type, cache: Any, **fields: Any):
    return cls(**{CACHE_FIELD: cache}, **fields)


class ParaRNNCache:
    """The recurrent cache: per layer the conv tail (last ``conv_kernel - 1`` conv inputs) and
    the cell state (h, or (c, h)) in fp32 (fp64 for fp64 models). O(1) in the context length.

    Every tensor is allocated once and updated in place (``update``), so a decoding step reads
    and writes fixed buffers: it can be compiled or captured in a CUDA graph (the storage of
    ``conv_states`` and ``rnn_states`` never changes while decoding; beam reordering and batch
    selection build new ones, as they must).

    Not a ``transformers.Cache``: those are key/value caches, and the stock "linear attention"
    route drops or mishandles recurrent state on some 5.x releases (docs/design.md#cache).
    """

    is_compileable = True

    def __init__(self, config: ParaRNNConfig, batch_size: int, dtype: torch.dtype, device: torch.device | str):
        self.num_layers = config.num_hidden_layers
        k = config.conv_kernel - 1
        self.conv_states: list[torch.Tensor] = [
            torch.zeros(batch_size, k, config.d_inner, dtype=dtype, device=device) for _ in range(self.num_layers)
        ]
        rows = len(CELL_CLASSES[config.cell].cell.STATE_ROWS)
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32

        def zero_state():
            return torch.zeros(batch_size, config.d_inner, dtype=state_dtype, device=device)

        # the layers' public state: h for the GRU, (c, h) for the LSTM
        self.rnn_states: list[Any] = [
            zero_state() if rows == 1 else tuple(zero_state() for _ in range(rows)) for _ in range(self.num_layers)
        ]
        self.seen_tokens = 0

    def update(self, layer_idx: int, conv_state: torch.Tensor, rnn_state: Any) -> None:
        """Write one layer's new states into the cache's buffers (in place). A state that is
        part of an autograd graph replaces the buffer instead: writing it in place would make
        the buffer a node of the graph that later steps overwrite."""
        old_conv, old_rnn = self.conv_states[layer_idx], self.rnn_states[layer_idx]
        new = [conv_state, *(rnn_state if isinstance(rnn_state, tuple) else (rnn_state,))]
        old = [old_conv, *(old_rnn if isinstance(old_rnn, tuple) else (old_rnn,))]
        in_graph = torch.is_grad_enabled() and any(t.requires_grad for t in new)
        if in_graph or any(o.requires_grad or o.shape != t.shape or o.dtype != t.dtype for o, t in zip(old, new)):
            self.conv_states[layer_idx], self.rnn_states[layer_idx] = conv_state, rnn_state
            return
        for o, t in zip(old, new):
            o.copy_(t)

    def leave_inference_mode(self) -> None:
        """Make a cache filled under ``torch.inference_mode()`` usable outside it: its tensors
        are inference tensors, which may not be updated in place (nor saved for backward)
        there. Copies them once, on the first forward outside; a cheap flag check otherwise."""
        if torch.is_inference_mode_enabled() or not self.conv_states or not self.conv_states[0].is_inference():
            return
        self._map(lambda t: t.clone())

    def __len__(self) -> int:
        return self.num_layers

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens consumed so far; generate() uses it to pass only the new tokens."""
        return self.seen_tokens

    @property
    def is_linear(self) -> list[bool]:
        # generate() (5.24) strips already-consumed prompt tokens only for caches whose layers
        # are not "linear"; this cache counts consumed tokens exactly, so it wants the strip.
        return [False] * self.num_layers

    def _map(self, fn) -> None:
        self.conv_states = [fn(t) for t in self.conv_states]
        self.rnn_states = [
            None if s is None else (fn(s) if isinstance(s, torch.Tensor) else tuple(fn(t) for t in s))
            for s in self.rnn_states
        ]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search)."""
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))


class ParaRNNRMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float() if x.element_size() < 4 else x  # half precision upcast; float64 stays float64
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def document_ids(resets: torch.Tensor, K: int) -> torch.Tensor:
    """Which document each conv input belongs to, for ``xp`` = [conv tail (K-1 steps); x]: the
    tail is document 0, and every reset at t starts the next one."""
    B = resets.shape[0]
    return torch.cat([resets.new_zeros(B, K - 1, dtype=torch.long), resets.long().cumsum(1)], dim=1)


def conv_tail(xp: torch.Tensor, resets: torch.Tensor | None, K: int) -> torch.Tensor:
    """The conv state to carry into the next chunk or step: the last ``K - 1`` conv inputs, with
    those from before the last document reset among them zeroed. Every later step belongs to
    that document or a newer one, so none may read them; zeros are what a document start reads
    (the first chunk's tail), so chunked, cached and one-shot runs agree (docs/design.md#model)."""
    tail = xp[:, xp.shape[1] - (K - 1) :]
    if resets is None or K == 1:
        return tail
    doc = document_ids(resets, K)[:, xp.shape[1] - (K - 1) :]
    return tail * (doc == doc[:, -1:]).unsqueeze(-1).to(tail.dtype)


def causal_depthwise_conv(
    xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, resets: torch.Tensor | None
) -> torch.Tensor:
    """``y_t = bias + sum_k weight[:, 0, k] * xp[t + k]`` for ``xp`` = [conv tail (K-1 steps);
    x (T steps)], as ``nn.Conv1d`` computes it. Inputs from before a document reset at or
    before t do not reach ``y_t``, so packed documents stay independent."""
    K = weight.shape[-1]
    T = xp.shape[1] - (K - 1)
    if resets is not None:
        doc = document_ids(resets, K)
    y = xp[:, K - 1 :] * weight[:, 0, K - 1]
    for k in range(K - 1):
        term = xp[:, k : k + T] * weight[:, 0, k]
        if resets is not None:
            term = term * (doc[:, k : k + T] == doc[:, K - 1 :]).unsqueeze(-1).to(xp.dtype)
        y = y + term
    return y if bias is None else y + bias


def _copy_state(state):
    return tuple(t.clone() for t in state) if isinstance(state, tuple) else state.clone()


class ParaRNNMixer(nn.Module):
    """RMSNorm -> in_proj -> (x, g) -> causal conv -> SiLU -> cell -> RMSNorm(h) * SiLU(g) -> out_proj."""

    def __init__(self, config: ParaRNNConfig, layer_idx: int):
        super().__init__()
        d, di = config.hidden_size, config.d_inner
        self.layer_idx = layer_idx
        self.norm = ParaRNNRMSNorm(d, config.rms_norm_eps)
        self.in_proj = nn.Linear(d, 2 * di, bias=False)
        self.conv = nn.Conv1d(di, di, config.conv_kernel, groups=di, bias=True)
        self.cell = CELL_CLASSES[config.cell](
            di,
            di,
            num_heads=config.num_heads,
            backend=config.backend,
            triton_schedule=getattr(config, "triton_schedule", "auto"),
            newton_max_iterations=config.newton_max_iterations,
            newton_tolerance=config.newton_tolerance,
            init_recurrent_std=config.init_recurrent_std,
            init_input_bound=config.init_input_bound,
            init_gate_bias=tuple(config.init_gate_bias),
        )
        self.cell.layer_name = f"model.layers.{layer_idx}.mixer.cell"
        self.gate_norm = ParaRNNRMSNorm(di, config.rms_norm_eps)
        self.out_proj = nn.Linear(di, d, bias=False)
        # the reference LM training layout scales the residual by a learnable scalar
        self.residual_scale = nn.Parameter(torch.ones(())) if config.mixer_residual_scale else None

    def forward(self, hidden, mask, resets, conv_state, rnn_state):
        x, g = self.in_proj(self.norm(hidden)).chunk(2, dim=-1)
        if mask is not None:  # padding must not reach the conv, whatever it holds (NaN included)
            x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        K = self.conv.kernel_size[0]
        if conv_state is None:
            conv_state = x.new_zeros(x.shape[0], K - 1, x.shape[-1])
        xp = torch.cat([conv_state.to(x.dtype), x], dim=1)
        new_conv_state = conv_tail(xp, resets, K)
        x = F.silu(causal_depthwise_conv(xp, self.conv.weight, self.conv.bias, resets))
        if x.shape[1] == 1 and resets is None:  # decoding: one O(1) step
            y, new_rnn_state = self.cell.step(x[:, 0], rnn_state, mask=None if mask is None else mask[:, 0])
            y = y.unsqueeze(1)
        else:
            y, new_rnn_state = self.cell(x, initial_state=rnn_state, mask=mask, resets=resets, return_state=True)
            # over a sequence the states leave as copies, not views: a view would keep the whole
            # [batch, time] input alive, and FSDP2 warns on wrapped modules that return views. The
            # decoding step skips the copy: the cache copies its tiny states in place right away.
            new_conv_state, new_rnn_state = new_conv_state.clone(), _copy_state(new_rnn_state)
        out = self.out_proj(self.gate_norm(y) * F.silu(g))
        residual = hidden if self.residual_scale is None else hidden * self.residual_scale.to(hidden.dtype)
        return residual + out, new_conv_state, new_rnn_state


class ParaRNNMLP(nn.Module):
    def __init__(self, config: ParaRNNConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ParaRNNBlock(GradientCheckpointingLayer):
    """Pre-norm residual mixer, then pre-norm SwiGLU MLP: residual by default, without one
    (``x = mlp(norm(x))``) when ``config.mlp_residual`` is False, as in the reference LM layout."""

    def __init__(self, config: ParaRNNConfig, layer_idx: int):
        super().__init__()
        self.mixer = ParaRNNMixer(config, layer_idx)
        self.mlp_norm = ParaRNNRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = ParaRNNMLP(config)
        self.mlp_residual = config.mlp_residual

    def forward(self, hidden, mask=None, resets=None, conv_state=None, rnn_state=None):
        hidden, conv_state, rnn_state = self.mixer(hidden, mask, resets, conv_state, rnn_state)
        mlp_out = self.mlp(self.mlp_norm(hidden))
        hidden = hidden + mlp_out if self.mlp_residual else mlp_out
        return hidden, conv_state, rnn_state


class ParaRNNPreTrainedModel(PreTrainedModel):
    config_class = ParaRNNConfig
    config: ParaRNNConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ParaRNNBlock"]
    _is_stateful = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model creates its own ParaRNNCache

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Conv1d):
            # PyTorch's default depthwise-conv init: U(+-1/sqrt(kernel)) for weight and bias
            bound = 1.0 / module.kernel_size[0] ** 0.5
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, ParaRNNRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, ParaRNNMixer) and module.residual_scale is not None:
            init.ones_(module.residual_scale)
        elif isinstance(module, tuple(CELL_CLASSES.values())):
            module.reset_parameters(init)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs):
        """Also write ``auto_map`` and the self-contained modeling files, so the folder loads
        with ``trust_remote_code=True`` where ``pararnn_hf`` is not installed."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)
        if push_to_hub:
            repo_id = kwargs.get("repo_id") or os.path.basename(os.path.normpath(str(save_directory)))
            self.push_to_hub(repo_id, token=kwargs.get("token"), max_shard_size=kwargs.get("max_shard_size", "5GB"))


def write_remote_code(save_directory: str | os.PathLike) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    texts = {
        "configuration_pararnn.py": _read(os.path.join(here, "configuration_pararnn.py")),
        "modeling_pararnn.py": _read(os.path.join(here, "modeling_pararnn.py")),
        "pararnn_core.py": core_source(),
    }
    for name, text in texts.items():
        with open(os.path.join(save_directory, name), "w", encoding="utf-8") as f:
            f.write(text)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


class ParaRNNModel(ParaRNNPreTrainedModel):
    def __init__(self, config: ParaRNNConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([ParaRNNBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = ParaRNNRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: ParaRNNCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        resets: torch.Tensor | None = None,
        past_key_values: ParaRNNCache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        """``attention_mask`` [B, L] (L >= T; the last T columns belong to ``input_ids``):
        0 = padding, an identity step. ``resets`` [B, T] (bool): a new document starts at t
        (packed training). ``cache``/``past_key_values``: a ``ParaRNNCache`` to continue from."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("ParaRNNModel: pass exactly one of input_ids or inputs_embeds")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, ParaRNNCache):
            raise TypeError(f"ParaRNNModel: the cache must be a ParaRNNCache, got {type(cache).__name__}")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # the cache would be written by the recomputation too
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = hidden.shape[:2]
        mask = self._step_mask(attention_mask, B, T)
        if mask is not None:  # what padded positions hold (NaN in inputs_embeds) must not matter
            hidden = torch.where(mask.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
        if resets is not None and tuple(resets.shape) != (B, T):
            raise ValueError(f"ParaRNNModel: resets must have shape ({B}, {T}); got {tuple(resets.shape)}")
        resets = check_resets(resets, "ParaRNNModel")  # one meaning for the conv and the cell
        if use_cache and cache is None:
            cache = ParaRNNCache(self.config, B, hidden.dtype, hidden.device)
        if cache is not None:
            cache.leave_inference_mode()
        if cache is not None and cache.conv_states[0].shape[0] != B:
            raise ValueError(f"ParaRNNModel: the cache holds {cache.conv_states[0].shape[0]} rows, the input {B}")

        if (
            cache is not None
            and T == 1
            and resets is None
            and not output_hidden_states
            and self._can_fuse_decode(hidden)
        ):
            # one token with a cache: the fused step (docs/design.md#cache), updating the cache in place
            last = self.decode_hidden(hidden[:, 0], None if mask is None else mask[:, 0], cache).unsqueeze(1)
            cache.seen_tokens += 1
            self.note_decode_states(cache)
            if not return_dict:
                return tuple(v for v in (last, cache) if v is not None)
            return _output_with_cache(BaseModelOutputWithPast, cache if use_cache else None, last_hidden_state=last)

        chunk = self.config.recurrent_prefill_chunk_size if cache is not None else None
        bounds = [(s, min(s + chunk, T)) for s in range(0, T, chunk)] if chunk and T > chunk else [(0, T)]
        all_hidden: list[list[torch.Tensor]] = [[] for _ in range(len(self.layers) + 1)]
        outputs = []
        for start, stop in bounds:
            h = hidden[:, start:stop]
            m = None if mask is None else mask[:, start:stop]
            r = None if resets is None else resets[:, start:stop]
            for i, layer in enumerate(self.layers):
                all_hidden[i].append(h)
                conv_state = cache.conv_states[i] if cache is not None else None
                rnn_state = cache.rnn_states[i] if cache is not None else None
                h, conv_state, rnn_state = layer(h, m, r, conv_state, rnn_state)
                if cache is not None:
                    cache.update(i, conv_state, rnn_state)
            outputs.append(self.norm(h))
            if cache is not None:
                cache.seen_tokens += stop - start
        last = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        hidden_states = None
        if output_hidden_states:
            hidden_states = tuple(torch.cat(parts, dim=1) for parts in all_hidden[:-1]) + (last,)
        if not return_dict:
            return tuple(v for v in (last, cache, hidden_states) if v is not None)
        return _output_with_cache(
            BaseModelOutputWithPast, cache if use_cache else None, last_hidden_state=last, hidden_states=hidden_states
        )

    def _can_fuse_decode(self, hidden: torch.Tensor) -> bool:
        """Inference (no gradient), fp32/bf16/fp16 weights (fp32 states), no cell asking for a
        check at every step: the fused decode step."""
        if hidden.dtype == torch.float64 or (torch.is_grad_enabled() and hidden.requires_grad):
            return False
        if any(getattr(layer.mixer.cell, "check_every_step", False) for layer in self.layers):
            return False
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.layers[0].parameters()))

    def note_decode_states(self, cache: ParaRNNCache) -> None:
        """Point each cell's ``check_steps()`` at its state in ``cache`` after fused steps: a
        NaN/Inf that enters a recurrent state stays in it, and the buffers are updated in place,
        so one check at the end of generate() covers every step (as for ``step()``)."""
        for layer, state in zip(self.layers, cache.rnn_states):
            layer.mixer.cell._last_step_state = state if isinstance(state, torch.Tensor) else state[-1]

    def decode_hidden(self, x: torch.Tensor, mask: torch.Tensor | None, cache: ParaRNNCache) -> torch.Tensor:
        """One token per row through every block by the fused decode ops (``decode_ops``: the
        Triton kernels on CUDA, their torch reference elsewhere), updating ``cache`` in place:
        ``x`` [B, d] embeddings -> the final norm's output [B, d]. Per block: in_proj, the
        mixer step, out_proj, the residual with the next norm, the MLP's GEMMs around SiLU·mul,
        the residual with the next norm (docs/design.md#cache)."""
        layers = self.layers
        ops = decode_ops(x.device, self.config.backend, False)
        first = layers[0].mixer.norm
        hidden, normed = ops.residual_norm(None, x, None, 0.0, None, first.weight, first.eps)
        for i, layer in enumerate(layers):
            mixer, cell = layer.mixer, layer.mixer.cell
            state = cache.rnn_states[i]
            c_state, h_state = (None, state) if isinstance(state, torch.Tensor) else state
            xz = F.linear(normed, mixer.in_proj.weight)
            v, meansq = ops.mixer_step(
                cell.cell, xz, cache.conv_states[i], mixer.conv.weight, mixer.conv.bias,
                cell.A, cell.B, cell.b, cell.C, c_state, h_state, mixer.gate_norm.weight, mask,
            )  # fmt: skip
            out = F.linear(v, mixer.out_proj.weight)
            mlp_norm = layer.mlp_norm
            hidden, normed = ops.residual_norm(
                hidden, out, meansq, mixer.gate_norm.eps, mixer.residual_scale, mlp_norm.weight, mlp_norm.eps
            )
            mlp = layer.mlp
            act = ops.silu_mul(F.linear(normed, mlp.gate_proj.weight), F.linear(normed, mlp.up_proj.weight))
            nxt = layers[i + 1].mixer.norm if i + 1 < len(layers) else self.norm
            residual = hidden if layer.mlp_residual else None
            hidden, normed = ops.residual_norm(
                residual, F.linear(act, mlp.down_proj.weight), None, 0.0, None, nxt.weight, nxt.eps
            )
        return normed

    @staticmethod
    def _step_mask(attention_mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < T:
            raise ValueError(
                f"ParaRNNModel: attention_mask must be 2-D [batch={B}, length >= {T}]; "
                f"got {tuple(attention_mask.shape)}"
            )
        # kept even when it is all ones: finding that out would be a host sync per forward
        # (and per decoded token), and an all-ones mask costs one select per step. Any nonzero
        # value is a real token (transformers' reading): a mask is never used as weights.
        return attention_mask[:, -T:] != 0


class ParaRNNForCausalLM(ParaRNNPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ParaRNNConfig):
        super().__init__(config)
        self.model = ParaRNNModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def generate(self, *args: Any, **kwargs: Any):
        """``GenerationMixin.generate``, or, when the generation config asks for nothing beyond
        greedy or temperature/top-k/top-p sampling with EOS and stopping criteria, the package's
        fast path (``pararnn_hf.decoding``: a lean loop over the fused decode step, captured as
        ``config.decode_capture`` says), which gives the same tokens. Then one check that no
        decoding step produced a NaN/Inf state (``FloatingPointError`` naming the layer) instead
        of a host sync at every token (see ``check_steps``). The prompt's forward is checked as
        it runs."""
        for key in ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit"):
            config = kwargs.get("generation_config") or self.generation_config
            if kwargs.get(key) is not None or getattr(config, key, None) is not None:
                raise ValueError(
                    f"ParaRNNForCausalLM.generate: {key} (assisted or speculative decoding) is not supported: it "
                    "rolls the cache back past rejected draft tokens, and a recurrent state cannot be rolled back; "
                    "generate without it"
                )
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.dim() >= 1 and ids.shape[-1] == 0 and "inputs_embeds" not in kwargs:
            raise ValueError(
                "ParaRNNForCausalLM.generate: the prompt is empty; pass at least one token (e.g. the BOS token)"
            )
        cells = [layer.mixer.cell for layer in self.model.layers]
        for cell in cells:
            cell._last_step_state = None
        try:  # the package's fast path (a saved folder without the package uses transformers')
            from pararnn_hf.decoding import fast_generate, fast_generation_plan
        except ImportError:
            plan = None
        else:
            plan = fast_generation_plan(self, args, kwargs)
        out = fast_generate(self, plan) if plan is not None else super().generate(*args, **kwargs)
        for cell in cells:
            if hasattr(cell, "check_steps"):
                cell.check_steps()
        return out

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def resize_token_embeddings(self, new_num_tokens: int | None = None, *args: Any, **kwargs: Any) -> nn.Embedding:
        """transformers' resize, refused when a pad/bos/eos id would fall outside the new
        vocabulary: the config could then not be saved and loaded again."""
        if new_num_tokens is not None:
            for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
                value = getattr(self.config, key, None)
                for i in value if isinstance(value, list) else [value]:
                    if i is not None and i >= new_num_tokens:
                        raise ValueError(
                            f"resize_token_embeddings({new_num_tokens}): {key}={value} would fall outside the "
                            f"vocabulary, and the saved model could not be loaded again; keep at least {i + 1} "
                            f"tokens, or set config.{key} to a smaller id first"
                        )
        return super().resize_token_embeddings(new_num_tokens, *args, **kwargs)

    def decode_step(self, input_ids: torch.Tensor, cache: ParaRNNCache) -> torch.Tensor:
        """One token per row, ``input_ids`` [B, 1], through every layer's O(1) step: returns the
        next-token logits [B, vocab] and updates ``cache`` in place. No host sync, no Python
        branch on tensor values and fixed shapes, so a compiler or a CUDA graph can capture it
        (``pararnn_hf.decoding``). ``cache.seen_tokens`` is left to the caller: a captured step
        cannot count. Every row is a real token (padding only ever sits in the prompt)."""
        hidden = self.model.embed_tokens(input_ids)[:, -1]
        return self.lm_head(self.model.decode_hidden(hidden, None, cache))

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: ParaRNNCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        resets: torch.Tensor | None = None,
        past_key_values: ParaRNNCache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            resets=resets,
        )
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        model_cache = getattr(out, CACHE_FIELD)
        if not return_dict:
            return tuple(v for v in (loss, logits, model_cache, out.hidden_states) if v is not None)
        return _output_with_cache(
            CausalLMOutputWithPast, model_cache, loss=loss, logits=logits, hidden_states=out.hidden_states
        )


def last_real_positions(
    attention_mask: torch.Tensor | None, input_ids: torch.Tensor | None, pad_token_id: int | None, B: int, T: int
) -> torch.Tensor:
    """Each row's last real token, for left and right padding alike: from the attention mask
    when there is one (the reliable source: a pad id may equal the EOS id), else the last token
    that is not ``pad_token_id``, else the last position."""
    if attention_mask is not None:
        real = (attention_mask[:, -T:] != 0).to(torch.int32)
    elif input_ids is not None and pad_token_id is not None:
        real = (input_ids != pad_token_id).to(torch.int32)
    else:
        return torch.full((B,), T - 1, dtype=torch.long)
    positions = torch.arange(T, device=real.device, dtype=torch.int32)
    return (positions * real).argmax(-1).long()


class _ParaRNNWithScoreHead(ParaRNNPreTrainedModel):
    """The model with a linear ``score`` head (``num_labels`` outputs) on its last hidden states."""

    def __init__(self, config: ParaRNNConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = ParaRNNModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def _hidden(self, input_ids, attention_mask, inputs_embeds, output_hidden_states, resets):
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            resets=resets,
        )


class ParaRNNForSequenceClassification(_ParaRNNWithScoreHead):
    """The ``score`` head on the last real token of each row (the state that has read the
    whole text; left and right padding alike), as transformers' decoder models do. Loss:
    regression, single- or multi-label by ``config.problem_type``."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        resets: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        out = self._hidden(input_ids, attention_mask, inputs_embeds, output_hidden_states, resets)
        hidden = out.last_hidden_state
        B, T = hidden.shape[:2]
        last = last_real_positions(attention_mask, input_ids, self.config.pad_token_id, B, T).to(hidden.device)
        pooled = self.score(hidden[torch.arange(B, device=hidden.device), last])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=pooled, labels=labels, pooled_logits=pooled, config=self.config)
        if not return_dict:
            return tuple(v for v in (loss, pooled, out.hidden_states) if v is not None)
        return _output_with_cache(
            SequenceClassifierOutputWithPast, None, loss=loss, logits=pooled, hidden_states=out.hidden_states
        )


class ParaRNNForTokenClassification(_ParaRNNWithScoreHead):
    """The ``score`` head on every position (each sees its prefix only)."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        resets: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        out = self._hidden(input_ids, attention_mask, inputs_embeds, output_hidden_states, resets)
        logits = self.score(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, config=self.config)
        if not return_dict:
            return tuple(v for v in (loss, logits, out.hidden_states) if v is not None)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


__all__ = [
    "ParaRNNCache",
    "ParaRNNForCausalLM",
    "ParaRNNForSequenceClassification",
    "ParaRNNForTokenClassification",
    "ParaRNNModel",
    "ParaRNNPreTrainedModel",
]

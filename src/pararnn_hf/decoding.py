"""Fast decoding: each token step of the whole layer stack captured once and replayed
(docs/design.md#cache).

The recurrent cache is O(1): a decoding step reads and writes fixed buffers, so the step of
the whole layer stack (``ParaRNNForCausalLM.decode_step``, the fused decode ops) can be
captured once and replayed for every token: one CUDA graph on CUDA, ``torch.compile`` on the
CPU, or run as it is (``"eager"``). The prompt is prefilled by the ordinary forward (parallel
over its length, left padding through the attention mask). transformers' own generate-time
compilation decides before the first forward, when this model has no cache yet, so it is
not used.

    from pararnn_hf.decoding import generate_tokens, greedy_generate
    out = greedy_generate(model, input_ids, attention_mask=mask, max_new_tokens=64)
    out = generate_tokens(model, input_ids, mask, 64, do_sample=True, temperature=0.8, top_p=0.9,
                          generator=torch.Generator().manual_seed(0))

Greedy decoding equals ``model.generate(..., do_sample=False)`` token for token (tests check
it): rows that emit an EOS id are padded with ``pad_token_id`` afterwards and fed it, and the
output stops at the first step where every row has finished. Sampling applies temperature,
then top-k, then top-p, as transformers' warpers do, and draws from ``generator``: the same
seed gives the same tokens. ``model.generate()`` itself takes this path when its generation
config asks for nothing else (``fast_generation_plan``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

MODES = ("auto", "eager", "compile", "cuda-graph")
CAPTURE = ("auto", "off", "compile", "cuda-graph")  # config.decode_capture
# On the CPU, "auto" compiles the step only for runs long enough to pay its compile time back
CPU_COMPILE_MIN_TOKENS = 256


def _step_function(model, cache) -> Callable[[Tensor], Tensor]:
    def step(ids: Tensor) -> Tensor:
        return model.decode_step(ids, cache)

    return step


class _CacheBuffers:
    """The cache's buffers as the compiled step sees them: passed as arguments rather than
    closed over, so that a new cache of the same shapes (the next ``generate()`` call, the
    next lm-eval batch) reuses the compiled step instead of recompiling it."""

    __slots__ = ("conv_states", "rnn_states")

    def __init__(self, conv_states: list, rnn_states: list) -> None:
        self.conv_states, self.rnn_states = conv_states, rnn_states


def _decode(model, ids: Tensor, conv_states: list, rnn_states: list) -> Tensor:
    return model.decode_step(ids, _CacheBuffers(conv_states, rnn_states))


_compiled_decode: list = []  # one torch.compile of _decode per process: its cache holds every model and shape


def _cuda_graph_step(step: Callable[[Tensor], Tensor], ids: Tensor) -> Callable[[Tensor], Tensor]:
    """``step`` captured once; calling the result copies ``ids`` into the static input and
    replays. The warm-up runs advance the cache, so the caller captures from a copy."""
    static_ids = ids.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(static_ids)  # autotuning and allocator warm-up outside the graph
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(static_ids)

    def replay(new_ids: Tensor) -> Tensor:
        static_ids.copy_(new_ids)
        graph.replay()
        return static_out

    return replay


def _compiled_step(model, cache) -> Callable[[Tensor], Tensor]:
    """``torch.compile`` of the step, replayed without re-checking its guards after the first
    calls: the step's shapes, dtypes and buffers never change while decoding (the guards cost
    a third of a small model's step on the CPU). A later call with other shapes or another
    model is guarded again on its first calls, so it compiles or picks its own graph."""
    if not _compiled_decode:
        _compiled_decode.append(torch.compile(_decode, fullgraph=True, dynamic=False))
    compiled = _compiled_decode[0]
    calls = [0]

    def run(ids: Tensor) -> Tensor:
        calls[0] += 1
        if calls[0] <= 2:  # compile or look up, then one guarded call that must hit the same graph
            return compiled(model, ids, cache.conv_states, cache.rnn_states)
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return compiled(model, ids, cache.conv_states, cache.rnn_states)

    return run


def _snapshot(cache) -> tuple[list[Tensor], list]:
    def clone(s):
        return s.clone() if isinstance(s, Tensor) else tuple(t.clone() for t in s)

    return [t.clone() for t in cache.conv_states], [clone(s) for s in cache.rnn_states]


def _restore(cache, snapshot) -> None:
    conv, rnn = snapshot
    for i in range(len(conv)):
        cache.update(i, conv[i], rnn[i])


def resolve_mode(mode: str, device: torch.device, new_tokens: int) -> str:
    """``"auto"``: a CUDA graph on CUDA; on the CPU ``torch.compile`` when at least
    ``CPU_COMPILE_MIN_TOKENS`` tokens will be decoded (compiling takes seconds), else eager."""
    if mode not in MODES:
        raise ValueError(f"decoding mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    if device.type == "cuda":
        return "cuda-graph"
    return "compile" if new_tokens >= CPU_COMPILE_MIN_TOKENS else "eager"


class Decoder:
    """Prefill ``input_ids`` once, then each call of ``step(ids)`` runs one token per row
    through the captured step and returns the next-token logits ``[B, vocab]``. ``cache`` is
    the model's ``ParaRNNCache``, updated in place; ``first_logits`` the prefill's."""

    def __init__(self, model, input_ids: Tensor, attention_mask: Tensor | None = None, mode: str = "auto") -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"decoding: input_ids must be [batch, length >= 1]; got {got}")
        if mode not in MODES:
            raise ValueError(f"decoding: mode must be one of {MODES}, got {mode!r}")
        if mode == "auto":
            mode = "cuda-graph" if input_ids.device.type == "cuda" else "compile"
        if mode == "cuda-graph" and input_ids.device.type != "cuda":
            raise ValueError(f"decoding: mode 'cuda-graph' needs CUDA tensors, got {input_ids.device.type}")
        self.mode, self.model = mode, model
        self.cells = [layer.mixer.cell for layer in model.model.layers]
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
            self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
            self.first_logits = out.logits[:, -1]
            for cell in self.cells:
                cell._last_step_state = None
            step = _step_function(model, self.cache)
            if mode == "compile":
                step = _compiled_step(model, self.cache)
            elif mode == "cuda-graph":
                saved = _snapshot(self.cache)
                step = _cuda_graph_step(step, input_ids[:, -1:])
                _restore(self.cache, saved)
        self._step = step
        self.steps = 0

    @torch.no_grad()
    def step(self, ids: Tensor) -> Tensor:
        self.steps += 1
        return self._step(ids)

    def finish(self) -> None:
        """Count the steps into the cache and check once that no step produced NaN/Inf."""
        self.cache.seen_tokens += self.steps
        self.steps = 0
        self.model.model.note_decode_states(self.cache)
        for cell in self.cells:
            if hasattr(cell, "check_steps"):
                cell.check_steps()


def eos_ids(eos_token_id: int | list[int] | Tensor | None, device: torch.device) -> Tensor | None:
    """The end-of-sequence ids as a 1-D tensor (generation configs often list several)."""
    if eos_token_id is None:
        return None
    ids = torch.as_tensor(eos_token_id, dtype=torch.long, device=device).flatten()
    return ids if ids.numel() else None


def next_tokens(
    logits: Tensor,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[B, 1]``: the argmax, or a draw after temperature, top-k and top-p (transformers'
    warpers, in their order, keeping at least one token)."""
    if not do_sample:
        return logits.argmax(-1, keepdim=True)
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    if top_k is not None and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ascending, order = torch.sort(scores, dim=-1)
        cumulative = ascending.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - top_p
        drop[:, -1] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)


@torch.no_grad()
def generate_tokens(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    max_new_tokens: int = 20,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    mode: str = "auto",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    stopping_criteria: Callable[[Tensor, Tensor | None], Tensor] | None = None,
    streamer: Any = None,
) -> Tensor:
    """Prompt plus up to ``max_new_tokens`` tokens, ``[B, T + n]``, for a batch of prompts
    (left-padded, with their ``attention_mask``).

    ``mode``: ``"compile"`` (``torch.compile(fullgraph=True)`` of one step, any device),
    ``"cuda-graph"`` (one CUDA graph replayed per token), ``"eager"`` (the same step as it is)
    or ``"auto"`` (see ``resolve_mode``). ``eos_token_id`` (one id or a list) and
    ``pad_token_id`` default to the model's generation config. ``stopping_criteria(ids,
    scores)`` (transformers' ``StoppingCriteriaList``) ends rows too; ``streamer`` gets the
    prompt, then each token, as ``generate()`` gives them.
    """
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"decoding: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if do_sample and not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"decoding: temperature must be a finite number > 0, got {temperature!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"decoding: top_p must be in (0, 1], got {top_p!r}")
    gen = getattr(model, "generation_config", None)
    if eos_token_id is None and gen is not None:
        eos_token_id = gen.eos_token_id
    if pad_token_id is None and gen is not None:
        pad_token_id = gen.pad_token_id
    eos = eos_ids(eos_token_id, input_ids.device)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if eos is not None else 0

    decoder = Decoder(model, input_ids, attention_mask, resolve_mode(mode, input_ids.device, max_new_tokens))
    if streamer is not None:
        streamer.put(input_ids.cpu())
    B = input_ids.shape[0]
    tokens = torch.full((B, max_new_tokens), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    finished = torch.zeros(B, 1, dtype=torch.bool, device=input_ids.device)
    logits = decoder.first_logits
    ids = input_ids[:, -1:]
    n_done = 0
    for n in range(max_new_tokens):
        if n:
            logits = decoder.step(ids)
        ids = next_tokens(logits, do_sample, temperature, top_k, top_p, generator)
        # a finished row gets padding, and is fed padding, as generate() does
        ids = torch.where(finished, torch.full_like(ids, pad_token_id), ids)
        tokens[:, n : n + 1] = ids
        n_done = n + 1
        if streamer is not None:
            streamer.put(ids[:, 0].cpu())
        if eos is not None:
            finished |= torch.isin(ids, eos)
        if stopping_criteria is not None:
            so_far = torch.cat([input_ids, tokens[:, :n_done]], dim=1)
            finished |= torch.as_tensor(stopping_criteria(so_far, None), device=finished.device).view(-1, 1)
        if (eos is not None or stopping_criteria is not None) and bool(finished.all()):
            break  # one host sync per token: only when something can end rows early
    decoder.finish()
    if streamer is not None:
        streamer.end()
    return torch.cat([input_ids, tokens[:, :n_done]], dim=1)


def greedy_generate(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    max_new_tokens: int = 20,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    mode: str = "auto",
) -> Tensor:
    """``generate_tokens`` with greedy decoding (``mode="auto"`` captures the step: a CUDA graph
    on CUDA, ``torch.compile`` elsewhere)."""
    if mode not in MODES:
        raise ValueError(f"greedy_generate: mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        mode = "cuda-graph" if input_ids.device.type == "cuda" else "compile"
    return generate_tokens(model, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, mode)


# --------------------------------------------------------------------------- generate()

# generation-config keys the fast path takes; every other key must be at its default
FAST_CONFIG_KEYS = {
    "max_new_tokens",
    "max_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "use_cache",
    "transformers_version",
    "_from_model_config",
}
# keys that only matter to what the fast path never does (beams, assistants, static caches)
IGNORED_CONFIG_KEYS = {
    "decoder_start_token_id",
    "is_assistant",
    "compile_config",
    "disable_compile",
    "cache_config",
    "max_cache_len",
    "low_memory",
    "length_penalty",
    "early_stopping",
    "num_assistant_tokens",
    "num_assistant_tokens_schedule",
    "assistant_confidence_threshold",
    "assistant_lookbehind",
    "target_lookbehind",
    "max_matching_ngram_size",
    "assistant_ensemble_weight",
    "speculation_type",
    "continuous_batching_config",
    "prefill_chunk_size",
}
FAST_CALL_KEYS = {"input_ids", "attention_mask", "generation_config", "streamer", "stopping_criteria"}


def _generation_defaults() -> dict:
    from transformers import GenerationConfig

    get = getattr(GenerationConfig, "_get_default_generation_params", None)
    return get() if get is not None else {}


def fast_generation_plan(model, args: tuple, kwargs: dict) -> dict | None:
    """The fast path's arguments for a ``model.generate(*args, **kwargs)`` call, or None when
    the call asks for something only transformers' generate does (beams, penalties, scores,
    a cache to continue, inputs_embeds, extra logits processors, ...)."""
    import copy

    if len(args) > 1:
        return None
    input_ids = args[0] if args else kwargs.get("input_ids")
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int):
        return None
    gen = copy.deepcopy(kwargs.get("generation_config") or model.generation_config)
    extra = {}
    for key, value in kwargs.items():
        if key in FAST_CALL_KEYS:
            continue
        if hasattr(gen, key):
            setattr(gen, key, value)
        elif value is not None and value != []:
            extra[key] = value
    if extra:
        return None
    defaults = _generation_defaults()

    def effective(key):
        value = getattr(gen, key, None)
        return defaults.get(key) if value is None else value

    for key in gen.to_dict():
        if key in FAST_CONFIG_KEYS or key in IGNORED_CONFIG_KEYS:
            continue
        value, neutral = effective(key), defaults.get(key)
        if value != neutral and not (value in (None, False) and neutral in (None, False)):
            return None
    if effective("use_cache") is False:
        return None
    T = input_ids.shape[1]
    new = gen.max_new_tokens if gen.max_new_tokens is not None else effective("max_length") - T
    if new is None or new < 1:
        return None
    criteria = kwargs.get("stopping_criteria")
    return {
        "input_ids": input_ids,
        "attention_mask": kwargs.get("attention_mask"),
        "max_new_tokens": int(new),
        "eos_token_id": gen.eos_token_id,
        "pad_token_id": gen.pad_token_id,
        "do_sample": bool(effective("do_sample")),
        "temperature": float(effective("temperature") or 1.0),
        "top_k": effective("top_k"),
        "top_p": effective("top_p"),
        "stopping_criteria": criteria if criteria else None,
        "streamer": kwargs.get("streamer"),
    }


def fast_generate(model, plan: dict) -> Tensor:
    """``generate()``'s fast path: ``generate_tokens`` with the model's ``decode_capture``
    (``"auto"``, ``"off"``: the step as it is, ``"compile"``, ``"cuda-graph"``)."""
    capture = getattr(model.config, "decode_capture", "auto")
    mode = {"off": "eager", "auto": "auto", "compile": "compile", "cuda-graph": "cuda-graph"}[capture]
    return generate_tokens(model, mode=mode, **plan)

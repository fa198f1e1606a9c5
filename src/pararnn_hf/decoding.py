"""Greedy decoding with each token step compiled (CPU) or replayed from a CUDA graph (GPU).

The recurrent cache is O(1): a decoding step reads and writes fixed buffers, so the step of
the whole layer stack (``ParaRNNForCausalLM.decode_step``) can be captured once and replayed
for every token, without Python or kernel-launch overhead per layer. The prompt is prefilled
by the ordinary forward (parallel over its length). transformers' own generate-time
compilation decides before the first forward, when this model has no cache yet, so it is not
used (docs/design.md#cache).

    from pararnn_hf.decoding import greedy_generate
    out = greedy_generate(model, input_ids, attention_mask=mask, max_new_tokens=64)

The result equals ``model.generate(..., do_sample=False)`` token for token (tests check it):
rows that emit ``eos_token_id`` are padded with ``pad_token_id`` afterwards, and the output
stops at the first step where every row has finished.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

MODES = ("auto", "eager", "compile", "cuda-graph")


def _step_function(model, cache) -> Callable[[Tensor], Tensor]:
    def step(ids: Tensor) -> Tensor:
        return model.decode_step(ids, cache).argmax(-1, keepdim=True)

    return step


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


def _snapshot(cache) -> tuple[list[Tensor], list]:
    def clone(s):
        return s.clone() if isinstance(s, Tensor) else tuple(t.clone() for t in s)

    return [t.clone() for t in cache.conv_states], [clone(s) for s in cache.rnn_states]


def _restore(cache, snapshot) -> None:
    conv, rnn = snapshot
    for i in range(len(conv)):
        cache.update(i, conv[i], rnn[i])


class GreedyDecoder:
    """Prefill ``input_ids`` once, then each call of ``step(ids)`` runs one token per row
    through the captured step (``mode`` as in ``greedy_generate``) and returns the argmax
    ``[B, 1]``. ``cache`` is the model's ``ParaRNNCache``, updated in place; ``first`` the
    token the prefill predicts."""

    def __init__(self, model, input_ids: Tensor, attention_mask: Tensor | None = None, mode: str = "auto") -> None:
        if mode not in MODES:
            raise ValueError(f"greedy_generate: mode must be one of {MODES}, got {mode!r}")
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"greedy_generate: input_ids must be [batch, length >= 1]; got {got}")
        if mode == "auto":
            mode = "cuda-graph" if input_ids.device.type == "cuda" else "compile"
        if mode == "cuda-graph" and input_ids.device.type != "cuda":
            raise ValueError(f"greedy_generate: mode 'cuda-graph' needs CUDA tensors, got {input_ids.device.type}")
        self.mode, self.model = mode, model
        self.cells = [layer.mixer.cell for layer in model.model.layers]
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
            self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
            self.first = out.logits[:, -1].argmax(-1, keepdim=True)
            for cell in self.cells:
                cell._last_step_state = None
            step = _step_function(model, self.cache)
            if mode == "compile":
                step = torch.compile(step, fullgraph=True, dynamic=False)
            elif mode == "cuda-graph":
                saved = _snapshot(self.cache)
                step = _cuda_graph_step(step, self.first)
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
        for cell in self.cells:
            cell.check_steps()


def eos_ids(eos_token_id: int | list[int] | Tensor | None, device: torch.device) -> Tensor | None:
    """The end-of-sequence ids as a 1-D tensor (generation configs often list several)."""
    if eos_token_id is None:
        return None
    ids = torch.as_tensor(eos_token_id, dtype=torch.long, device=device).flatten()
    return ids if ids.numel() else None


@torch.no_grad()
def greedy_generate(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    max_new_tokens: int = 20,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    mode: str = "auto",
) -> Tensor:
    """Prompt plus up to ``max_new_tokens`` greedy tokens, ``[B, T + n]``.

    ``mode``: ``"compile"`` (``torch.compile(fullgraph=True)`` of one step, any device),
    ``"cuda-graph"`` (one CUDA graph replayed per token), ``"eager"`` (the same step
    uncompiled, for comparison) or ``"auto"`` (cuda-graph on CUDA, compile elsewhere).
    ``eos_token_id`` (one id or a list: any of them ends a row) and ``pad_token_id`` default to
    the model's generation config.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"greedy_generate: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    gen = getattr(model, "generation_config", None)
    if eos_token_id is None and gen is not None:
        eos_token_id = gen.eos_token_id
    if pad_token_id is None and gen is not None:
        pad_token_id = gen.pad_token_id
    eos = eos_ids(eos_token_id, input_ids.device)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if eos is not None else 0

    decoder = GreedyDecoder(model, input_ids, attention_mask, mode)
    B = input_ids.shape[0]
    tokens = torch.full((B, max_new_tokens), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    finished = torch.zeros(B, 1, dtype=torch.bool, device=input_ids.device)
    ids = decoder.first
    for n in range(max_new_tokens):
        if n:
            ids = decoder.step(ids)
        # a finished row gets padding, and is fed padding, as generate() does
        ids = torch.where(finished, torch.full_like(ids, pad_token_id), ids)
        tokens[:, n : n + 1] = ids
        if eos is not None:
            finished |= torch.isin(ids, eos)
    decoder.finish()
    if eos is not None:  # stop where generate() would: every row has finished
        done = torch.isin(tokens, eos).cumsum(1).bool().all(0)
        if bool(done.any()):
            tokens = tokens[:, : int(done.nonzero()[0]) + 1]
    return torch.cat([input_ids, tokens], dim=1)

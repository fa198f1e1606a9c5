"""Prefill and decode throughput and peak memory vs context length: ParaGRU and ParaLSTM
against transformers' LlamaForCausalLM and Mamba2ForCausalLM of about the same size.

Each (model, context) is measured in a fresh subprocess so its peak memory is its own:
peak RSS growth on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Prefill = one forward
over the prompt building the cache; decode = the time per token inside ``generate()`` after
that prompt (greedy, ``--new-tokens`` forced), read from a streamer that timestamps every token
as generate() emits it, so the prefill is excluded. Batch 1.

Usage:
  python benchmarks/bench_generate.py                      # CPU, ~4.3M-parameter models
  python benchmarks/bench_generate.py --device cuda --size 400m --dtype bfloat16 [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

MODELS = ("pararnn-gru", "pararnn-lstm", "llama", "mamba2")
SIZES = {
    # ParaRNN preset; Llama with the same width, depth and MLP; Mamba2 deepened to a similar count
    "5m": dict(preset="demo", vocab=4096, heads=4, mamba_layers=8),
    "400m": dict(preset="400m", vocab=32000, heads=16, mamba_layers=56),
}


def build(name: str, size: str, max_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Mamba2Config, Mamba2ForCausalLM

    from pararnn_hf import ParaRNNForCausalLM  # importing registers the classes
    from pararnn_hf.presets import PRESETS, preset_config

    s = SIZES[size]
    shape = PRESETS[s["preset"]]
    if name.startswith("pararnn"):
        return ParaRNNForCausalLM(preset_config(s["preset"], name.split("-")[1], vocab_size=s["vocab"]))
    if name == "llama":
        cfg = LlamaConfig(
            vocab_size=s["vocab"],
            hidden_size=shape["hidden_size"],
            num_hidden_layers=shape["num_hidden_layers"],
            num_attention_heads=s["heads"],
            num_key_value_heads=s["heads"],
            intermediate_size=shape["intermediate_size"],
            max_position_embeddings=max_len,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(cfg)
    d = shape["hidden_size"]
    cfg = Mamba2Config(
        vocab_size=s["vocab"],
        hidden_size=d,
        num_hidden_layers=s["mamba_layers"],
        expand=2,
        head_dim=64,
        num_heads=2 * d // 64,
        state_size=64,
        n_groups=1,
        tie_word_embeddings=True,
    )
    return Mamba2ForCausalLM(cfg)


class TimingStreamer:
    """generate() calls put() with the prompt, then once per new token: timestamp each."""

    def __init__(self, sync):
        self.sync, self.times = sync, []

    def put(self, value) -> None:
        self.sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def seconds_per_token(self) -> float:
        # times[0]: prompt (before prefill); times[1]: first new token (after prefill)
        return (self.times[-1] - self.times[1]) / (len(self.times) - 2)


def graph_decode(model, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
    """Greedy decoding of a ParaRNN model with each token step replayed from one CUDA graph.

    The recurrent cache is O(1), so a step reads and writes fixed-size buffers: the graph
    reads the cache from static tensors, and its last kernels copy the new states back into
    them, append the argmax to a token buffer and feed it to the next replay. Returns the
    new tokens (prefill's argmax first, as ``generate`` gives them) and seconds per token of
    the replays alone."""
    from pararnn_hf.modeling.modeling_pararnn import CACHE_FIELD

    out = model(prompt, use_cache=True, logits_to_keep=1)
    cache = getattr(out, CACHE_FIELD)

    def clone_state(s):
        return s.clone() if isinstance(s, torch.Tensor) else tuple(t.clone() for t in s)

    def copy_state(dst, src):
        pairs = [(dst, src)] if isinstance(dst, torch.Tensor) else zip(dst, src)
        for d, t in pairs:
            d.copy_(t)

    prefilled = ([t.clone() for t in cache.conv_states], [clone_state(s) for s in cache.rnn_states])
    conv = [t.clone() for t in prefilled[0]]
    rnn = [clone_state(s) for s in prefilled[1]]
    first = out.logits[:, -1].argmax(-1, keepdim=True)
    ids = first.clone()
    tokens = torch.zeros(new_tokens, dtype=torch.long, device=prompt.device)
    pos = torch.zeros(1, dtype=torch.long, device=prompt.device)

    def step() -> None:
        cache.conv_states, cache.rnn_states = list(conv), list(rnn)
        logits = model(ids, cache=cache, use_cache=True).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        for d, t in zip(conv, cache.conv_states):
            d.copy_(t)
        for d, t in zip(rnn, cache.rnn_states):
            copy_state(d, t)
        pos.add_(1)
        tokens.index_copy_(0, pos, nxt[0])
        ids.copy_(nxt)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside the graph: autotuning, allocator pools
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    # the warm-up advanced the state: start again from the prefilled cache
    for d, t in zip(conv, prefilled[0]):
        d.copy_(t)
    for d, t in zip(rnn, prefilled[1]):
        copy_state(d, t)
    ids.copy_(first)
    tokens.zero_()
    tokens[0] = first[0, 0]
    pos.zero_()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        graph.replay()
    torch.cuda.synchronize()
    return tokens, (time.perf_counter() - t0) / max(new_tokens - 1, 1)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args: argparse.Namespace) -> None:
    from pararnn_hf.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with device:  # initialise on the device: a 400M model's init on the host takes longer than the run
        model = build(args.model, args.size, args.context + args.new_tokens + 8)
    model = model.to(dtype=dtype).eval()
    if args.prefill_chunk_size and args.model.startswith("pararnn"):
        model.config.recurrent_prefill_chunk_size = args.prefill_chunk_size
    if args.compile:
        model.forward = torch.compile(model.forward, mode="reduce-overhead", dynamic=True)
    params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    prompt = torch.randint(3, vocab, (1, args.context), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        model(prompt, use_cache=True, logits_to_keep=1)  # warm-up (and compilation, with --compile)
        sync()
        base_rss = _rss_mb()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base_cuda = torch.cuda.memory_allocated()
        prefill = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model(prompt, use_cache=True, logits_to_keep=1)
            sync()
            prefill.append(time.perf_counter() - t0)
        prefill_s = statistics.median(prefill)
        gen_kwargs = dict(
            max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0
        )
        model.generate(prompt[:, :16], **gen_kwargs)  # warm-up of the decode path
        streamer = TimingStreamer(sync)
        eager_tokens = model.generate(prompt, streamer=streamer, **gen_kwargs)[0, args.context :]
        graph = {}
        if args.graphs and device.type == "cuda" and args.model.startswith("pararnn"):
            try:
                tokens, graph_s = graph_decode(model, prompt, args.graph_tokens)
                n = min(len(tokens), len(eager_tokens))
                graph = {
                    "graph_decode_tok_s": 1 / graph_s,
                    "graph_decode_ms": graph_s * 1e3,
                    "graph_tokens_match_eager": int((tokens[:n] == eager_tokens[:n]).sum()),
                    "graph_tokens_compared": n,
                }
            except Exception as err:  # report it in the table; the eager numbers still count
                graph = {"graph_error": f"{type(err).__name__}: {err}"[:200]}
    decode_s = streamer.seconds_per_token()
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    print(
        json.dumps(
            {
                "model": args.model,
                "context": args.context,
                "params": params,
                "prefill_tok_s": args.context / prefill_s,
                "decode_tok_s": 1 / decode_s,
                "decode_ms": decode_s * 1e3,
                "peak_mb": max(peak_mb, 0.0),
                **graph,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="5m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096, 16384])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward (GPU)")
    parser.add_argument("--graphs", action="store_true", help="also time ParaRNN decoding replayed from a CUDA graph")
    parser.add_argument("--graph-tokens", type=int, default=128, help="tokens decoded with --graphs")
    parser.add_argument("--prefill-chunk-size", type=int, default=None, help="ParaRNN recurrent_prefill_chunk_size")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per (model, context)")
    parser.add_argument("--out", default="benchmarks/results/bench_generate.json")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "CONTEXT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.model, args.context = args.worker[0], int(args.worker[1])
        worker(args)
        return

    print(
        f"device={args.device} size={args.size} dtype={args.dtype} batch=1 new_tokens={args.new_tokens} "
        f"compile={args.compile} prefill_chunk_size={args.prefill_chunk_size}"
    )
    print(
        f"{'model':<13} {'params':>7} {'context':>7} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak MB':>8}"
        + (f" {'graph tok/s':>12} {'= eager':>8}" if args.graphs else "")
    )
    rows = []
    for name in args.models:
        for context in args.contexts:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                name,
                str(context),
                "--device",
                args.device,
                "--size",
                args.size,
                "--dtype",
                args.dtype,
                "--new-tokens",
                str(args.new_tokens),
                "--repeats",
                str(args.repeats),
            ] + (["--compile"] if args.compile else [])
            if args.graphs:
                cmd += ["--graphs", "--graph-tokens", str(args.graph_tokens)]
            if args.prefill_chunk_size:
                cmd += ["--prefill-chunk-size", str(args.prefill_chunk_size)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{name:<13} {'':>7} {context:>7} {'timeout':>14}")
                rows.append({"model": name, "context": context, "error": "timeout"})
                continue
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1][:80]
                print(f"{name:<13} {'':>7} {context:>7} failed: {err}")
                rows.append({"model": name, "context": context, "error": err})
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{name:<13} {row['params'] / 1e6:6.1f}M {context:>7} {row['prefill_tok_s']:>14,.0f} "
                f"{row['decode_tok_s']:>13,.1f} {row['peak_mb']:>8.1f}"
                + (
                    f" {row['graph_decode_tok_s']:>12,.1f} "
                    f"{row['graph_tokens_match_eager']:>4}/{row['graph_tokens_compared']}"
                    if "graph_decode_tok_s" in row
                    else (f" graph failed: {row['graph_error']}" if "graph_error" in row else "")
                )
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "size": args.size,
        "dtype": args.dtype,
        "compile": args.compile,
        "graphs": args.graphs,
        "prefill_chunk_size": args.prefill_chunk_size,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

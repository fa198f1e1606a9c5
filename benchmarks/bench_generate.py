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

--compile adds, for the ParaRNN models, decoding through pararnn_hf.decoding (one CUDA graph
replay per token on CUDA, one compiled step on CPU), timed beside generate() in the same
process, with how many of its tokens equal generate()'s.
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


def build(name: str, size: str, max_len: int, mamba: dict | None = None):
    """The model ``name`` at ``size``; ``mamba`` overrides the Mamba2 shape (layers, head_dim, ...)."""
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
    m = {"num_hidden_layers": s["mamba_layers"], "head_dim": 64, "state_size": 64, **(mamba or {})}
    cfg = Mamba2Config(
        vocab_size=s["vocab"],
        hidden_size=d,
        expand=2,
        num_heads=2 * d // m["head_dim"],
        n_groups=1,
        tie_word_embeddings=True,
        **m,
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


def fast_decode(model, prompt: torch.Tensor, new_tokens: int, sync) -> tuple[torch.Tensor, float, str]:
    """Greedy decoding through ``pararnn_hf.decoding.GreedyDecoder`` (mode "auto": each token
    one CUDA-graph replay on CUDA, one compiled step on CPU). Returns the new tokens (the
    prefill's argmax first, as ``generate`` gives them), seconds per token of the steps alone
    after the first few (which compile) and the mode."""
    from pararnn_hf.decoding import GreedyDecoder

    warm = 3  # the first steps compile (CPU) or follow the capture (CUDA): not timed
    decoder = GreedyDecoder(model, prompt, mode="auto")
    ids, tokens = decoder.first, [decoder.first]
    for i in range(max(new_tokens - 1, warm + 1)):
        if i == warm:
            sync()
            t0 = time.perf_counter()
        ids = decoder.step(ids)
        tokens.append(ids)
    sync()
    seconds = (time.perf_counter() - t0) / (len(tokens) - 1 - warm)
    decoder.finish()
    return torch.cat(tokens, dim=1)[0], seconds, decoder.mode


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
        fast = {}
        if args.compile and args.model.startswith("pararnn"):
            try:
                tokens, fast_s, mode = fast_decode(model, prompt, args.fast_tokens, sync)
                n = min(len(tokens), len(eager_tokens))
                fast = {
                    "fast_mode": mode,
                    "fast_decode_tok_s": 1 / fast_s,
                    "fast_decode_ms": fast_s * 1e3,
                    "fast_tokens_match_eager": int((tokens[:n] == eager_tokens[:n]).sum()),
                    "fast_tokens_compared": n,
                }
            except Exception as err:  # report it in the table; the eager numbers still count
                fast = {"fast_error": f"{type(err).__name__}: {err}"[:200]}
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
                **fast,
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
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time ParaRNN decoding by pararnn_hf.decoding (CUDA graph per token on CUDA, compiled step on CPU)",
    )
    parser.add_argument("--fast-tokens", type=int, default=128, help="tokens decoded with --compile")
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
        + (f" {'fast tok/s':>11} {'mode':<10} {'= eager':>8}" if args.compile else "")
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
            ]
            if args.compile:
                cmd += ["--compile", "--fast-tokens", str(args.fast_tokens)]
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
                    f" {row['fast_decode_tok_s']:>11,.1f} {row['fast_mode']:<10} "
                    f"{row['fast_tokens_match_eager']:>4}/{row['fast_tokens_compared']}"
                    if "fast_decode_tok_s" in row
                    else (f" fast decode failed: {row['fast_error']}" if "fast_error" in row else "")
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
        "prefill_chunk_size": args.prefill_chunk_size,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

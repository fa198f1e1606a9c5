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

--paths times the decoding paths side by side per (batch, context) row: for ParaRNN
transformers' generate() loop over the old per-layer step and over the fused step (the fast
path off: the baseline), the package's generate() with capture off and on, and
pararnn_hf.decoding with the step captured; for Llama generate() with its dynamic cache and with
its static cache compiled; and the floor: the step's GEMMs alone (the weights' matrix-vector
products, which no decoder can skip). Seconds per step = (time of n new tokens - time of 1) / (n - 1), so
the prefill cancels; greedy, every row decodes all n tokens.

  python benchmarks/bench_generate.py --paths --new-tokens 256                 # CPU, b1 and b16
  python benchmarks/bench_generate.py --paths --device cuda --size 400m --dtype bfloat16 \\
      --rows 1:1024 1:4096 1:16384 16:4096 64:4096
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
    """Greedy decoding through ``pararnn_hf.decoding.Decoder`` (one CUDA-graph replay per token
    on CUDA, one compiled step on CPU). Returns the new tokens (the prefill's argmax first, as
    ``generate`` gives them), seconds per token of the steps alone after the first few (which
    compile) and the mode."""
    from pararnn_hf.decoding import Decoder

    warm = 3  # the first steps compile (CPU) or follow the capture (CUDA): not timed
    decoder = Decoder(model, prompt, mode="cuda-graph" if prompt.is_cuda else "compile")
    ids = decoder.first_logits.argmax(-1, keepdim=True)
    tokens = [ids]
    for i in range(max(new_tokens - 1, warm + 1)):
        if i == warm:
            sync()
            t0 = time.perf_counter()
        ids = decoder.step(ids).argmax(-1, keepdim=True)
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


def write_results(args: argparse.Namespace, rows: list[dict], **settings) -> None:
    """The rows as JSON at ``args.out``, with the machine and the run's settings."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "size": args.size,
        "dtype": args.dtype,
        **settings,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


# --------------------------------------------------------------------------- --paths

BASELINE = "stock generate()"


def decode_paths(name: str, model, device: torch.device) -> dict:
    """The ways to decode ``model``: label -> fn(prompt, mask, new_tokens) -> ids. ParaRNN:
    transformers' loop over the old per-layer step and over the fused step, the package's
    ``generate()`` with capture off and on, and ``pararnn_hf.decoding`` with the step captured.
    Llama: transformers' dynamic cache, and its static cache compiled by generate()."""
    from transformers import GenerationMixin

    kw = dict(do_sample=False, pad_token_id=0)
    capture = "cuda-graph" if device.type == "cuda" else "compile"
    if name == "llama":
        from transformers import CompileConfig

        config = CompileConfig(fullgraph=True)
        config._compile_all_devices = True  # transformers compiles on CUDA only unless asked

        return {
            "generate(), dynamic cache": lambda p, m, n: model.generate(p, attention_mask=m, max_new_tokens=n, **kw),
            "generate(), static cache + compile": lambda p, m, n: model.generate(
                p, attention_mask=m, max_new_tokens=n, cache_implementation="static", compile_config=config, **kw
            ),
        }
    from pararnn_hf.decoding import generate_tokens

    def stock(p, m, n):
        return GenerationMixin.generate(model, p, attention_mask=m, max_new_tokens=n, **kw)

    def unfused(p, m, n):
        cls = type(model.model)
        fuse = cls._can_fuse_decode
        cls._can_fuse_decode = lambda self, hidden: False  # the per-layer step() of before
        try:
            return stock(p, m, n)
        finally:
            cls._can_fuse_decode = fuse

    def package(mode):
        def run(p, m, n):
            model.config.decode_capture = mode
            try:
                return model.generate(p, attention_mask=m, max_new_tokens=n, **kw)
            finally:
                model.config.decode_capture = "auto"

        return run

    return {
        "stock generate(), unfused step": unfused,
        BASELINE: stock,
        "generate(), capture off": package("off"),
        f"generate(), capture {capture}": package(capture),
        f"decoding, {capture}": lambda p, m, n: generate_tokens(model, p, m, n, pad_token_id=0, mode=capture),
    }


FLOOR = "floor: the step's GEMMs alone"


def gemm_floor_seconds(model, batch: int, repeats: int = 200) -> float:
    """Seconds for one decoding step's GEMMs alone (each block's in_proj, out_proj and MLP,
    then the head) on random activations: what no decoder of these weights can beat."""
    import torch.nn.functional as F

    p = next(model.parameters())
    d = model.config.hidden_size
    x = torch.randn(batch, d, dtype=p.dtype, device=p.device)
    layers = model.model.layers

    def step():
        for layer in layers:
            mixer, mlp = layer.mixer, layer.mlp
            v = F.linear(x, mixer.in_proj.weight)[:, : mixer.out_proj.weight.shape[1]]
            F.linear(v, mixer.out_proj.weight)
            a = F.linear(x, mlp.gate_proj.weight) * F.linear(x, mlp.up_proj.weight)
            F.linear(a, mlp.down_proj.weight)
        return F.linear(x, model.lm_head.weight)

    for _ in range(5):
        step()
    sync = torch.cuda.synchronize if p.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    return (time.perf_counter() - t0) / repeats


def kernels_per_token(model, prompt: torch.Tensor, mask: torch.Tensor) -> int:
    """CUDA kernels one fused decoding step launches (the profiler's count)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    out = model(prompt, attention_mask=mask, use_cache=True, logits_to_keep=1)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    ids = out.logits[:, -1:].argmax(-1)
    model.decode_step(ids, cache)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model.decode_step(ids, cache)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)


def paths_worker(args: argparse.Namespace) -> None:
    """One model, every (batch, context) row and every path: one JSON line per measurement."""
    from pararnn_hf.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    rows = [tuple(int(v) for v in r.split(":")) for r in args.rows]
    with device:
        model = build(args.model, args.size, max(c for _, c in rows) + args.new_tokens + 8)
    model = model.to(dtype=dtype).eval()
    model.generation_config.eos_token_id = None  # random weights: every run decodes all its tokens
    paths = decode_paths(args.model, model, device)
    if args.only:  # the baseline always runs: the ratios need it
        paths = {k: v for k, v in paths.items() if k == BASELINE or any(o in k for o in args.only)}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, prompt, mask, n):
        sync()
        t0 = time.perf_counter()
        out = fn(prompt, mask, n)
        sync()
        return time.perf_counter() - t0, out

    for batch, context in rows:
        g = torch.Generator().manual_seed(batch * 7919 + context)
        prompt = torch.randint(3, model.config.vocab_size, (batch, context), generator=g).to(device)
        mask = torch.ones_like(prompt)
        for r in range(batch):  # left padding, as a batch of prompts of different lengths has
            mask[r, : min(r % 8, context - 1)] = 0
        extra = {}
        if device.type == "cuda" and args.model.startswith("pararnn"):
            with torch.inference_mode():
                extra["kernels_per_token"] = kernels_per_token(model, prompt, mask)
        reference = None
        for label, fn in paths.items():
            try:
                with torch.inference_mode():
                    fn(prompt, mask, args.new_tokens)  # compile, capture, autotune: not timed
                    fn(prompt, mask, 1)
                    long = [timed(fn, prompt, mask, args.new_tokens) for _ in range(args.repeats)]
                    short = [timed(fn, prompt, mask, 1)[0] for _ in range(args.repeats)]
                # the prefill and the call's fixed costs cancel: per token is the difference
                seconds = (statistics.median(t for t, _ in long) - statistics.median(short)) / (args.new_tokens - 1)
                if seconds <= 0:  # a loaded machine and few tokens: no per-token time to report
                    raise RuntimeError(f"{args.new_tokens} new tokens took no longer than 1; raise --new-tokens")
                tokens = long[-1][1][:, context:].cpu()
                if reference is None:
                    reference = tokens
                row = {"tok_s": batch / seconds, "ms_per_step": seconds * 1e3}
                if args.model.startswith("pararnn"):
                    n = min(tokens.shape[1], reference.shape[1])
                    row["equal_tokens"] = f"{int((tokens[:, :n] == reference[:, :n]).sum())}/{reference[:, :n].numel()}"
            except Exception as err:  # the other paths still count
                row = {"error": f"{type(err).__name__}: {err}"[:160]}
            print(json.dumps({"model": args.model, "batch": batch, "context": context, "path": label, **row, **extra}))
            extra = {}
        if args.model.startswith("pararnn"):
            with torch.inference_mode():
                floor = gemm_floor_seconds(model, batch)
            print(json.dumps({"model": args.model, "batch": batch, "context": context, "path": FLOOR,
                              "tok_s": batch / floor, "ms_per_step": floor * 1e3}))  # fmt: skip


def paths_main(args: argparse.Namespace) -> None:
    print(
        f"device={args.device} size={args.size} dtype={args.dtype} new_tokens={args.new_tokens} "
        f"repeats={args.repeats} rows(batch:context)={' '.join(args.rows)}"
    )
    print("tok/s = batch / seconds per decoding step; x stock: against transformers' generate() loop over the")
    print("same model (fast path off); x llama: against Llama's best path at the same batch and context\n")
    print(
        f"{'model':<13} {'batch':>5} {'ctx':>6} {'path':<36} {'tok/s':>10} {'x stock':>8} {'x llama':>8} {'= stock':>9}"
    )
    results = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--paths-worker", name, "--device", args.device, "--size", args.size,
               "--dtype", args.dtype, "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
               "--rows", *(args.llama_rows if name == "llama" and args.llama_rows else args.rows)]  # fmt: skip
        if args.only:
            cmd += ["--only", *args.only]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = proc.stdout.splitlines()
            if proc.returncode != 0:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1][:100]
                results.append({"model": name, "error": err})
                print(f"{name:<13} failed: {err}")
        except subprocess.TimeoutExpired as err:
            lines = (err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or "").splitlines()
            print(f"{name:<13} timed out after {args.timeout:.0f}s (rows so far below)")
        results += [json.loads(line) for line in lines if line.startswith("{")]
    best_llama = {}
    for r in results:
        if r.get("model") == "llama" and "tok_s" in r:
            key = (r["batch"], r["context"])
            best_llama[key] = max(best_llama.get(key, 0.0), r["tok_s"])
    stock = {
        (r["model"], r["batch"], r["context"]): r["tok_s"]
        for r in results
        if r.get("path") == BASELINE and "tok_s" in r
    }
    for r in results:
        if "path" not in r:
            continue
        key = (r["batch"], r["context"])
        if "error" in r:
            print(f"{r['model']:<13} {key[0]:>5} {key[1]:>6} {r['path']:<36} failed: {r['error']}")
            continue
        base = stock.get((r["model"], *key))
        x_stock = f"{r['tok_s'] / base:.2f}" if base else ""
        x_llama = f"{r['tok_s'] / best_llama[key]:.2f}" if best_llama.get(key) and r["model"] != "llama" else ""
        print(
            f"{r['model']:<13} {key[0]:>5} {key[1]:>6} {r['path']:<36} {r['tok_s']:>10,.1f} {x_stock:>8} "
            f"{x_llama:>8} {r.get('equal_tokens', ''):>9}"
            + (f"  ({r['kernels_per_token']} CUDA kernels per step)" if "kernels_per_token" in r else "")
        )
    write_results(args, results, new_tokens=args.new_tokens)


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
    parser.add_argument(
        "--paths",
        action="store_true",
        help="decoding paths side by side (stock and fast generate(), pararnn_hf.decoding, Llama) per --rows",
    )
    parser.add_argument("--rows", nargs="+", default=["1:128", "16:128"], help="with --paths: BATCH:CONTEXT pairs")
    parser.add_argument("--llama-rows", nargs="+", help="with --paths: Llama's rows (default: --rows)")
    parser.add_argument("--only", nargs="+", help="with --paths: only the paths whose label contains one of these")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "CONTEXT"), help=argparse.SUPPRESS)
    parser.add_argument("--paths-worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paths_worker:
        args.model = args.paths_worker
        paths_worker(args)
        return
    if args.paths:
        if args.models == list(MODELS):
            args.models = ["pararnn-gru", "pararnn-lstm", "llama"]
        if args.out == parser.get_default("out"):
            args.out = "benchmarks/results/bench_decode_paths.json"
        paths_main(args)
        return
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
    write_results(args, rows, compile=args.compile, prefill_chunk_size=args.prefill_chunk_size)


if __name__ == "__main__":
    main()

"""Training-step throughput (forward, backward, AdamW) of the ParaRNN presets next to
transformers' Llama of the same size, measured in one run.

Usage (GPU):  python benchmarks/bench_train.py --size 400m --batch 8 --seq-lens 2048 8192 --dtype bfloat16
Usage (CPU smoke): python benchmarks/bench_train.py --size 5m --batch 4 --seq-lens 256 --dtype float32
Prints tokens/s per model and sequence length and the ratio to Llama; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench_generate import SIZES, build
from pararnn_hf.runtime import tune_cpu_allocator

MODELS = ("pararnn-gru", "pararnn-lstm", "llama")


def step_time(model, batch: int, seq_len: int, device, repeats: int, checkpointing: bool) -> float:
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, seq_len), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()

    def one():
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    one()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="400m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/bench_train.json")
    args = parser.parse_args()
    tune_cpu_allocator()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rows = []
    print(
        f"device={device} size={args.size} batch={args.batch} dtype={args.dtype} "
        f"checkpointing={args.gradient_checkpointing}; tokens/s of forward+backward+AdamW"
    )
    for seq_len in args.seq_lens:
        tps = {}
        for name in args.models:
            torch.manual_seed(0)
            with device:  # initialise on the device: much faster than on the host for 400M+
                model = build(name, args.size, seq_len)
            model = model.to(dtype=dtype)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            peak_gb = None
            try:
                seconds = step_time(model, args.batch, seq_len, device, args.repeats, args.gradient_checkpointing)
                tps[name] = args.batch * seq_len / seconds
                text = f"{tps[name]:12,.0f}"
                if device.type == "cuda":
                    peak_gb = torch.cuda.max_memory_allocated() / 2**30
                    text += f" tok/s, peak {peak_gb:5.1f} GiB"
                else:
                    text += " tok/s"
            except torch.OutOfMemoryError:
                tps[name] = None
                text = f"{'OOM':>12}"
            params = sum(p.numel() for p in model.parameters())
            ratio = f"{tps[name] / tps['llama']:.2f}x Llama" if tps.get(name) and tps.get("llama") else ""
            print(f"T={seq_len:<6} {name:<13} {params / 1e6:7.1f}M {text} {ratio}", flush=True)
            rows.append({"seq_len": seq_len, "model": name, "params": params, "tok_s": tps[name], "peak_gib": peak_gb})
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if tps.get("llama"):
            for name in args.models:
                if name != "llama" and tps.get(name):
                    print(f"T={seq_len:<6} {name} / llama = {tps[name] / tps['llama']:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__}
    out.write_text(json.dumps({"meta": meta, "args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

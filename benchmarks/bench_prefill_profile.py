"""Where the 400M model's time goes: batch-1 prefill of both ParaRNN cells under both Triton
schedules against transformers' Llama of the same size, in one run, then ``torch.profiler``
tables of the ParaRNN prefill (b1 x 4096) and of a training step (b8 x 2048) by kernel family.

    python benchmarks/bench_prefill_profile.py --device cuda --size 400m --dtype bfloat16
    python benchmarks/bench_prefill_profile.py --smoke      # 5M model on the CPU (interpreter)

Families: ``recurrence`` (the solve ops and the kernels under them), ``GEMMs`` (every
``nn.Linear`` and the cell's input projection), ``conv`` (the causal depthwise conv),
``norms and gating`` (RMSNorm, SiLU and the gate products), ``the rest`` (embedding, residual
adds, loss, copies, optimizer). Forward time is attributed by the module or function that
launched it (profiler ranges pushed by hooks); backward time by the autograd node's name.
On CUDA the time is the kernels' own; on the CPU, the ops' self time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import build  # noqa: E402

FAMILIES = ("recurrence", "GEMMs", "conv", "norms and gating", "the rest")
# backward: autograd node names -> family
BACKWARD_NAMES = {
    "recurrence": ("recurrence",),
    "GEMMs": ("MmBackward", "BmmBackward", "AddmmBackward", "LinearBackward"),
    "norms and gating": ("PowBackward", "MeanBackward", "RsqrtBackward", "SiluBackward"),
}


def annotate(model) -> list:
    """Profiler ranges around the modules and the conv function, pushed by hooks."""
    from pararnn_hf.layers import ParaRNNLayer
    from pararnn_hf.modeling import modeling_pararnn as mp

    handles = []

    def wrap(module, label):
        ranges = []

        def pre(mod, args):
            ranges.append(torch.profiler.record_function(f"family::{label}").__enter__())

        def post(mod, args, out):
            ranges.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    for module in model.modules():
        if isinstance(module, ParaRNNLayer):
            wrap(module, "recurrence")
        elif isinstance(module, torch.nn.Linear):
            wrap(module, "GEMMs")
        elif isinstance(module, mp.ParaRNNRMSNorm):
            wrap(module, "norms and gating")
    conv = mp.causal_depthwise_conv

    def annotated_conv(*args, **kwargs):
        with torch.profiler.record_function("family::conv"):
            return conv(*args, **kwargs)

    class RestoreConv:
        @staticmethod
        def remove() -> None:
            mp.causal_depthwise_conv = conv

    mp.causal_depthwise_conv = annotated_conv
    handles.append(RestoreConv)
    return handles


def family_of(event) -> str:
    """The family of one profiler event: the innermost family range above it, else by name."""
    node = event
    while node is not None:
        if node.name.startswith("family::"):
            return node.name[len("family::") :]
        node = node.cpu_parent
    name = event.name
    if "bmm" in name or name.endswith("::mm"):
        return "GEMMs"  # the cell's per-head projection GEMM
    if name.startswith("aten::silu") or name.startswith("aten::mul"):
        return "norms and gating"
    for family, keys in BACKWARD_NAMES.items():
        if any(k in name for k in keys) or any(k in getattr(node, "name", "") for k in keys):
            return family
    parent = event.cpu_parent
    while parent is not None:  # a backward kernel: the autograd node that ran it
        for family, keys in BACKWARD_NAMES.items():
            if any(k in parent.name for k in keys):
                return family
        parent = parent.cpu_parent
    return "the rest"


def profile(fn, device: torch.device) -> dict[str, float]:
    """Milliseconds per family of one call of ``fn``."""
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if device.type == "cuda":
            cost = sum(k.duration for k in getattr(event, "kernels", []))
        else:
            cost = event.self_cpu_time_total if not event.cpu_children else 0.0
        if cost:
            totals[family_of(event)] += cost / 1e3
    return {f: totals.get(f, 0.0) for f in FAMILIES}


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="400m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-seq", type=int, default=2048)
    parser.add_argument("--profile-context", type=int, default=4096)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/bench_prefill_profile.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.size, args.dtype, args.contexts, args.repeats = "cpu", "5m", "float32", [40], 1
        args.train_batch, args.train_seq, args.profile_context = 2, 32, 40
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    result: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "prefill": []}
    print(f"{result['device']}: {args.size} models, {args.dtype}, batch-1 prefill (forward, no cache), tokens/s")
    llama = build("llama", args.size, max(args.contexts)).to(device, dtype).eval()
    models = {}
    for cell in ("gru", "lstm"):
        models[cell] = build(f"pararnn-{cell}", args.size, max(args.contexts)).to(device, dtype).eval()
    for context in args.contexts:
        ids = torch.randint(3, llama.config.vocab_size, (1, context), device=device)
        with torch.no_grad():
            ref = context / timed(lambda ids=ids: llama(ids, use_cache=False), device, args.repeats)
            line = f"context {context:>6}: llama {ref:>10,.0f}"
            row = {"context": context, "llama": ref}
            for cell, model in models.items():
                for schedule in ("chunked", "time_parallel"):
                    for layer in model.model.layers:
                        layer.mixer.cell.backend = "triton" if device.type == "cuda" else "auto"
                        layer.mixer.cell.triton_schedule = schedule
                    if device.type != "cuda" and schedule == "time_parallel":
                        continue  # the CPU runs the torch solvers: one row per cell
                    tok_s = context / timed(lambda m=model, ids=ids: m(ids, use_cache=False), device, args.repeats)
                    row[f"{cell}-{schedule}"] = tok_s
                    line += f" | {cell} {schedule} {tok_s:>10,.0f} ({tok_s / ref:.2f}x)"
        print(line, flush=True)
        result["prefill"].append(row)
    # where the time goes: prefill at one context, and one training step
    model = models["gru"]
    for layer in model.model.layers:
        layer.mixer.cell.triton_schedule = "auto"
    handles = annotate(model)
    ids = torch.randint(3, model.config.vocab_size, (1, args.profile_context), device=device)
    with torch.no_grad():
        model(ids, use_cache=False)  # compile and autotune outside the profile
        prefill = profile(lambda: model(ids, use_cache=False), device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(3, model.config.vocab_size, (args.train_batch, args.train_seq), device=device)

    def step():
        model(batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    train = profile(step, device)
    for handle in handles:
        handle.remove()
    result["profile"] = {"prefill": prefill, "train_step": train}
    print(f"\nParaGRU {args.size}: milliseconds by kernel family (prefill b1 x {args.profile_context}, training "
          f"step b{args.train_batch} x {args.train_seq} with AdamW)")  # fmt: skip
    print(f"{'family':<18} {'prefill ms':>11} {'share':>6} {'train ms':>10} {'share':>6}")
    for family in FAMILIES:
        p, t = prefill[family], train[family]
        print(
            f"{family:<18} {p:>11.2f} {p / max(sum(prefill.values()), 1e-9):>6.0%} "
            f"{t:>10.2f} {t / max(sum(train.values()), 1e-9):>6.0%}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), **result}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

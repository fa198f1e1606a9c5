"""Triton kernels on a GPU: correctness against the torch backend at full size, then timings
(``triton.testing.do_bench``, median ms) of the whole cell (input projection included) for the
triton, torch and sequential backends, forward and forward+backward, and of the recurrence
kernels alone with their achieved bandwidth as a fraction of a device-to-device copy measured
in the same run.

Usage: python benchmarks/bench_kernels.py [--T 1024 2048 4096 16384] [--dtypes float32 bfloat16]
       python benchmarks/bench_kernels.py --smoke     # tiny shapes; runs under TRITON_INTERPRET=1 too
Bytes that must move: forward reads u (3 B T N) and writes the states (GRU: h, B T N; LSTM:
c and h, 2 B T N); backward reads u, the states and their gradients and writes dL/du.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pararnn_hf import ParaGRU, ParaLSTM
from pararnn_hf.ops.triton import interpreter_enabled

# Reference CUDA implementation on an H200 (fp32, B=8, N=2048, 4 heads, whole cell; median ms)
REFERENCE_MS = {
    ("gru", 1024): (3.06, 13.1),
    ("gru", 2048): (4.82, 24.3),
    ("gru", 4096): (8.25, 46.8),
    ("lstm", 1024): (3.51, 14.2),
    ("lstm", 2048): (6.74, 27.8),
    ("lstm", 4096): (13.4, 54.1),
}
LAYERS = {"gru": ParaGRU, "lstm": ParaLSTM}


def bench(fn, device: torch.device, reps: int) -> float:
    """Median milliseconds. On CUDA, do_bench times with events (work is asynchronous: a
    host clock without a synchronize would time the launches only)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=5, rep=reps * 20, return_mode="median")
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def tuned_configs() -> dict[str, str]:
    """What the autotuner chose, per kernel and key (N, cell, batch bucket, dtypes)."""
    from pararnn_hf.ops.triton import kernels

    out = {}
    for name in ("newton_forward_kernel", "adjoint_backward_kernel"):
        for key, config in getattr(getattr(kernels, name), "cache", {}).items():
            out[f"{name}{tuple(key)[:3]}"] = str(config)
    return out


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(layer, x) -> dict[str, float]:
    """Triton vs torch backend at this size: outputs and gradients."""
    grads = {}
    for backend in ("torch", "triton"):
        layer.backend = backend
        layer.zero_grad()
        xb = x.detach().clone().requires_grad_()
        y = layer(xb)
        y.float().square().mean().backward()
        grads[backend] = (y.detach(), xb.grad, [p.grad.clone() for p in layer.parameters()])
    t, r = grads["triton"], grads["torch"]
    return {"y": rel(t[0], r[0]), "dx": rel(t[1], r[1]), "dparams": max(rel(a, b) for a, b in zip(t[2], r[2]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--state", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--T", type=int, nargs="+", default=[1024, 2048, 4096, 16384])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--cells", nargs="+", default=["gru", "lstm"])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--sequential-max-T", type=int, default=1024, help="time the loop only up to this T")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, to check the script runs")
    parser.add_argument("--out", default="benchmarks/results/bench_kernels.json")
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.state, args.heads, args.T, args.reps = 2, 32, 2, [24], 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not interpreter_enabled():
        raise SystemExit("bench_kernels needs a CUDA GPU (or TRITON_INTERPRET=1 with --smoke)")
    from pararnn_hf.ops.triton.solve import triton_adjoint_backward, triton_newton_forward

    torch.manual_seed(0)
    B, N = args.batch, args.state
    copy_src = torch.empty((1 if args.smoke else 64) * 2**20, device=device)
    copy_dst = torch.empty_like(copy_src)
    copy_ms = bench(lambda: copy_dst.copy_(copy_src), device, args.reps)
    copy_gbs = 2 * copy_src.numel() * 4 / copy_ms / 1e6
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (interpreter)"
    print(f"{name}: device-to-device copy {copy_gbs:,.0f} GB/s; batch {B}, state=input={N}, {args.heads} heads")
    rows = []
    for cell in args.cells:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            layer = LAYERS[cell](N, N, num_heads=args.heads).to(device=device, dtype=dtype)
            for T in args.T:
                x = torch.randn(B, T, N, device=device, dtype=dtype)
                errors = check(layer, x)
                row = {"cell": cell, "dtype": dtype_name, "T": T, "check": errors}
                times = {}
                for backend in ("triton", "torch", "sequential"):
                    if backend == "sequential" and T > args.sequential_max_T:
                        continue
                    layer.backend = backend

                    def fwd(layer=layer, x=x):
                        with torch.no_grad():
                            layer(x)

                    def fwd_bwd(layer=layer, x=x):
                        xg = x.detach().requires_grad_()
                        layer(xg).float().sum().backward()

                    times[backend] = {"fwd": bench(fwd, device, args.reps)}
                    if backend != "sequential":
                        times[backend]["fwd+bwd"] = bench(fwd_bwd, device, args.reps)
                row["ms"] = times
                # the recurrence kernels alone
                with torch.no_grad():
                    u = layer.project(x).float()
                    s0 = torch.zeros(B, len(layer.cell.STATE_ROWS), N, device=device)
                    C = layer.C.float() if layer.C is not None else None
                    s, info = triton_newton_forward(layer.cell, u, layer.A.float(), C, s0, None, None, 8, None)
                    g = torch.randn_like(s)
                    A32 = layer.A.float()
                    args_f = (layer.cell, u, A32, C, s0, None, None, 8, None)
                    args_b = (layer.cell, u, A32, C, s0, s, None, None, g)
                    kf = bench(lambda a=args_f: triton_newton_forward(*a), device, args.reps)
                    kb = bench(lambda a=args_b: triton_adjoint_backward(*a), device, args.reps)
                K = len(layer.cell.STATE_ROWS)
                fwd_bytes = (3 + K) * B * T * N * 4
                bwd_bytes = (3 + 2 * K + 3) * B * T * N * 4
                row["kernel"] = {
                    "fwd_ms": kf,
                    "bwd_ms": kb,
                    "newton_iterations": info.iterations,
                    "fwd_copy_fraction": fwd_bytes / kf / 1e6 / copy_gbs,
                    "bwd_copy_fraction": bwd_bytes / kb / 1e6 / copy_gbs,
                }
                ref = REFERENCE_MS.get((cell, T)) if dtype_name == "float32" else None
                tri = times["triton"]
                line = (
                    f"{cell:<4} {dtype_name:<8} T={T:<6} check y {errors['y']:.1e} dx {errors['dx']:.1e} "
                    f"dp {errors['dparams']:.1e} | triton {tri['fwd']:.2f} / {tri['fwd+bwd']:.2f} ms, torch "
                    f"{times['torch']['fwd']:.2f} / {times['torch']['fwd+bwd']:.2f} ms"
                )
                if "sequential" in times:
                    loop = times["sequential"]["fwd"]
                    line += f", loop fwd {loop:.1f} ms ({loop / tri['fwd']:.0f}x)"
                if ref:
                    line += (
                        f" | vs reference CUDA: fwd {tri['fwd'] / ref[0]:.2f}x, fwd+bwd {tri['fwd+bwd'] / ref[1]:.2f}x"
                    )
                line += (
                    f" | kernels: fwd {kf:.2f} ms ({row['kernel']['fwd_copy_fraction']:.0%} of copy), "
                    f"bwd {kb:.2f} ms ({row['kernel']['bwd_copy_fraction']:.0%}), {info.iterations} Newton it"
                )
                print(line, flush=True)
                rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    configs = tuned_configs()
    for key, config in configs.items():
        print(f"autotuned {key}: {config}")
    out.write_text(
        json.dumps(
            {"device": name, "copy_gbs": copy_gbs, "args": vars(args), "rows": rows, "autotuned": configs}, indent=2
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

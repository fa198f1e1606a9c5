"""The Triton kernels' two schedules side by side (docs/design.md#kernels): the recurrence
kernels alone, forward and backward, ``chunked`` against ``time_parallel``, in one run, with
the fraction of a device-to-device copy each reaches for the bytes it really moves.

    python benchmarks/bench_schedules.py                       # each cell, fp32 and bf16, B 1 and 8,
                                                               # T 1k/4k/16k, N 2048
    python benchmarks/bench_schedules.py --smoke               # tiny shapes, under TRITON_INTERPRET=1

Bytes moved (u in its dtype, states and gradients fp32, K state rows, ``it`` Newton steps):
chunked forward reads u once and writes the states (3 u + 4 K per element of B T N); the
time-parallel forward reads u and writes the first iterate, then per step reads u and one
state buffer and writes the other (plus the final copy when the last step was odd); the
chunked backward reads u, the states and their gradients and writes du; the time-parallel
backward reads u, the states and the gradients twice (summaries, then gradients) and writes
du. The chunk summaries are a few per cent on top and are not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernels import bench  # noqa: E402
from pararnn_hf import ParaGRU, ParaLSTM  # noqa: E402
from pararnn_hf.ops.triton import interpreter_enabled  # noqa: E402

LAYERS = {"gru": ParaGRU, "lstm": ParaLSTM}


def moved_bytes(schedule: str, K: int, u_size: int, iterations: int, per_element: int) -> tuple[int, int]:
    """(forward, backward) bytes for ``per_element`` = B * T * N elements (see the module doc)."""
    u, s = 3 * u_size, 4 * K
    if schedule == "chunked":
        fwd = u + s
        bwd = u + s + s + 3 * 4
    else:
        fwd = (u + s) + iterations * (u + 2 * s) + (2 * s if iterations % 2 else 0)
        bwd = 2 * (u + s + s) + 3 * 4
    return fwd * per_element, bwd * per_element


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--T", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--state", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--cells", nargs="+", default=["gru", "lstm"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, to check the script runs")
    parser.add_argument("--out", default="benchmarks/results/bench_schedules.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batches, args.T, args.state, args.heads, args.reps = [1], [20], 24, 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not interpreter_enabled():
        raise SystemExit("bench_schedules needs a CUDA GPU (or TRITON_INTERPRET=1 with --smoke)")
    from pararnn_hf.ops.triton.solve import triton_adjoint_backward, triton_newton_forward
    from pararnn_hf.ops.triton.time_parallel import triton_time_parallel_backward, triton_time_parallel_forward

    solvers = {
        "chunked": (triton_newton_forward, triton_adjoint_backward),
        "time_parallel": (triton_time_parallel_forward, triton_time_parallel_backward),
    }
    torch.manual_seed(0)
    copy_src = torch.empty((1 if args.smoke else 64) * 2**20, device=device)
    copy_dst = torch.empty_like(copy_src)
    copy_gbs = 2 * copy_src.numel() * 4 / bench(lambda: copy_dst.copy_(copy_src), device, args.reps) / 1e6
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (interpreter)"
    N = args.state
    print(f"{name}: copy {copy_gbs:,.0f} GB/s; N = {N}, {args.heads} heads; recurrence kernels alone, median ms")
    print(f"{'cell':<4} {'dtype':<8} {'B':>2} {'T':>6} | {'chunked fwd / bwd (copy %)':<30} | "
          f"{'time-parallel fwd / bwd (copy %)':<32} | speed-up fwd, bwd")  # fmt: skip
    rows = []
    for cell in args.cells:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            layer = LAYERS[cell](N, N, num_heads=args.heads).to(device=device, dtype=dtype)
            K = len(layer.cell.STATE_ROWS)
            for B in args.batches:
                for T in args.T:
                    with torch.no_grad():
                        x = torch.randn(B, T, N, device=device, dtype=dtype)
                        u, bias = layer.project_heads(x), layer.b
                        s0 = torch.zeros(B, K, N, device=device)
                        A = layer.A.float()
                        C = None if layer.C is None else layer.C.float()
                        row = {"cell": cell, "dtype": dtype_name, "B": B, "T": T}
                        states = {}
                        for schedule, (forward, backward) in solvers.items():
                            fwd_args = (layer.cell, u, A, C, s0, None, None, 8, None, bias)
                            s, info = forward(*fwd_args)
                            states[schedule] = s
                            bwd_args = (layer.cell, u, A, C, s0, s, None, None, torch.randn_like(s), bias)
                            fwd_ms = bench(lambda f=forward, a=fwd_args: f(*a), device, args.reps)
                            bwd_ms = bench(lambda b=backward, a=bwd_args: b(*a), device, args.reps)
                            fwd_b, bwd_b = moved_bytes(schedule, K, u.element_size(), info.iterations, B * T * N)
                            row[schedule] = {
                                "fwd_ms": fwd_ms,
                                "bwd_ms": bwd_ms,
                                "newton_iterations": info.iterations,
                                "fwd_copy_fraction": fwd_b / fwd_ms / 1e6 / copy_gbs,
                                "bwd_copy_fraction": bwd_b / bwd_ms / 1e6 / copy_gbs,
                            }
                        a, b = states["time_parallel"], states["chunked"]
                        row["state_rel_diff"] = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
                    c, t = row["chunked"], row["time_parallel"]
                    print(
                        f"{cell:<4} {dtype_name:<8} {B:>2} {T:>6} | "
                        f"{c['fwd_ms']:7.3f} / {c['bwd_ms']:7.3f} ({c['fwd_copy_fraction']:4.0%}, "
                        f"{c['bwd_copy_fraction']:4.0%})   | {t['fwd_ms']:7.3f} / {t['bwd_ms']:7.3f} "
                        f"({t['fwd_copy_fraction']:4.0%}, {t['bwd_copy_fraction']:4.0%})     | "
                        f"{c['fwd_ms'] / t['fwd_ms']:5.2f}x, {c['bwd_ms'] / t['bwd_ms']:5.2f}x "
                        f"(states differ {row['state_rel_diff']:.1e})",
                        flush=True,
                    )
                    rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "copy_gbs": copy_gbs, "args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

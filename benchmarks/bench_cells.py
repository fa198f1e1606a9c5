"""Forward and forward+backward time of every solve path, for both cells, side by side.

Paths, all on the whole layer (input projection included):
- ``loop+autograd``: the step loop with autograd recording every step (the naive baseline),
- ``sequential``:    the step loop forward + the adjoint-scan backward (backend="sequential"),
- ``newton``:        parallel Newton forward + the adjoint-scan backward (backend="torch"),
- ``auto``:          whatever backend="auto" picks for the device and shape.

Usage:  python benchmarks/bench_cells.py [--device cpu|cuda] [--T 256 1024 4096] [--out FILE]
Prints times (median ms), ratios against ``loop+autograd`` measured in the same run, and
the Newton iterations used; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from pararnn_hf import ParaGRU, ParaLSTM
from pararnn_hf.ops.sequential import sequential_solve
from pararnn_hf.runtime import tune_cpu_allocator

PATHS = ("loop+autograd", "sequential", "newton", "auto")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device: torch.device, repeats: int, min_time: float = 0.0) -> float:
    """Median wall time in ms over ``repeats`` runs after one warm-up."""
    fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all < min_time and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def make_runner(layer, path: str, x: torch.Tensor, backward: bool):
    def loop_autograd():
        u = layer.project(x)
        C = layer.C
        s0 = x.new_zeros(x.shape[0], layer.state_rows, layer.state_size)
        return sequential_solve(layer.cell, u, layer.A, C, s0)[..., -1, :]

    backend = {"sequential": "sequential", "newton": "torch", "auto": "auto"}.get(path)

    def run():
        layer.zero_grad(set_to_none=True)
        if path == "loop+autograd":
            with torch.set_grad_enabled(backward):
                y = loop_autograd()
        else:
            layer.backend = backend
            with torch.set_grad_enabled(backward):
                y = layer(x)
        if backward:
            y.backward(grad)
        return y

    grad = torch.randn(x.shape[0], x.shape[1], layer.state_size, device=x.device)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--state", type=int, default=256)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--cells", nargs="+", default=["gru", "lstm"])
    parser.add_argument("--recurrent-std", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], help="paths to leave out, e.g. loop+autograd")
    parser.add_argument("--no-tune-malloc", action="store_true", help="keep glibc's default malloc trimming")
    parser.add_argument("--out", default="benchmarks/results/bench_cells.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    tuned = False if args.no_tune_malloc else tune_cpu_allocator()
    torch.manual_seed(0)
    rows = []
    header = f"{'cell':<5} {'T':>6} {'dir':<8} " + " ".join(f"{p:>14}" for p in PATHS) + "   newton iters"
    print(
        f"device={device} batch={args.batch} state=input={args.state} heads={args.heads} fp32, median ms, "
        f"malloc tuned={tuned}"
    )
    print("ratios are loop+autograd time / path time (higher is faster)")
    print(header)
    for cell_name in args.cells:
        cls = {"gru": ParaGRU, "lstm": ParaLSTM}[cell_name]
        layer = cls(args.state, args.state, num_heads=args.heads, init_recurrent_std=args.recurrent_std).to(device)
        for T in args.T:
            x = torch.randn(args.batch, T, args.state, device=device)
            with torch.no_grad():
                layer.backend = "torch"
                layer(x)
                iters = layer.last_solve_info.iterations
            for backward in (False, True):
                times = {}
                for path in PATHS:
                    if path in args.skip:
                        continue
                    times[path] = timeit(make_runner(layer, path, x, backward), device, args.repeats)
                direction = "fwd+bwd" if backward else "fwd"
                base = times.get("loop+autograd")
                cells = []
                for p in PATHS:
                    if p not in times:
                        cells.append(f"{'-':>14}")
                    elif base:
                        cells.append(f"{times[p]:8.1f} {base / times[p]:4.1f}x")
                    else:
                        cells.append(f"{times[p]:14.1f}")
                print(f"{cell_name:<5} {T:>6} {direction:<8} " + " ".join(cells) + f"   {iters}")
                rows.append(
                    {"cell": cell_name, "T": T, "direction": direction, "ms": times, "newton_iterations": iters}
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": args.batch,
        "state": args.state,
        "heads": args.heads,
        "recurrent_std": args.recurrent_std,
        "malloc_tuned": tuned,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

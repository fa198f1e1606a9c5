"""Where the parallel Newton solve beats the step loop on CPU (calibrates ``backend="auto"``).

Times forward (no grad) and forward+backward of backend="sequential" and backend="torch"
for a grid of (batch, state) sizes, side by side in one run, and prints which is faster
next to what ``auto`` picks. Usage: python benchmarks/bench_cpu_crossover.py [--T 64 1024]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench_cells import timeit
from pararnn_hf import ParaGRU, ParaLSTM
from pararnn_hf.ops.dispatch import select_method
from pararnn_hf.runtime import tune_cpu_allocator

SIZES = [(1, 8), (1, 32), (1, 64), (2, 64), (1, 256), (4, 128), (4, 256)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/bench_cpu_crossover.json")
    args = parser.parse_args()
    tuned = tune_cpu_allocator()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    rows = []
    print(f"CPU, fp32, median ms, malloc tuned={tuned}; 'best' = faster of loop / newton")
    print(f"{'cell':<5} {'B':>2} {'N':>4} {'T':>5} {'elems':>5} {'dir':<8} {'loop':>7} {'newton':>7} {'best':>7} auto")
    for cls in (ParaGRU, ParaLSTM):
        for batch, state in SIZES:
            for T in args.T:
                layer = cls(state, state, init_recurrent_std=0.3)
                x = torch.randn(batch, T, state)
                auto_method = select_method("auto", layer.project(x).detach(), layer.state_rows)
                auto = "loop" if auto_method == "sequential" else "newton"
                for backward in (False, True):
                    ms = {}
                    for backend in ("sequential", "torch"):
                        layer.backend = backend

                        def run(layer=layer, x=x, backward=backward):
                            with torch.set_grad_enabled(backward):
                                y = layer(x)
                            if backward:
                                y.sum().backward()

                        ms[backend] = timeit(run, cpu, args.repeats)
                    best = "loop" if ms["sequential"] <= ms["torch"] else "newton"
                    direction = "fwd+bwd" if backward else "fwd"
                    elems = batch * state * layer.state_rows
                    print(
                        f"{layer.cell.NAME:<5} {batch:>2} {state:>4} {T:>5} {elems:>5} {direction:<8} "
                        f"{ms['sequential']:7.1f} {ms['torch']:7.1f} {best:>7} {auto}"
                    )
                    rows.append(
                        {
                            "cell": layer.cell.NAME,
                            "batch": batch,
                            "state": state,
                            "T": T,
                            "direction": direction,
                            "ms": ms,
                            "best": best,
                            "auto": auto,
                        }
                    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"malloc_tuned": tuned, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Newton iterations needed until the residual is below the default tolerance, by recurrent
weight scale and dtype (both cells). Usage: python benchmarks/bench_newton_iterations.py"""

from __future__ import annotations

import argparse

import torch

from pararnn_hf import ParaGRU, ParaLSTM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--stds", type=float, nargs="+", default=[0.0, 0.3, 0.5, 1.0], help="0 = reference init")
    args = parser.parse_args()
    print(f"input 96, state 120, 4 heads, batch 3, T={args.T}, biases + N(0, 0.3^2); iterations (final residual)")
    print(f"{'std':>6} " + " ".join(f"{c + ' ' + d:>18}" for c in ("gru", "lstm") for d in ("fp32", "fp64")))
    for std in args.stds:
        cells = []
        for cls in (ParaGRU, ParaLSTM):
            for dtype in (torch.float32, torch.float64):
                torch.manual_seed(0)
                layer = cls(
                    96,
                    120,
                    num_heads=4,
                    init_recurrent_std=std or None,
                    dtype=dtype,
                    backend="torch",
                    newton_max_iterations=40,
                )
                with torch.no_grad():
                    layer.b.add_(0.3 * torch.randn_like(layer.b))
                    layer(torch.randn(3, args.T, 96, dtype=dtype))
                info = layer.last_solve_info
                cells.append(f"{info.iterations:>6} ({info.residual:.1e})")
        print(f"{std or 'init':>6} " + " ".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()

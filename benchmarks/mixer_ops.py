"""Every op of one ParaRNN mixer's forward and backward, with the bytes each reads and writes.

Counts the aten ops one ``ParaRNNMixer`` dispatches (a ``TorchDispatchMode``), on the CPU with
the Triton backend under the interpreter: the solve is one opaque op (``recurrence_forward`` /
``recurrence_backward``), the kernels inside it are not aten ops, so the table shows what runs
around them. Bytes are the sizes of the tensors each op reads and writes (views: 0).

    python benchmarks/mixer_ops.py                       # the table (docs/design.md#kernels)
    python benchmarks/mixer_ops.py --batch 8 --seq 2048 --hidden 1024 --dtype bfloat16

tests/test_mixer_ops.py pins the forward's op count so that it cannot silently grow back.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

# ops that only relabel memory
VIEWS = {"view", "_unsafe_view", "permute", "transpose", "t", "select", "slice", "unsqueeze", "squeeze", "expand"}
VIEWS |= {"split", "chunk", "unflatten", "alias", "detach", "as_strided", "unbind"}


def _bytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_bytes(v) for v in x)
    return 0


class OpLog(TorchDispatchMode):
    """Records (op name, bytes in, bytes out) of every aten op dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        moved = name not in VIEWS
        self.ops.append((name, _bytes(args) if moved else 0, _bytes(out) if moved else 0))
        return out


def mixer_ops(cell: str = "gru", batch: int = 2, seq: int = 16, hidden: int = 64, dtype: str = "float32"):
    """(forward ops, backward ops) of one mixer of a one-layer model, Triton backend."""
    from pararnn_hf import ParaRNNConfig, ParaRNNForCausalLM

    torch.manual_seed(0)
    config = ParaRNNConfig(
        vocab_size=256, hidden_size=hidden, num_hidden_layers=1, num_heads=4, cell=cell, backend="triton"
    )
    mixer = ParaRNNForCausalLM(config).to(getattr(torch, dtype)).model.layers[0].mixer
    x = torch.randn(batch, seq, hidden, dtype=getattr(torch, dtype), requires_grad=True)
    with OpLog() as fwd:
        y, _, _ = mixer(x, None, None, None, None)
    grad = torch.randn_like(y)
    with OpLog() as bwd:
        y.backward(grad)
    return fwd.ops, bwd.ops


def table(ops: list[tuple[str, int, int]]) -> str:
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for name, b_in, b_out in ops:
        rows[name][0] += 1
        rows[name][1] += b_in
        rows[name][2] += b_out
    lines = ["| op | count | bytes in | bytes out |", "|---|---|---|---|"]
    for name, (count, b_in, b_out) in sorted(rows.items(), key=lambda kv: (-kv[1][1] - kv[1][2], kv[0])):
        lines.append(f"| {name} | {count} | {b_in:,} | {b_out:,} |")
    total_in, total_out = sum(r[1] for r in rows.values()), sum(r[2] for r in rows.values())
    lines.append(f"| **all** | {len(ops)} | {total_in:,} | {total_out:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="gru", choices=["gru", "lstm"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    fwd, bwd = mixer_ops(args.cell, args.batch, args.seq, args.hidden, args.dtype)
    shape = f"{args.cell}, batch {args.batch} x {args.seq} tokens, width {args.hidden}, {args.dtype}"
    print(f"one mixer forward ({shape}): {len(fwd)} ops\n\n{table(fwd)}\n")
    print(f"its backward: {len(bwd)} ops\n\n{table(bwd)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

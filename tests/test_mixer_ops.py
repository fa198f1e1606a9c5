"""The ops around the recurrence kernels stay few: one mixer's forward dispatches a pinned
number of aten ops (benchmarks/mixer_ops.py prints the table of docs/design.md#kernels), the
projection is one GEMM read where it lies (no layout copy, no bias pass: the kernels add ``b``),
and its backward hands ``du`` to the GEMM without a copy."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch_only

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mixer_ops.py"
FORWARD_OPS = {"gru": 64, "lstm": 65}  # lower them here when the glue shrinks


def _script():
    spec = importlib.util.spec_from_file_location("mixer_ops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_one_mixer_forward_dispatches_a_pinned_number_of_ops(cell):
    fwd, bwd = _script().mixer_ops(cell)
    names = [name for name, _, _ in fwd]
    assert len(fwd) == FORWARD_OPS[cell], f"{len(fwd)} ops: {names}"
    assert names.count("bmm") == 1 and names.count("recurrence_forward") == 1
    # the only copies are the cache states leaving the block (the conv tail and each state
    # row); no op writes a [B, T, 3, N] tensor besides the GEMM itself
    u_bytes = 2 * 16 * 3 * 64 * 4
    assert names.count("clone") == 1 + {"gru": 1, "lstm": 2}[cell]
    assert [n for n, _, out in fwd if out >= u_bytes and n not in ("bmm", "mul", "add")] == [], fwd
    assert [n for n, _, out in bwd if n in ("clone", "copy_", "contiguous") and out >= u_bytes] == [], bwd

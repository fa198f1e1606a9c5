"""The Triton kernels compile for real GPUs (sm_80, sm_90) without spilling, on a machine with
no GPU: every kernel x autotune config x cell x input dtype x optional inputs, down to the
cubin (ptxas included). Run alone with ``pytest -m gpu_compile``; a few minutes on 2 cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "kernel_resources.py"

pytestmark = [pytest.mark.gpu_compile, pytest.mark.torch_only]


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kernel_resources", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_kernel_config_compiles_for_sm80_and_sm90_without_spills(tmp_path):
    out = tmp_path / "resources.json"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--jobs", str(min(4, os.cpu_count() or 1)), "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    # exactly the autotune spaces the kernels search per cell, each for 2 u dtypes x 2 archs
    # (x2 optional-input variants for the sequence kernels)
    from pararnn_hf.ops.triton import kernels

    declared = {"newton_forward": kernels.FORWARD_SHAPES, "adjoint_backward": kernels.BACKWARD_SHAPES}
    for kernel, by_cell in declared.items():
        for cell, cell_id in (("gru", 0), ("lstm", 1)):
            got = [
                (r["config"]["CH"], r["config"]["BN"], r["num_warps"])
                for r in rows
                if (r["kernel"], r["cell"]) == (kernel, cell)
            ]
            assert sorted(set(got)) == sorted(by_cell[cell_id]) and len(got) == 8 * len(by_cell[cell_id]), (
                kernel,
                cell,
            )
    # the time-parallel schedule's kernels at its one tile per cell
    from pararnn_hf.ops.triton.time_parallel import TILES

    for kernel in (
        "tp_guess",
        "tp_step",
        "tp_carry",
        "tp_finish",
        "tp_adjoint_local",
        "tp_adjoint_carry",
        "tp_adjoint_grad",
    ):
        for cell, cell_id in (("gru", 0), ("lstm", 1)):
            got = {(r["config"].get("CH", TILES[cell_id][0]), r["config"]["BN"], r["num_warps"])
                   for r in rows if (r["kernel"], r["cell"]) == (kernel, cell)}  # fmt: skip
            assert got == {TILES[cell_id]}, (kernel, cell, got)
    # the fused decoding step's kernels at the presets' launch shapes, both activation dtypes
    script = _load_script()
    for kernel in ("mixer_step", "residual_norm", "silu_mul"):
        cells = {"gru", "lstm"} if kernel == "mixer_step" else {"any"}
        got = {(r["cell"], r["u_dtype"], tuple(sorted(r["config"].items())), r["num_warps"])
               for r in rows if r["kernel"] == kernel}  # fmt: skip
        dtypes, configs = ("float32", "bfloat16"), script.decode_configs(kernel)
        want = {(cell, dtype, tuple(sorted(c.kwargs.items())), c.num_warps)
                for cell in cells for dtype in dtypes for c in configs}  # fmt: skip
        assert got == want, (kernel, got ^ want)
    steps = [(r["config"]["BN"], r["num_warps"]) for r in rows if r["kernel"] == "decode_step"]
    assert sorted(set(steps)) == sorted(kernels.STEP_SHAPES) and len(steps) == 8 * len(kernels.STEP_SHAPES)
    assert all(r["error"] is None and r["local"] == 0 and r["regs"] <= 255 and r["ctas_per_sm"] >= 1 for r in rows)
    assert all(r["stack"] == 0 for r in rows if r["regs"] >= 240), "no spills where the registers ran out"
    assert {r["arch"] for r in rows} == {80, 90}


def test_check_flags_spills_oversized_shared_memory_and_compile_errors():
    kr = _load_script()
    good = {
        "label": "k",
        "error": None,
        "regs": 128,
        "local": 0,
        "stack": 0,
        "shared": 1024,
        "arch": 90,
        "ctas_per_sm": 2,
    }
    assert kr.problems(good) == []
    assert kr.problems({**good, "stack": 8}) == []  # ptxas's own choice at 128 registers
    assert "spills 8 B per thread at 255 registers" in kr.problems({**good, "stack": 8, "regs": 255})[0]
    assert "spills 256 B" in kr.problems({**good, "stack": 256})[0]
    assert "local memory" in kr.problems({**good, "local": 16})[0]
    assert "shared memory" in kr.problems({**good, "arch": 80, "shared": 200_000})[0]
    assert "does not compile" in kr.problems({**good, "error": "CompilationError: x"})[0]


def test_occupancy_follows_register_and_thread_limits():
    kr = _load_script()
    assert kr.occupancy(90, regs=255, shared=0, num_warps=4) == (2, 0.125)  # 256 regs x 128 threads per CTA
    assert kr.occupancy(90, regs=32, shared=0, num_warps=4)[0] == 16  # thread limit: 2048 / 128
    assert kr.occupancy(80, regs=64, shared=100_000, num_warps=4)[0] == 1  # shared memory limit

"""Compile every Triton kernel for real GPUs without one, and report what each config costs.

For each kernel x autotune config x cell x input dtype x optional inputs (none / all present)
and each target (sm_80, sm_90), Triton's whole pipeline runs down to a cubin (``ptxas``
included), and the ``cuobjdump`` shipped in Triton's wheel reads its registers, stack, local
and shared memory. From those and the chip's limits: CTAs per SM and theoretical occupancy.

    python benchmarks/kernel_resources.py                      # the table, both targets
    python benchmarks/kernel_resources.py --check --jobs 2     # exit 1 on a compile error,
                                                               # spills/local memory, or shared
                                                               # memory over the chip's limit
    python benchmarks/kernel_resources.py --json out.json --kernels decode_step

No GPU needed (tests/test_kernel_compile.py runs ``--check`` in CI); the kernels are compiled,
never launched, so the interpreter must be off: ``main`` sets ``TRITON_INTERPRET=0`` (importing
this module changes nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# Per-SM limits (CUDA occupancy calculator data): registers, threads, resident CTAs, shared
# memory per SM and the most one CTA may use (opt-in), in bytes; 1 KiB of each CTA's share is
# reserved by the driver on sm_80+.
ARCHS = {
    80: {"regs": 65536, "threads": 2048, "ctas": 32, "smem_sm": 167936, "smem_cta": 166912},  # A100
    90: {"regs": 65536, "threads": 2048, "ctas": 32, "smem_sm": 233472, "smem_cta": 232448},  # H100, H200
}
RESERVED_SMEM = 1024
# Spills. ptxas sometimes spills a few bytes by choice to stay at 128 registers (occupancy):
# the sm_80 adjoint kernel in some configs spills 8-32 B although a register cap of 168 removes
# the spill (BENCHMARKS.md, "Kernel resources"); which is faster is for a GPU to time. What
# fails the check is spilling because the registers ran out (at the 255 ceiling, the LSTM
# forward's risk) or spilling more than a few words.
REGISTER_CEILING = 240
SPILL_BYTES_ALLOWED = 32
# name -> the module (under pararnn_hf.ops.triton) that defines ``<name>_kernel``
KERNEL_MODULES = {
    "newton_forward": "kernels",
    "adjoint_backward": "kernels",
    "decode_step": "kernels",
    "tp_guess": "time_parallel_kernels",
    "tp_carry": "time_parallel_kernels",
    "tp_step": "time_parallel_kernels",
    "tp_finish": "time_parallel_kernels",
    "tp_adjoint_local": "time_parallel_kernels",
    "tp_adjoint_carry": "time_parallel_kernels",
    "tp_adjoint_grad": "time_parallel_kernels",
    "mixer_step": "fused_decode_kernels",
    "residual_norm": "fused_decode_kernels",
    "silu_mul": "fused_decode_kernels",
}
# the decoding step's kernels take activations in the model's dtype (the case's u dtype), the
# cell states and the gate norm's statistics in fp32
FUSED_DECODE = {"mixer_step", "residual_norm", "silu_mul"}
FP32_POINTERS = {"c_ptr", "h_ptr", "meansq_ptr"}
# per kernel: optional inputs that are required elsewhere (mixer_step writes meansq)
OPTIONAL_BY_KERNEL = {
    "mixer_step": {"conv_bias_ptr": "HAS_CONV_BIAS"},
    "residual_norm": {"residual_ptr": "HAS_RESIDUAL", "meansq_ptr": "HAS_MEANSQ", "residual_scale_ptr": "HAS_SCALE"},
}
CONV_KERNEL = 4  # the config default
KERNELS = tuple(KERNEL_MODULES)
U_DTYPES = {"float32": "*fp32", "bfloat16": "*bf16"}
# pointer arguments whose element type is not fp32
POINTER_TYPES = {
    "mask_ptr": "*i8",
    "iters_ptr": "*i32",
    "ctrl_ptr": "*i32",
    "first_reset_ptr": "*i32",
    "count_ptr": "*i32",
}
SCALAR_TYPES = {"T": "i32", "N": "i32", "tol": "fp32", "NC": "i32", "it": "i32", "MAX_ITERS": "i32"}
SCALAR_TYPES.update(
    {"D": "i32", "H": "i32", "DH": "i32", "d": "i32", "I": "i32", "J": "i32", "gate_eps": "fp32", "eps": "fp32"}
)
SCALAR_TYPES.update(
    {"PROGRAMS_KEY": "i32", "T_KEY": "i32", "su_b": "i32", "su_t": "i32", "su_g": "i32", "su_h": "i32", "NH": "i32"}
)
OPTIONAL = {"mask_ptr": "HAS_MASK", "keep_ptr": "HAS_KEEP", "bias_ptr": "HAS_BIAS"}
# outputs that exist exactly when an optional input does
OPTIONAL_OUTPUTS = {"db_ptr": "bias_ptr"}


@dataclass(frozen=True)
class Case:
    kernel: str
    cell: str
    u_dtype: str
    optional: bool  # padding mask, reset flags and bias present
    config: tuple[tuple[str, int], ...]  # the autotune config's constexprs, sorted
    num_warps: int
    num_stages: int
    arch: int

    @property
    def label(self) -> str:
        cfg = ",".join(f"{k}={v}" for k, v in self.config)
        flags = "mask+keep+bias" if self.optional else "no-flags"
        launch = f"w={self.num_warps} s={self.num_stages} sm_{self.arch}"
        return f"{self.kernel} {self.cell} u={self.u_dtype} {flags} {cfg} {launch}"


def _kernel_objects():
    import importlib

    return {
        name: getattr(importlib.import_module(f"pararnn_hf.ops.triton.{module}"), f"{name}_kernel")
        for name, module in KERNEL_MODULES.items()
    }


def _jit_function(kernel):
    """The JITFunction under the autotuner and heuristics wrappers."""
    import triton

    fn = kernel
    while not isinstance(fn, triton.runtime.jit.JITFunction):
        fn = fn.fn
    return fn


def _cells() -> dict[str, tuple[int, int]]:
    """Cell name -> (KERNEL_ID, state rows), from the cell modules."""
    from pararnn_hf.cells import CELLS

    return {name: (cell.KERNEL_ID, len(cell.STATE_ROWS)) for name, cell in CELLS.items()}


def configs_of(name: str, cell_id: int) -> list:
    """The autotune configs kernel ``name`` tries for a cell (its pruned space)."""
    from pararnn_hf.ops.triton import kernels

    shapes = {"newton_forward": kernels.FORWARD_SHAPES, "adjoint_backward": kernels.BACKWARD_SHAPES}
    if name in shapes:
        return kernels.configs_for(shapes[name], cell_id)
    if name.startswith("tp_"):  # the time-parallel schedule's one tile per cell (not autotuned)
        import triton

        from pararnn_hf.ops.triton.time_parallel import TILES

        ch, bn, warps = TILES[cell_id]
        constexprs = {"BN": bn} if name in ("tp_carry", "tp_adjoint_carry") else {"CH": ch, "BN": bn}
        return [triton.Config(constexprs, num_warps=warps)]
    if name in FUSED_DECODE:
        return decode_configs(name)
    return kernels.STEP_CONFIGS


def decode_configs(name: str) -> list:
    """The decoding kernels' launches at the presets' shapes (400m, 1b, 7b), as the host code
    picks them (``ops/triton/fused_decode.py``)."""
    import triton

    from pararnn_hf.ops.triton.fused_decode import meansq_groups, mixer_tile, norm_tile, silu_tile
    from pararnn_hf.presets import PRESETS

    out = {}
    for preset in ("400m", "1b", "7b"):
        p = PRESETS[preset]
        d, H, inner = p["hidden_size"], p["num_heads"], p.get("expand", 1) * p["hidden_size"]
        if name == "mixer_step":
            BDH, BJ, warps = mixer_tile(inner // H, inner // H, interpreted=False)
            cfg = ({"KC": CONV_KERNEL, "BDH": BDH, "BJ": BJ}, warps)
        elif name == "residual_norm":
            BD, BH, warps = norm_tile(d, meansq_groups(H, inner // H, inner // H, interpreted=False), interpreted=False)
            cfg = ({"BD": BD, "BH": BH}, warps)
        else:
            BI, warps = silu_tile(p["intermediate_size"], interpreted=False)
            cfg = ({"BI": BI}, warps)
        out[tuple(sorted(cfg[0].items())) + (cfg[1],)] = triton.Config(cfg[0], num_warps=cfg[1])
    return list(out.values())


def cases(archs=(80, 90), kernels=KERNELS) -> list[Case]:
    objs = _kernel_objects()
    out = []
    for name in kernels:
        params = {p.name for p in _jit_function(objs[name]).params}
        has_optional = bool(params & (set(OPTIONAL) | set(OPTIONAL_BY_KERNEL.get(name, {}))))
        u_dtypes = list(U_DTYPES) if "u_ptr" in params or name in FUSED_DECODE else ["float32"]
        # the decoding step's norm and SwiGLU kernels do not depend on the cell
        cells = [("any", (0, 1))] if name in FUSED_DECODE and "CELL" not in params else _cells().items()
        for cell, (cell_id, _) in cells:
            for cfg in configs_of(name, cell_id):
                for u_dtype in u_dtypes:
                    for optional in (False, True) if has_optional else (False,):
                        for arch in archs:
                            config = tuple(sorted(cfg.kwargs.items()))
                            out.append(Case(name, cell, u_dtype, optional, config, cfg.num_warps, cfg.num_stages, arch))
    return out


def _signature(case: Case):
    """Triton's (signature, constexprs) for one case: pointers typed, absent optional inputs
    and the GRU's C / dC passed as None constexprs, the way the host code launches them."""
    fn = _jit_function(_kernel_objects()[case.kernel])
    cell_id, rows = _cells()[case.cell] if case.cell != "any" else (0, 1)
    fixed = {"CELL": cell_id, "K": rows, "MAX_ITERS": 8, "MIN_BN": 16, **dict(case.config)}
    optional_inputs = {**OPTIONAL, **OPTIONAL_BY_KERNEL.get(case.kernel, {})}
    for flag in optional_inputs.values():
        fixed[flag] = case.optional
    signature, constexprs = {}, {}
    for p in fn.params:
        name = p.name
        optional = name in optional_inputs or name in OPTIONAL_OUTPUTS
        absent = (optional and not case.optional) or (name in ("C_ptr", "dC_ptr", "c_ptr") and case.cell == "gru")
        if p.is_constexpr:
            signature[name], constexprs[name] = "constexpr", fixed[name]
        elif absent:
            signature[name], constexprs[name] = "constexpr", None
        elif name == "u_ptr":
            signature[name] = U_DTYPES[case.u_dtype]
        elif case.kernel in FUSED_DECODE and name.endswith("_ptr"):
            if name in POINTER_TYPES:
                signature[name] = POINTER_TYPES[name]
            else:
                signature[name] = "*fp32" if name in FP32_POINTERS else U_DTYPES[case.u_dtype]
        elif name.endswith("_ptr"):
            signature[name] = POINTER_TYPES.get(name, "*fp32")
        else:
            signature[name] = SCALAR_TYPES[name]
    return fn, signature, constexprs


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED (static), LOCAL from ``cuobjdump -res-usage``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        text = subprocess.run([_cuobjdump(), "-res-usage", fh.name], capture_output=True, text=True, check=True).stdout
    usage = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        found = re.findall(rf"\b{key}:(\d+)", text)
        if not found:
            raise RuntimeError(f"cuobjdump printed no {key}: {text!r}")
        usage[key.lower()] = max(int(v) for v in found)
    return usage


def occupancy(arch: int, regs: int, shared: int, num_warps: int) -> tuple[int, float]:
    """(CTAs per SM, resident warps / maximum) from registers, shared memory and threads."""
    lim = ARCHS[arch]
    warp_regs = -(-max(regs, 1) * 32 // 256) * 256  # allocated per warp in units of 256
    by_regs = (lim["regs"] // warp_regs) // num_warps
    by_threads = lim["threads"] // (32 * num_warps)
    by_smem = lim["smem_sm"] // (shared + RESERVED_SMEM) if shared else lim["ctas"]
    ctas = min(by_regs, by_threads, by_smem, lim["ctas"])
    return ctas, ctas * num_warps * 32 / lim["threads"]


def compile_case(case: Case) -> dict:
    """Compile one case; the row records the resources, or the error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = {**asdict(case), "config": dict(case.config), "label": case.label}
    t0 = time.perf_counter()
    try:
        fn, signature, constexprs = _signature(case)
        compiled = triton.compile(
            ASTSource(fn, signature, constexprs),
            target=GPUTarget("cuda", case.arch, 32),
            options={"num_warps": case.num_warps, "num_stages": case.num_stages},
        )
        usage = resource_usage(compiled.asm["cubin"])
        shared = max(int(compiled.metadata.shared), usage["shared"])
        ctas, occ = occupancy(case.arch, usage["reg"], shared, case.num_warps)
        row.update(regs=usage["reg"], stack=usage["stack"], local=usage["local"], shared=shared, ctas_per_sm=ctas)
        row.update(occupancy=round(occ, 3), error=None)
    except Exception as err:  # a compile failure is a result here, reported by --check
        row.update(error=f"{type(err).__name__}: {' '.join(str(err).split())[:500]}")
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def problems(row: dict) -> list[str]:
    """What makes a row fail ``--check``."""
    if row.get("error"):
        return [f"{row['label']}: does not compile: {row['error']}"]
    found = []
    if row["local"]:
        found.append(f"{row['label']}: uses {row['local']} B of local memory per thread")
    if row["stack"] and (row["regs"] >= REGISTER_CEILING or row["stack"] > SPILL_BYTES_ALLOWED):
        found.append(f"{row['label']}: spills {row['stack']} B per thread at {row['regs']} registers")
    if row["shared"] > ARCHS[row["arch"]]["smem_cta"]:
        limit = ARCHS[row["arch"]]["smem_cta"]
        found.append(f"{row['label']}: shared memory {row['shared']} B over the chip's {limit} B")
    if row["ctas_per_sm"] < 1:
        found.append(f"{row['label']}: cannot be resident (0 CTAs per SM)")
    return found


def table(rows: list[dict]) -> str:
    head = (
        f"{'kernel':<17} {'cell':<4} {'u':<8} {'flags':<9} {'CH':>3} {'BN':>4} {'w':>2} {'arch':<6} "
        f"{'regs':>4} {'smem':>6} {'spill':>5} {'CTA/SM':>6} {'occ':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        cfg = r["config"]
        flags = "all" if r["optional"] else "-"
        if r.get("error"):
            lines.append(f"{r['kernel']:<17} {r['cell']:<4} {r['u_dtype']:<8} {flags:<9} ERROR {r['error'][:80]}")
            continue
        lines.append(
            f"{r['kernel']:<17} {r['cell']:<4} {r['u_dtype']:<8} {flags:<9} {cfg.get('CH', '-'):>3} "
            f"{cfg.get('BN', cfg.get('BJ', cfg.get('BD', cfg.get('BI', '-')))):>4} "
            f"{r['num_warps']:>2} sm_{r['arch']:<3} {r['regs']:>4} {r['shared']:>6} {r['stack'] + r['local']:>5} "
            f"{r['ctas_per_sm']:>6} {r['occupancy']:>5.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", type=int, nargs="+", default=[80, 90], choices=sorted(ARCHS))
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiler processes")
    parser.add_argument("--check", action="store_true", help="exit 1 on any compile error, spill or over-limit smem")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    # before pararnn_hf's kernels are imported (they are, lazily, from here on)
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default the kernels run with

    todo = cases(tuple(args.archs), tuple(args.kernels))
    t0 = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(compile_case, todo))
    else:
        rows = [compile_case(c) for c in todo]
    import triton

    print(f"triton {triton.__version__}: {len(rows)} compiles in {time.perf_counter() - t0:.0f}s")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"triton": triton.__version__, "rows": rows}, indent=1))
    found = [p for r in rows for p in problems(r)]
    for p in found:
        print("PROBLEM", p)
    return 1 if (args.check and found) else 0


if __name__ == "__main__":
    sys.exit(main())

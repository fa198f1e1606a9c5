#!/usr/bin/env bash
# The GPU checks for a session lent a GPU (device tool), in order of importance, within 9
# minutes on an H100 (each step has its own limit, so one hang cannot eat the lease; the
# limits add up to 9 minutes):
#   env       versions, the card, and which of the package's imports the image lacks
#   tests     the kernel tests compiled for CUDA, the fused decoding kernels included (a
#             broken kernel makes every later number meaningless)
#   kernels   bench_kernels at B=8, N=2048, H=4: fp32 at T = 1k, 2k, 4k (the reference's
#             table) and one bf16 row at T = 4k
#   schedules bench_schedules: the chunked and time-parallel kernels side by side, each cell,
#             fp32 and bf16, B = 1 and 8, T = 1k/4k/16k, N = 2048, with the copy fraction of
#             the bytes each really moves
#   generate  400M bf16, contexts 1k/4k/16k: prefill, generate() decode and memory, Llama beside
#   decode    400M bf16 decoding paths side by side (bench_generate --paths): ParaGRU's stock
#             generate() loop, fast generate() and pararnn_hf.decoding with CUDA graphs at b1
#             (1k/4k/16k of context), b16 and b64 (4k), the CUDA kernels per step from the
#             profiler; Llama's dynamic cache and static cache + compile beside
#   train     400M bf16 forward+backward+AdamW at b8 x 2048, Llama beside
#   profile   bench_prefill_profile: 400M batch-1 prefill at 4k, both cells under both
#             schedules against Llama, and profiler tables by kernel family of the prefill
#             (b1 x 4096) and of a training step (b8 x 2048)
# Every step writes its log (the text table) and its JSON under $OUT (or benchmarks/results).
# The exit status is 1 when any step failed or ran out of time.
#
#   device run: bash benchmarks/gpu_check.sh [steps...]
#   CI (CPU):   PY=.venv/bin/python bash benchmarks/gpu_check.sh --smoke [steps...]
#
# --smoke runs every step at toy sizes on the CPU with the kernels in the Triton interpreter,
# to prove the commands and imports work before a GPU minute is spent on them.
# Runs on the GPU image's python3 (torch 2.11, triton 3.6, transformers 5.17 preinstalled; no
# network, nothing installed) from the source tree.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then
  SMOKE=1
  shift
fi
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ $SMOKE = 1 ]; then export TRITON_INTERPRET=1; else export TRITON_INTERPRET=0; fi
PY="${PY:-python3}"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(env tests kernels schedules generate decode train profile)
FAILED=()

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s) ==="
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v '^\s*$' | tail -n 40
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0))s ==="
  [ "$rc" -ne 0 ] && FAILED+=("$name")
}

# What the benchmark paths import, and what the image lacks of the package's optional imports
# (training/evaluation extras are not needed here).
ENV_CHECK='
import importlib.util, torch, triton, transformers
print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
import pararnn_hf, pararnn_hf.decoding, pararnn_hf.ops.triton.solve
from pararnn_hf.extras import EXTRAS
missing = sorted({m for ms in EXTRAS.values() for m in ms if importlib.util.find_spec(m) is None})
print("optional modules missing here (not used by these steps):", ", ".join(missing) or "none")
'

if [ $SMOKE = 1 ]; then
  DEV=cpu SIZE=5m DT=float32
  TESTS=(tests/test_triton.py tests/test_triton_schedules.py
         -k "each_kernel_has_a_reference or float64_layers or schedule_is_a_layer")
  KERNELS=(--smoke --cells gru --dtypes float32)  # each kernel call is seconds in the interpreter
  KERNELS_BF16=(--smoke --cells lstm --dtypes bfloat16)
  SCHEDULES=(--smoke --cells gru --dtypes float32)
  GEN=(--contexts 32 --models pararnn-gru llama --new-tokens 6 --repeats 1 --fast-tokens 8)
  DECODE=(--rows 1:16 3:16 --llama-rows 1:16 --models pararnn-gru llama --only "capture compile" "decoding" "static cache"
          --new-tokens 8 --repeats 1)
  TRAIN=(--batch 1 --seq-lens 32 --repeats 1 --models pararnn-gru llama)
  PROFILE=(--smoke)
  LIMIT_TESTS=120 LIMIT_KERNELS=120 LIMIT_SCHEDULES=120 LIMIT_GEN=300 LIMIT_DECODE=300 LIMIT_TRAIN=120 LIMIT_PROFILE=120
else
  DEV=cuda SIZE=400m DT=bfloat16
  TESTS=(tests/test_triton.py tests/test_triton_schedules.py tests/test_fast_decoding.py -n 4)
  KERNELS=(--T 1024 2048 4096 --dtypes float32 --sequential-max-T 4096 --reps 5)
  KERNELS_BF16=(--T 4096 --dtypes bfloat16 --sequential-max-T 0 --reps 5)
  SCHEDULES=(--reps 3)
  GEN=(--contexts 1024 4096 16384 --models pararnn-gru pararnn-lstm llama --new-tokens 16 --repeats 2
       --timeout 25)
  DECODE=(--rows 1:1024 1:4096 1:16384 16:4096 64:4096 --llama-rows 1:4096 64:4096 --models pararnn-gru llama
          --only "capture cuda-graph" "decoding" "static cache" --new-tokens 64 --repeats 2 --timeout 95)
  TRAIN=(--batch 8 --seq-lens 2048 --repeats 3)
  PROFILE=(--device cuda --size 400m --dtype bfloat16 --contexts 4096 --repeats 2)
  # the limits add up to 9 minutes with the env step's 30 s
  LIMIT_TESTS=90 LIMIT_KERNELS=55 LIMIT_SCHEDULES=80 LIMIT_GEN=50 LIMIT_DECODE=150 LIMIT_TRAIN=45 LIMIT_PROFILE=40
fi

for s in "${STEPS[@]}"; do
  case $s in
    env) step env 30 bash -c "{ command -v nvidia-smi >/dev/null && nvidia-smi \
      --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; } ; $PY -c '$ENV_CHECK'" ;;
    tests) step tests $LIMIT_TESTS $PY -m pytest -q -x -p no:cacheprovider "${TESTS[@]}" ;;
    kernels) step kernels $LIMIT_KERNELS bash -c "$PY benchmarks/bench_kernels.py ${KERNELS[*]} \
      --out $OUT/bench_kernels.json && $PY benchmarks/bench_kernels.py ${KERNELS_BF16[*]} --out $OUT/bench_kernels_bf16.json" ;;
    schedules) step schedules $LIMIT_SCHEDULES $PY benchmarks/bench_schedules.py "${SCHEDULES[@]}" \
      --out "$OUT/bench_schedules.json" ;;
    profile) step profile $LIMIT_PROFILE $PY benchmarks/bench_prefill_profile.py "${PROFILE[@]}" \
      --out "$OUT/bench_prefill_profile.json" ;;
    generate) step generate $LIMIT_GEN $PY benchmarks/bench_generate.py --device $DEV --size $SIZE --dtype $DT \
      "${GEN[@]}" --out "$OUT/bench_generate.json" ;;
    decode) step decode $LIMIT_DECODE $PY benchmarks/bench_generate.py --paths --device $DEV --size $SIZE --dtype $DT \
      "${DECODE[@]}" --out "$OUT/bench_decode_paths.json" ;;
    train) step train $LIMIT_TRAIN $PY benchmarks/bench_train.py --device $DEV --size $SIZE --dtype $DT \
      "${TRAIN[@]}" --out "$OUT/bench_train.json" ;;
    *) echo "unknown step $s (steps: env tests kernels schedules generate decode train profile)"; exit 2 ;;
  esac
done
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed or timed out: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed"

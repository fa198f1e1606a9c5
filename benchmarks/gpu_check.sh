#!/usr/bin/env bash
# The GPU checks for a session lent a GPU (device tool), in order of importance: the kernel
# tests compiled for CUDA (a broken kernel makes every later number meaningless), the kernel
# benchmark, then the 400M model benchmarks. Each step has its own time limit so that one
# hang cannot eat the lease; logs and JSON go to $OUT (or benchmarks/results).
#   device run: bash benchmarks/gpu_check.sh [steps...]   steps: env tests kernels generate train
# Runs on the GPU image's python3 (torch, triton, transformers preinstalled) from the source tree.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
PY="${PY:-python3}"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(env tests kernels generate train)

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s) ==="
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v '^\s*$' | tail -n 40
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s ==="
}

for s in "${STEPS[@]}"; do
  case $s in
    env) step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv; \
      $PY -c 'import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name(0))'" ;;
    tests) step tests 240 $PY -m pytest -q -x -n 4 -p no:cacheprovider tests/test_triton.py ;;
    kernels) step kernels 150 $PY benchmarks/bench_kernels.py --T 1024 2048 4096 --dtypes float32 \
      --sequential-max-T 4096 --reps 5 --out "$OUT/bench_kernels.json" ;;
    generate) step generate 180 $PY benchmarks/bench_generate.py --device cuda --size 400m --dtype bfloat16 \
      --contexts 1024 4096 16384 --models pararnn-gru pararnn-lstm llama --new-tokens 16 --repeats 2 \
      --graphs --graph-tokens 128 --timeout 60 --out "$OUT/bench_generate.json" ;;
    train) step train 150 bash -c "$PY benchmarks/bench_train.py --size 400m --batch 8 --seq-lens 2048 --repeats 3 \
      --out $OUT/bench_train_b8.json && $PY benchmarks/bench_train.py --size 400m --batch 2 --seq-lens 8192 \
      --repeats 3 --out $OUT/bench_train_b2.json" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done

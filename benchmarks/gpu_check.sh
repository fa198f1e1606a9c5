#!/usr/bin/env bash
# The GPU checks, in order of importance, for a session lent a GPU (device tool): kernel
# correctness compiled for CUDA first, then the benchmarks that BENCHMARKS.md still lacks.
# Each step prints its own table; record them with the card name.
set -euo pipefail
cd "$(dirname "$0")/.."
TRITON_INTERPRET=0 python -m pytest -q -x tests/test_triton.py
python benchmarks/bench_kernels.py --T 1024 2048 4096 16384
python benchmarks/bench_cells.py --device cuda --skip loop+autograd
python benchmarks/bench_generate.py --device cuda --size 400m --dtype bfloat16 --contexts 1024 4096 16384 --models pararnn-gru pararnn-lstm llama
python benchmarks/bench_train.py --size 400m --batch 8 --seq-lens 2048 8192

#!/usr/bin/env bash
# Evaluate a saved ParaRNN model with stock lm-eval on the package's bundled tasks.
#
#   bash examples/evaluate_with_lm_eval.sh path/to/model [results_dir] [extra lm_eval flags...]
#   bash examples/evaluate_with_lm_eval.sh pararnn-demo results --limit 100 --batch_size 16
#
# The bundled tasks (pararnn_stdlib_nextline, pararnn_stdlib_ppl) live in the installed
# package; `pararnn-hf eval --print-tasks-path` prints the folder for --include_path. The
# model loads through its own saved code (trust_remote_code), as it would from the Hub.
set -euo pipefail
model=${1:?usage: evaluate_with_lm_eval.sh MODEL_DIR [RESULTS_DIR] [lm_eval flags...]}
results=${2:-lm_eval_results}
shift $(( $# < 2 ? $# : 2 ))
tasks_path=$(pararnn-hf eval --print-tasks-path)
lm_eval --model hf \
    --model_args "pretrained=${model},trust_remote_code=True" \
    --tasks pararnn_stdlib_nextline,pararnn_stdlib_ppl \
    --include_path "${tasks_path}" \
    --output_path "${results}" \
    "$@"

#!/usr/bin/env bash
# On the lent GPU (after scripts/device_pack.sh bench_gpu test_backend here):
# prefill of the Llama-3-8B shape with bf16 rows multiplied as bf16 against
# the old fp16 expansion, and the packed formats with expansion slabs of
# 256 MiB (default) against slabs that stay in the L2 cache; alternating,
# one process per setting, then the backend suite.
#   scripts/device_run.sh bench/gpu_prefill_ab.sh
set -uo pipefail
out=${OUT:-/tmp}
run() {  # run LABEL ENV... -- bench_gpu args
  local label=$1; shift
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  echo "== $label"
  env "${envs[@]}" bench_gpu --shape llama3-8b --ctx 128 --tokens 8 --reps 3 "$@" --json "$out/$label.json" 2>&1 |
    grep -E "prefill|format|tok/s" | tail -12
}
for rep in 1 2; do
  run "bf16-expand-$rep" OPTIQ_CUDA_BF16_GEMM=0 -- --formats bf16 --prefill 512,4096
  run "bf16-direct-$rep" OPTIQ_CUDA_BF16_GEMM=1 -- --formats bf16 --prefill 512,4096
  for mb in 256 32 16; do
    run "q4-slab$mb-$rep" OPTIQ_CUDA_SLAB_MB=$mb -- --formats q4,q8 --prefill 512,4096
  done
done
test_backend --gtest_filter='*Prefill*:*Matmul*:*UploadForPasses*' 2>&1 | tail -5

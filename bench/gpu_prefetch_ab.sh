#!/usr/bin/env bash
# On the lent GPU (after scripts/device_pack.sh bench_gpu test_backend test_gpu
# here): decode with the next product's weights prefetched into L2
# (OPTIQ_CUDA_PREFETCH_MB = cap per hint; 0 = off) against none, alternating,
# one process per setting; the same processes measure bf16 prefill with bf16
# rows multiplied as bf16 (OPTIQ_CUDA_BF16_GEMM=1) against the fp16 expansion
# (=0: decode and prefill take separate paths). Then the GPU suites, with the
# prefetch on. Results: $OUT/<label>.json and the lines printed.
#   scripts/device_run.sh bench/gpu_prefetch_ab.sh [MB list] [rounds] [formats]
set -uo pipefail
out=${OUT:-/tmp}
mbs=${1:-0,16,32}
rounds=${2:-2}
formats=${3:-q4,mixed4.5,bf16}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
test_backend 2>&1 | tail -3
OPTIQ_CUDA_PREFETCH_MB=32 test_gpu 2>&1 | tail -3
for rep in $(seq 1 "$rounds"); do
  for mb in ${mbs//,/ }; do
    gemm=$([ "$mb" = 0 ] && echo 0 || echo 1)
    label="pf$mb-bf16gemm$gemm-$rep"
    echo "== $label"
    OPTIQ_CUDA_PREFETCH_MB=$mb OPTIQ_CUDA_BF16_GEMM=$gemm \
      bench_gpu --shape llama3-8b --formats "$formats" --ctx 128,4096 --prefill 512,4096 --tokens 64 --reps 3 \
      --json "$out/$label.json" 2>&1 | grep -E "^\| [a-z]" | grep -v "format |"
  done
done

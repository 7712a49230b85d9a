#!/usr/bin/env bash
# On the lent GPU machine, after scripts/device_pack.sh here (run it there as
# `bash scripts/device_check.sh [profile]`): the GPU unit tests (test_backend,
# test_gpu; again with the switches that are off by default on), then with `profile` the 8B shape's fast profile with its device
# memory logged (OPTIQ_CUDA_MEMLOG=1; BENCHMARKS.md §6). Everything goes to
# $OUT: test logs, profile.json, profile.txt and memlog.txt (allocations of
# 16 MiB or more and each new peak of the bytes held). With `sanitize`, the
# GPU tests' CUDA cases run under compute-sanitizer instead of plainly
# (SANITIZE_TOOLS, default "memcheck racecheck": memcheck with leak check,
# racecheck of shared memory; initcheck is the third; SANITIZE_TIMEOUT seconds
# a run, default 140): logs sanitize-<tool>-<test>.txt. Modes combine:
# `bash scripts/device_check.sh tests sanitize profile`. With `tables`, the
# decode/prefill tables of BENCHMARKS.md §6 for both 8B shapes (every format,
# decode at 128 and 4096 tokens, prefill of 512 and 4096): tables-<shape>.json
# and .txt. With `mixed-group`, the A/B of OPTIQ_CUDA_MIXED_GROUP on both
# shapes' mixed plans; with `attn-pipe`, that of OPTIQ_CUDA_ATTN_PIPE on q4
# and mixed4.5; with `prefetch`, that of the L2 prefetch (PREFETCH_RUNS).
# At the end everything under $OUT is packed into
# $OUT/device-check.tgz (the device tool returns only a few files a call).
# DEADLINE=S skips benchmark runs that would end past S seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/optiq-device}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
modes=" $* "
DEADLINE=${DEADLINE:-0}
late() { [ "$DEADLINE" -gt 0 ] && [ $SECONDS -gt $((DEADLINE - $1)) ]; }
if [[ $modes != *" sanitize "* || $modes == *" tests "* ]]; then
  for t in test_backend test_gpu; do
    t0=$SECONDS
    timeout 300 scripts/device_run.sh "$t" > "$OUT/$t.txt" 2>&1
    echo "$t: exit $?, $((SECONDS - t0)) s; $(grep -E '^\[  (PASSED|FAILED)' "$OUT/$t.txt" | tr '\n' ' ')"
    grep -E '^\[  FAILED' "$OUT/$t.txt" | head -20
  done
  # The switches that are off by default, on: their kernels' paths must pass too.
  for t in test_backend test_gpu; do
    t0=$SECONDS
    OPTIQ_CUDA_PREFETCH=1 timeout 300 scripts/device_run.sh "$t" > "$OUT/$t-switches-on.txt" 2>&1
    echo "$t, OPTIQ_CUDA_PREFETCH=1: exit $?, $((SECONDS - t0)) s; $(grep -E '^\[  (PASSED|FAILED)' "$OUT/$t-switches-on.txt" | tr '\n' ' ')"
    grep -E '^\[  FAILED' "$OUT/$t-switches-on.txt" | head -20
  done
fi
if [[ $modes == *" sanitize "* ]]; then
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1)
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
    extra=(); [ $tool = memcheck ] && extra=(--leak-check full)
    for t in test_gpu test_backend; do
      t0=$SECONDS
      timeout "${SANITIZE_TIMEOUT:-140}" scripts/device_run.sh "$cs" --tool $tool "${extra[@]}" --error-exitcode 99 \
        "$t" --gtest_filter='*cuda*:*Cuda*:*Gpu*:*GPU*' > "$OUT/sanitize-$tool-$t.txt" 2>&1
      echo "compute-sanitizer $tool $t: exit $?, $((SECONDS - t0)) s; $(grep -E 'ERROR SUMMARY|^\[  (PASSED|FAILED)' "$OUT/sanitize-$tool-$t.txt" | tr '\n' ' ')"
    done
  done
fi
if [[ $modes == *" tables "* ]]; then
  for shape in llama3-8b qwen2.5-7b; do
    if late 150; then echo "bench_gpu $shape: skipped (deadline)"; continue; fi
    t0=$SECONDS
    timeout 240 scripts/device_run.sh bench_gpu --shape $shape --formats bf16,q8,q4,mixed4.5,mixed3.5,q4_k_m \
      --ctx 128,4096 --prefill 512,4096 --tokens 64 --reps 3 --json "$OUT/tables-$shape.json" > "$OUT/tables-$shape.txt" 2>&1
    echo "bench_gpu $shape: exit $?, $((SECONDS - t0)) s"
    grep -E '^\||copy bandwidth' "$OUT/tables-$shape.txt" | tail -26
  done
fi
if [[ $modes == *" mixed-group "* ]]; then
  # A/B of OPTIQ_CUDA_MIXED_GROUP (q, k and v of two widths in one launch) on the mixed plans.
  for shape in llama3-8b qwen2.5-7b; do
    for m in 0 1 0 1; do
      if late 60; then echo "$shape OPTIQ_CUDA_MIXED_GROUP=$m: skipped (deadline)"; continue; fi
      OPTIQ_CUDA_MIXED_GROUP=$m timeout 120 scripts/device_run.sh bench_gpu --shape $shape --formats mixed4.5,mixed3.5 \
        --ctx 128,4096 --prefill none --tokens 48 --reps 3 > "$OUT/mixed-group-$shape-$m.txt" 2>&1
      echo "$shape OPTIQ_CUDA_MIXED_GROUP=$m: $(grep -E '^\| mixed' "$OUT/mixed-group-$shape-$m.txt" | awk -F'|' '{printf "%s%s %s; ", $2, $4, $5}')"
    done
  done
fi
if [[ $modes == *" prefetch "* ]]; then
  # A/B of the L2 prefetch during attention and norms (OPTIQ_CUDA_PREFETCH=0,
  # or OPTIQ_CUDA_PREFETCH_MB=attention,norm,rounding caps); PREFETCH_RUNS:
  # shape:setting pairs in order, a setting 0 (off), 1 (default caps) or caps
  # (issued after each kernel's wait; a leading b: at its start).
  for run in ${PREFETCH_RUNS:-llama3-8b:0 llama3-8b:1 llama3-8b:0 llama3-8b:1 qwen2.5-7b:0 qwen2.5-7b:1}; do
    shape=${run%%:*} setting=${run#*:}
    if late 60; then echo "$shape prefetch $setting: skipped (deadline)"; continue; fi
    f="$OUT/prefetch-$shape-${setting//,/_}-$SECONDS.txt"
    after=1; [[ $setting == b* ]] && after=0
    if [[ $setting == *,* ]]; then env=(OPTIQ_CUDA_PREFETCH=1 OPTIQ_CUDA_PREFETCH_MB=${setting#b}); else env=(OPTIQ_CUDA_PREFETCH=$setting); fi
    env+=(OPTIQ_CUDA_PREFETCH_AFTER=$after)
    env "${env[@]}" timeout 120 scripts/device_run.sh bench_gpu --shape $shape --formats q4,mixed4.5 \
      --ctx 128,4096 --prefill none --tokens 48 --reps 3 > "$f" 2>&1
    echo "$shape prefetch $setting: $(grep -E '^\| (q4|mixed)' "$f" | awk -F'|' '{printf "%s%s %s; ", $2, $4, $5}')"
  done
fi
if [[ $modes == *" attn-pipe "* ]]; then
  # A/B of OPTIQ_CUDA_ATTN_PIPE (decode attention loads each batch of keys while the one before is computed).
  for shape in llama3-8b qwen2.5-7b; do
    for m in 0 1 0 1; do
      if late 60; then echo "$shape OPTIQ_CUDA_ATTN_PIPE=$m: skipped (deadline)"; continue; fi
      f="$OUT/attn-pipe-$shape-$m-$SECONDS.txt"
      OPTIQ_CUDA_ATTN_PIPE=$m timeout 120 scripts/device_run.sh bench_gpu --shape $shape --formats q4,mixed4.5 \
        --ctx 128,4096 --prefill none --tokens 48 --reps 3 > "$f" 2>&1
      echo "$shape OPTIQ_CUDA_ATTN_PIPE=$m: $(grep -E '^\| (q4|mixed)' "$f" | awk -F'|' '{printf "%s%s %s; ", $2, $4, $5}')"
    done
  done
fi
if [[ $modes == *" profile "* ]]; then
  t0=$SECONDS
  OPTIQ_CUDA_MEMLOG=1 timeout 420 scripts/device_run.sh bench_gpu_profile --shape llama3-8b --anchor-windows 32 \
    --json "$OUT/profile.json" > "$OUT/profile.txt" 2> "$OUT/profile.err"
  echo "bench_gpu_profile: exit $?, $((SECONDS - t0)) s"
  grep -a "cuda memory" "$OUT/profile.err" > "$OUT/memlog.txt"
  rm -f "$OUT/profile.err"
  tail -20 "$OUT/profile.txt"
  echo "last peaks:"; grep "(peak)" "$OUT/memlog.txt" | tail -8
fi
tar -C "$OUT" --exclude device-check.tgz -czf /tmp/device-check.tgz . && mv /tmp/device-check.tgz "$OUT/" &&
  find "$OUT" -mindepth 1 -maxdepth 1 ! -name device-check.tgz ! -name gpu.txt -exec rm -rf {} +

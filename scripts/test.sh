#!/usr/bin/env bash
# THE test command (README; CI runs it through .ci/run). From a fresh machine:
#   1. scripts/setup.sh: apt packages, venv + reference packages, Release build in build/, models
#   2. ctest --test-dir build --output-on-failure -j2        (all tests, reference cross-checks included;
#      those exit 77 = skipped when the venv or a model is missing)
#   3. build-asan/: -DOPTIQ_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug -DOPTIQ_CUDA=OFF, building only the loader tests
#      (test_formats test_tokenizer test_quant), then
#      ctest --test-dir build-asan -L 'formats|tokenizer|quant' --output-on-failure
#   4. scripts/fuzz_smoke.sh: the libFuzzer harnesses of every parser (tests/fuzz, clang, ASan+UBSan,
#      build-fuzz/), FUZZ_SECONDS (default here 10) each from their seed corpora
# Every phase is timed. Exits non-zero if any phase fails (later test phases still run, so one
# run reports everything). Budget: ~30 min on a fresh 2-core machine.
# Env: OPTIQ_JOBS (build jobs, default nproc), OPTIQ_NO_ASAN=1 (skip phase 3), OPTIQ_NO_FUZZ=1 (skip phase 4).
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=${OPTIQ_JOBS:-$(nproc)}
CTEST_JOBS=${OPTIQ_CTEST_JOBS:-2}
ASAN_DIR=build-asan
ASAN_TARGETS=(test_formats test_tokenizer test_quant)
ASAN_LABELS='formats|tokenizer|quant'

t_start=$SECONDS
timings=()
failed=()
phase() {  # phase NAME CMD...: run, time, remember failures
  local name=$1 t0=$SECONDS rc=0; shift
  printf '\n==== %s\n' "$name"
  "$@" || rc=$?
  local dt=$((SECONDS - t0))
  if [ $rc -eq 0 ]; then timings+=("$(printf '%-48s %5d s' "$name" $dt)")
  else timings+=("$(printf '%-48s %5d s  FAILED (exit %d)' "$name" $dt $rc)"); failed+=("$name"); fi
  printf '==== %s: %s in %d s\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)")" $dt
  return $rc
}
summary() {
  printf '\n==== timings (CI=%s, %s cores, jobs %s)\n' "${CI:-}" "$(nproc)" "$JOBS"
  printf '%s\n' "${timings[@]}"
  printf '%-48s %5d s\n' total $((SECONDS - t_start))
  if [ ${#failed[@]} -gt 0 ]; then
    printf 'FAILED phases: %s\n' "${failed[*]}"
  fi
}

asan_build() {
  local launcher=() have=() t
  if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  # No CUDA here: the loader tests run on the CPU, and nvcc would only add build time.
  cmake -S . -B "$ASAN_DIR" -DOPTIQ_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug -DOPTIQ_BUILD_BENCH=OFF -DOPTIQ_CUDA=OFF \
    "${launcher[@]}" >/dev/null
  # Only the loader test binaries that exist in this tree (a component may have no tests yet).
  local targets; targets=$(cmake --build "$ASAN_DIR" --target help | sed -n 's/^\.\.\. \([A-Za-z0-9_]*\).*/\1/p')
  for t in "${ASAN_TARGETS[@]}"; do
    if grep -qx "$t" <<<"$targets"; then have+=("$t"); else echo "(no target $t: skipped)"; fi
  done
  if [ ${#have[@]} -eq 0 ]; then echo "no loader test targets to build"; return 0; fi
  cmake --build "$ASAN_DIR" -j "$JOBS" --target "${have[@]}"
}

# setup: a failure here (apt, venv, build) leaves nothing to test.
if ! phase "setup (apt, venv, build, models)" scripts/setup.sh; then summary; exit 1; fi
phase "ctest build/ (-j$CTEST_JOBS)" ctest --test-dir build --output-on-failure -j"$CTEST_JOBS" || true
if [ "${OPTIQ_NO_ASAN:-0}" != 1 ]; then
  if phase "build $ASAN_DIR (ASan+UBSan, Debug)" asan_build; then
    phase "ctest $ASAN_DIR -L '$ASAN_LABELS'" \
      ctest --test-dir "$ASAN_DIR" -L "$ASAN_LABELS" --output-on-failure -j"$CTEST_JOBS" || true
  fi
fi
if [ "${OPTIQ_NO_FUZZ:-0}" != 1 ]; then
  # 10 s a harness keeps the phase near 6 min on 2 cores (most of it the clang build); bench/fuzz.sh runs long.
  export FUZZ_SECONDS=${FUZZ_SECONDS:-10}
  phase "fuzz smoke ($FUZZ_SECONDS s a harness)" scripts/fuzz_smoke.sh || true
fi
summary
[ ${#failed[@]} -eq 0 ]

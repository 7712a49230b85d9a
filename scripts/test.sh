#!/usr/bin/env bash
# THE test command (README; CI runs it through .ci/run). From a fresh machine:
#   1. scripts/setup.sh: apt packages, venv + reference packages, Release build in build/, models
#   2. ctest --test-dir build --output-on-failure -j2        (all tests, reference cross-checks included;
#      those exit 77 = skipped when the venv or a model is missing)
#   2b. the fast-numerics tests again (labels backend, kernels, model, eval; ~20 s) with
#      OPTIQ_ISA=avx2-novnni: the kernels of a CPU with AVX2 only (maddubs, no VNNI) end to end,
#      whatever this machine has, so a tolerance tuned on one kind of machine cannot fail only on
#      the other (the kernel tests cover every path this CPU has one by one)
#   3. build-asan/ (clang, ASan+UBSan+LSan: -DOPTIQ_SANITIZE=ON, Debug at -O1 -g1, CUDA off): every unit test
#      binary and the optiq CLI they run (target optiq_tests), then the whole unit suite,
#      ctest --test-dir build-asan -LE reference -E ASAN_SKIP (the Python cross-checks and the
#      process-level tests named below are left to phase 2).
#      A leak, a memory error or UB in any process, test or CLI, fails the phase (see san_ctest).
#   4. build-tsan/ (clang, TSan: -DOPTIQ_SANITIZE=thread, Debug at -O1 -g1): only the tests of the threaded
#      code (TSAN_COMPONENTS: pool, quantizers, kernels, CPU backend, model, eval, profiler, pipeline),
#      less TSAN_SKIP.
#   5. scripts/fuzz_smoke.sh: the libFuzzer harnesses of every parser (tests/fuzz, clang, ASan+UBSan),
#      built in build-asan/ from its objects (phase 3 configures it with -DOPTIQ_FUZZ=ON: coverage
#      instrumentation on the parsing sources only), else in a build-fuzz/ of their own; FUZZ_SECONDS
#      (default here 10) each from their seed corpora, two at a time
# Every phase is timed. Exits non-zero if any phase fails (later test phases still run, so one
# run reports everything). Budget: 40 min on a fresh 2-core machine (docs/reliability.md has the times).
# Env: OPTIQ_JOBS (build jobs, default nproc), OPTIQ_NO_ASAN=1 (skip phase 3), OPTIQ_NO_TSAN=1 (skip
# phase 4), OPTIQ_NO_FUZZ=1 (skip phase 5), OPTIQ_SAN_CXX (compiler of phases 3-4; default clang++,
# empty: CMake's default, g++).
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=${OPTIQ_JOBS:-$(nproc)}
# ccache hits across clones at other paths (a CI clone, a worktree): paths under this checkout are
# hashed relative to it, and the -g1 sanitizer builds do not hash the build directory.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
CTEST_JOBS=${OPTIQ_CTEST_JOBS:-2}
ASAN_DIR=build-asan
TSAN_DIR=build-tsan
# TSan: every component whose tests run the thread pool (core/parallel.h): the pool itself, the
# quantizers, the kernels, the CPU backend, the model (forward passes, export), evaluation, the
# profiler and the pipeline. Not the parsers, the planner, the CLI and its process-level tests.
TSAN_COMPONENTS='core;quant;kernels;backend;model;eval;profile;pipeline'
# Left to phase 2 (the Release build), because a sanitizer cannot change what they assert and their
# code runs under it in other tests, 5-10x slower than in Release (docs/reliability.md, "The unit suite under sanitizers"):
# - under ASan, the process-level properties: the same bytes across runs, thread counts and
#   instruction sets; complete outputs after a SIGKILL (265 s of the phase's 1,150 test-seconds);
# - under TSan, the real-model equalities (Gemma 3 and SmolLM2 weights through the packed kernels
#   and the search quantizer, which the unit tests run on random tensors with the same pool).
ASAN_SKIP='^(Reproducible\.(SameBytesAcrossRunsAndThreadCounts|ExportsAndMeasurementsAcrossInstructionSets)|CrashSafety\.[A-Za-z]*Killed[A-Za-z]*|Resume\.QuantizeKilled[A-Za-z]*)$'
TSAN_SKIP='^(GgufPacked|QuantizerRealWeights)\.'
# The sanitizer builds use clang when there is one (setup.sh installs it for the fuzzers): it builds
# them with a fifth less CPU time than g++ (docs/reliability.md).
# -O1 -g1: optimised enough for the kernels, line tables for the reports (full -g costs a quarter
# more build time).
SAN_CXX=${OPTIQ_SAN_CXX-$(command -v clang++ || true)}
SAN_FLAGS='-O1 -g1'

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

san_build() {  # san_build DIR SANITIZER [CMAKE ARGS...]: configure and build target optiq_tests
  local dir=$1 san=$2 args=(); shift 2
  if command -v ccache >/dev/null; then args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  if [ -n "$SAN_CXX" ]; then
    args+=(-DCMAKE_CXX_COMPILER="$SAN_CXX")
    # A build dir configured with another compiler: CMake would wipe its cache and drop every -D below.
    if [ -f "$dir/CMakeCache.txt" ] && ! grep -q "^CMAKE_CXX_COMPILER:[A-Z]*=$SAN_CXX\$" "$dir/CMakeCache.txt"; then
      echo "$dir was configured with another compiler: removed"; rm -rf "$dir"
    fi
  fi
  # No CUDA here: the unit tests run on the CPU, and nvcc would only add build time.
  cmake -S . -B "$dir" -DOPTIQ_SANITIZE="$san" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="$SAN_FLAGS" \
    -DOPTIQ_BUILD_BENCH=OFF -DOPTIQ_CUDA=OFF "${args[@]}" "$@" >/dev/null
  cmake --build "$dir" -j "$JOBS" --target optiq_tests
}

# san_ctest DIR CTEST ARGS...: runs ctest with every sanitizer report written to DIR/sanitizer-logs/
# (ASan and TSan log_path: the report of any process, a test or an optiq CLI it runs, whatever that
# process's exit code means to the test); fails when ctest fails or any report was written. UBSan,
# whose reports ignore log_path when it runs inside ASan, aborts the process with exit code 86
# (-fno-sanitize-recover), which fails the test (a CLI's 86 is not the 0, 1 or 2 a test expects).
san_ctest() {
  local dir=$1 rc=0 logs; shift
  logs=$PWD/$dir/sanitizer-logs
  rm -rf "$logs"; mkdir -p "$logs"
  ASAN_OPTIONS="detect_leaks=1:exitcode=86:log_path=$logs/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=86${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
  TSAN_OPTIONS="exitcode=86:second_deadlock_stack=1:log_path=$logs/tsan${TSAN_OPTIONS:+:$TSAN_OPTIONS}" \
    "${SAN_WRAP[@]}" ctest --test-dir "$dir" --output-on-failure -j"$CTEST_JOBS" "$@" || rc=$?
  # A log without a report is a note: "Unable to get registers from thread N" is LeakSanitizer
  # meeting a process that the crash-safety tests SIGKILL while its exit-time leak check runs.
  local f reports=0
  for f in "$logs"/*; do
    [ -e "$f" ] || continue
    if grep -qE 'ERROR:|WARNING:|runtime error|fatal error|SUMMARY:' "$f"; then
      reports=$((reports + 1)); printf '\n---- sanitizer report %s\n' "$f"; head -n 80 "$f"
    else
      printf '(note, not a report: %s: %s)\n' "$f" "$(head -c 200 "$f" | tr '\n' ' ')"
    fi
  done
  if [ $reports -gt 0 ]; then
    echo "$reports sanitizer report(s) in $logs"
    [ $rc -ne 0 ] || rc=1
  fi
  return $rc
}
SAN_WRAP=()

# setup: a failure here (apt, venv, build) leaves nothing to test.
if ! phase "setup (apt, venv, build, models)" scripts/setup.sh; then summary; exit 1; fi
phase "ctest build/ (-j$CTEST_JOBS)" ctest --test-dir build --output-on-failure -j"$CTEST_JOBS" || true
phase "ctest build/ (AVX2 kernels without VNNI: backend, kernels, model, eval)" env OPTIQ_ISA=avx2-novnni \
  ctest --test-dir build --output-on-failure -j"$CTEST_JOBS" -L 'backend|kernels|model|eval' -LE reference || true
# With clang the ASan build also carries the fuzzer's coverage instrumentation on the parsing
# sources (-DOPTIQ_FUZZ=ON: CMakeLists.txt's OPTIQ_FUZZ_COVERAGE), so phase 5 builds only the harnesses, from its objects.
FUZZ_DIR=build-fuzz
if [ "${OPTIQ_NO_ASAN:-0}" != 1 ]; then
  asan_args=()
  if [ "${OPTIQ_NO_FUZZ:-0}" != 1 ] && [[ "$SAN_CXX" == *clang* ]]; then asan_args=(-DOPTIQ_FUZZ=ON); fi
  if phase "build $ASAN_DIR (ASan+UBSan, $SAN_FLAGS)" san_build "$ASAN_DIR" ON "${asan_args[@]}"; then
    [ ${#asan_args[@]} -eq 0 ] || FUZZ_DIR=$ASAN_DIR
    phase "ctest $ASAN_DIR (unit suite, LSan on)" san_ctest "$ASAN_DIR" -LE reference -E "$ASAN_SKIP" || true
  fi
fi
if [ "${OPTIQ_NO_TSAN:-0}" != 1 ]; then
  if phase "build $TSAN_DIR (TSan, $SAN_FLAGS)" san_build "$TSAN_DIR" thread -DOPTIQ_TEST_ONLY="$TSAN_COMPONENTS"; then
    # The TSan of clang 14 and GCC 12 maps its shadow at fixed addresses and dies on kernels with
    # more ASLR bits ("unexpected memory mapping"); without address randomisation it runs everywhere.
    if setarch "$(uname -m)" -R true 2>/dev/null; then SAN_WRAP=(setarch "$(uname -m)" -R); fi
    phase "ctest $TSAN_DIR (${TSAN_COMPONENTS//;/, })" san_ctest "$TSAN_DIR" -LE reference -E "$TSAN_SKIP" || true
    SAN_WRAP=()
  fi
fi
if [ "${OPTIQ_NO_FUZZ:-0}" != 1 ]; then
  # 10 s a harness, two at a time on 2 cores: about a minute when the harnesses come from the ASan
  # build's objects (a build of their own adds ~6 min); bench/fuzz.sh runs long.
  export FUZZ_SECONDS=${FUZZ_SECONDS:-10}
  phase "fuzz smoke ($FUZZ_SECONDS s a harness, in $FUZZ_DIR)" env OPTIQ_FUZZ_DIR="$FUZZ_DIR" scripts/fuzz_smoke.sh || true
fi
summary
[ ${#failed[@]} -eq 0 ]

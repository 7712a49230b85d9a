#!/usr/bin/env bash
# The fuzz smoke test (CI): builds the libFuzzer harnesses (tests/fuzz; clang,
# ASan+UBSan, no CUDA), makes their seed corpora and runs each harness for
# FUZZ_SECONDS (default 20) from its seeds, FUZZ_JOBS (default: the number of
# cores) at a time. Fails if any harness reports a crash, a sanitizer error, a
# timeout (10 s) or an OOM (2 GB). Crash inputs are left in BUILD/artifacts/.
# BUILD is OPTIQ_FUZZ_DIR (default build-fuzz). When it is already configured
# with -DOPTIQ_FUZZ=ON (scripts/test.sh's ASan build: the harnesses share its
# objects) only the harnesses are built there; otherwise it is configured as
# a build of its own (RelWithDebInfo, the whole library instrumented), about
# 6 minutes on 2 cores from a cold ccache. Long runs: bench/fuzz.sh.
# Env: FUZZ_SECONDS, FUZZ_JOBS, OPTIQ_JOBS (build jobs, default 2), OPTIQ_FUZZ_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${OPTIQ_FUZZ_DIR:-build-fuzz}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
SECS=${FUZZ_SECONDS:-20}
JOBS=${OPTIQ_JOBS:-2}
RUN_JOBS=${FUZZ_JOBS:-$(nproc)}
. tests/fuzz/harnesses.sh

if [ -f "$BUILD/CMakeCache.txt" ] && grep -q '^OPTIQ_FUZZ:BOOL=ON$' "$BUILD/CMakeCache.txt"; then
  echo "fuzz smoke: harnesses in $BUILD (configured with OPTIQ_FUZZ=ON)"
else
  launcher=()
  if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
  cmake -S . -B "$BUILD" -DOPTIQ_FUZZ=ON -DOPTIQ_CUDA=OFF -DOPTIQ_BUILD_TESTS=OFF -DOPTIQ_BUILD_BENCH=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
fi
cmake --build "$BUILD" -j "$JOBS" --target fuzz_all >/dev/null
tests/fuzz/make_seeds.sh "$BUILD" >/dev/null
rm -rf "$BUILD/artifacts" "$BUILD/smoke-corpus" "$BUILD"/smoke-*.rc

# RUN_JOBS harnesses at a time (each libFuzzer run is one process on one core).
run_one() {
  local h=$1 rc=0
  fuzz_run "$h" "$SECS" "$BUILD" "$ROOT" "$BUILD/smoke-corpus/$h" "$BUILD/smoke-$h.log" || rc=$?
  echo "$rc" >"$BUILD/smoke-$h.rc"
}
for h in "${FUZZ_HARNESSES[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$RUN_JOBS" ]; do wait -n || true; done
  run_one "$h" &
done
wait

failed=()
printf '%-16s %10s %8s  %s\n' harness execs seconds result
for h in "${FUZZ_HARNESSES[@]}"; do
  log="$BUILD/smoke-$h.log" rc=$(cat "$BUILD/smoke-$h.rc" 2>/dev/null || echo "?")
  read -r execs secs <<<"$(fuzz_execs "$log")" || true
  if [ "$rc" = 0 ]; then result=ok; else result="FAILED (exit $rc, log $log)"; failed+=("$h"); fi
  printf '%-16s %10s %8s  %s\n' "$h" "${execs:-?}" "${secs:-?}" "$result"
  if [ "$rc" != 0 ]; then grep -E 'ERROR|runtime error|SUMMARY|Test unit written' "$log" | head -n 5 || true; fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz smoke: FAILED: ${failed[*]} (inputs in $BUILD/artifacts)"
  exit 1
fi
echo "fuzz smoke: no crash in ${#FUZZ_HARNESSES[@]} harnesses"

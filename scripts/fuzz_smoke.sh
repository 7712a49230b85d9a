#!/usr/bin/env bash
# The fuzz smoke test (CI): builds the libFuzzer harnesses in build-fuzz
# (clang, ASan+UBSan, no CUDA; tests/fuzz), makes their seed corpora and runs
# each harness for FUZZ_SECONDS (default 20) from its seeds. Fails if any
# harness reports a crash, a sanitizer error, a timeout (10 s) or an OOM
# (2 GB). Crash inputs are left in build-fuzz/artifacts/. About 7 minutes on
# 2 cores from a cold ccache, 4 with a warm one. Long runs: bench/fuzz.sh.
# Env: FUZZ_SECONDS, OPTIQ_JOBS (build jobs, default 2), OPTIQ_FUZZ_DIR (default build-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${OPTIQ_FUZZ_DIR:-build-fuzz}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
SECS=${FUZZ_SECONDS:-20}
JOBS=${OPTIQ_JOBS:-2}
. tests/fuzz/harnesses.sh

launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S . -B "$BUILD" -DOPTIQ_FUZZ=ON -DOPTIQ_CUDA=OFF -DOPTIQ_BUILD_TESTS=OFF -DOPTIQ_BUILD_BENCH=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target fuzz_all >/dev/null
tests/fuzz/make_seeds.sh "$BUILD" >/dev/null
rm -rf "$BUILD/artifacts" "$BUILD/smoke-corpus"

failed=()
printf '%-16s %10s %8s  %s\n' harness execs seconds result
for h in "${FUZZ_HARNESSES[@]}"; do
  log="$BUILD/smoke-$h.log" rc=0
  fuzz_run "$h" "$SECS" "$BUILD" "$ROOT" "$BUILD/smoke-corpus/$h" "$log" || rc=$?
  read -r execs secs <<<"$(fuzz_execs "$log")" || true
  if [ $rc -eq 0 ]; then result=ok; else result="FAILED (exit $rc, log $log)"; failed+=("$h"); fi
  printf '%-16s %10s %8s  %s\n' "$h" "${execs:-?}" "${secs:-?}" "$result"
  if [ $rc -ne 0 ]; then grep -E 'ERROR|runtime error|SUMMARY|Test unit written' "$log" | head -n 5 || true; fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz smoke: FAILED: ${failed[*]} (inputs in $BUILD/artifacts)"
  exit 1
fi
echo "fuzz smoke: no crash in ${#FUZZ_HARNESSES[@]} harnesses"

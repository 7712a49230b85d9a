#!/usr/bin/env bash
# Long fuzzing (docs/reliability.md): every harness in turn for FUZZ_SECONDS
# (default 600) each, one at a time (a core stays free), keeping the corpora
# in build-fuzz/corpus/<harness> so that each run starts where the last one
# ended; then a table of executions per harness. Builds like
# scripts/fuzz_smoke.sh. Exit 1 if any harness found something (inputs in
# build-fuzz/artifacts/).
# Usage: bench/fuzz.sh [HARNESS...]   Env: FUZZ_SECONDS, OPTIQ_JOBS, OPTIQ_FUZZ_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${OPTIQ_FUZZ_DIR:-build-fuzz}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
SECS=${FUZZ_SECONDS:-600}
JOBS=${OPTIQ_JOBS:-2}
. tests/fuzz/harnesses.sh
if [ $# -gt 0 ]; then FUZZ_HARNESSES=("$@"); fi

launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S . -B "$BUILD" -DOPTIQ_FUZZ=ON -DOPTIQ_CUDA=OFF -DOPTIQ_BUILD_TESTS=OFF -DOPTIQ_BUILD_BENCH=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target fuzz_all >/dev/null
tests/fuzz/make_seeds.sh "$BUILD" >/dev/null

rows=() failed=()
for h in "${FUZZ_HARNESSES[@]}"; do
  log="$BUILD/fuzz-$h.log" rc=0
  echo "fuzz: $h for $SECS s (log $log)" >&2
  fuzz_run "$h" "$SECS" "$BUILD" "$ROOT" "$BUILD/corpus/$h" "$log" || rc=$?
  read -r execs secs <<<"$(fuzz_execs "$log")" || true
  [ $rc -eq 0 ] || failed+=("$h")
  rows+=("$(printf '| %-14s | %7s | %12s | %8s | %6s | %s |' "$h" "${secs:-?}" "${execs:-?}" \
    "$( [ -n "${execs:-}" ] && [ "${secs:-0}" -gt 0 ] && echo $((execs / secs)) || echo '?')" \
    "$(ls "$BUILD/corpus/$h" | wc -l)" "$([ $rc -eq 0 ] && echo ok || echo "FOUND (exit $rc)")")")
done
printf '\n%s, %s\n' "$(date -u +%Y-%m-%d)" "$(lscpu | sed -n 's/^Model name: *//p')"
echo '| harness        | seconds |        execs |  execs/s | corpus | result |'
echo '|----------------|--------:|-------------:|---------:|-------:|--------|'
printf '%s\n' "${rows[@]}"
[ ${#failed[@]} -eq 0 ]

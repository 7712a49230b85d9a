#!/usr/bin/env bash
# GPTQ where the model runs: `optiq quantize --method gptq` of a model of
# Gemma 3 270M's matrix shapes (bench/synth_model --shape gemma3-270m: random
# weights, tied embedding) on the GPU and on the CPU, each timed whole (load,
# Gram sums, GPTQ with its grid refits, write), then both outputs scored
# against the source on other text (BENCHMARKS.md §9, "GPTQ on the GPU").
# The real Gemma does not fit the 64 MiB the lent GPU machine is sent; its
# matrices' shapes are what GPTQ's time depends on.
#
#   bench/gptq_device.sh BIN_DIR CALIB_TEXT EVAL_TEXT [WORK_DIR]
#     BIN_DIR holds optiq and synth_model (scripts/device_pack.sh packs them:
#     `scripts/device_pack.sh optiq synth_model`); WORK_DIR defaults to /tmp/gptq-device.
# Calibration: 16 windows of 256 tokens (issue 13's CPU number used the same).
set -uo pipefail
BIN=$1 CALIB=$2 TEXT=$3 WORK=${4:-/tmp/gptq-device}
mkdir -p "$WORK"
[ -d "$WORK/g270" ] || "$BIN/synth_model" --shape gemma3-270m --out "$WORK/g270" | tail -1
C=(--bits 3 --group-size 32 --calib "$CALIB" --calib-samples 16 --calib-seq 256)
q() {  # q NAME ARGS...: one timed quantize; its progress lines' last values
  local name=$1; shift
  local s; s=$(date +%s.%N)
  "$BIN/optiq" quantize "$WORK/g270" "$@" --force --out "$WORK/g270-$name" > "$WORK/q-$name.txt" 2>&1
  local rc=$?
  echo "| $name | $rc | $(python3 -c "print(f'{$(date +%s.%N) - $s:.2f}')") s | $(tr '\r' '\n' < "$WORK/q-$name.txt" | grep -E '[0-9]s$' | sed 's/,.*, / /' | tr '\n' ';') |"
}
echo "| run | rc | wall | phases |"
echo "|---|---:|---:|---|"
q search-cuda --bits 3 --group-size 32 --device cuda
q gptq-cuda "${C[@]}" --method gptq --device cuda
q gptq-cuda-2 "${C[@]}" --method gptq --device cuda
q gptq-cuda-plain "${C[@]}" --method gptq --grid-passes 0 --device cuda
q gptq-cuda-3 "${C[@]}" --method gptq --device cuda
q gptq-cpu "${C[@]}" --method gptq --device cpu
for v in gptq-cuda gptq-cpu search-cuda; do
  "$BIN/optiq" eval "$WORK/g270-$v" --ref "$WORK/g270" --text "$TEXT" --ctx 256 --chunks 16 --device cuda \
    > "$WORK/eval-$v.txt" 2>&1
  echo "eval $v: $(grep -E 'KL|top-1' "$WORK/eval-$v.txt" | tr -s ' ' | tr '\n' ' ')"
done

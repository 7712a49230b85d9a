#!/usr/bin/env bash
# GPTQ with the float model's statistics against GPTQ's sequential mode
# (quantize --method gptq --sequential), its asymmetric variant aimed at the
# float model's outputs (--asymmetric) and the activation-weighted search,
# on SmolLM2-135M and Gemma 3 270M (BENCHMARKS.md §9): held-out KLD, ppl and
# top-1 against the source model on wiki.test.raw, quantize time.
#
#   bench/gptq_sequential.sh [BUILD_DIR] [WORK_DIR]   (defaults: build, ~/.cache/optiq/gptq-seq)
#
# Calibration: 16 C4 windows of 256 tokens; evaluation: the first 12 windows of
# 512 tokens of wiki.test.raw (never the calibration text).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-$HOME/.cache/optiq/gptq-seq}
OPTIQ=$(realpath "$BUILD/optiq")
MODELS=${OPTIQ_CACHE:-$HOME/.cache/optiq}/models
CALIB=$(realpath ../shared/data/c4/c4-validation-2k.jsonl)
TEXT=$(realpath ../shared/data/wikitext-2-raw/wiki.test.raw)
mkdir -p "$WORK"

ROWS=${ROWS:-}  # a pattern: only the rows whose label matches it (e.g. ROWS=asymmetric)

row() {  # row MODEL LABEL QUANTIZE-ARGS...
  local model=$1 label=$2; shift 2
  [[ -z $ROWS || $label == *$ROWS* ]] || return 0
  local out="$WORK/$(basename "$model" .gguf)-$label"
  local t0=$SECONDS
  "$OPTIQ" -q quantize "$model" -o "$out" --force --calib "$CALIB" --calib-samples 16 --calib-seq 256 "$@" >/dev/null
  local dt=$((SECONDS - t0))
  "$OPTIQ" -q eval "$out" --ref "$model" --text "$TEXT" --chunks 12 --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); a=sys.argv; print("| %s | %s | %.4f | %.3f | %.2f | %.1f%% | %s s |" % (a[1], a[2], d["kld"], d["kld_stderr"], d["ppl"], 100*d["top1"], a[3]))' \
      "$(basename "$model")" "$label" "$dt"
  rm -rf "$out"
}

echo "| model | rounding | KLD | ± | ppl | top-1 | quantize |"
echo "|---|---|---:|---:|---:|---:|---:|"
for m in "$MODELS/smollm2-135m-instruct-q4_1.gguf" "$MODELS/gemma-3-270m-q4_k_m.gguf"; do
  for bits in 3 4; do
    row "$m" "q${bits}g64-search" --bits $bits --group-size 64 --method search
    row "$m" "q${bits}g64-gptq" --bits $bits --group-size 64 --method gptq
    row "$m" "q${bits}g64-gptq-sequential" --bits $bits --group-size 64 --method gptq --sequential
    row "$m" "q${bits}g64-gptq-asymmetric" --bits $bits --group-size 64 --method gptq --sequential --asymmetric
  done
done

#!/usr/bin/env bash
# THE main-job command: set up (scripts/setup.sh), then the seed article's comparison in
# miniature on SmolLM2-135M-Instruct (Q4_1 GGUF, whose dequantized weights are the reference):
#   optiq info MODEL
#   optiq generate MODEL -p PROMPT -n 48 --temp 0
#   optiq compare MODEL --calib C4 --text wiki.test.raw --uniform 4 ...
#     profile on C4 (small calibration, so that it runs in minutes on 2 cores), then one table:
#     FP16, uniform 4-bit g64, and optiq's mixed plan at exactly the uniform model's size, each
#     exported as MLX, reloaded and measured on held-out WikiText-2 (size, perplexity change,
#     KL divergence, top-1 agreement) with a greedy continuation of PROMPT from each.
# About 9 minutes on an idle 2-core machine after set-up (539 s measured); the profile is cached,
# so a second run takes about 2.
# Usage: scripts/demo.sh [MODEL.gguf] [PROMPT]
# Env: OPTIQ_CACHE (model cache root, default ~/.cache/optiq), OPTIQ_SHARED_DIR (default ../shared),
#      OPTIQ_DEMO_OUT (output directory, default $OPTIQ_CACHE/demo/smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${OPTIQ_CACHE:-$HOME/.cache/optiq}
SHARED=${OPTIQ_SHARED_DIR:-$(cd .. && pwd)/shared}
MODEL=${1:-$CACHE/models/smollm2-135m-instruct-q4_1.gguf}
PROMPT=${2:-"The history of the printing press began"}
TEXT=$SHARED/data/wikitext-2-raw/wiki.test.raw
CALIB=$SHARED/data/c4/c4-validation-2k.jsonl
OUT=${OPTIQ_DEMO_OUT:-$CACHE/demo/smollm2}
OPTIQ=build/optiq

scripts/setup.sh
[ -f "$MODEL" ] || { echo "demo.sh: $MODEL: model not found: run scripts/fetch_models.py" >&2; exit 1; }
[ -f "$TEXT" ] || { echo "demo.sh: $TEXT: evaluation text not found (set OPTIQ_SHARED_DIR)" >&2; exit 1; }
[ -f "$CALIB" ] || { echo "demo.sh: $CALIB: calibration text not found (set OPTIQ_SHARED_DIR)" >&2; exit 1; }

t_demo=$SECONDS
step() {
  local t0=$SECONDS
  printf '\n$ %s\n' "$*"
  "$@"
  printf '(%d s)\n' $((SECONDS - t0))
}

step "$OPTIQ" info "$MODEL"
step "$OPTIQ" generate "$MODEL" -p "$PROMPT" -n 48 --temp 0

# Candidates: 3..8 bits in groups of 64, plus 4-bit groups of 32 (the source's own Q4_1 grid,
# which reproduces a tensor exactly at 5.0 bits/weight).
mkdir -p "$OUT"
step "$OPTIQ" compare "$MODEL" --calib "$CALIB" --calib-samples 8 --calib-seq 256 \
  --candidates q3g64,q4g64,q5g64,q6g64,q8g64,q4g32 --text "$TEXT" --chunks 10 \
  --uniform 4 --sweep '' --no-speed --prompt "$PROMPT" --prompt-tokens 40 -o "$OUT"
printf '\ndemo: done in %d s; table in %s/compare.md, plots %s/pareto.svg and precision_map.svg\n' \
  $((SECONDS - t_demo)) "$OUT" "$OUT"

#!/usr/bin/env bash
# THE main-job command: set up (scripts/setup.sh), then run optiq on SmolLM2-135M-Instruct Q4_1:
#   optiq info MODEL
#   optiq generate MODEL -p PROMPT -n 64
#   optiq eval MODEL --text ../shared/data/wikitext-2-raw/wiki.test.raw --ctx 512 --chunks 20
#   optiq auto MODEL --calib ../shared/data/c4/c4-validation-2k.jsonl --bpw 4.5 -o OUT --text wiki.test.raw
#     (profile on C4, plan at 4.5 bits per weight, quantize to MLX layout, evaluate on held-out WikiText)
# Usage: scripts/demo.sh [MODEL.gguf] [PROMPT]
# Env: OPTIQ_CACHE (model cache root, default ~/.cache/optiq), OPTIQ_SHARED_DIR (default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${OPTIQ_CACHE:-$HOME/.cache/optiq}
SHARED=${OPTIQ_SHARED_DIR:-$(cd .. && pwd)/shared}
MODEL=${1:-$CACHE/models/smollm2-135m-instruct-q4_1.gguf}
PROMPT=${2:-"The history of the printing press began"}
TEXT=$SHARED/data/wikitext-2-raw/wiki.test.raw
OPTIQ=build/optiq

scripts/setup.sh
[ -f "$MODEL" ] || { echo "demo.sh: $MODEL: model not found: run scripts/fetch_models.py" >&2; exit 1; }
[ -f "$TEXT" ] || { echo "demo.sh: $TEXT: evaluation text not found (set OPTIQ_SHARED_DIR)" >&2; exit 1; }

step() {
  local t0=$SECONDS
  printf '\n$ %s\n' "$*"
  "$@"
  printf '(%d s)\n' $((SECONDS - t0))
}

step "$OPTIQ" info "$MODEL"
step "$OPTIQ" generate "$MODEL" -p "$PROMPT" -n 64
step "$OPTIQ" eval "$MODEL" --text "$TEXT" --ctx 512 --chunks 20

# The whole pipeline, small calibration so that it runs in minutes on 2 cores.
OUT=${OPTIQ_DEMO_OUT:-$CACHE/demo/smollm2-optiq-4.5bpw}
mkdir -p "$(dirname "$OUT")"
step "$OPTIQ" auto "$MODEL" --calib "$SHARED/data/c4/c4-validation-2k.jsonl" --calib-samples 8 --calib-seq 256 \
  --candidates 2,3,4,5,6,8x64 --bpw 4.5 -o "$OUT" --force --text "$TEXT" --chunks 10
step "$OPTIQ" info "$OUT"
step "$OPTIQ" generate "$OUT" -p "$PROMPT" -n 64

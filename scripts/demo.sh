#!/usr/bin/env bash
# THE main-job command: set up (scripts/setup.sh), then show optiq on SmolLM2-135M-Instruct Q4_1:
#   optiq info MODEL
#   optiq generate MODEL -p PROMPT -n 64
#   optiq eval MODEL --text ../shared/data/wikitext-2-raw/wiki.test.raw --ctx 512 --chunks 20
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

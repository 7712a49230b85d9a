#!/usr/bin/env bash
# Builds the seed corpora of the fuzz harnesses into OUT/<harness>/ (default
# build-fuzz/seeds; never into git): files made by optiq itself
# (fuzz_seedgen: small GGUFs of every tensor type with real tokenizer
# metadata, safetensors of every dtype, config.json of every family,
# tokenizer.json, llama2.c checkpoints, plans and profiles), the real
# stories260K files from ../shared, the first 64 KB of the cached GGUFs, and
# the small hand-written seeds in tests/fuzz/seeds/.
# Usage: tests/fuzz/make_seeds.sh [BUILD_DIR [OUT]]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-$ROOT/build-fuzz}
OUT=${2:-$BUILD/seeds}
SHARED=${OPTIQ_FUZZ_MODELS_DIR:-$ROOT/../shared/models/stories260K}
CACHE=${OPTIQ_CACHE:-$HOME/.cache/optiq}/models

rm -rf "$OUT"
mkdir -p "$OUT"
"$BUILD/tests/fuzz/fuzz_seedgen" "$OUT"

# Hand-written seeds (committed, each a few hundred bytes).
for d in "$ROOT"/tests/fuzz/seeds/*/; do
  h=$(basename "$d")
  mkdir -p "$OUT/$h"
  cp "$d"* "$OUT/$h/"
done

# Real files: stories260K whole (1 MB each; libFuzzer cuts seeds to -max_len)
# and the head of the big cached GGUFs (metadata and the start of the vocabulary).
mkdir -p "$OUT"/{gguf,gguf_vocab,llama2c,tokenizer_bin,encode}
if [ -d "$SHARED" ]; then
  cp "$SHARED/tok512.bin" "$OUT/tokenizer_bin/"
  cp "$SHARED/stories260K.bin" "$OUT/llama2c/"
  head -c 65536 "$SHARED/stories260K.gguf" >"$OUT/gguf/stories260K_head.gguf"
  head -c 65536 "$SHARED/stories260K.gguf" >"$OUT/gguf_vocab/stories260K_head.gguf"
else
  echo "make_seeds.sh: $SHARED missing: no stories260K seeds" >&2
fi
for f in "$CACHE"/*.gguf; do
  [ -e "$f" ] || continue
  n=$(basename "$f" .gguf)
  head -c 65536 "$f" >"$OUT/gguf/${n}_head.gguf"
  head -c 65536 "$f" >"$OUT/gguf_vocab/${n}_head.gguf"
done
# Text to encode: the README (English, code, Unicode arrows).
head -c 4096 "$ROOT/README.md" >"$OUT/encode/readme.txt"

for d in "$OUT"/*/; do printf '%-16s %3d files %8d bytes\n' "$(basename "$d")" "$(ls "$d" | wc -l)" "$(cat "$d"* | wc -c)"; done

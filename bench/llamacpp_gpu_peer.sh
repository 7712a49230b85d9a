#!/usr/bin/env bash
# llama.cpp's CUDA backend against optiq on the same GPU (BENCHMARKS.md §6, "llama.cpp's CUDA backend on
# the same H100"): a Llama-3-8B-shaped random model as llama.cpp's BF16, Q8_0 and Q4_K_M files,
# llama-bench pp512/tg128 on each, optiq bench on llama.cpp's own Q4_K_M and Q8_0 files, and bench_gpu's
# table of optiq's formats on the same shape. Run on the GPU machine, from the repository root:
#
#   bench/llamacpp_gpu_peer.sh LLAMA_BIN_DIR [WORK_DIR]
#
# LLAMA_BIN_DIR holds llama-bench (CUDA: `OPTIQ_LLAMACPP_VARIANT=cuda bench/llamacpp_build.sh llama-bench`)
# and llama-quantize (any build: `OPTIQ_LLAMACPP_VARIANT=portable bench/llamacpp_build.sh llama-quantize`);
# optiq, synth_model and bench_gpu come through scripts/device_run.sh (scripts/device_pack.sh packs them).
# Needs ~40 GB of disk in WORK_DIR (default /tmp/llamacpp-peer) and ~5 minutes on an H100.
set -uo pipefail
L=$(realpath "$1") W=${2:-/tmp/llamacpp-peer}
R=scripts/device_run.sh
mkdir -p "$W"
t0=$(date +%s)
el() { echo "($(( $(date +%s) - t0 )) s) $*"; }
[ -f "$W/l8-bf16.gguf" ] || {
  $R synth_model --shape llama3-8b --out "$W/l8" >/dev/null; el "synth rc=$?"
  echo '{"default": "float"}' > "$W/float.json"
  $R optiq -q quantize "$W/l8" --format gguf --plan "$W/float.json" -o "$W/l8-bf16.gguf"; el "bf16 gguf rc=$?"
  rm -rf "$W/l8"
}
for t in Q4_K_M Q8_0; do
  [ -f "$W/l8-$t.gguf" ] || { $R "$L/llama-quantize" "$W/l8-bf16.gguf" "$W/l8-$t.gguf" $t "$(nproc)" >/dev/null 2>&1; el "llama-quantize $t rc=$?"; }
done
$R "$L/llama-bench" -m "$W/l8-Q4_K_M.gguf" -m "$W/l8-Q8_0.gguf" -m "$W/l8-bf16.gguf" -p 512 -n 128 -ngl 99 -fa 1 -r 3 -o md
for t in Q4_K_M Q8_0; do
  echo "optiq on llama.cpp's $t file: $($R optiq bench "$W/l8-$t.gguf" -p 512 -n 128 -r 3 --device cuda 2>&1 | grep -E 'prefill|decode' | tr -s ' ' | tr '\n' ';')"
done
$R bench_gpu --shape llama3-8b --formats q4,mixed4.5,q8,bf16 --ctx 128 --prefill 512 --tokens 128 --reps 3 | grep -E "^\||copy bandwidth"
el done

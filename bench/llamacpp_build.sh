#!/usr/bin/env bash
# Builds llama.cpp's own command-line tools (llama-bench, llama-perplexity, llama-quantize,
# llama-imatrix) from the llama-cpp-python sdist pinned in requirements.txt, for the speed and
# quality comparisons in bench/. Prints the bin/ directory on stdout.
#
# Variant (OPTIQ_LLAMACPP_VARIANT):
#   native (default)  GGML_NATIVE=ON: llama.cpp at its fastest on this CPU (AVX-512, VNNI, AMX
#                     where present) - the fair peer for speed.
#   noamx             every ISA extension of this CPU (AVX-512, VNNI, BF16, ...) but AMX:
#                     llama.cpp's AMX matmul (ggml_backend_amx_mul_mat) segfaults on SmolLM2 Q4_1
#                     on an AMX Xeon (issue 9), so this is the fastest llama.cpp that runs there.
#   portable          AVX2/FMA/F16C only, the flags of the test reference wheel (scripts/setup.sh).
#   cuda              llama.cpp's CUDA backend for OPTIQ_CUDA_ARCH (default 90: Hopper), host code
#                     portable (AVX2): built here with nvcc, run on the lent GPU machine (the peer of
#                     BENCHMARKS.md §6; the binaries link cuBLAS at run time; ~1 h on 2 cores).
# Cached in ~/.cache/optiq/llamacpp-tools/<version>-<variant>-<cpu flags hash>-<cmake flags hash>/, so a build made
# on one CPU is never reused on another.
# Usage: bench/llamacpp_build.sh [tool ...]   (default: llama-bench llama-perplexity llama-quantize llama-imatrix)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${OPTIQ_CACHE:-$HOME/.cache/optiq}
VENV=${OPTIQ_VENV:-$CACHE/venv}
VARIANT=${OPTIQ_LLAMACPP_VARIANT:-native}
JOBS=${OPTIQ_JOBS:-$(nproc)}
VER=$(sed -n 's/^llama[-_]cpp[-_]python==\([^ ;]*\).*/\1/p' requirements.txt | head -n1)
TOOLS=("$@")
[ ${#TOOLS[@]} -gt 0 ] || TOOLS=(llama-bench llama-perplexity llama-quantize llama-imatrix)

case $VARIANT in
  native) FLAGS="-DGGML_NATIVE=ON" ;;
  noamx)
    # Not GGML_NATIVE: -march=native defines __AMX_INT8__ and ggml compiles its AMX path from
    # that macro whatever GGML_AMX_* say. So every other extension this CPU has, named one by one.
    cpu=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    has() { case $cpu in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }
    FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)"
    FLAGS+=" -DGGML_BMI2=$(has bmi2) -DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AVX512=$(has avx512f)"
    FLAGS+=" -DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_VNNI=$(has avx512_vnni)"
    FLAGS+=" -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
  portable) FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
  cuda) FLAGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${OPTIQ_CUDA_ARCH:-90} -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" ;;
  *) echo "llamacpp_build.sh: unknown OPTIQ_LLAMACPP_VARIANT '$VARIANT' (native|noamx|portable|cuda)" >&2; exit 2 ;;
esac
CPUKEY=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-8)
FLAGKEY=$(printf %s "$FLAGS" | sha256sum | cut -c1-6)
ROOT=$CACHE/llamacpp-tools/$VER-$VARIANT-$CPUKEY-$FLAGKEY
BIN=$ROOT/build/bin

missing=()
for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  mkdir -p "$ROOT"
  if [ ! -f "$ROOT/src/CMakeLists.txt" ]; then
    tmp=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$tmp" >&2
    tar xzf "$tmp"/llama_cpp_python-"$VER".tar.gz -C "$tmp"
    rm -rf "$ROOT/src"
    mv "$tmp/llama_cpp_python-$VER/vendor/llama.cpp" "$ROOT/src"
    rm -rf "$tmp"
  fi
  echo "llamacpp_build.sh: building ${missing[*]} ($VARIANT) in $ROOT (once; minutes)" >&2
  # shellcheck disable=SC2086
  cmake -S "$ROOT/src" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF $FLAGS >"$ROOT/configure.log" 2>&1 \
    || { tail -n 40 "$ROOT/configure.log" >&2; exit 1; }
  cmake --build "$ROOT/build" -j "$JOBS" --target "${missing[@]}" >"$ROOT/build.log" 2>&1 \
    || { tail -n 40 "$ROOT/build.log" >&2; exit 1; }
fi
echo "$BIN"

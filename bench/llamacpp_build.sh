#!/usr/bin/env bash
# Builds llama.cpp's own command-line tools (llama-bench, llama-perplexity, llama-quantize,
# llama-imatrix) from the llama-cpp-python sdist pinned in requirements.txt, for the speed and
# quality comparisons in bench/. Prints the bin/ directory on stdout.
#
# Variant (OPTIQ_LLAMACPP_VARIANT):
#   native (default)  GGML_NATIVE=ON: llama.cpp at its fastest on this CPU (AVX-512, VNNI, AMX
#                     where present) - the fair peer for speed.
#   noamx             native flags but AMX off (llama.cpp's AMX path crashed on SmolLM2 Q4_1
#                     through llama-cpp-python, issue 9).
#   portable          AVX2/FMA/F16C only, the flags of the test reference wheel (scripts/setup.sh).
# Cached in ~/.cache/optiq/llamacpp-tools/<version>-<variant>-<cpu flags hash>/, so a build made
# on one CPU is never reused on another.
# Usage: bench/llamacpp_build.sh [tool ...]   (default: llama-bench llama-perplexity llama-quantize llama-imatrix)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${OPTIQ_VENV:-$HOME/.cache/optiq/venv}
VARIANT=${OPTIQ_LLAMACPP_VARIANT:-native}
JOBS=${OPTIQ_JOBS:-$(nproc)}
VER=$(sed -n 's/^llama[-_]cpp[-_]python==\([^ ;]*\).*/\1/p' requirements.txt | head -n1)
TOOLS=("$@")
[ ${#TOOLS[@]} -gt 0 ] || TOOLS=(llama-bench llama-perplexity llama-quantize llama-imatrix)

case $VARIANT in
  native) FLAGS="-DGGML_NATIVE=ON" ;;
  noamx) FLAGS="-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
  portable) FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
  *) echo "llamacpp_build.sh: unknown OPTIQ_LLAMACPP_VARIANT '$VARIANT' (native|noamx|portable)" >&2; exit 2 ;;
esac
CPUKEY=$(grep -m1 '^flags' /proc/cpuinfo | sha256sum | cut -c1-8)
ROOT=$HOME/.cache/optiq/llamacpp-tools/$VER-$VARIANT-$CPUKEY
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

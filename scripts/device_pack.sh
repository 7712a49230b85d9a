#!/usr/bin/env bash
# Packs what a GPU machine needs to run optiq's GPU tests and benchmarks into
# .dev/ (ignored by git; carried to the lent GPU machine): binaries built here
# for sm_90 (build-dev/), the shared libraries the GPU machine may lack, and
# the small shared files the tests read. scripts/device_run.sh runs there.
#   scripts/device_pack.sh [targets...]   (default: test_backend test_gpu optiq bench_gpu bench_gpu_kernels bench_gpu_profile)
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(test_backend test_gpu optiq bench_gpu bench_gpu_kernels bench_gpu_profile)
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S . -B build-dev -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 -DOPTIQ_CUDA=ON "${launcher[@]}" >/dev/null
cmake --build build-dev -j "$(nproc)" --target "${targets[@]}" >/dev/null
rm -rf .dev/bin .dev/bin.tar.xz .dev/lib .dev/shared  # .dev/cmd.sh (a command file to run there) stays
mkdir -p .dev/bin .dev/lib .dev/shared/models/stories260K .dev/shared/data/tinystories
for t in "${targets[@]}"; do
  f=$(find build-dev -maxdepth 3 -type f -name "$t" -perm -u+x | head -n1)
  strip -o ".dev/bin/$t" "$f"
done
tar -C .dev -cJf .dev/bin.tar.xz bin && rm -rf .dev/bin
for l in libfmt.so.9 libpcre2-8.so.0; do cp -L "/lib/x86_64-linux-gnu/$l" .dev/lib/; done
cp ../shared/models/stories260K/stories260K.gguf .dev/shared/models/stories260K/
cp ../shared/data/tinystories/tinystories-valid-head.txt .dev/shared/data/tinystories/
du -sh .dev

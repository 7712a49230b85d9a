#!/usr/bin/env bash
# On the lent GPU machine (after scripts/device_pack.sh here): unpacks .dev/,
# points the binaries at their libraries and data, then runs the command given
# (e.g. `scripts/device_run.sh test_gpu`). Output of each step goes to $OUT too.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .dev/bin ]; then tar -C .dev -xJf .dev/bin.tar.xz; fi
cublas_dirs=$(python3 -c 'import glob,os; print(":".join(sorted({os.path.dirname(p) for p in glob.glob("/usr/local/cuda*/lib*/libcublas.so.1*") + glob.glob("/opt/**/nvidia/cublas/lib/libcublas.so.1*", recursive=True)})))' 2>/dev/null)
export LD_LIBRARY_PATH="$PWD/.dev/lib:${cublas_dirs}:${LD_LIBRARY_PATH:-}"
export OPTIQ_SHARED_DIR="$PWD/.dev/shared" OPTIQ_BINARY_DIR="$PWD/.dev/bin"
export PATH="$PWD/.dev/bin:$PATH"
"$@"

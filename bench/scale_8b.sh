#!/usr/bin/env bash
# Issue 14's streaming measurements on a synthetic 8B-shaped model (BENCHMARKS.md §10):
# writes the model with bench/synth_model (16 GB of bf16, once), measures the
# disk's sequential read speed, then runs `optiq quantize` from a cold page
# cache (the source's pages evicted with posix_fadvise) under /usr/bin/time,
# printing wall time, peak RSS and source throughput per run.
#
#   bench/scale_8b.sh [BUILD_DIR] [WORK_DIR]     (defaults: build, ~/.cache/optiq/scale)
#   RUNS="read-once mapped" bench/scale_8b.sh ...  only those runs (default: all); "read-once"
#   and "mapped" are the minmax MLX export with and without the source read once
#   (OPTIQ_SOURCE_STREAM=0: matrices from the map, the hash on its own thread).
#
# Needs ~16 GB for the model plus ~5 GB per output on WORK_DIR's disk.
set -euo pipefail
BUILD=${1:-build}
WORK=${2:-$HOME/.cache/optiq/scale}
OPTIQ=$(realpath "$BUILD/optiq")
SYNTH=$(realpath "$BUILD/bench/synth_model")
SRC=$HOME/.cache/optiq/synth/llama3-8b
mkdir -p "$WORK" "$(dirname "$SRC")"
[ -d "$SRC" ] || "$SYNTH" --shape llama3-8b -o "$SRC"
cd "$WORK"
src_bytes=$(du -cb "$SRC"/*.safetensors | tail -1 | cut -f1)

evict() {  # drop the source from the page cache (no root needed)
  python3 - "$SRC" <<'PY'
import glob, os, sys
for f in glob.glob(os.path.join(sys.argv[1], "*.safetensors")):
    fd = os.open(f, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
}

evict
first=$(ls "$SRC"/model-0000*.safetensors | head -1)
echo "== disk: sequential read of $(basename "$first") (O_DIRECT)"
dd if="$first" of=/dev/null bs=16M iflag=direct 2>&1 | tail -1

RUNS=${RUNS:-"q4-minmax-mlx q4-search-mlx q4k.gguf q4-minmax-mlx-2GB-shards"}
run() {  # run NAME ARGS...: one quantize from a cold cache
  local name=$1; shift
  case " $RUNS " in *" $name "*) ;; *) return 0 ;; esac
  rm -rf "$name"; evict
  echo "== $name: optiq quantize $SRC -o $name $*   (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  /usr/bin/time -v env ${ENV:-} "$OPTIQ" quantize "$SRC" -o "$name" "$@" 2> time.txt | tail -1
  local wall rss
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' time.txt | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' time.txt)
  local user sys
  user=$(sed -n 's/.*User time (seconds): //p' time.txt); sys=$(sed -n 's/.*System time (seconds): //p' time.txt)
  printf '   wall %.1f s, user %s s, sys %s s, peak RSS %.2f GB, source %.0f MB/s, output %s\n' "$wall" "$user" "$sys" "$(echo "$rss/1048576" | bc -l)" \
    "$(echo "$src_bytes/1000000/$wall" | bc -l)" "$(du -sh "$name" | cut -f1)"
  rm -rf "$name"
}

run q4-minmax-mlx --bits 4 --method minmax
run q4-search-mlx --bits 4
run q4k.gguf --format gguf --bits 4
run q4-minmax-mlx-2GB-shards --bits 4 --method minmax --shard-size 2GB
ENV=OPTIQ_SOURCE_STREAM=1 run read-once --bits 4 --method minmax
ENV=OPTIQ_SOURCE_STREAM=0 run mapped --bits 4 --method minmax

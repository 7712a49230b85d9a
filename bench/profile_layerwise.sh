#!/usr/bin/env bash
# Layer-wise against in-memory fast profiling (BENCHMARKS.md §10, "Layer-wise
# profiling"): `optiq profile` of one model three ways (in memory; --layerwise
# with the default memory budget; --layerwise --memory SMALL, its activations
# in a temporary file), each under /usr/bin/time, then: whether the damage
# tables agree (Spearman rank correlation, largest relative difference), and
# the held-out KLD (optiq eval --ref-style --plan on wiki.test.raw) of the
# plans each profile gives at 4.5 and 3.5 bits per weight.
#
#   bench/profile_layerwise.sh [BUILD_DIR] [WORK_DIR]
# Environment: MODEL, CALIB, SAMPLES (16), SEQ (512), CANDIDATES
# (2,3,4,5x64), SMALL (128MB), CHUNKS (20), THREADS (2), REUSE (set: keep
# profiles already there), RUNS (which of
# "inmem layerwise spilled"; inmem is always first).
set -euo pipefail
BUILD=${1:-build}
WORK=${2:-/tmp/optiq-layerwise}
OPTIQ=$(realpath "$BUILD/optiq")
MODEL=${MODEL:-$HOME/.cache/optiq/models/smollm2-135m-instruct-q4_1.gguf}
CALIB=${CALIB:-/work/shared/data/c4/c4-validation-2k.jsonl}
TEXT=${TEXT:-/work/shared/data/wikitext-2-raw/wiki.test.raw}
SAMPLES=${SAMPLES:-16} SEQ=${SEQ:-512} CANDIDATES=${CANDIDATES:-2,3,4,5x64}
SMALL=${SMALL:-128MB} CHUNKS=${CHUNKS:-20} THREADS=${THREADS:-2}
RUNS=${RUNS:-inmem layerwise spilled}
mkdir -p "$WORK"
cd "$WORK"
echo "== $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(date -u +%F), model $(basename "$MODEL")"

profile() {  # profile NAME ARGS...
  local name=$1; shift
  echo "== $name: optiq -t $THREADS profile --calib-samples $SAMPLES --calib-seq $SEQ --candidates $CANDIDATES $*   (load $(cut -d' ' -f1-3 /proc/loadavg))"
  if [ -z "${REUSE:-}" ] || [ ! -f "$name.profile.json" ]; then  # REUSE=1: the profiles of an earlier run
  rm -f "$name.profile.json" "$name.profile.json.partial" "$name.profile.json.windows"
  /usr/bin/time -v "$OPTIQ" -t "$THREADS" profile "$MODEL" --calib "$CALIB" --calib-samples "$SAMPLES" \
    --calib-seq "$SEQ" --candidates "$CANDIDATES" --cache "$name.profile.json" "$@" > "$name.out" 2> "$name.time"
  fi
  local wall rss cpu
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$name.time" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$name.time")
  cpu=$(sed -n 's/.*\(User\|System\) time (seconds): //p' "$name.time" | paste -sd+ | bc)
  printf '   wall %.1f s, CPU (user + system) %.1f s, peak RSS %.3f GiB\n' "$wall" "$cpu" "$(echo "$rss/1048576" | bc -l)"
  grep -E "^(profile|time) " "$name.out" | sed 's/^/   /'
}

names=()
for name in $RUNS; do
  case $name in
    inmem) profile inmem ;;
    layerwise) profile layerwise --layerwise ;;
    spilled) profile spilled --layerwise --memory "$SMALL" ;;
  esac
  names+=("$name")
done
others=("${names[@]:1}")

python3 - "${names[@]/%/.profile.json}" <<'PY'
import json, sys
def damage(path):
    j = json.load(open(path))
    return {(m, f): (v.get("kl") if "kl" in v else v.get("kl_fast"))
            for m, ms in j["modules"].items() for f, v in ms["formats"].items()}, j.get("measured_with")
def ranks(x):
    order = sorted(range(len(x)), key=lambda i: x[i]); r = [0.0] * len(x); i = 0
    while i < len(x):
        k = i
        while k + 1 < len(x) and x[order[k + 1]] == x[order[i]]: k += 1
        for m in range(i, k + 1): r[order[m]] = (i + k) / 2
        i = k + 1
    return r
def spearman(a, b):
    ra, rb = ranks(a), ranks(b); n = len(a); ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra); vb = sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5
base, mw = damage(sys.argv[1])
print(f"== damage tables ({len(base)} entries); in-memory measured_with {mw}")
for p in sys.argv[2:]:
    d, mw = damage(p)
    keys = sorted(base)
    assert sorted(d) == keys, p
    a = [base[k] for k in keys]; b = [d[k] for k in keys]
    rel = max(abs(x - y) / max(abs(x), 1e-300) for x, y in zip(a, b))
    same = sum(x == y for x, y in zip(a, b))
    print(f"   {p}: Spearman {spearman(a, b):.6f}, largest relative difference {rel:.3g}, identical {same}/{len(keys)}; measured_with {mw}")
PY

for name in "${names[@]}"; do
  for bpw in 4.5 3.5; do
    "$OPTIQ" -t "$THREADS" plan "$MODEL" --profile "$name.profile.json" --bpw "$bpw" -o "$name-$bpw.plan.json" > /dev/null
  done
done
for bpw in 4.5 3.5; do
  for name in "${others[@]}"; do
    if cmp -s <(python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(json.dumps(j.get('tensors', j.get('modules')), sort_keys=True))" "inmem-$bpw.plan.json") \
              <(python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(json.dumps(j.get('tensors', j.get('modules')), sort_keys=True))" "$name-$bpw.plan.json"); then
      echo "   $bpw bpw: $name's plan assigns the same format to every tensor as inmem's"
    else
      echo "   $bpw bpw: $name's plan differs from inmem's"
    fi
  done
done
echo "== held-out KLD: optiq eval $(basename "$MODEL") --text $(basename "$TEXT") --chunks $CHUNKS --plan ..."
"$OPTIQ" -t "$THREADS" eval "$MODEL" --text "$TEXT" --chunks "$CHUNKS" --json \
  $(for bpw in 4.5 3.5; do for name in "${names[@]}"; do echo "--plan $name-$bpw.plan.json"; done; done) > eval.json
python3 - eval.json <<'PY'
import json, sys
text = open(sys.argv[1]).read().strip().splitlines()
for line in text:
    try: j = json.loads(line)
    except ValueError: continue
    for r in (j if isinstance(j, list) else j.get("plans", [j])):
        print("  ", {k: r[k] for k in r if k in ("plan", "bpw", "bits_per_weight", "kld", "top1", "ppl")})
PY

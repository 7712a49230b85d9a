# Sourced by scripts/fuzz_smoke.sh and bench/fuzz.sh: the harnesses, and each
# one's -max_len (enough for its seeds' structure: a GGUF's metadata and first
# tensors, a whole small tokenizer.json) and dictionary.
FUZZ_HARNESSES=(gguf gguf_vocab safetensors hf_index config_hf llama2c tokenizer_json tokenizer_bin encode
  plan_json profile_json)

fuzz_max_len() {
  case $1 in
    gguf|gguf_vocab|tokenizer_json) echo 65536 ;;
    profile_json) echo 16384 ;;
    llama2c|tokenizer_bin|plan_json) echo 8192 ;;
    encode) echo 1024 ;;  # encoding costs ~2 us a byte under ASan
    *) echo 4096 ;;
  esac
}

fuzz_dict() {  # $1 harness, $2 source root
  case $1 in
    gguf|gguf_vocab) echo "$2/tests/fuzz/gguf.dict" ;;
    safetensors|hf_index|config_hf|tokenizer_json|plan_json|profile_json) echo "$2/tests/fuzz/json.dict" ;;
    *) echo "" ;;
  esac
}

# fuzz_run HARNESS SECONDS BUILD ROOT CORPUS LOG: one libFuzzer run over CORPUS
# (new inputs kept there) and the seeds; crash inputs go to BUILD/artifacts.
# Returns libFuzzer's exit status (0: nothing found).
fuzz_run() {
  local h=$1 secs=$2 build=$3 root=$4 corpus=$5 log=$6 dict
  dict=$(fuzz_dict "$h" "$root")
  mkdir -p "$corpus" "$build/artifacts"
  "$build/tests/fuzz/fuzz_$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len="$(fuzz_max_len "$h")" ${dict:+-dict="$dict"} -print_final_stats=1 \
    -artifact_prefix="$build/artifacts/$h-" "$corpus" "$build/seeds/$h" >"$log" 2>&1
}

# Executions and seconds of a finished run, from libFuzzer's "Done N runs in S second(s)".
fuzz_execs() { sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 \2/p' "$1" | tail -n1; }

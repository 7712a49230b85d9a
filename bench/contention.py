#!/usr/bin/env python3
"""Decode speed on an idle machine and beside competing busy processes (issue 9).

    python3 bench/contention.py [MODEL] [--threads 1,2] [--busy 1] [--n-gen 64] [--reps 3]
        [--optiq build/optiq] [--llama-bench PATH] [--json]

For each thread count it runs `optiq bench MODEL -p 32 -n N -r R` three ways: idle, then while
--busy other processes spin on the CPU (plain busy loops, like a compile or a browser tab),
and prints decode tok/s and the slowdown (idle / busy). With --llama-bench (a llama-bench
binary, e.g. from bench/llamacpp_build.sh) the same is measured for llama.cpp on the same file.
An ideal runtime with T threads on C cores beside B busy processes slows down by about
max(1, (T + B) / C): 1.5x for 2 threads + 1 busy process on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spin(stop):
    while not stop.is_set():
        pass


def optiq_decode(optiq, model, threads, n_gen, reps):
    out = subprocess.run([optiq, "bench", str(model), "-t", str(threads), "-p", "32", "-n", str(n_gen),
                          "-r", str(reps), "--json", "-q"], check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)["decode_tok_s"])


def llamacpp_decode(bench, model, threads, n_gen, reps):
    out = subprocess.run([bench, "-m", str(model), "-t", str(threads), "-p", "0", "-n", str(n_gen), "-r", str(reps),
                          "-o", "json"], check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    return float(rows[0]["avg_ts"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?",
                    default=str(Path(os.environ.get("OPTIQ_CACHE", Path.home() / ".cache/optiq"))
                                / "models/smollm2-135m-instruct-q4_1.gguf"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--busy", type=int, default=1, help="competing busy processes (default 1)")
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--optiq", default=str(ROOT / "build/optiq"))
    ap.add_argument("--llama-bench", help="llama-bench binary: measure llama.cpp too")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    model = Path(a.model)
    if not model.is_file():
        print(f"contention.py: {model}: not found (scripts/fetch_models.py)", file=sys.stderr)
        return 1
    runners = [("optiq", lambda t: optiq_decode(a.optiq, model, t, a.n_gen, a.reps))]
    if a.llama_bench:
        runners.append(("llama.cpp", lambda t: llamacpp_decode(a.llama_bench, model, t, a.n_gen, a.reps)))
    rows = []
    if not a.json:
        print(f"{model.name}: decode tok/s ({a.n_gen} tokens, median of {a.reps}), {os.cpu_count()} cores, "
              f"{a.busy} busy process(es)\n")
        print("| runtime | threads | idle | busy | slowdown |")
        print("|---|---:|---:|---:|---:|")
    for name, run in runners:
        for t in [int(x) for x in a.threads.split(",")]:
            idle = run(t)
            stop = mp.Event()
            procs = [mp.Process(target=spin, args=(stop,), daemon=True) for _ in range(a.busy)]
            for p in procs:
                p.start()
            time.sleep(0.3)
            try:
                busy = run(t)
            finally:
                stop.set()
                for p in procs:
                    p.join()
            r = {"runtime": name, "threads": t, "idle_tps": idle, "busy_tps": busy, "slowdown": idle / busy,
                 "busy_processes": a.busy}
            rows.append(r)
            if a.json:
                print(json.dumps(r), flush=True)
            else:
                print(f"| {name} | {t} | {idle:.1f} | {busy:.1f} | {idle / busy:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

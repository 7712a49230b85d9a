#!/usr/bin/env python3
"""optiq against llama.cpp on the CPU, same files, same thread count, one run (issue 9).

    python3 bench/cpu_speed.py [--threads 2] [--n-prompt 512] [--n-gen 128] [--reps 3]
        [--rounds 3] [--llama-bench PATH] [--pair OPTIQ_MODEL=LLAMACPP_GGUF ...] [--json]

Default pairs: SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M (the same GGUF for both runtimes), and
an optiq MLX export of SmolLM2 at 4.5 bits/weight (uniform q4 g64, made here if missing) against
llama.cpp's Q4_0 of the same model (4.5 bits/weight, made by llama-quantize from the Q4_1 file).
llama.cpp is llama-bench from bench/llamacpp_build.sh (default variant noamx: native AVX-512/VNNI,
AMX off because it crashes on these files). Both runtimes measure prefill as one batch of
--n-prompt tokens and decode as --n-gen tokens from an empty cache. The two runtimes alternate
--rounds times and the table shows medians over rounds and the ratios optiq / llama.cpp.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("OPTIQ_CACHE", Path.home() / ".cache/optiq"))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def optiq_speed(optiq, model, t, npr, ngen, reps):
    out = subprocess.run([optiq, "bench", str(model), "-t", str(t), "-p", str(npr), "-n", str(ngen), "-r", str(reps),
                          "--json", "-q"], check=True, capture_output=True, text=True).stdout
    j = json.loads(out)
    return j["prefill_tok_s"], j["decode_tok_s"], j.get("peak_rss_mb")


def llamacpp_speed(bench, model, t, npr, ngen, reps):
    out = subprocess.run([bench, "-m", str(model), "-t", str(t), "-p", str(npr), "-n", str(ngen), "-r", str(reps),
                          "-o", "json"], check=True, capture_output=True, text=True).stdout
    pp = tg = None
    for r in json.loads(out):
        if r["n_prompt"] > 0 and r["n_gen"] == 0:
            pp = r["avg_ts"]
        if r["n_gen"] > 0 and r["n_prompt"] == 0:
            tg = r["avg_ts"]
    return pp, tg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--optiq", default=str(ROOT / "build/optiq"))
    ap.add_argument("--llama-bench")
    ap.add_argument("--pair", action="append", default=[])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    env = dict(os.environ)
    env.setdefault("OPTIQ_LLAMACPP_VARIANT", "noamx")
    if not a.llama_bench or not Path(a.llama_bench).is_file():
        bindir = subprocess.run([str(ROOT / "bench/llamacpp_build.sh"), "llama-bench", "llama-quantize"], check=True,
                                capture_output=True, text=True, env=env).stdout.strip()
        a.llama_bench = str(Path(bindir) / "llama-bench")
    bindir = Path(a.llama_bench).parent
    pairs = []
    for p in a.pair:
        o, l = p.split("=", 1)
        pairs.append((p, Path(o), Path(l)))
    if not pairs:
        smol = CACHE / "models/smollm2-135m-instruct-q4_1.gguf"
        gemma = CACHE / "models/gemma-3-270m-q4_k_m.gguf"
        pairs = [("SmolLM2-135M Q4_1 (same file)", smol, smol), ("Gemma 3 270M Q4_K_M (same file)", gemma, gemma)]
        export = CACHE / "bench/smollm2-q4g64"
        q40 = CACHE / "bench/smollm2-q4_0.gguf"
        export.parent.mkdir(parents=True, exist_ok=True)
        if not (export / "config.json").is_file():
            subprocess.run([a.optiq, "-q", "quantize", str(smol), "-o", str(export), "--bits", "4", "--group-size", "64",
                            "--force"], check=True)
        if not q40.is_file():
            q40.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([str(bindir / "llama-quantize"), "--allow-requantize", str(smol), str(q40), "Q4_0"],
                           check=True, capture_output=True)
        pairs.append(("SmolLM2 4.5 bpw: optiq MLX q4g64 vs llama.cpp Q4_0", export, q40))

    if not a.json:
        print(f"{cpu_name()}, {os.cpu_count()} cores, {a.threads} threads; prefill {a.n_prompt} tokens, decode "
              f"{a.n_gen} tokens; medians of {a.rounds} alternating rounds (each a median of {a.reps})\n")
        print("| model | optiq prefill | llama.cpp prefill | ratio | optiq decode | llama.cpp decode | ratio | optiq peak RSS MB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, om, lm in pairs:
        opp, otg, lpp, ltg, rss = [], [], [], [], []
        for _ in range(a.rounds):
            p, t, r = optiq_speed(a.optiq, om, a.threads, a.n_prompt, a.n_gen, a.reps)
            opp.append(p), otg.append(t), rss.append(r or 0)
            p, t = llamacpp_speed(a.llama_bench, lm, a.threads, a.n_prompt, a.n_gen, a.reps)
            lpp.append(p), ltg.append(t)
        m = statistics.median
        row = {"model": label, "optiq_prefill": m(opp), "llamacpp_prefill": m(lpp), "optiq_decode": m(otg),
               "llamacpp_decode": m(ltg), "prefill_ratio": m(opp) / m(lpp), "decode_ratio": m(otg) / m(ltg),
               "optiq_peak_rss_mb": max(rss), "threads": a.threads, "optiq_file": str(om), "llamacpp_file": str(lm)}
        if a.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"| {label} | {row['optiq_prefill']:.1f} | {row['llamacpp_prefill']:.1f} | {row['prefill_ratio']:.2f}x | "
                  f"{row['optiq_decode']:.1f} | {row['llamacpp_decode']:.1f} | {row['decode_ratio']:.2f}x | "
                  f"{row['optiq_peak_rss_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

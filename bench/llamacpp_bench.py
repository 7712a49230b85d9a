#!/usr/bin/env python3
"""llama.cpp speed table for BENCHMARKS.md: prefill-512 and decode tokens/s, median of 3.

    ~/.cache/optiq/venv/bin/python bench/llamacpp_bench.py [MODEL.gguf ...] [--threads 1,2]
        [--n-prompt 512] [--n-gen 128] [--reps 3] [--json]

Without MODEL: SmolLM2-135M Q4_1, Gemma 3 270M Q4_K_M (from ~/.cache/optiq/models) and
stories260K (../shared). Method (tests/reference/llamacpp_ref.py `speed`, as llama-bench):
prefill = one batch of n_prompt tokens into an empty KV cache; decode = n_gen single-token
decodes from an empty KV cache; one warm-up of each; n_threads = n_threads_batch = --threads;
F16 KV cache, flash attention off. Prints a Markdown table (or JSON lines with --json).
Run it on an otherwise idle machine: the numbers are wall-clock.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference"))
import refutil  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="GGUF files (default: smollm2, gemma3, stories260K)")
    ap.add_argument("--threads", default="2", help="comma list, e.g. 1,2 (default 2)")
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    a = ap.parse_args()

    try:
        import llama_cpp
        import llamacpp_ref
    except ImportError as e:
        print(f"llamacpp_bench: {e}: run with ~/.cache/optiq/venv/bin/python (scripts/setup.sh)", file=sys.stderr)
        return 1
    models = [Path(m) for m in a.models] or [refutil.model_path(n) for n in ("smollm2", "gemma3", "stories260k")]
    threads = [int(t) for t in a.threads.split(",")]

    rows = []
    if not a.json:
        print(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), {cpu_name()}, {os.cpu_count()} cores; "
              f"median of {a.reps}\n")
        print(f"| model | threads | prefill-{a.n_prompt} tok/s | decode tok/s ({a.n_gen} tokens) |")
        print("|---|---:|---:|---:|")
    for m in models:
        if not m.is_file():
            print(f"llamacpp_bench: {m}: not found (scripts/fetch_models.py), skipped", file=sys.stderr)
            continue
        for t in threads:
            r = llamacpp_ref.speed(m, threads=t, n_prompt=a.n_prompt, n_gen=a.n_gen, reps=a.reps)
            rows.append(r)
            if a.json:
                print(json.dumps(r), flush=True)
            else:
                pp = f"{r['prefill_tps']:.1f}" if r["prefill_tps"] else "-"
                tg = f"{r['decode_tps']:.1f}" if r["decode_tps"] else "-"
                print(f"| {m.name} | {t} | {pp} | {tg} |", flush=True)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())

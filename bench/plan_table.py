#!/usr/bin/env python3
"""optiq's planned mixed precision against baseline plans of the same size.

For each size (that of uniform qB gG for each --sizes entry): optiq's plan and
the baselines (uniform, llama.cpp k-quant rule, mlx-lm dynamic style), each
quantized with the same quantizer and measured on held-out text (KL and top-1
against the source model, perplexity). Needs a profile (optiq profile).

    bench/plan_table.py MODEL --profile P.json --text EVAL [--sizes q4g64,q3g64,105MB] [--chunks 100]

A size is a uniform format (its size is the budget, and it is a baseline row)
or an explicit size such as 105MB.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = os.environ.get("OPTIQ_BIN", str(HERE.parent / "build" / "optiq"))


def optiq(*args, threads=2):
    cmd = [BIN, "-q", "-t", str(threads)] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return json.loads(p.stdout.strip().splitlines()[-1]) if "--json" in args else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--profile", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--sizes", default="q4g64,q3g64")
    ap.add_argument("--chunks", type=int, default=100)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for size in a.sizes.split(","):
            plans = [("optiq", []), ("llama.cpp k-quant rule", ["--baseline", "kquant"]),
                     ("mlx-lm dynamic style", ["--baseline", "dynamic"])]
            if size[-1].isdigit():  # a uniform format: its size is the budget
                ref_plan = optiq("plan", a.model, "--profile", a.profile, "--bpw", "16", "--baseline",
                                 f"uniform:{size}", "-o", tmp / "u.json", "--json", threads=a.threads)
                budget = ["--size", f"{ref_plan['bytes']}B"]
                plans.insert(1, (f"uniform {size}", ["--baseline", f"uniform:{size}"]))
            else:  # an explicit size such as 105MB
                budget = ["--size", size]
            for name, extra in plans:
                plan = tmp / "plan.json"
                try:
                    p = optiq("plan", a.model, "--profile", a.profile, *budget, *extra, "-o", plan, "--json",
                              threads=a.threads)
                except RuntimeError as e:
                    print(f"  {size} {name}: {e}", file=sys.stderr)
                    continue
                out = tmp / "q"
                optiq("quantize", a.model, "-o", out, "--plan", plan, "--force", threads=a.threads)
                ev = optiq("eval", out, "--text", a.text, "--ctx", a.ctx, "--chunks", a.chunks, "--ref", a.model,
                           "--json", threads=a.threads)
                row = {"size": size, "name": name, "method": p["method"], "bpw": p["bits_per_weight"],
                       "bytes": p["bytes"], "pred": p["predicted_kl"], "kld": ev["kld"], "kld_se": ev["kld_stderr"],
                       "top1": ev["top1"], "ppl": ev["ppl"], "ref_ppl": ev["ref_ppl"]}
                rows.append(row)
                print(f"  {size} {name}: {row['bpw']:.3f} bpw, pred {row['pred']:.4f}, kld {row['kld']:.4f} "
                      f"± {row['kld_se']:.4f}, top1 {row['top1']:.4f}, ppl {row['ppl']:.4f}", file=sys.stderr,
                      flush=True)
                shutil.rmtree(out, ignore_errors=True)
    lines = ["| size of | plan | bits/weight | predicted KL | measured KLD | top-1 | perplexity | Δppl |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['name']} | {r['bpw']:.3f} | {r['pred']:.4f} | {r['kld']:.4f} ± "
                     f"{r['kld_se']:.4f} | {100 * r['top1']:.2f}% | {r['ppl']:.4f} | "
                     f"{100 * (r['ppl'] / r['ref_ppl'] - 1):+.2f}% |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        Path(a.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""optiq's planned mixed precision against baseline plans of equal size.

Every entry of --sizes defines a budget and the baselines measured at it:

    q4g64                 the size of uniform q4g64; baselines: uniform q4g64, the
                          largest k-quant-style plan and the dynamic plan that fit
    kquant:Q4_K_M[/g32]   a llama.cpp mix (or kquant:b3u5 shape) at its own size
    dynamic:q3g64/q5g64@4.0
                          mlx-lm dynamic style with these levels at 4.0 bits/weight
    105MB                 an explicit size; baselines: k-quant-style and dynamic

For each budget, optiq's solver plans from the profile; every plan is
quantized with the same search quantizer and measured on held-out text in
one `optiq eval --plan ...` run (the reference model runs once). A budget is
won when optiq's plan has lower KLD and lower perplexity than every baseline
there (all baselines are <= the budget, so none is smaller than optiq's plan
by more than the solver's slack).

    bench/plan_table.py MODEL --profile P.json --text EVAL --sizes q4g64,kquant:Q4_K_M --chunks 20
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = os.environ.get("OPTIQ_BIN", str(HERE.parent / "build" / "optiq"))


def optiq(*args, threads=2, lines=False):
    cmd = [BIN, "-q", "-t", str(threads)] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    out = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    return out if lines else (out[-1] if out else None)


def budget_and_baselines(size: str):
    """(budget args for `optiq plan` or None = the first baseline's size, baseline specs)."""
    if size.startswith("kquant:"):
        return None, [size]
    if size.startswith("dynamic:"):
        spec, bpw = size.split("@")
        return ["--bpw", bpw], [spec]
    if size[-1].isdigit() and size.startswith("q"):
        return None, [f"uniform:{size}", "kquant", "dynamic"]
    return ["--size", size], ["kquant", "dynamic"]


def render(rows) -> str:
    lines = ["| size of | plan | bits/weight | predicted KL | calibration KL | held-out KLD | top-1 | perplexity | Δppl |",
             "|---|---|---|---|---|---|---|---|---|"]
    wins = 0
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    for size in sizes:
        group = [r for r in rows if r["size"] == size]
        mine = [r for r in group if r["name"] == "optiq"][0]
        others = [r for r in group if r["name"] != "optiq"]
        won = all(mine["kld"] < o["kld"] and mine["ppl"] < o["ppl"] for o in others)
        wins += won
        for r in group:
            name = r["name"]
            if r is mine:
                chosen = (r.get("method") or "").replace("measured selection: ", "").split(" (profile")[0]
                name = f"**optiq** ({chosen})" if won else f"optiq ({chosen})"
            calib = f"{r['calib_kl']:.4f}" if r.get("calib_kl") is not None else ""
            lines.append(f"| {size} | {name} | {r['bpw']:.3f} | {r['pred']:.4f} | {calib} | {r['kld']:.4f} ± "
                         f"{r['kld_se']:.4f} | {100 * r['top1']:.2f}% | {r['ppl']:.4f} | "
                         f"{100 * (r['ppl'] / r['ref_ppl'] - 1):+.2f}% |")
    return "\n".join(lines) + f"\n\noptiq's plan beats every baseline (KLD and perplexity) at {wins} of {len(sizes)} " \
        f"budgets ({rows[0]['tokens'] if rows else 0} scored tokens per plan).\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--profile", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--sizes", default="q4g64,q3g64")
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--select", default="measured", choices=["measured", "predicted"],
                    help="optiq's plan: measured selection among variants (as optiq auto) or the solver's plan")
    ap.add_argument("--select-windows", type=int, default=16, help="calibration windows measured selection uses")
    ap.add_argument("--plans-dir", help="keep optiq's plans here, and reuse them when all are already there")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--json-out", help="write every row as JSON here")
    ap.add_argument("--render", help="only print the table of a --json-out file")
    if "--render" in sys.argv:
        print(render(json.loads(Path(sys.argv[sys.argv.index("--render") + 1]).read_text())))
        return 0
    a = ap.parse_args()
    plans = []  # (size, name, plan file, plan json)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        budgets = []  # (size, budget bytes) for optiq's plans
        for size in a.sizes.split(","):
            budget, baselines = budget_and_baselines(size)
            for spec in baselines:
                f = tmp / f"b{len(plans)}.json"
                try:
                    p = optiq("plan", a.model, "--profile", a.profile, *(budget or ["--bpw", "16"]), "--baseline", spec,
                              "-o", f, "--json", threads=a.threads)
                except RuntimeError as e:
                    print(f"  {size} {spec}: {e}", file=sys.stderr)
                    continue
                if budget is None:  # the first baseline's own size is the budget
                    budget = ["--size", f"{p['bytes']}B"]
                name = p["method"].replace("baseline ", "")
                if spec in ("kquant", "dynamic"):
                    name = ("k-quant rule: " if spec == "kquant" else "") + name
                plans.append((size, name, f, p))
            if budget[0] == "--bpw":  # resolve to bytes so that one call plans every budget
                p = optiq("plan", a.model, "--profile", a.profile, *budget, "--select", "predicted", "-o",
                          tmp / "x.json", "--json", threads=a.threads)
                budget = ["--size", f"{p['budget_bytes']}B"]
            budgets.append((size, budget[1]))
        # optiq's plans for every budget in one call (one reference pass, shared quantized tensors).
        t0 = time.time()
        reuse = [Path(a.plans_dir) / f"plan-{b}.json" for _, b in budgets] if a.plans_dir else []
        if reuse and all(f.is_file() for f in reuse):  # optiq's plans from an earlier run of this table
            mine = []
            for f in reuse:
                j = json.loads(f.read_text())
                mine.append({"out": str(f), "predicted_kl": j.get("predicted_kl"), "calib_kl": j.get("calib_kl"),
                             "method": j.get("method", "").replace("optiq measured selection: ", "measured selection: ")})
        else:
            mine = optiq("plan", a.model, "--profile", a.profile, "--size", ",".join(b for _, b in budgets) + ",",
                         "--select", a.select, "--select-windows", a.select_windows, "-o", a.plans_dir or tmp / "optiq",
                         "--json", threads=a.threads, lines=True)
        print(f"  planned {len(budgets)} budgets in {time.time() - t0:.0f} s", file=sys.stderr)
        for (size, _), p in zip(budgets, mine):
            plans.append((size, "optiq", Path(p["out"]), p))
        plans.sort(key=lambda x: ([s for s, _ in budgets].index(x[0]), x[1] != "optiq"))
        # Baselines that are the same plan at one budget (e.g. the k-quant rule collapsing to
        # uniform at exactly a uniform size) are measured once, under their joined names.
        unique = []
        for size, name, f, p in plans:
            tensors = json.loads(Path(f).read_text())["tensors"]
            twin = next((u for u in unique if u[0] == size and u[4] == tensors and u[1] != "optiq" and name != "optiq"), None)
            if twin:
                twin[1] += f" = {name}"
            else:
                unique.append([size, name, f, p, tensors])
        plans = [tuple(u[:4]) for u in unique]
        t0 = time.time()
        evals = optiq("eval", a.model, "--text", a.text, "--ctx", a.ctx, "--chunks", a.chunks,
                      *[x for _, _, f, _ in plans for x in ("--plan", f)], "--json", threads=a.threads, lines=True)
        print(f"  evaluated {len(plans)} plans in {time.time() - t0:.0f} s", file=sys.stderr)
    rows = []
    for (size, name, _, p), ev in zip(plans, evals):
        rows.append({"size": size, "name": name, "bpw": ev["bits_per_weight"], "bytes": ev["bytes"],
                     "pred": p.get("predicted_kl"), "calib_kl": p.get("calib_kl"), "method": p.get("method"),
                     "kld": ev["kld"], "kld_se": ev["kld_stderr"], "top1": ev["top1"],
                     "ppl": ev["ppl"], "ref_ppl": ev["ref_ppl"], "tokens": ev["tokens"]})
    table = render(rows)
    print(table)
    if a.out:
        Path(a.out).write_text(table)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Rounding methods inside and outside the allocation (issue 13, item 7).

For each model and budget (bits per weight over all parameters) this measures,
on held-out text against the source model:

  uniform search   every matrix at the affine format of that size, the search
                   weighted by calibration activations (quantize --calib)
  uniform gptq     the same format, quantize --method gptq
  uniform awq      the same format, quantize --method awq
  optiq search     optiq auto, profile --methods search (the plain search)
  optiq weighted   optiq auto, --methods weighted
  optiq best       optiq auto, --methods weighted,gptq (per tensor, the
                   rounding with the smaller proxy)

Uniform formats by size (fp16 scale and bias per group): 3.0 = q2 g32,
3.5 = q3 g64, 4.0 = q3 g32, 4.5 = q4 g64, 5.0 = q4 g32; matrices a group does
not divide stay float, and the optiq rows take the uniform row's actual bits
per weight as their budget. Each optiq profile is made once per model and
method (cached in WORK) and shared by the budgets.

    bench/method_table.py [--models smollm2,gemma3,stories] [--bpw 3,3.5,4,4.5,5]
                          [--rows uniform-search,...] [--work DIR] [--build build]

Results are appended to WORK/results.jsonl (a row already there is not run
again: the script resumes) and printed as a markdown table. Benchmarks, not
tests: minutes per row on a 2-core CPU.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = (ROOT / ".." / "shared").resolve()
CACHE = Path(os.environ.get("OPTIQ_CACHE", Path.home() / ".cache" / "optiq"))

UNIFORM = {3.0: (2, 32), 3.5: (3, 64), 4.0: (3, 32), 4.5: (4, 64), 5.0: (4, 32)}
ROWS = ["uniform-search", "uniform-gptq", "uniform-awq", "optiq-search", "optiq-weighted", "optiq-best"]
OPTIQ_METHODS = {"optiq-search": "search", "optiq-weighted": "weighted", "optiq-best": "weighted,gptq"}


def model_spec(name, work):
    """(model path, calibration args, held-out evaluation: text, window, windows) of a named model."""
    if name == "stories":
        # TinyStories: calibrate on the first 400 kB, evaluate on the rest.
        text = (SHARED / "data/tinystories/tinystories-valid-head.txt").read_bytes()
        calib, held = work / "stories-calib.txt", work / "stories-eval.txt"
        if not calib.exists():
            calib.write_bytes(text[:400_000])
            held.write_bytes(text[400_000:])
        return (str(SHARED / "models/stories260K/stories260K.gguf"),
                ["--calib", str(calib), "--calib-samples", "64", "--calib-seq", "256"],
                {"text": str(held), "ctx": 256, "chunks": 100})
    path = {"smollm2": "smollm2-135m-instruct-q4_1.gguf", "gemma3": "gemma-3-270m-q4_k_m.gguf"}[name]
    model = CACHE / "models" / path
    if not model.exists():
        sys.exit(f"method_table: {model} not found: run scripts/setup.sh (it downloads the models)")
    return (str(model),
            ["--calib", str(SHARED / "data/c4/c4-validation-2k.jsonl"), "--calib-samples", "16", "--calib-seq", "256"],
            {"text": str(SHARED / "data/wikitext-2-raw/wiki.test.raw"), "ctx": 512, "chunks": 12})


def run(cmd, log):
    t0 = time.time()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
    if r.returncode != 0:
        sys.exit(f"method_table: failed ({log}): {' '.join(cmd)}")
    return r.stdout, time.time() - t0


def last_json(out):
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def measure(optiq, model, row, bpw, calib, evalargs, work, candidates, budget):
    tag = f"{Path(model).stem}-{row}-{bpw}"
    out = work / tag
    if row.startswith("uniform"):
        bits, group = UNIFORM[bpw]
        method = row.split("-")[1]
        q, seconds = run([optiq, "quantize", model, "-o", str(out), "--force", "--bits", str(bits), "--group-size",
                          str(group), "--method", method, "--json"] + calib, work / f"{tag}.log")
        ev, _ = run([optiq, "eval", str(out), "--ref", model, "--json", "--text", evalargs["text"], "--ctx",
                     str(evalargs["ctx"]), "--chunks", str(evalargs["chunks"])], work / f"{tag}.eval.log")
        e = last_json(ev)
        res = {"bpw_actual": last_json(q)["bits_per_weight"], "quantize_s": seconds}
    else:
        profile = work / f"{Path(model).stem}-{OPTIQ_METHODS[row].replace(',', '-')}.profile.json"
        first = not profile.exists()
        a, seconds = run([optiq, "auto", model, "-o", str(out), "--force", "--bpw", f"{budget:.4f}", "--methods",
                          OPTIQ_METHODS[row], "--candidates", candidates, "--cache", str(profile), "--json",
                          "--text", evalargs["text"], "--eval-ctx", str(evalargs["ctx"]), "--chunks",
                          str(evalargs["chunks"])] + calib, work / f"{tag}.log")
        e = last_json(a)
        # A cached profile made with other settings (e.g. before GPTQ's held-out
        # proxy) is measured again: auto's log then shows the profile's progress.
        first = first or "profile: " in (work / f"{tag}.log").read_text(errors="replace")
        res = {"bpw_actual": e["bits_per_weight"], "auto_s": seconds, "profiled_here": first,
               "predicted_kl": e["predicted_kl"]}
    subprocess.run(["rm", "-rf", str(out)])
    res.update({"kld": e["kld"], "kld_stderr": e["kld_stderr"], "ppl": e["ppl"], "ref_ppl": e["ref_ppl"],
                "top1": e["top1"]})
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="stories,smollm2,gemma3")
    ap.add_argument("--bpw", default="3,3.5,4,4.5,5")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--candidates", default="2,3,4,5,6,8x64", help="optiq's candidate formats (default %(default)s)")
    ap.add_argument("--work", default=str(CACHE / "method-table"))
    ap.add_argument("--build", default=str(ROOT / "build"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    optiq = str(Path(args.build) / "optiq")
    results = work / "results.jsonl"
    done = {}
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done[(r["model"], r["row"], r["bpw"], r["candidates"])] = r
    for name in args.models.split(","):
        model, calib, evalargs = model_spec(name, work)
        for bpw in [float(b) for b in args.bpw.split(",")]:
            for row in args.rows.split(","):
                cand = args.candidates if row.startswith("optiq") else ""
                key = (name, row, bpw, cand)
                if key in done:
                    continue
                print(f"method_table: {name} {row} @ {bpw} ...", file=sys.stderr, flush=True)
                # optiq at the uniform row's own size where it was measured (a
                # matrix a group does not divide stays float there: stories260K's
                # 172-wide down projections), else at the nominal size.
                u = done.get((name, "uniform-search", bpw, ""))
                budget = math.floor(u["bpw_actual"] * 1e4) / 1e4 if u else bpw
                r = measure(optiq, model, row, bpw, calib, evalargs, work, args.candidates, budget)
                r["budget_bpw"] = budget
                r.update({"model": name, "row": row, "bpw": bpw, "candidates": cand,
                          "date": time.strftime("%Y-%m-%d")})
                with open(results, "a") as f:
                    f.write(json.dumps(r) + "\n")
                done[key] = r
    print("| model | bpw | method | actual bpw | KLD | ± | ppl | top-1 | time |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        for bpw in [float(b) for b in args.bpw.split(",")]:
            for row in args.rows.split(","):
                r = done.get((name, row, bpw, args.candidates if row.startswith("optiq") else ""))
                if not r:
                    continue
                t = r.get("quantize_s", r.get("auto_s", 0))
                mark = " (with profile)" if r.get("profiled_here") else ""
                print(f"| {name} | {bpw} | {row} | {r['bpw_actual']:.3f} | {r['kld']:.4f} | {r['kld_stderr']:.4f} | "
                      f"{r['ppl']:.2f} | {100 * r['top1']:.1f}% | {t:.0f} s{mark} |")


if __name__ == "__main__":
    main()

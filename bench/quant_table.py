#!/usr/bin/env python3
"""Uniform-quantization table for BENCHMARKS.md (issue: quantized models).

For one model, for bits in {8,6,5,4,3,2} x group sizes {32,64,128}: quantize
with optiq (search rounding), then measure size, bits per weight, perplexity,
KL divergence and top-1 agreement against the source model (optiq eval --ref),
and prefill/decode speed and peak RSS (optiq bench). With --llamacpp, also
requantizes the source GGUF to llama.cpp's k-quant mixes (llama_model_quantize)
and measures them the same way, plus llama.cpp's own decode speed on them.

    bench/quant_table.py MODEL --text FILE [--chunks 20] [--threads 2] [--llamacpp] [--out table.md]

Prints a markdown table; run with ~/.cache/optiq/venv/bin/python.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "reference"))


def optiq(*args, threads: int) -> dict:
    binp = os.environ.get("OPTIQ_BIN", str(HERE.parent / "build" / "optiq"))
    cmd = [binp, "-q", "-t", str(threads)] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return json.loads(p.stdout.strip().splitlines()[-1]) if "--json" in args else {}


def dir_bytes(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.iterdir() if f.suffix in (".safetensors", ".gguf"))


def measure(name: str, model: Path, ref: Path, a, params: int) -> dict:
    nan = float("nan")
    ev = {"ppl": nan, "ref_ppl": nan, "kld": nan, "top1": nan}
    if not a.speed_only:
        ev = optiq("eval", model, "--text", a.text, "--ctx", a.ctx, "--chunks", a.chunks, "--ref", ref, "--json",
                   threads=a.threads)
    be = {"prefill_tok_s": float("nan"), "decode_tok_s": float("nan"), "peak_rss_mb": float("nan")}
    if not a.no_speed:
        be = optiq("bench", model, "-p", 512 if a.ctx >= 512 else a.ctx // 2, "-n", 64, "-r", 3, "--json",
                   threads=a.threads)
    size = dir_bytes(model)
    row = {"name": name, "mb": size / 1e6, "bpw": 8 * size / params, "ppl": ev["ppl"], "ref_ppl": ev["ref_ppl"],
           "kld": ev["kld"], "top1": ev["top1"], "prefill": be["prefill_tok_s"], "decode": be["decode_tok_s"],
           "rss": be["peak_rss_mb"]}
    print(f"  {name}: {row['mb']:.2f} MB, {row['bpw']:.3f} bpw, ppl {row['ppl']:.4f}, kld {row['kld']:.5f}, "
          f"top1 {row['top1']:.4f}, pp {row['prefill']:.0f}, tg {row['decode']:.1f}, rss {row['rss']:.0f}",
          file=sys.stderr, flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bits", default="8,6,5,4,3,2")
    ap.add_argument("--groups", default="32,64,128")
    ap.add_argument("--llamacpp", action="store_true")
    ap.add_argument("--no-speed", action="store_true", help="quality columns only (speed needs an idle machine)")
    ap.add_argument("--speed-only", action="store_true", help="speed and memory columns only")
    ap.add_argument("--out")
    a = ap.parse_args()
    src = Path(a.model)
    info = json.loads(subprocess.run([os.environ.get("OPTIQ_BIN", str(HERE.parent / "build" / "optiq")), "info", src,
                                      "--json"], capture_output=True, text=True, check=True).stdout)
    params = info["parameters"]
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        rows.append(measure("source (reference)", src, src, a, params))
        for bits in map(int, a.bits.split(",")):
            for gs in map(int, a.groups.split(",")):
                out = tmp / f"q{bits}g{gs}"
                optiq("quantize", src, "-o", out, "--bits", bits, "--group-size", gs, threads=a.threads)
                rows.append(measure(f"optiq q{bits} g{gs}", out, src, a, params))
                shutil.rmtree(out)
        if a.llamacpp:
            import llamacpp_ref
            from llama_cpp import llama_cpp as L
            types = {"Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q4_K_M": 15, "Q3_K_M": 12, "Q2_K": 10}
            for tname, ftype in types.items():
                out = tmp / f"{tname}.gguf"
                qp = L.llama_model_quantize_default_params()
                qp.ftype = ftype
                qp.allow_requantize = True
                qp.nthread = a.threads
                rc = L.llama_model_quantize(str(src).encode(), str(out).encode(), qp)
                if rc != 0:
                    print(f"  llama.cpp {tname}: quantize failed ({rc})", file=sys.stderr)
                    continue
                row = measure(f"llama.cpp {tname}", out, src, a, params)
                if not a.no_speed:
                    sp = llamacpp_ref.speed(str(out), threads=a.threads, n_prompt=512, n_gen=64, reps=3)
                    row["llamacpp_prefill"], row["llamacpp_decode"] = sp["prefill_tps"], sp["decode_tps"]
                rows.append(row)
    lines = ["| model | MB | bits/weight | perplexity | Δppl | KLD | top-1 | prefill tok/s | decode tok/s | peak RSS MB |"
             + (" llama.cpp prefill / decode tok/s |" if a.llamacpp else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if a.llamacpp else "")]
    for r in rows:
        d = 100 * (r["ppl"] / r["ref_ppl"] - 1)
        lc = ""
        if a.llamacpp:
            lc = f" {r['llamacpp_prefill']:.0f} / {r['llamacpp_decode']:.1f} |" if "llamacpp_decode" in r else " |"
        lines.append(f"| {r['name']} | {r['mb']:.2f} | {r['bpw']:.3f} | {r['ppl']:.4f} | {d:+.2f}% | {r['kld']:.5f} | "
                     f"{100 * r['top1']:.2f}% | {r['prefill']:.0f} | {r['decode']:.1f} | {r['rss']:.0f} |{lc}")
    table = "\n".join(lines)
    print(table)
    if a.out:
        Path(a.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What `--fit` counts for a runtime (src/plan/runtime_memory.h) against what
that runtime allocates, on models optiq exported:

1. llama.cpp (llama-cpp-python, CPU): stories260K, SmolLM2-135M and Gemma 3
   270M (sliding-window layers: llama.cpp's smaller SWA cache, swa_full off as
   in llama-cli and llama-server) as GGUF (Q8_0), n_ctx 1000 and 4096, flash
   attention on and off. llama.cpp logs its
   buffers ("llama_kv_cache: size = X MiB", "CPU compute buffer size = Y MiB",
   "CPU output buffer size = Z MiB"); optiq's prediction comes from
   `optiq info FILE --runtime llamacpp --ctx N --json`.
   - KV cache: exact (within the log's 0.01 MiB rounding);
   - compute + output buffers: an estimate, within 10% or 0.5 MiB.
2. mlx-lm (CPU): stories260K (8-bit), SmolLM2-135M and Gemma 3 270M (float:
   mlx's CPU quantized products are too slow here; Gemma's sliding layers use
   a RotatingKVCache of the window) as MLX directories, generating until
   the cache holds N tokens (mlx_lm's generate_step, prefill in chunks of
   2048); the cache's bytes (keys and values nbytes, every layer) must equal
   `optiq info DIR --runtime mlx --ctx N`. The compute estimate models Metal's
   fused attention, so it is only printed next to what mlx's CPU backend
   peaked at (mx.get_peak_memory beyond the weights and the cache).

Prints a table (BENCHMARKS.md "Memory for --fit"). OPTIQ_REF_MODELS (comma list, default
stories260k,smollm2,gemma3) picks the models (ctest runs one test per model). Exit 77 when the venv's
packages, the models or the optiq binary are missing.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import refutil

MIB = 1 << 20
KV_TOL = 0.006 * MIB  # llama.cpp prints MiB with two decimals
COMPUTE_REL, COMPUTE_ABS = 0.10, 0.5 * MIB

try:
    import llama_cpp  # noqa: F401
    HAVE_LLAMA = True
except ImportError:
    HAVE_LLAMA = False
try:
    import mlx.core as mx
    from mlx_lm import load as mlx_load
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache
    HAVE_MLX = True
except ImportError:
    HAVE_MLX = False


def predicted(model: Path, runtime: str, ctx: int, *extra: str) -> dict:
    out, _ = refutil.run_optiq(["-q", "info", model, "--runtime", runtime, "--ctx", ctx, *extra, "--json"])
    return json.loads(out)["memory"]


# Loads a GGUF with llama-cpp-python (verbose: llama.cpp logs its buffers to stderr).
LLAMA_CHILD = r"""
import sys, llama_cpp
path, n, fa = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on"
llama_cpp.Llama(model_path=path, n_ctx=n, n_threads=1, flash_attn=fa, swa_full=False, verbose=True)
"""


def llamacpp_buffers(model: Path, ctx: int, fa: str) -> dict:
    p = subprocess.run([sys.executable, "-c", LLAMA_CHILD, str(model), str(ctx), fa], capture_output=True, text=True,
                       timeout=600)
    log = p.stderr + p.stdout
    if p.returncode != 0:
        raise RuntimeError(f"llama-cpp-python on {model} (n_ctx {ctx}, fa {fa}) exited {p.returncode}:\n{log[-3000:]}")

    def mib(pattern: str) -> float:
        m = re.search(pattern, log)
        if not m:
            raise RuntimeError(f"llama.cpp log: no line matching {pattern!r} (has its log format changed?)")
        return float(m.group(1)) * MIB

    kv = [float(x) * MIB for x in re.findall(r"llama_kv_cache: size = +([0-9.]+) MiB", log)]
    if not kv:
        raise RuntimeError("llama.cpp log: no 'llama_kv_cache: size' line")
    return {"kv": sum(kv), "kv_lines": len(kv), "compute": mib(r"CPU compute buffer size = +([0-9.]+) MiB"),
            "output": mib(r"CPU +output buffer size = +([0-9.]+) MiB")}


def mlx_cache(model_dir: Path, tokens: int) -> dict:
    """Generates until the cache holds `tokens` tokens (a prompt of tokens - 2, two generated)."""
    model, _ = mlx_load(str(model_dir))
    cache = make_prompt_cache(model)
    vocab = model.args.vocab_size
    prompt = mx.array([(7 * i + 3) % vocab for i in range(tokens - 2)], dtype=mx.uint32)
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    for _ in generate_step(prompt, model, max_tokens=2, prompt_cache=cache):
        pass
    mx.eval([c.state for c in cache])
    kv = sum(c.keys.nbytes + c.values.nbytes for c in cache)
    # Cells of a full-attention layer (the largest cache; Gemma's sliding ones hold the window).
    return {"tokens": cache[0].offset, "kv": kv, "cells": max(c.keys.shape[2] for c in cache),
            "extra": mx.get_peak_memory() - base - kv}


def mb(x: float) -> str:
    return f"{x / MIB:.2f} MiB"


def main() -> int:
    if not HAVE_LLAMA and not HAVE_MLX:
        refutil.skip("neither llama_cpp nor mlx_lm in the venv: run scripts/setup.sh")
    names = os.environ.get("OPTIQ_REF_MODELS", "stories260k,smollm2,gemma3").split(",")
    sources = {n: refutil.model_path(n) for n in names}
    sources = {n: p for n, p in sources.items() if p.is_file()}
    if not sources:
        refutil.skip("models missing: stories260K and SmolLM2-135M (scripts/fetch_models.py)")
    refutil.optiq_bin()
    ok, ran = True, 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="optiq-runtime-mem-") as td:
        tmp = Path(td)
        if HAVE_LLAMA:
            for name, src in sources.items():
                gguf = tmp / f"{name}.gguf"
                refutil.run_optiq(["-q", "quantize", src, "-o", gguf, "--format", "gguf", "--bits", "8"])
                for ctx in (1000, 4096):
                    for fa in ("on", "off"):
                        got = llamacpp_buffers(gguf, ctx, fa)
                        pred = predicted(gguf, "llamacpp", ctx, "--flash-attn", fa)
                        alloc_compute = got["compute"] + got["output"]
                        kv_ok = abs(pred["kv_cache_bytes"] - got["kv"]) <= KV_TOL * got["kv_lines"]
                        err = pred["compute_bytes"] - alloc_compute
                        c_ok = abs(err) <= max(COMPUTE_REL * alloc_compute, COMPUTE_ABS)
                        ok &= kv_ok and c_ok
                        ran += 1
                        rows.append(f"| llama.cpp | {name} | {ctx} | fa {fa} | KV {mb(pred['kv_cache_bytes'])} vs "
                                    f"{mb(got['kv'])} {'ok' if kv_ok else 'FAIL'} | compute {mb(pred['compute_bytes'])} "
                                    f"vs {mb(alloc_compute)} ({100 * err / alloc_compute:+.1f}%) "
                                    f"{'ok' if c_ok else 'FAIL'} |")
                        print(rows[-1], flush=True)
        if HAVE_MLX:
            float_plan = ["--plan", tmp / "float.json"]
            plans = {"stories260k": ["--bits", "8", "--group-size", "32"], "smollm2": float_plan, "gemma3": float_plan}
            (tmp / "float.json").write_text(json.dumps({"format": "optiq-plan", "version": 1, "default": "float",
                                                        "tensors": {}}))
            # A cache that grew once (stories260K at 1000: 256-token steps), SmolLM2's GQA layout, and
            # Gemma's rotating window (600 > 512). (SmolLM2 at 700 added a minute of mlx's CPU
            # prefill and nothing stories260K's 1000 does not check.)
            counts = {"stories260k": (300, 1000), "smollm2": (300,), "gemma3": (600,)}
            for name, src in sources.items():
                out = tmp / f"{name}-mlx"
                refutil.run_optiq(["-q", "quantize", src, "-o", out, *plans[name]])
                for n in counts[name]:
                    got = mlx_cache(out, n)
                    pred = predicted(out, "mlx", got["tokens"])
                    kv_ok = pred["kv_cache_bytes"] == got["kv"] and pred["kv_cells"] == got["cells"]
                    ok &= kv_ok
                    ran += 1
                    rows.append(f"| mlx-lm | {name} | {got['tokens']} | cells {got['cells']} | KV "
                                f"{mb(pred['kv_cache_bytes'])} vs {mb(got['kv'])} {'ok' if kv_ok else 'FAIL'} | "
                                f"compute (Metal estimate) {mb(pred['compute_bytes'])}; CPU peak beyond weights "
                                f"and cache {mb(got['extra'])} |")
                    print(rows[-1], flush=True)
    if ran == 0:
        refutil.skip("nothing to compare")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

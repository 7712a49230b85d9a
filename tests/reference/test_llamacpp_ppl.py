#!/usr/bin/env python3
"""optiq's perplexity vs llama.cpp's, same protocol (see llamacpp_ref.py's docstring).

For each model runs
    optiq eval MODEL --text FILE --ctx 512 --chunks 8 --json     (one JSON object: ppl, tokens, ...)
and llama.cpp's perplexity protocol on the same file (each side tokenizes the file itself), and
asserts |ppl_optiq / ppl_llama.cpp - 1| <= 0.3%. If optiq's JSON has a token count
"tokens_scored" it must equal llama.cpp's count of scored tokens (8 x 255); a "tokens" count must
equal that or the number of tokens evaluated (8 x 512).

  smollm2      SmolLM2-135M-Instruct Q4_1 on wiki.test.raw
  stories260k  stories260K F32 on tinystories-valid-head.txt
  gemma3       Gemma 3 270M Q4_K_M on wiki.test.raw (8 chunks, 2026-12-03: llama.cpp 18.0702, optiq
               --numerics llamacpp +0.55% (bound 0.8%, see MODEL_TOL), default fp32 -0.02%)

The full-file run (all 592 chunks) is a benchmark, not a test: see bench/ and BENCHMARKS.md.
Tolerance (OPTIQ_REF_PPL_RTOL, default 0.003): llama.cpp's own F16-KV vs F32-KV runs differ by
~0.15% on SmolLM2 (8 chunks). llama.cpp also rounds activations to 8 bits (Q8_1) before every Q4_1
dot product and keeps an F16 KV cache, which adds noise to the logits and so raises perplexity a
little. optiq therefore runs with `--numerics llamacpp` (the same rounding) for the 0.3% check
(SmolLM2: -0.14%); with OPTIQ_REF_PPL_EXACT=1 it also reports its default fp32 numerics, which score
lower (-0.48%; they match a float64 reference to 1e-6, see test_llamacpp_logits.py).
llama.cpp results are cached in $OPTIQ_CACHE/reference (refutil.cached; OPTIQ_REF_NO_CACHE=1 disables).
Env: OPTIQ_REF_PPL_CHUNKS (default 8), OPTIQ_THREADS (default 2), OPTIQ_REF_MODELS, OPTIQ_REF_PPL_EXACT.
Exit 77 if llama_cpp / the venv / every model is missing.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refutil  # noqa: E402
from refutil import Results  # noqa: E402

CASES = {
    "smollm2": "wikitext-2-raw/wiki.test.raw",
    "stories260k": "tinystories/tinystories-valid-head.txt",
    "gemma3": "wikitext-2-raw/wiki.test.raw",
}
CTX = 512
REL_TOL = float(os.environ.get("OPTIQ_REF_PPL_RTOL", "0.003"))
# Gemma 3 under --numerics llamacpp moves with the summation order of the SIMD kernels far more
# than under exact numerics (2 chunks, 2026-12-03: scalar 15.541, AVX2 15.585, AVX-512 15.692,
# while exact numerics give 15.5647 on every ISA): its fp16 rounding of q/k/v, probabilities and
# GELU inputs amplifies 1-ulp differences. 8 chunks: +0.55% on AVX2 and AVX-512. Until that is
# understood, Gemma gets a wider bound; the default-numerics result is reported beside it.
MODEL_TOL = {"gemma3": 0.008}
# The default-numerics run is a printed comparison, not a check (test_llamacpp_logits.py checks those
# numerics against float64): in CI it was 60% of this test's time (Gemma 3: 96 of 149 s), so only on request.
EXACT_TOO = os.environ.get("OPTIQ_REF_PPL_EXACT", "0") == "1"


def parse_json(stdout: str) -> dict:
    """The JSON object optiq printed (the last line that parses as one)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    return json.loads(stdout)  # maybe pretty-printed over several lines


def main() -> int:
    refutil.require_llama_cpp()
    import llamacpp_ref

    chunks = int(os.environ.get("OPTIQ_REF_PPL_CHUNKS", "8"))
    names = os.environ.get("OPTIQ_REF_MODELS", "smollm2,stories260k,gemma3").split(",")
    res = Results("test_llamacpp_ppl")
    for name in names:
        model = refutil.model_path(name)
        text = refutil.data_path(CASES[name])
        if not model.is_file():
            res.skip(f"{name}: {model} missing (run scripts/fetch_models.py)")
            continue
        if not text.is_file():
            res.skip(f"{name}: {text} missing")
            continue
        optiq = refutil.optiq_bin()  # noqa: F841 (skips if not built)
        ref = refutil.cached("ppl", {"text": str(text), "ctx": CTX, "chunks": chunks, "kv": "f16"},
                             lambda: llamacpp_ref.perplexity(model, text, ctx=CTX, chunks=chunks,
                                                             threads=refutil.threads()),
                             files=[model, text])
        print(f"{name}: llama.cpp ppl {ref['ppl']:.4f} +/- {ref['ppl_err']:.4f} over {ref['tokens']} tokens "
              f"({ref['chunks']} chunks of {CTX}, add_bos {ref['add_bos']}, {ref['eval_s']:.1f} s)", flush=True)
        try:
            out, dt = refutil.run_optiq(["eval", model, "--text", text, "--ctx", CTX, "--chunks", chunks, "--json",
                                         "--numerics", "llamacpp"])
            got = parse_json(out)
            if EXACT_TOO:
                exact_out, _ = refutil.run_optiq(["eval", model, "--text", text, "--ctx", CTX, "--chunks", chunks,
                                                  "--json"])
                exact = float(parse_json(exact_out)["ppl"])
                print(f"{name}: optiq ppl with its default fp32 numerics {exact:.4f} "
                      f"({100 * (exact / ref['ppl'] - 1):+.3f}% vs llama.cpp)", flush=True)
        except (RuntimeError, ValueError) as e:
            res.check(False, f"{name}: optiq eval --json ran and printed JSON: {e}")
            continue
        if "ppl" not in got:
            res.check(False, f"{name}: optiq eval JSON has no 'ppl': {got}")
            continue
        ppl = float(got["ppl"])
        rel = ppl / ref["ppl"] - 1
        print(f"{name}: optiq --numerics llamacpp ppl {ppl:.4f} ({dt:.1f} s): relative difference {100 * rel:+.3f}%  json {got}",
              flush=True)
        tol = max(REL_TOL, MODEL_TOL.get(name, 0.0))
        res.check(abs(rel) <= tol, f"{name}: |ppl {ppl:.4f} / {ref['ppl']:.4f} - 1| = {100 * abs(rel):.3f}% "
                                   f"<= {100 * tol}%")
        if "tokens_scored" in got:
            n = int(got["tokens_scored"])
            res.check(n == ref["tokens"], f"{name}: tokens_scored {n} == llama.cpp's {ref['tokens']}")
        elif "tokens" in got:  # scored tokens, or all tokens evaluated (chunks x ctx)
            n = int(got["tokens"])
            ok = n in (ref["tokens"], ref["chunks"] * CTX)
            res.check(ok, f"{name}: tokens {n} is llama.cpp's scored count {ref['tokens']} "
                          f"or its evaluated count {ref['chunks'] * CTX}")
    res.finish()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""optiq's logits vs llama.cpp's, position by position.

For each model: tokenize a slice of text with llama.cpp (BOS per the model's add_bos flag), run
    optiq logits MODEL --ids IDS --out OUT.npy            (float32 [n_tokens, n_vocab])
and llama.cpp on the same ids (tests/reference/llamacpp_ref.py, F16 KV cache: llama.cpp's
default), report max |diff|, relative error ||diff||_F/||ref||_F and top-1 agreement, and assert
  rel_err <= RTOL, max_abs <= ATOL, top-1 identical on >= TOP1 of positions.

  smollm2      SmolLM2-135M-Instruct Q4_1, 512 tokens of wiki.test.raw
  gemma3       Gemma 3 270M Q4_K_M, 256 tokens of wiki.test.raw (262k vocab)
  stories260k  stories260K F32, 500 tokens of tinystories-valid-head.txt:
               RTOL 3e-3, ATOL 0.2, TOP1 99.9% (no flip allowed)

Why quantized models get a measured tolerance: llama.cpp multiplies Q4_x weights with activations
quantized to 8 bits (Q8_1 blocks), and that rounding is chaotic: llama.cpp run with an F32 instead of
an F16 KV cache (a 5e-4 relative change) moves SmolLM2's logits by ~2.8% (relative) and flips the
top-1 token at ~3% of positions; each of the two is 1-2% away from an exact float64 forward pass of
the same dequantized weights. So an implementation that does not copy llama.cpp's activation
quantization bit for bit cannot reach 99.9% top-1 identity. For quantized models the test measures
that noise floor (llama.cpp F16 KV vs F32 KV, cached) and asserts
  rel_err <= max(0.01, 1.5 * floor_rel), max_abs <= max(0.5, 1.5 * floor_max_abs),
  top-1 >= min(99.9%, floor_top1 - slack), slack 1% (2% for gemma3, see CASES).
OPTIQ_REF_STRICT=1 asserts the fixed 99.9% top-1 (and rel_err <= 0.03) instead.

Ground truth: for every model (llama and gemma3 architectures) the test also runs a float64 NumPy forward pass
(np_llama.py) on the first 96 tokens and asserts that optiq (default fp32 numerics) matches it
with rel_err <= 1e-4 and 100% top-1, and reports llama.cpp's distance to it (SmolLM2: optiq 1e-6,
llama.cpp 4.6% and 94% top-1).

llama.cpp results are cached in $OPTIQ_CACHE/reference (refutil.cached).
Env: OPTIQ_REF_LOGITS_TOKENS (override token count), OPTIQ_THREADS (llama.cpp threads, default 2),
OPTIQ_REF_MODELS (comma list, default smollm2,stories260k,gemma3).
Exit 77 if llama_cpp / the venv / every model is missing.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import refutil  # noqa: E402
from refutil import Results  # noqa: E402

# name -> (text, n_tokens, quantized, tie_tol for reporting, top-1 slack below the noise floor)
# Gemma 3 270M's slack is 2%: its activations are large (norm weights up to ~280) and llama.cpp's
# rounding moves its logits far: llama.cpp F16 KV agrees with the float64 ground truth on only
# 93.75% of the first 96 positions (F32 KV: 96.9%; optiq: 100%, rel_err < 1e-6), so an exact
# implementation sits ~6.5% (top-1) from llama.cpp F16, just past the F16-vs-F32 floor (5.5%) - 1%.
CASES = {
    "smollm2": ("wikitext-2-raw/wiki.test.raw", 512, True, 0.05, 0.01),
    "stories260k": ("tinystories/tinystories-valid-head.txt", 500, False, 1e-3, 0.01),
    "gemma3": ("wikitext-2-raw/wiki.test.raw", 256, True, 0.05, 0.02),
}
TOP1_MIN = 0.999


def fmt(c: dict) -> str:
    return (f"max_abs {c['max_abs']:.4g} (at pos {c['worst_pos']}), mean_abs {c['mean_abs']:.4g}, "
            f"rel_err {c['rel_err']:.4g}, worst row rel {c['row_rel_max']:.4g}, top-1 {100 * c['top1']:.2f}%")


def main() -> int:
    refutil.require_llama_cpp()
    import numpy as np
    import llamacpp_ref

    names = os.environ.get("OPTIQ_REF_MODELS", "smollm2,stories260k,gemma3").split(",")
    strict = os.environ.get("OPTIQ_REF_STRICT") == "1"
    nthr = refutil.threads()
    res = Results("test_llamacpp_logits")
    with refutil.temp_dir() as tmp:
        tmp = Path(tmp)
        for name in names:
            text_rel, n_tok, quantized, tie_tol, top1_slack = CASES[name]
            n_tok = int(os.environ.get("OPTIQ_REF_LOGITS_TOKENS", n_tok))
            model = refutil.model_path(name)
            text = refutil.data_path(text_rel)
            if not model.is_file():
                res.skip(f"{name}: {model} missing (run scripts/fetch_models.py)")
                continue
            if not text.is_file():
                res.skip(f"{name}: {text} missing")
                continue
            refutil.optiq_bin()  # skips (77) if not built

            def tokenize():
                # A slice of the text is plenty for n_tok tokens.
                raw = llamacpp_ref.read_text_file(text)[: n_tok * 12]
                with llamacpp_ref.LlamaRef(model, n_ctx=256, n_threads=1) as r:
                    return {"ids": r.tokenize(raw, add_special=True)[:n_tok]}

            ids = refutil.cached("ids", {"n": n_tok, "text": str(text)}, tokenize, files=[model, text])["ids"]
            ids_file = tmp / f"{name}.ids"
            refutil.write_ids(ids_file, ids)
            ref = refutil.cached("logits", {"ids": ids, "kv": "f16"},
                                 lambda: llamacpp_ref.dump_logits(model, ids, threads=nthr), files=[model], npy=True)
            out = tmp / f"{name}.npy"
            try:
                _, dt = refutil.run_optiq(["logits", model, "--ids", ids_file, "--out", out])
                got = np.load(out)
                c = refutil.compare_logits(ref, got, tie_tol=tie_tol)
            except (RuntimeError, OSError, ValueError) as e:
                res.check(False, f"{name}: optiq logits ran and wrote [{len(ids)}, vocab] float32: {e}")
                continue
            print(f"{name}: {c['n']} tokens x {c['vocab']} vocab, optiq {dt:.1f} s: {fmt(c)} "
                  f"({100 * c['top1_ties']:.2f}% counting near-ties <= {tie_tol}); "
                  f"top-1 mismatches at {c['top1_mismatch_pos']}", flush=True)
            if quantized and not strict:
                ref32 = refutil.cached("logits", {"ids": ids, "kv": "f32"},
                                       lambda: llamacpp_ref.dump_logits(model, ids, threads=nthr, kv_type="f32"),
                                       files=[model], npy=True)
                f = refutil.compare_logits(ref, ref32)
                print(f"{name}: noise floor, llama.cpp F16 KV vs F32 KV: {fmt(f)}", flush=True)
                rtol = max(0.01, 1.5 * f["rel_err"])
                atol = max(0.5, 1.5 * f["max_abs"])
                top1 = min(TOP1_MIN, f["top1"] - top1_slack)
            elif quantized:
                rtol, atol, top1 = 0.03, 2.0, TOP1_MIN
            else:
                rtol, atol, top1 = 3e-3, 0.2, TOP1_MIN
            # float64 ground truth (np_llama.py: llama and gemma3 GGUFs)
            import np_llama
            n64 = min(96, len(ids))
            cfg, weights = np_llama.load_weights(str(model))
            truth = np_llama.forward(cfg, weights, ids[:n64])
            del weights
            for who, arr in (("optiq", got[:n64]), ("llama.cpp", ref[:n64])):
                t = refutil.compare_logits(truth, arr)
                print(f"{name}: {who} vs float64 ground truth over {n64} tokens: {fmt(t)}", flush=True)
                if who == "optiq":
                    res.check(t["rel_err"] <= 1e-4, f"{name}: optiq vs float64 rel_err {t['rel_err']:.3g} <= 1e-4")
                    res.check(t["top1"] == 1.0, f"{name}: optiq vs float64 top-1 {100 * t['top1']:.2f}% == 100%")
            res.check(c["rel_err"] <= rtol, f"{name}: rel_err {c['rel_err']:.3g} <= {rtol:.3g}")
            res.check(c["max_abs"] <= atol, f"{name}: max_abs {c['max_abs']:.3g} <= {atol:.3g}")
            res.check(c["top1"] >= top1, f"{name}: top-1 agreement {100 * c['top1']:.2f}% >= {100 * top1:.2f}%")
    res.finish()


if __name__ == "__main__":
    main()

"""optiq against mlx-lm on tiny random models of every supported family (issue 5):
Mistral (sliding window 8 on every layer; and a Nemo-like one with head_dim != hidden/heads),
Qwen2 (q/k/v biases, tied, use_sliding_window=false), Qwen3 (q/k RMSNorm, head_dim 32; and a
tied one with transformers-5 `rope_parameters`), Phi-3 (fused qkv_proj/gate_up_proj; plain,
LongRoPE on a sequence longer than original_max_position_embeddings, and "su" on a shorter one)
and Gemma 3 text (local/global layers with window 4 and two rope bases, (1+w) norms, tied; and
with final_logit_softcapping).

1. Each model is written as a Hugging Face directory (float32) by tinymodels.family_case;
   `optiq logits` on 24 token ids (longer than every window) must equal mlx-lm's logits to a
   max relative error (max |optiq - mlx| / max |mlx|) below 1e-4, with the same top-1 everywhere.
   mlx-lm is steered to transformers' semantics where it differs (tinymodels explains how).
2. For gemma3_text, qwen3 and phi3_longrope, `optiq quantize --bits 4 --group-size 32` writes an
   MLX directory that mlx_lm.load (model and tokenizer) reads, and mlx-lm's logits on it equal
   optiq's logits on the same files, to the same tolerance.

Usage: test_families_mlx.py [--case NAME ...] [--keep DIR] (DIR keeps the models for debugging).
Exits 0 (pass), 1 (fail), 77 (a package or the optiq binary is missing).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import refutil

try:
    import numpy as np
    import mlx.core  # noqa: F401
    import mlx_lm  # noqa: F401
    import tokenizers  # noqa: F401
except ImportError as e:
    refutil.skip(f"python package missing ({e})")

import tinymodels

TOL = 1e-4
N_TOKENS = 24
IDS = [int(i) for i in np.random.default_rng(1234).integers(0, 320, N_TOKENS)]
QUANT_CASES = ["gemma3_text", "qwen3", "phi3_longrope"]


def describe(got: np.ndarray, ref: np.ndarray) -> tuple[bool, str]:
    """(ok, 'max rel err ..., top-1 ...'), plus where along the sequence a failure starts."""
    if got.shape != ref.shape:
        return False, f"shape {got.shape} != reference {ref.shape}"
    if not np.isfinite(got).all():
        return False, f"{int((~np.isfinite(got)).sum())} non-finite logits"
    err = refutil.max_rel_err(got, ref)
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    ok = err < TOL and top1 == 1.0
    msg = f"max rel err {err:.2e}, top-1 {top1:.3f}"
    if not ok:
        rows = refutil.row_rel_errs(got, ref)
        bad = np.nonzero(rows >= TOL)[0]
        first = int(bad[0]) if len(bad) else -1
        msg += f"; first position over tol {first}; per position: " + " ".join(f"{r:.0e}" for r in rows)
    return ok, msg


def first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    err = [ln for ln in lines if "error" in ln.lower()]
    return (err or lines or ["?"])[-1][:300]


def check_case(name: str, root: Path, tmp: Path, res: refutil.Results, quantize: bool) -> None:
    case = tinymodels.family_case(name, np.random.default_rng(0), n_tokens=N_TOKENS)
    model = tinymodels.write_model(root / name, case["config"], case["tensors"], "float32")
    ref = tinymodels.family_reference(model, IDS, case)
    try:
        got = refutil.optiq_logits(model, IDS, tmp)
    except RuntimeError as e:
        res.check(False, f"{name}: optiq failed: {first_line(e)}")
        return
    ok, msg = describe(got, ref)
    res.check(ok, f"{name}: {msg}")
    if not quantize:
        return
    q = root / f"{name}-q4g32"
    try:
        refutil.run_optiq(["-q", "quantize", model, "-o", q, "--bits", 4, "--group-size", 32, "--force"])
        got_q = refutil.optiq_logits(q, IDS, tmp)
    except RuntimeError as e:
        res.check(False, f"{name} q4 g32: optiq failed: {first_line(e)}")
        return
    try:
        ref_q = tinymodels.family_reference(q, IDS, case, with_tokenizer=True)
    except Exception as e:  # noqa: BLE001 - any loader error is the finding
        res.check(False, f"{name} q4 g32: mlx_lm.load rejects optiq's export: {type(e).__name__}: {e}")
        return
    ok, msg = describe(got_q, ref_q)
    res.check(ok, f"{name} q4 g32 (mlx_lm.load on optiq's export): {msg}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", choices=tinymodels.FAMILY_CASES,
                    help="run only this case (repeatable)")
    ap.add_argument("--keep", type=Path, help="write the models here and keep them")
    args = ap.parse_args()
    refutil.optiq_bin()  # skip early when the binary is missing
    res = refutil.Results("test_families_mlx")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="optiq-fam-") as td:
        tmp = Path(td)
        root = args.keep or tmp
        root.mkdir(parents=True, exist_ok=True)
        if args.keep:
            refutil.write_ids(root / "ids.txt", IDS)
        for name in args.case or tinymodels.FAMILY_CASES:
            check_case(name, root, tmp, res, quantize=name in QUANT_CASES)
    print(f"({time.perf_counter() - t0:.1f} s)")
    res.finish()


if __name__ == "__main__":
    sys.exit(main())

"""Cross-check of optiq's MLX-compatible affine quantization against mlx itself.

For every bits x group size x scale type (fp16, bf16):
 (a) mx.dequantize of optiq's packed words/scales/biases equals optiq's own
     dequantization (both in fp32), for the minmax and the search quantizer;
 (b) optiq's minmax quantization of the same fp16/bf16 values equals
     mx.quantize bit for bit (packed words, scales, biases).
Data goes through tests/reference/affine_tool (raw f32 in, safetensors out).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from refutil import skip

try:
    import numpy as np
    import mlx.core as mx
except ImportError as e:  # pragma: no cover
    skip(f"mlx or numpy missing: {e}")

mx.set_default_device(mx.cpu)


def tool() -> Path:
    b = os.environ.get("OPTIQ_BINARY_DIR")
    p = Path(b) / "tests" / "affine_tool" if b else None
    if not p or not p.exists():
        skip(f"affine_tool not built (OPTIQ_BINARY_DIR={b})")
    return p


def u16(a: "mx.array") -> np.ndarray:
    return np.array(a.view(mx.uint16))


def main() -> int:
    exe = tool()
    rng = np.random.default_rng(1234)
    rows, cols = 7, 384
    failures = 0
    checked = 0
    with tempfile.TemporaryDirectory() as td:
        for st, mdt in (("f16", mx.float16), ("bf16", mx.bfloat16)):
            for bits in (2, 3, 4, 5, 6, 8):
                for gs in (32, 64, 128):
                    w = (rng.standard_t(4, size=(rows, cols)) * 0.03).astype(np.float32)
                    w[0, :gs] = np.abs(w[0, :gs])          # all-positive group
                    w[1, :gs] = -np.abs(w[1, :gs])         # all-negative group
                    w[2, gs:2 * gs] = 0.0125               # constant group
                    wm = mx.array(w).astype(mdt)           # model-dtype weights
                    wf = np.array(wm.astype(mx.float32))   # exactly those values as f32
                    raw = Path(td) / "w.f32"
                    wf.tofile(raw)
                    ref_q, ref_s, ref_b = mx.quantize(wm, group_size=gs, bits=bits)
                    for method in ("minmax", "search"):
                        out = Path(td) / f"{method}.safetensors"
                        subprocess.run([str(exe), str(raw), str(rows), str(cols), str(bits), str(gs), st, method,
                                        str(out)], check=True)
                        t = mx.load(str(out))
                        tag = f"{st} q{bits} g{gs} {method}"
                        # (a) mx.dequantize of optiq's tensors == optiq's dequantization
                        deq_mx = np.array(mx.dequantize(t["weight"], t["scales"].astype(mx.float32),
                                                        t["biases"].astype(mx.float32), group_size=gs, bits=bits))
                        deq_opt = np.array(t["dequant"])
                        diff = np.abs(deq_mx - deq_opt)
                        tol = 2e-7 * np.maximum(np.abs(deq_opt), 1e-3)
                        checked += 1
                        if not np.all(diff <= tol):
                            failures += 1
                            print(f"FAIL (a) {tag}: max |mx.dequantize - optiq| = {diff.max():.3g}")
                        if method != "minmax":
                            continue
                        # (b) bit-identical to mx.quantize
                        same_q = np.array_equal(np.array(ref_q), np.array(t["weight"]))
                        same_s = np.array_equal(u16(ref_s), u16(t["scales"]))
                        same_b = np.array_equal(u16(ref_b), u16(t["biases"]))
                        checked += 1
                        if not (same_q and same_s and same_b):
                            failures += 1
                            nq = int((np.array(ref_q) != np.array(t["weight"])).sum())
                            ns = int((u16(ref_s) != u16(t["scales"])).sum())
                            nb = int((u16(ref_b) != u16(t["biases"])).sum())
                            print(f"FAIL (b) {tag}: differs from mx.quantize: {nq} words, {ns} scales, {nb} biases")
    print(f"mlx {mx.__version__}: {checked - failures}/{checked} checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

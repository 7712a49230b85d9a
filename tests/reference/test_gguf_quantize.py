"""optiq's GGUF block quantizers against llama.cpp's own (ggml_quantize_chunk from
the llama-cpp-python build, called through ctypes) and gguf-py's dequantizers.

For every type (Q2_K..Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS), on random rows with
outliers (tests/reference/ggml_quant_tool writes optiq's blocks):
 (a) layout: gguf-py dequantizes optiq's blocks to exactly optiq's own values;
 (b) the 32-weight types: optiq's reference quantization (minmax) is llama.cpp's
     byte for byte;
 (c) the k-quants and IQ4s: optiq's reference quantization is llama.cpp's byte for byte
     too (the same procedures, written again), and optiq's search is no worse;
 (d) with an importance vector: the k-quants' reference procedure is llama.cpp's
     imatrix quantization byte for byte (IQ4_NL too), and optiq's search reaches an
     importance-weighted error no worse than it (all types).
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

from refutil import require_llama_cpp, skip, temp_dir

llama_cpp = require_llama_cpp()
import numpy as np  # noqa: E402

try:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
except ImportError as e:  # pragma: no cover
    skip(f"gguf missing: {e}")

TYPES = {  # name: (ggml type id, block elems, block bytes)
    "q4_0": (2, 32, 18), "q4_1": (3, 32, 20), "q5_0": (6, 32, 22), "q5_1": (7, 32, 24), "q8_0": (8, 32, 34),
    "q2_k": (10, 256, 84), "q3_k": (11, 256, 110), "q4_k": (12, 256, 144), "q5_k": (13, 256, 176),
    "q6_k": (14, 256, 210), "iq4_nl": (20, 32, 18), "iq4_xs": (23, 256, 136),
}
ROWS, COLS = 24, 1024


def tool() -> Path:
    b = os.environ.get("OPTIQ_BINARY_DIR")
    p = Path(b) / "tests" / "ggml_quant_tool" if b else None
    if not p or not p.exists():
        skip(f"ggml_quant_tool not built (OPTIQ_BINARY_DIR={b})")
    return p


def ggml() -> ctypes.CDLL:
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for name in ("libggml-base.so", "libggml-base.so.0"):
        if (lib_dir / name).exists():
            lib = ctypes.CDLL(str(lib_dir / name))
            break
    else:
        skip(f"no libggml-base in {lib_dir}")
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def llama_quantize(lib, tid: int, bb: int, be: int, w: np.ndarray, imp: np.ndarray | None) -> np.ndarray:
    out = np.zeros(ROWS * (COLS // be) * bb, dtype=np.uint8)
    lib.ggml_quantize_init(tid)
    n = lib.ggml_quantize_chunk(tid, w.ctypes.data, out.ctypes.data, 0, ROWS, COLS,
                                imp.ctypes.data if imp is not None else None)
    assert n == out.size, (n, out.size)
    return out


def optiq_quantize(td: Path, name: str, method: str, w: np.ndarray, imp: np.ndarray | None):
    wf, imf, bf, df = (td / f for f in ("w.f32", "imp.f32", f"{name}.blocks", f"{name}.f32"))
    w.tofile(wf)
    if imp is not None:
        imp.tofile(imf)
    subprocess.run([str(tool()), str(wf), str(ROWS), str(COLS), name, method, str(imf) if imp is not None else "-",
                    str(bf), str(df)], check=True, capture_output=True, text=True)
    return np.fromfile(bf, dtype=np.uint8), np.fromfile(df, dtype=np.float32).reshape(ROWS, COLS)


def deq(blocks: np.ndarray, tid: int) -> np.ndarray:
    return dequantize(blocks.reshape(ROWS, -1), GGMLQuantizationType(tid)).astype(np.float32).reshape(ROWS, COLS)


def err(w, dq, imp=None) -> float:
    k = np.ones(COLS) if imp is None else imp
    return float(np.sqrt(((w - dq) ** 2 * k).sum() / ((w ** 2) * k).sum()))


def main() -> int:
    lib = ggml()
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((ROWS, COLS)) * 0.02).astype(np.float32)
    w[rng.random((ROWS, COLS)) < 0.01] *= 12  # outliers, as real weights have
    imp = (rng.standard_normal(COLS) ** 2 + 0.05).astype(np.float32)
    imp[::17] *= 30  # a few channels that matter far more
    failures = []
    print(f"{'type':6} {'optiq ref':>10} {'llama ref':>10} {'optiq search':>13} {'same blocks':>12} "
          f"{'optiq w-err':>12} {'llama imatrix':>14} {'same imatrix blocks':>19}")
    with temp_dir() as tdn:
        td = Path(tdn)
        for name, (tid, be, bb) in TYPES.items():
            ours_ref, ours_ref_dq = optiq_quantize(td, name, "minmax", w, None)
            ours_s, ours_s_dq = optiq_quantize(td, name, "search", w, None)
            ours_w, ours_w_dq = optiq_quantize(td, name, "search", w, imp)
            ours_mw, _ = optiq_quantize(td, name, "minmax", w, imp)
            ll_ref = llama_quantize(lib, tid, bb, be, w, None)
            ll_imp = llama_quantize(lib, tid, bb, be, w, imp)
            # (a) layout
            for blocks, dq, what in ((ours_ref, ours_ref_dq, "minmax"), (ours_w, ours_w_dq, "search+importance")):
                if not np.array_equal(deq(blocks, tid), dq):
                    failures.append(f"{name} {what}: gguf-py decodes optiq's blocks differently")
            nblocks = ROWS * COLS // be
            same = int((ours_ref.reshape(nblocks, bb) == ll_ref.reshape(nblocks, bb)).all(axis=1).sum())
            same_imp = int((ours_mw.reshape(nblocks, bb) == ll_imp.reshape(nblocks, bb)).all(axis=1).sum())
            e_ours, e_ll, e_s = err(w, ours_ref_dq), err(w, deq(ll_ref, tid)), err(w, ours_s_dq)
            e_ours_w, e_ll_w = err(w, ours_w_dq, imp), err(w, deq(ll_imp, tid), imp)
            print(f"{name:6} {e_ours:10.5f} {e_ll:10.5f} {e_s:13.5f} {same:6}/{nblocks:<5} {e_ours_w:12.5f} {e_ll_w:14.5f}"
                  f" {same_imp:6}/{nblocks}")
            if (be == 256 or name.startswith("iq4")) and same_imp != nblocks:
                failures.append(f"{name}: {nblocks - same_imp} of {nblocks} imatrix blocks differ from llama.cpp's")
            if same != nblocks:  # (c)
                failures.append(f"{name}: {nblocks - same} of {nblocks} reference blocks differ from llama.cpp's")
            if e_s > e_ll * 1.0001 and name != "q8_0":
                failures.append(f"{name}: search error {e_s:.5f} above llama.cpp's reference {e_ll:.5f}")
            if e_ours_w > e_ll_w * 1.0001 and name != "q8_0":  # (d)
                failures.append(f"{name}: importance-weighted error {e_ours_w:.5f} above llama.cpp imatrix {e_ll_w:.5f}")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

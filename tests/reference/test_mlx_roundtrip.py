"""optiq against mlx-lm on tiny random Llama models in Hugging Face layout:

1. optiq loads a HF directory (f32, bf16, and sharded) and its logits equal mlx-lm's;
2. `optiq quantize` writes an MLX-layout model that mlx_lm.load accepts, and
   mlx-lm's logits on it equal optiq's logits on the same quantized files, for
   uniform formats (rounded, GPTQ, AWQ) and for a mixed per-tensor plan.
"""
from __future__ import annotations

import json
import sys
import tempfile
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

IDS = [0, 5, 17, 42, 99, 200, 7, 3, 250, 11, 64, 128, 300, 9, 77, 31]


def optiq_logits(model_dir: Path, tmp: Path) -> np.ndarray:
    ids_file = tmp / "ids.txt"
    ids_file.write_text(" ".join(map(str, IDS)))
    out = tmp / "logits.npy"
    refutil.run_optiq(["-q", "logits", model_dir, "--ids", ids_file, "--out", out])
    return np.load(out)


def compare(name: str, a: np.ndarray, b: np.ndarray, tol: float) -> bool:
    err = np.abs(a - b).max() / max(1e-6, np.abs(b).max())
    top1 = (a.argmax(-1) == b.argmax(-1)).mean()
    ok = err < tol and top1 == 1.0
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max rel err {err:.2e}, top-1 agreement {top1:.3f}")
    return ok


def main() -> int:
    ok = True
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cfg = tinymodels.llama_config()
        tensors = tinymodels.llama_tensors(cfg, rng)
        f32 = tinymodels.write_model(tmp / "f32", cfg, tensors, "float32")
        ok &= compare("hf f32", optiq_logits(f32, tmp), tinymodels.mlx_logits(f32, IDS), 1e-4)
        bf16 = tinymodels.write_model(tmp / "bf16", cfg, tensors, "bfloat16")
        ok &= compare("hf bf16", optiq_logits(bf16, tmp), tinymodels.mlx_logits(bf16, IDS), 2e-2)

        tied_cfg = tinymodels.llama_config(tie_word_embeddings=True, num_hidden_layers=3)
        tied = tinymodels.write_model(tmp / "tied", tied_cfg, tinymodels.llama_tensors(tied_cfg, rng), "float32")
        ok &= compare("hf tied f32", optiq_logits(tied, tmp), tinymodels.mlx_logits(tied, IDS), 1e-4)

        for bits, gs in [(4, 64), (8, 32), (3, 64), (2, 32), (5, 64), (6, 64)]:
            q = tmp / f"q{bits}g{gs}"
            refutil.run_optiq(["-q", "quantize", f32, "-o", q, "--bits", bits, "--group-size", gs])
            ok &= compare(f"quantized q{bits} g{gs}", optiq_logits(q, tmp), tinymodels.mlx_logits(q, IDS), 1e-4)

        # Error-compensating methods write the same layout: mlx-lm loads them as they are.
        for method in ["gptq", "awq"]:
            q = tmp / f"q3g64-{method}"
            refutil.run_optiq(["-q", "quantize", f32, "-o", q, "--bits", 3, "--group-size", 64, "--method", method,
                               "--calib", "self", "--calib-samples", 4, "--calib-seq", 32])
            ok &= compare(f"quantized q3 g64 --method {method}", optiq_logits(q, tmp), tinymodels.mlx_logits(q, IDS),
                          1e-4)

        plan = tmp / "plan.json"
        plan.write_text(json.dumps({"default": {"bits": 4, "group_size": 64}, "tensors": {
            "model.embed_tokens": {"bits": 8, "group_size": 64},
            "model.layers.0.self_attn.v_proj": {"bits": 6, "group_size": 32},
            "model.layers.1.mlp.down_proj": {"bits": 2, "group_size": 32},
            "model.layers.1.self_attn.q_proj": "float",
            "lm_head": {"bits": 5, "group_size": 32}}}))
        mixed = tmp / "mixed"
        refutil.run_optiq(["-q", "quantize", f32, "-o", mixed, "--plan", plan])
        qcfg = json.loads((mixed / "config.json").read_text())["quantization"]
        assert qcfg["model.layers.1.self_attn.q_proj"] is False, qcfg
        assert qcfg["lm_head"] == {"group_size": 32, "bits": 5}, qcfg
        ok &= compare("quantized mixed plan", optiq_logits(mixed, tmp), tinymodels.mlx_logits(mixed, IDS), 1e-4)
    print("1 passed, 0 failed" if ok else "0 passed, 1 failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

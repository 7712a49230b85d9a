"""Writes one tiny random Hugging Face model per family for the CLI tests.

    python write_tiny_families.py OUTDIR [FAMILY ...]

FAMILY is llama, mistral, qwen2, qwen3, phi3 or gemma3 (default: all); each
goes to OUTDIR/FAMILY with config.json, model.safetensors (float32) and a
byte-level BPE tokenizer.json (tinymodels.py's configs and weights, written
with safetensors' numpy API so that mlx is not needed). Exit code 77 when a
needed package (numpy, safetensors, tokenizers) is missing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

FAMILIES = {"llama": None, "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
            "gemma3": "gemma3_text"}


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import numpy as np
        import tokenizers  # noqa: F401
        from safetensors.numpy import save_file
    except ImportError as e:
        print(f"skip: {e}", file=sys.stderr)
        return 77
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tinymodels as tm

    out = Path(sys.argv[1])
    names = sys.argv[2:] or list(FAMILIES)
    for name in names:
        if name not in FAMILIES:
            print(f"unknown family '{name}': known: {', '.join(FAMILIES)}", file=sys.stderr)
            return 2
        rng = np.random.default_rng(sum(map(ord, name)))
        if FAMILIES[name] is None:
            config = tm.llama_config()
            tensors = tm.llama_tensors(config, rng)
        else:
            case = tm.family_case(FAMILIES[name], rng)
            config, tensors = case["config"], case["tensors"]
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
                  str(d / "model.safetensors"), metadata={"format": "pt"})
        tm.write_tokenizer(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())

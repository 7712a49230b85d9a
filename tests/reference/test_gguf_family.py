"""optiq's GGUF path on non-Llama families: tiny random Qwen3 (q/k RMSNorm, head_dim 32 unlike
hidden/heads, untied), Qwen2 (q/k/v biases, tied embeddings) and Phi-3 (fused qkv / gate_up;
plain, LongRoPE long and "su" short) models from tinymodels are converted here to float32 GGUF
files with the `gguf` package, following llama.cpp's convert_hf_to_gguf.py conventions for
these architectures:

- general.architecture "qwen3" / "qwen2", hyper-parameters under that prefix
  (<arch>.embedding_length, .block_count, .attention.head_count, ...), and
  <arch>.attention.key_length / value_length when config.json has head_dim;
- tensor names from gguf's own HF-to-GGUF name map (blk.N.attn_q.weight, blk.N.attn_q.bias,
  blk.N.attn_q_norm.weight, ...); q/k rows are NOT permuted (llama.cpp runs these
  architectures with NEOX-style rotate-half RoPE, as Hugging Face does); no output.weight
  when the embeddings are tied;
- phi3: blk.N.attn_qkv / blk.N.ffn_up hold the fused matrices as they are, <arch>.rope.dimension_count,
  .rope.scaling.original_context_length, .attention.sliding_window, and for LongRoPE
  .rope.scaling.attn_factor plus the tensors rope_factors_long / rope_factors_short;
- a GPT-2 style byte-level BPE vocabulary (tokenizer.ggml.model "gpt2", pre "gpt-2", tokens,
  token types, merges, BOS/EOS ids) taken from the model's tokenizer.json, padded with
  unused "[PAD<i>]" tokens up to vocab_size.

Checks, on 24 token ids:
1. `optiq logits` on the GGUF equals `optiq logits` on the HF directory and mlx-lm's logits,
   max relative error (max |a - b| / max |b|) < 1e-4, top-1 identical;
2. when llama-cpp-python is installed: llama.cpp tokenizes a text from the GGUF as the HF
   tokenizer does (a check of the converted vocabulary), and its logits (f32 KV cache) equal
   optiq's to a max relative error < 1e-3 (llama.cpp computes in its own order), top-1 identical
   (Qwen only: llama.cpp does not load these tiny Phi-3 files).
Exits 0 (pass), 1 (fail), 77 (a package or the optiq binary is missing).
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import refutil

try:
    import numpy as np
    import gguf
    import mlx.core  # noqa: F401
    import mlx_lm  # noqa: F401
    import safetensors.numpy
    import tokenizers
except ImportError as e:
    refutil.skip(f"python package missing ({e})")

import tinymodels

TOL = 1e-4
TOL_LLAMA_CPP = 1e-3
IDS = [int(i) for i in np.random.default_rng(1234).integers(0, 320, 24)]
CASES = {"qwen3": gguf.MODEL_ARCH.QWEN3, "qwen2": gguf.MODEL_ARCH.QWEN2, "phi3": gguf.MODEL_ARCH.PHI3,
         "phi3_longrope": gguf.MODEL_ARCH.PHI3, "phi3_su_short": gguf.MODEL_ARCH.PHI3}
TEXT = "Once upon a time, the quick brown fox met Lily in the park: café 123!"


def add_hparams(w: "gguf.GGUFWriter", c: dict) -> None:
    w.add_name(f"tiny-{c['model_type']}")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_freq_base(c["rope_theta"])
    if c.get("head_dim"):
        w.add_key_length(c["head_dim"])
        w.add_value_length(c["head_dim"])
    if c["model_type"] == "phi3":
        add_phi3_hparams(w, c)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)


def add_phi3_hparams(w: "gguf.GGUFWriter", c: dict) -> None:
    """Phi-3: rope dimension count, the pre-training context, the sliding window (0 for none), and
    for LongRoPE the attention factor sqrt(1 + ln(max/orig) / ln(orig)) (its per-frequency
    factors are the tensors rope_factors_long / rope_factors_short)."""
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    w.add_rope_dimension_count(int(c.get("partial_rotary_factor", 1.0) * head_dim))
    w.add_rope_scaling_orig_ctx_len(c["original_max_position_embeddings"])
    w.add_sliding_window(c.get("sliding_window") or 0)
    rs = c.get("rope_scaling") or {}
    if rs.get("long_factor"):
        scale = c["max_position_embeddings"] / c["original_max_position_embeddings"]
        w.add_rope_scaling_attn_factors(
            math.sqrt(1 + math.log(scale) / math.log(c["original_max_position_embeddings"])) if scale > 1 else 1.0)


def rope_factor_tensors(c: dict) -> dict:
    rs = c.get("rope_scaling") or {}
    if not rs.get("long_factor"):
        return {}
    return {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight": np.asarray(rs["long_factor"], np.float32),
            gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight":
                np.asarray(rs["short_factor"], np.float32)}


def add_vocab(w: "gguf.GGUFWriter", model_dir: Path, vocab_size: int) -> None:
    """The byte-level BPE vocabulary of tokenizer.json, padded to vocab_size."""
    tj = json.loads((model_dir / "tokenizer.json").read_text())
    by_id = {i: t for t, i in tj["model"]["vocab"].items()}
    special = {a["id"] for a in tj.get("added_tokens", []) if a.get("special")}
    for a in tj.get("added_tokens", []):
        by_id[a["id"]] = a["content"]
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    tc = json.loads((model_dir / "tokenizer_config.json").read_text())
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(tc["bos_token"]))
    w.add_eos_token_id(tokens.index(tc["eos_token"]))
    w.add_add_bos_token(bool(tc.get("add_bos_token")))


def hf_to_gguf(model_dir: Path, out: Path, arch: "gguf.MODEL_ARCH") -> Path:
    """Float32 GGUF of a tiny HF model directory (single model.safetensors)."""
    c = json.loads((model_dir / "config.json").read_text())
    tensors = safetensors.numpy.load_file(str(model_dir / "model.safetensors"))
    names = gguf.get_tensor_name_map(arch, c["num_hidden_layers"])
    w = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    add_hparams(w, c)
    add_vocab(w, model_dir, c["vocab_size"])
    for hf_name in sorted(tensors):
        if c.get("tie_word_embeddings") and hf_name == "lm_head.weight":
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise KeyError(f"{hf_name}: no GGUF name for {gguf.MODEL_ARCH_NAMES[arch]}")
        w.add_tensor(name, np.ascontiguousarray(tensors[hf_name], dtype=np.float32))
    for name, t in rope_factor_tensors(c).items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def compare(res: refutil.Results, what: str, got: np.ndarray, ref: np.ndarray, tol: float) -> None:
    err = refutil.max_rel_err(got, ref) if got.shape == ref.shape else float("inf")
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean()) if got.shape == ref.shape else 0.0
    res.check(err < tol and top1 == 1.0, f"{what}: max rel err {err:.2e} (tol {tol:g}), top-1 {top1:.3f}")


def llama_cpp_ctx(model_dir: Path) -> int:
    """llama.cpp picks Phi-3's long or short rope factors by context size (long when n_ctx >
    original_max_position_embeddings), transformers by sequence length: a context of exactly
    len(IDS) tokens makes the two agree."""
    c = json.loads((model_dir / "config.json").read_text())
    return len(IDS) if c.get("rope_scaling") else 256


def llama_cpp_checks(res: refutil.Results, name: str, model_dir: Path, gg: Path, got: np.ndarray) -> None:
    if name.startswith("phi3"):
        # llama-cpp-python 0.3.36 fails these in its vocabulary loader ("unordered_map::at", with a
        # gpt2 or a llama vocabulary alike): it seems to look up a token only real Phi-3 vocabularies have.
        res.skip(f"{name}: llama.cpp cross-check (llama.cpp rejects tiny Phi-3 vocabularies)")
        return
    try:
        import llamacpp_ref
    except ImportError as e:
        res.skip(f"{name}: llama.cpp cross-check ({e})")
        return
    try:
        with llamacpp_ref.LlamaRef(gg, n_ctx=llama_cpp_ctx(model_dir), n_threads=refutil.threads(),
                                   kv_type="f32") as ref:
            ids_cpp = ref.tokenize(TEXT, add_special=False)
            lg = ref.logits(IDS)
    except Exception as e:  # noqa: BLE001 - a load failure is reported, not fatal
        res.check(False, f"{name}: llama.cpp cannot run the converted GGUF: {type(e).__name__}: {e}")
        return
    ids_hf = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(TEXT).ids
    res.check(ids_cpp == ids_hf, f"{name}: llama.cpp tokenizes the GGUF vocabulary as tokenizers does "
                                 f"({len(ids_hf)} tokens)")
    compare(res, f"{name} gguf: optiq vs llama.cpp (f32 KV)", got, lg, TOL_LLAMA_CPP)


def check_case(res: refutil.Results, name: str, arch, root: Path) -> None:
    case = tinymodels.family_case(name, np.random.default_rng(0), n_tokens=len(IDS))
    model_dir = tinymodels.write_model(root / name, case["config"], case["tensors"], "float32")
    gg = hf_to_gguf(model_dir, root / f"{name}.gguf", arch)
    ref = tinymodels.family_reference(model_dir, IDS, case)
    try:
        got_gguf = refutil.optiq_logits(gg, IDS, root)
    except RuntimeError as e:
        res.check(False, f"{name} gguf: optiq failed: {str(e).strip().splitlines()[-1][:300]}")
        return
    try:
        got_hf = refutil.optiq_logits(model_dir, IDS, root)
        compare(res, f"{name} gguf vs hf dir, both optiq", got_gguf, got_hf, TOL)
    except RuntimeError as e:
        res.check(False, f"{name} hf dir: optiq failed: {str(e).strip().splitlines()[-1][:300]}")
    compare(res, f"{name} gguf: optiq vs mlx-lm (hf dir)", got_gguf, ref, TOL)
    llama_cpp_checks(res, name, model_dir, gg, got_gguf)


def main() -> int:
    refutil.optiq_bin()
    res = refutil.Results("test_gguf_family")
    with tempfile.TemporaryDirectory(prefix="optiq-gguf-fam-") as td:
        for name, arch in CASES.items():
            check_case(res, name, arch, Path(td))
    res.finish()


if __name__ == "__main__":
    sys.exit(main())

"""Tiny random models in Hugging Face layout, for cross-checks against mlx-lm.

Each model directory has config.json, model.safetensors (bf16/f16/f32) and a
byte-level BPE tokenizer.json trained on a little text with `tokenizers`, so
that both optiq and mlx_lm.load accept it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOKENIZER_TEXT = (
    "Once upon a time there was a little girl named Lily. She loved to play outside in the park. "
    "The quick brown fox jumps over the lazy dog. 0123456789 numbers and Unicode: café, naïve, 東京.\n"
) * 20


def write_tokenizer(out: Path, vocab_size: int = 300) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TOKENIZER_TEXT], trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
         "tokenizer_class": "PreTrainedTokenizerFast"}))


def llama_config(**over) -> dict:
    c = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 320, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "tie_word_embeddings": False, "hidden_act": "silu",
        "bos_token_id": 0, "eos_token_id": 1,
    }
    c.update(over)
    return c


def llama_tensors(c: dict, rng: np.random.Generator) -> dict:
    d, h, kv, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    ff, v = c["intermediate_size"], c["vocab_size"]
    def w(*shape, s=None):
        s = s or 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape) * s).astype(np.float32)
    t = {"model.embed_tokens.weight": w(v, d, s=0.5), "model.norm.weight": 1.0 + 0.1 * w(d, s=1.0)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1.0 + 0.1 * w(d, s=1.0)
        t[p + "post_attention_layernorm.weight"] = 1.0 + 0.1 * w(d, s=1.0)
        t[p + "self_attn.q_proj.weight"] = w(h * hd, d)
        t[p + "self_attn.k_proj.weight"] = w(kv * hd, d)
        t[p + "self_attn.v_proj.weight"] = w(kv * hd, d)
        t[p + "self_attn.o_proj.weight"] = w(d, h * hd)
        t[p + "mlp.gate_proj.weight"] = w(ff, d)
        t[p + "mlp.up_proj.weight"] = w(ff, d)
        t[p + "mlp.down_proj.weight"] = w(d, ff)
    if not c.get("tie_word_embeddings"):
        t["lm_head.weight"] = w(v, d)
    return t


def write_model(out: Path, config: dict, tensors: dict, dtype: str = "float32") -> Path:
    """Writes config.json, model.safetensors (via mlx, in `dtype`) and a tokenizer."""
    import mlx.core as mx

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    mdt = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}[dtype]
    mx.save_safetensors(str(out / "model.safetensors"), {k: mx.array(v).astype(mdt) for k, v in tensors.items()},
                        metadata={"format": "mlx"})
    write_tokenizer(out)
    return out


def mlx_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Logits [len(ids), vocab] from mlx-lm for one sequence, computed in float32."""
    import mlx.core as mx
    from mlx_lm import load

    from mlx.utils import tree_map

    model, _ = load(str(model_dir))
    # Upcast fp16/bf16 parameters (quantized scales and biases too) so that mlx
    # computes in float32 like optiq; the stored values are unchanged.
    model.update(tree_map(lambda x: x.astype(mx.float32) if x.dtype in (mx.float16, mx.bfloat16) else x,
                          model.parameters()))
    out = model(mx.array([ids]))
    return np.array(out[0].astype(mx.float32))


# ---------------------------------------------------------------------------------------------
# Other model families (issue 5): Mistral, Qwen2, Qwen3, Phi-3 and Gemma 3 text.
#
# Each config mirrors the keys the Hugging Face checkpoints of that family carry in
# config.json (transformers 4.x layout, as on the Hub), and each weight set uses the family's
# Hugging Face tensor names. `family_case(name)` bundles a model with what mlx-lm needs to
# compute the Hugging Face semantics, because mlx-lm departs from transformers in three places:
#   - mistral: mlx-lm (llama.py) applies `sliding_window` only to layers listed as
#     "sliding_attention" in `layer_types`; transformers' Mistral applies it to every layer.
#   - phi3 longrope/su: mlx-lm always rotates with `long_factor`; transformers uses
#     `short_factor` while the sequence fits in original_max_position_embeddings.
#   - gemma3_text: mlx-lm ignores `final_logit_softcapping`; transformers applies
#     cap * tanh(logits / cap).
# The overrides below are given to mlx_lm.load as model_config (the files stay pure HF).
# ---------------------------------------------------------------------------------------------

def _rand(rng: np.random.Generator, *shape, s: float | None = None) -> np.ndarray:
    s = s if s is not None else 1.0 / np.sqrt(shape[-1])
    return (rng.standard_normal(shape) * s).astype(np.float32)


def _norm_weight(rng: np.random.Generator, n: int, center: float = 1.0, spread: float = 0.1) -> np.ndarray:
    return (center + spread * rng.standard_normal(n)).astype(np.float32)


def _head_dim(c: dict) -> int:
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def mistral_config(**over) -> dict:
    """Mistral-7B-v0.1 style: sliding_window applies to every layer (8 < the test's 16+ tokens)."""
    c = llama_config(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=8,
                     rope_theta=1000000.0, num_hidden_layers=2)
    c.update(over)
    return c


def mistral_tensors(c: dict, rng: np.random.Generator) -> dict:
    return llama_tensors(c, rng)


def qwen2_config(**over) -> dict:
    """Qwen2.5-0.5B style: q/k/v biases, tied embeddings, and a sliding_window that
    use_sliding_window=false switches off (transformers and mlx-lm both ignore it)."""
    c = llama_config(model_type="qwen2", architectures=["Qwen2ForCausalLM"], rope_theta=1000000.0,
                     rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
                     sliding_window=8, max_window_layers=1, attention_dropout=0.0)
    c.update(over)
    return c


def qwen2_tensors(c: dict, rng: np.random.Generator) -> dict:
    t = llama_tensors(c, rng)
    hd = _head_dim(c)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn."
        t[p + "q_proj.bias"] = _rand(rng, c["num_attention_heads"] * hd, s=0.5)
        t[p + "k_proj.bias"] = _rand(rng, c["num_key_value_heads"] * hd, s=0.5)
        t[p + "v_proj.bias"] = _rand(rng, c["num_key_value_heads"] * hd, s=0.5)
    return t


def qwen3_config(**over) -> dict:
    """Qwen3-0.6B style: per-head q/k RMSNorm and head_dim (32) unlike hidden/heads (16)."""
    c = llama_config(model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=32,
                     rope_theta=1000000.0, rms_norm_eps=1e-6, attention_bias=False,
                     use_sliding_window=False, sliding_window=None, max_window_layers=2)
    c.update(over)
    return c


def qwen3_tensors(c: dict, rng: np.random.Generator) -> dict:
    t = llama_tensors(c, rng)
    hd = _head_dim(c)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}.self_attn."
        t[p + "q_norm.weight"] = _norm_weight(rng, hd, spread=0.3)
        t[p + "k_norm.weight"] = _norm_weight(rng, hd, spread=0.3)
    return t


def phi3_config(rope: str | None = None, **over) -> dict:
    """Phi-3-mini style (fused qkv_proj / gate_up_proj). rope: None (4k models), "longrope"
    or "su" (128k models; both mean LongRoPE): factors per frequency, max_position_embeddings
    4x original_max_position_embeddings, so the attention factor sqrt(1 + ln 4 / ln orig) applies."""
    c = llama_config(model_type="phi3", architectures=["Phi3ForCausalLM"], rms_norm_eps=1e-5,
                     num_key_value_heads=4, rope_theta=10000.0, sliding_window=2047,
                     original_max_position_embeddings=4096, max_position_embeddings=4096,
                     attention_bias=False, rope_scaling=None, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if rope is not None:
        half = _head_dim(c) // 2
        r = np.random.default_rng(7)
        c.update(original_max_position_embeddings=16, max_position_embeddings=64, sliding_window=262144,
                 rope_scaling={"type": rope,
                               "short_factor": [round(float(x), 4) for x in 1.0 + 0.5 * r.random(half)],
                               "long_factor": [round(float(x), 4) for x in np.sort(1.0 + 7.0 * r.random(half))]})
    c.update(over)
    return c


def phi3_tensors(c: dict, rng: np.random.Generator) -> dict:
    """Phi-3 layout: self_attn.qkv_proj = [q; k; v] rows, mlp.gate_up_proj = [gate; up] rows."""
    d, h, kv, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], _head_dim(c)
    ff, v = c["intermediate_size"], c["vocab_size"]
    t = {"model.embed_tokens.weight": _rand(rng, v, d, s=0.5), "model.norm.weight": _norm_weight(rng, d)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = _norm_weight(rng, d)
        t[p + "post_attention_layernorm.weight"] = _norm_weight(rng, d)
        t[p + "self_attn.qkv_proj.weight"] = _rand(rng, (h + 2 * kv) * hd, d)
        t[p + "self_attn.o_proj.weight"] = _rand(rng, d, h * hd)
        t[p + "mlp.gate_up_proj.weight"] = _rand(rng, 2 * ff, d)
        t[p + "mlp.down_proj.weight"] = _rand(rng, d, ff)
    if not c.get("tie_word_embeddings"):
        t["lm_head.weight"] = _rand(rng, v, d)
    return t


def gemma3_config(**over) -> dict:
    """Gemma-3-270m style, tiny: 3 layers local/global/local (sliding_window_pattern 2, also
    spelled out as layer_types), window 4, local rope base 10000 vs global 1e6,
    query_pre_attn_scalar 24 (head_dim 32), head_dim 32 unlike hidden/heads, tied embeddings."""
    n_layers, pattern = 3, 2
    c = {
        "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": 64, "num_hidden_layers": n_layers, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 32, "intermediate_size": 128, "vocab_size": 320, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
        "query_pre_attn_scalar": 24, "sliding_window": 4, "sliding_window_pattern": pattern,
        "_sliding_window_pattern": pattern,
        "layer_types": ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)],
        "max_position_embeddings": 32768, "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": None, "attn_logit_softcapping": None, "attention_bias": False,
        "use_bidirectional_attention": False, "tie_word_embeddings": True,
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0,
    }
    c.update(over)
    return c


def gemma3_tensors(c: dict, rng: np.random.Generator) -> dict:
    """Norm weights are stored as w (the model multiplies by 1 + w), random around 0."""
    d, h, kv, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], _head_dim(c)
    ff, v = c["intermediate_size"], c["vocab_size"]
    # embeddings ~1/sqrt(hidden): after the sqrt(hidden) input scaling the residual stream is ~1
    # per element, like the attention and MLP branches, so that no branch dominates the logits.
    t = {"model.embed_tokens.weight": _rand(rng, v, d), "model.norm.weight": _norm_weight(rng, d, 0.0, 0.3)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"):
            t[p + n + ".weight"] = _norm_weight(rng, d, 0.0, 0.3)
        t[p + "self_attn.q_norm.weight"] = _norm_weight(rng, hd, 0.0, 0.3)
        t[p + "self_attn.k_norm.weight"] = _norm_weight(rng, hd, 0.0, 0.3)
        t[p + "self_attn.q_proj.weight"] = _rand(rng, h * hd, d)
        t[p + "self_attn.k_proj.weight"] = _rand(rng, kv * hd, d)
        t[p + "self_attn.v_proj.weight"] = _rand(rng, kv * hd, d)
        t[p + "self_attn.o_proj.weight"] = _rand(rng, d, h * hd)
        t[p + "mlp.gate_proj.weight"] = _rand(rng, ff, d)
        t[p + "mlp.up_proj.weight"] = _rand(rng, ff, d)
        t[p + "mlp.down_proj.weight"] = _rand(rng, d, ff)
    if not c.get("tie_word_embeddings", True):
        t["lm_head.weight"] = _rand(rng, v, d)
    return t


def _mlx_overrides(c: dict) -> dict:
    """model_config for mlx_lm.load so that mlx-lm computes what transformers computes."""
    if c["model_type"] == "phi3" and c.get("rope_scaling") and c["rope_scaling"]["type"] in ("longrope", "su"):
        # mlx-lm always uses long_factor; short sequences get short_factor in transformers.
        return {"rope_scaling": dict(c["rope_scaling"], long_factor=c["rope_scaling"]["short_factor"])}
    return {}


def family_case(name: str, rng: np.random.Generator, n_tokens: int = 24) -> dict:
    """A tiny model of one family variant: {"config", "tensors", "mlx_config", "softcap"}.

    n_tokens: how many tokens the test runs; phi3 LongRoPE picks short/long factors with it."""
    makers = {
        "mistral": (mistral_config, mistral_tensors),
        "mistral_nemo": (lambda: mistral_config(sliding_window=None, head_dim=32), mistral_tensors),
        "qwen2": (qwen2_config, qwen2_tensors),
        "qwen3": (qwen3_config, qwen3_tensors),
        "qwen3_tied_rope_parameters": (
            lambda: _as_rope_parameters(qwen3_config(tie_word_embeddings=True, num_hidden_layers=3)), qwen3_tensors),
        "phi3": (phi3_config, phi3_tensors),
        "phi3_longrope": (lambda: phi3_config("longrope"), phi3_tensors),
        "phi3_su_short": (lambda: phi3_config("su", original_max_position_embeddings=32, max_position_embeddings=128),
                          phi3_tensors),
        "gemma3_text": (gemma3_config, gemma3_tensors),
        "gemma3_text_softcap": (lambda: gemma3_config(final_logit_softcapping=3.0), gemma3_tensors),
    }
    if name not in makers:
        raise KeyError(f"unknown family case '{name}': known: {', '.join(makers)}")
    make_config, make_tensors = makers[name]
    c = make_config()
    mlx_cfg = _mlx_overrides(c)
    rs = c.get("rope_scaling") or {}
    if c["model_type"] == "phi3" and rs and n_tokens > c["original_max_position_embeddings"]:
        mlx_cfg = {}  # long sequence: transformers uses long_factor too, as mlx-lm does
    # mlx-lm's llama.py windows only "sliding_attention" layers and needs one full layer to build
    # its masks, so a Mistral window is applied by marking every layer sliding after loading.
    all_sliding = c["model_type"] == "mistral" and bool(c.get("sliding_window"))
    return {"config": c, "tensors": make_tensors(c, rng), "mlx_config": mlx_cfg,
            "mlx_all_sliding": all_sliding, "softcap": c.get("final_logit_softcapping")}


FAMILY_CASES = ["mistral", "mistral_nemo", "qwen2", "qwen3", "qwen3_tied_rope_parameters", "phi3",
                "phi3_longrope", "phi3_su_short", "gemma3_text", "gemma3_text_softcap"]


def _as_rope_parameters(c: dict) -> dict:
    """transformers >= 5 layout: rope_theta (and any scaling) nested under rope_parameters."""
    c = dict(c)
    c["rope_parameters"] = {"rope_type": "default", "rope_theta": c.pop("rope_theta")}
    c.pop("rope_scaling", None)
    return c


def mlx_logits_with(model_dir: Path, ids: list[int], model_config: dict | None = None,
                    softcap: float | None = None, all_sliding: bool = False,
                    with_tokenizer: bool = False) -> np.ndarray:
    """mlx_logits with config overrides given to mlx-lm's loader, an optional final logit
    soft-cap (cap * tanh(logits / cap)) applied afterwards, in float32, and (all_sliding, for
    mlx-lm's llama.py) every layer switched to its sliding-window mask.

    with_tokenizer: load through mlx_lm.load (model and tokenizer, as users do) instead of
    mlx_lm.utils.load_model (model only; faster, and free of transformers' config checks)."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm import load
    from mlx_lm.utils import load_model

    if with_tokenizer:
        model, _ = load(str(model_dir), model_config=model_config or {})
    else:
        model, _ = load_model(Path(model_dir), model_config=model_config or {})
    if all_sliding:
        inner = model.model
        assert hasattr(inner, "swa_idx") and inner.sliding_window, "mlx-lm llama.py layout changed"
        for layer in inner.layers:
            layer.use_sliding = True
        inner.swa_idx = 0
    model.update(tree_map(lambda x: x.astype(mx.float32) if x.dtype in (mx.float16, mx.bfloat16) else x,
                          model.parameters()))
    out = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    if softcap:
        out = (softcap * np.tanh(out.astype(np.float64) / softcap)).astype(np.float32)
    return out


def family_reference(model_dir: Path, ids: list[int], case: dict, with_tokenizer: bool = False) -> np.ndarray:
    """The transformers-semantics logits of a family_case model (written to model_dir or
    quantized from it), computed with mlx-lm."""
    return mlx_logits_with(model_dir, ids, case["mlx_config"], case["softcap"], case["mlx_all_sliding"],
                           with_tokenizer)

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

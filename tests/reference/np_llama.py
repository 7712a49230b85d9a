"""A float64 NumPy forward pass of a Llama-family or Gemma 3 GGUF: the ground truth that
optiq's and llama.cpp's float32 logits are measured against.

Gemma 3 (llama.cpp's semantics on the same file): embedding x sqrt(dim), RMSNorm weights
used as stored (the converter stored 1 + w), q/k RMSNorm per head, rotate-half RoPE with base
10000 on sliding-window layers (window `attention.sliding_window`, every 6th layer global)
and `rope.freq_base` on global ones, scale 1/sqrt(head_dim), norms after attention and MLP,
GeGLU with tanh GELU, optional final_logit_softcapping.

Weights are dequantized with the `gguf` package (gguf.quants.dequantize); q/k
rows are in GGUF's interleaved-RoPE order, so RoPE rotates adjacent pairs
(llama.cpp's "norm" rope), which is the same function as HF's rotate-half on
un-permuted weights.
"""
from __future__ import annotations

import numpy as np


def _meta(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.parts[f.data[0]]
    return v.tobytes().decode() if v.dtype == np.uint8 else v.item()


def load_weights(path: str) -> tuple[dict, dict]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    r = GGUFReader(path)
    arch = _meta(r, "general.architecture")
    assert arch in ("llama", "gemma3"), f"np_llama supports llama and gemma3 GGUFs, got {arch}"
    a = arch + "."
    cfg = {
        "arch": arch,
        "n_layers": _meta(r, a + "block_count"),
        "n_heads": _meta(r, a + "attention.head_count"),
        "n_kv": _meta(r, a + "attention.head_count_kv"),
        "eps": _meta(r, a + "attention.layer_norm_rms_epsilon", 1e-5),
        "theta": _meta(r, a + "rope.freq_base", 10000.0),
        "head_dim": _meta(r, a + "attention.key_length"),
        "window": _meta(r, a + "attention.sliding_window", 0),
        "softcap": _meta(r, a + "final_logit_softcapping", 0.0),
    }
    w = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type)
        w[t.name] = np.asarray(a, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
    return cfg, w


def forward(cfg: dict, w: dict, ids: list[int]) -> np.ndarray:
    """Logits [len(ids), vocab] in float64."""
    if cfg.get("arch") == "gemma3":
        return forward_gemma3(cfg, w, ids)
    f64 = np.float64
    emb = w["token_embd.weight"]
    x = emb[ids].astype(f64)
    n, dim = x.shape
    H, KV = cfg["n_heads"], cfg["n_kv"]
    hd = dim // H
    pos = np.arange(n, dtype=f64)[:, None]
    inv = cfg["theta"] ** (-np.arange(0, hd, 2, dtype=f64) / hd)
    ang = pos * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def norm(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + cfg["eps"]) * g.astype(f64)

    def rope(v, heads):  # v [n, heads*hd], adjacent pairs rotate
        v = v.reshape(n, heads, hd // 2, 2)
        a, b = v[..., 0], v[..., 1]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.stack([a * c - b * s, a * s + b * c], -1).reshape(n, heads * hd)

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["n_layers"]):
        p = f"blk.{i}."
        h = norm(x, w[p + "attn_norm.weight"])
        q = rope(h @ w[p + "attn_q.weight"].astype(f64).T, H)
        k = rope(h @ w[p + "attn_k.weight"].astype(f64).T, KV)
        v = h @ w[p + "attn_v.weight"].astype(f64).T
        out = np.empty((n, H * hd))
        for hh in range(H):
            g = hh // (H // KV)
            s = q[:, hh * hd:(hh + 1) * hd] @ k[:, g * hd:(g + 1) * hd].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            out[:, hh * hd:(hh + 1) * hd] = s @ v[:, g * hd:(g + 1) * hd]
        x = x + out @ w[p + "attn_output.weight"].astype(f64).T
        h = norm(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].astype(f64).T
        up = h @ w[p + "ffn_up.weight"].astype(f64).T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].astype(f64).T
    x = norm(x, w["output_norm.weight"])
    out_w = w.get("output.weight", emb)
    return x @ out_w.astype(f64).T


def forward_gemma3(cfg: dict, w: dict, ids: list[int]) -> np.ndarray:
    f64 = np.float64
    emb = w["token_embd.weight"]
    x = emb[ids].astype(f64)
    n, dim = x.shape
    H, KV, hd = cfg["n_heads"], cfg["n_kv"], cfg["head_dim"]
    x = x * np.sqrt(f64(dim))
    pos = np.arange(n, dtype=f64)[:, None]
    eps = cfg["eps"]

    def norm(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * g.astype(f64)

    def rope(v, heads, base):  # rotate-half on [n, heads, hd]
        ang = pos * (base ** (-np.arange(0, hd, 2, dtype=f64) / hd))[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = v[..., : hd // 2], v[..., hd // 2:]
        return np.concatenate([a * c - b * s, a * s + b * c], -1)

    qi, ki = np.arange(n)[:, None], np.arange(n)[None, :]
    causal = np.where(ki <= qi, 0.0, -np.inf)
    local = np.where((ki <= qi) & (qi - ki < max(cfg["window"], 1)), 0.0, -np.inf)
    for i in range(cfg["n_layers"]):
        p = f"blk.{i}."
        is_local = cfg["window"] > 0 and i % 6 != 5
        base, mask = (10000.0, local) if is_local else (cfg["theta"], causal)
        h = norm(x, w[p + "attn_norm.weight"])
        q = norm((h @ w[p + "attn_q.weight"].astype(f64).T).reshape(n, H, hd), w[p + "attn_q_norm.weight"])
        k = norm((h @ w[p + "attn_k.weight"].astype(f64).T).reshape(n, KV, hd), w[p + "attn_k_norm.weight"])
        v = (h @ w[p + "attn_v.weight"].astype(f64).T).reshape(n, KV, hd)
        q, k = rope(q, H, base), rope(k, KV, base)
        out = np.empty((n, H * hd))
        for hh in range(H):
            g = hh // (H // KV)
            s = q[:, hh] @ k[:, g].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            out[:, hh * hd:(hh + 1) * hd] = s @ v[:, g]
        x = x + norm(out @ w[p + "attn_output.weight"].astype(f64).T, w[p + "post_attention_norm.weight"])
        h = norm(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].astype(f64).T
        up = h @ w[p + "ffn_up.weight"].astype(f64).T
        gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate ** 3)))
        x = x + norm((gelu * up) @ w[p + "ffn_down.weight"].astype(f64).T, w[p + "post_ffw_norm.weight"])
    x = norm(x, w["output_norm.weight"])
    logits = x @ w.get("output.weight", emb).astype(f64).T
    if cfg["softcap"]:
        logits = cfg["softcap"] * np.tanh(logits / cfg["softcap"])
    return logits

// Causal multi-head attention of n new queries against a KV cache (which
// already holds their own keys and values): scores q.k * scale over the
// query's window, optional tanh soft-cap, softmax, weighted sum of V. GQA:
// query head h reads kv head h / (n_heads / n_kv_heads). Scalar, AVX2 and
// AVX-512 paths chosen by active_isa() (kernels/matmul.h); the (query, head)
// pairs run in parallel (core/parallel.h).
#pragma once
#include <cstdint>

namespace optiq {

struct AttentionParams {
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t q_stride = 0;   // floats between query rows (and output rows)
  int64_t kv_stride = 0;  // floats between cache positions
  float scale = 1.0f;     // multiplies q.k
  float softcap = 0.0f;   // > 0: s = cap * tanh(s / cap)
  int window = 0;         // > 0: a query at p sees keys [p - window + 1, p]
  bool f16_probs = false; // round the probabilities to fp16 (llama.cpp's fp16 V product)
  int max_ctx = 0;        // cache length: sizes the per-thread score buffer once
};

// Queries i < n are at positions start_pos + i; q and out are n rows of
// q_stride floats (head h at h * head_dim); k_cache / v_cache hold positions
// 0 .. start_pos + n - 1.
void causal_attention(const AttentionParams& p, const float* q, int64_t n, int start_pos, const float* k_cache,
                      const float* v_cache, float* out);

namespace kern {
// One query head over keys t0..t1 (inclusive); scores has room for t1 + 1.
struct AttnHead {
  const float* q;
  const float* k;  // cache base + kv head offset
  const float* v;
  int64_t kv_stride;
  int hd, t0, t1;
  float scale, cap;
  bool f16_probs;
  float* scores;
  float* out;
};
void attn_head_scalar(const AttnHead& a);
void attn_head_avx2(const AttnHead& a);
void attn_head_avx512(const AttnHead& a);
}  // namespace kern

}  // namespace optiq

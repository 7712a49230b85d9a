// Causal multi-head attention of n new queries against a KV cache (which
// already holds their own keys and values): scores q.k * scale over the
// query's window, optional tanh soft-cap, softmax, weighted sum of V. GQA:
// query head h reads kv head h / (n_heads / n_kv_heads). Scalar, AVX2 and
// AVX-512 paths chosen by active_isa() (kernels/matmul.h).
//
// The work is split into groups: the query heads of one kv head for a block
// of consecutive queries. Within a group the SIMD kernels score several rows
// (query, head) against several keys at once, so each key vector loaded from
// the cache serves 2-4 rows and the horizontal sums of 16 dot products are
// folded into one vector (kern::AttnGroup).
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
// One query row (a query and one of its heads) and the keys it sees, t0..t1
// inclusive.
struct AttnRow {
  const float* q;
  float* out;
  int t0, t1;
};

// Rows that read the same kv head. scores: nrows x ld floats of scratch, ld
// at least (max t1 - min t0 + 1) over the rows.
struct AttnGroup {
  const AttnRow* rows;
  int nrows;
  const float* k;  // cache base + kv head offset
  const float* v;
  int64_t kv_stride;
  int hd;
  float scale, cap;
  bool f16_probs;
  float* scores;
  int64_t ld;
};
void attn_group_scalar(const AttnGroup& g);
void attn_group_avx2(const AttnGroup& g);
void attn_group_avx512(const AttnGroup& g);
}  // namespace kern

}  // namespace optiq

#include "plan/compute_buffers.h"

#include <algorithm>

#include "model/precision.h"

namespace optiq {

namespace {

int64_t pad(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// Transformer::ensure_scratch: x, xn, q, k, v, att, gate, up (floats a row).
int64_t transformer_row_floats(const ModelConfig& c) {
  int64_t n = int64_t(c.dim) + std::max(c.dim, c.q_dim()) + 2 * int64_t(c.q_dim()) + 2 * int64_t(c.kv_dim()) +
              2 * int64_t(c.hidden_dim);
  if (c.fused_qkv) n += std::max<int64_t>(int64_t(c.q_dim()) + 2 * c.kv_dim(), 2 * int64_t(c.hidden_dim));
  return n;
}

}  // namespace

int64_t optiq_cpu_compute_bytes(const ModelConfig& c, int64_t ctx, int64_t rows, int threads) {
  const int64_t activations = rows * transformer_row_floats(c) * 4;
  const int64_t score_rows = std::max<int64_t>(16, c.n_heads / std::max(c.n_kv_heads, 1));
  const int64_t scores = int64_t(std::max(threads, 1)) * score_rows * ctx * 4;
  return activations + scores + int64_t(c.vocab_size) * 4;
}

bool optiq_cuda_flash_prefill(int head_dim, bool half_kv) {
  return half_kv && (head_dim == 64 || head_dim == 96 || head_dim == 128 || head_dim == 256);
}

int64_t optiq_cuda_compute_bytes(const ModelConfig& c, int64_t ctx, int64_t rows, bool half_kv) {
  const int64_t activations = rows * transformer_row_floats(c) * 4;
  const int64_t widest = std::max({int64_t(c.dim), int64_t(c.q_dim()), int64_t(c.hidden_dim)});
  const int64_t input_half = rows * widest * 2;
  constexpr int64_t kSlab = int64_t{256} << 20;  // CudaBackend::gemm's kSlabBytes
  int64_t slab = 0;
  for (const auto& m : quantizable_modules(c)) {
    const int64_t slab_rows = std::max<int64_t>(1, kSlab / (2 * m.cols));
    slab = std::max(slab, std::min(slab_rows, m.rows) * m.cols * 2);
  }
  // Prefill attends in one flash kernel (no buffers) or in blocks of query
  // rows whose fp32 scores stay within 512 MiB (CudaBackend's kAttentionScoreBytes).
  constexpr int64_t kScoreBytes = int64_t{512} << 20;
  const int64_t row_scores = int64_t(c.n_heads) * pad(ctx, 8);
  const int64_t block_rows = std::clamp<int64_t>(kScoreBytes / (4 * row_scores), 1, rows);
  const int64_t scores = row_scores * block_rows;
  const int64_t attention = optiq_cuda_flash_prefill(c.head_dim, half_kv)
                                ? 0
                                : scores * 4 + (half_kv ? scores * 2 + rows * c.q_dim() * 2 : 0);
  const int64_t logits = int64_t(c.vocab_size) * 4;
  return activations + input_half + slab + attention + logits;
}

LlamaCppCompute llamacpp_compute_bytes(const ModelConfig& c, int64_t rows, int64_t cells, int64_t swa_cells,
                                       bool flash_attention) {
  const int64_t mask_elem = flash_attention ? 2 : 4;
  const int64_t mask = rows * (cells + swa_cells) * mask_elem;
  const int64_t scores = flash_attention ? 0 : rows * cells * c.n_heads * 4;
  const int64_t attention =
      mask + scores + rows * (2 * int64_t(c.dim) + 2 * int64_t(c.q_dim()) + 2 * int64_t(c.kv_dim())) * 4;
  const int64_t mlp = mask + rows * (4 * int64_t(c.dim) + 3 * int64_t(c.hidden_dim)) * 4;
  const int64_t output = rows * (int64_t(c.vocab_size) + 2 * int64_t(c.dim)) * 4;
  return {std::max({attention, mlp, output}), int64_t(c.vocab_size) * 4};
}

bool mlx_fused_prefill_attention(int head_dim) {
  return head_dim == 64 || head_dim == 72 || head_dim == 80 || head_dim == 96 || head_dim == 128;
}

int64_t mlx_compute_bytes(const ModelConfig& c, int64_t rows, int64_t ctx, int64_t layer_kv_bytes) {
  const int64_t activations = rows *
                              (2 * int64_t(c.dim) + 2 * int64_t(c.q_dim()) + 2 * int64_t(c.kv_dim()) +
                               3 * int64_t(c.hidden_dim)) *
                              2;
  const int64_t attention = mlx_fused_prefill_attention(c.head_dim) ? 0 : 2 * int64_t(c.n_heads) * rows * ctx * 2;
  const int64_t logits = int64_t(c.vocab_size) * 4 * 2;
  return activations + attention + logits + layer_kv_bytes;
}

}  // namespace optiq

// Estimates of the compute buffers each runtime holds while it runs a model
// (activations, attention scores, logits, scratch), made from how that
// runtime works. Every one is an estimate; where it was measured against the
// runtime, BENCHMARKS.md section 11 ("Memory for --fit") says how close it
// came: llama.cpp's within 1.1% on CPU; optiq CPU's above the peak RSS;
// optiq CUDA's, llama.cpp's on a GPU and mlx's on Metal not measured.
// `rows` is the rows of one prefill pass, `cells` the KV cells of a
// full-attention layer (runtime_memory.h).
#pragma once
#include <cstdint>

#include "model/config.h"

namespace optiq {

// optiq on the CPU, generating (the prompt in passes of `rows`):
//   Transformer's fp32 activations   rows * (dim + max(dim, q_dim) + 2*q_dim + 2*kv_dim + 2*hidden_dim) * 4
//                                     (+ the fused q|k|v or gate|up buffer for Phi-3)
//   attention scores                 threads * max(16, n_heads / n_kv_heads) * ctx * 4 (each thread's
//                                     score rows for a block of queries, kernels/attention.cpp)
//   logits                           vocab * 4 (generation asks for the last row)
// (It used to count 512 rows of logits and a score row per head and thread:
// SmolLM2 at ctx 1024 came to 324 MB in all against a 172 MB peak RSS; now
// 224 MB, BENCHMARKS.md section 11.)
int64_t optiq_cpu_compute_bytes(const ModelConfig& c, int64_t ctx, int64_t rows, int threads);

// optiq's CUDA backend for a prompt that fills the context, passes of `rows`
// (Backend::prefill_rows 4096):
//   Transformer's fp32 activations   rows * (dim + max(dim, q_dim) + 2*q_dim + 2*kv_dim + 2*hidden_dim) * 4
//                                     (+ the fused q|k|v or gate|up buffer for Phi-3)
//   fp16 copy of a product's input   rows * max(dim, q_dim, hidden_dim) * 2   (fast numerics)
//   expanded weight slab             the largest matrix in fp16, at most 256 MiB (CudaBackend::gemm)
//   prefill attention                none where the flash kernel takes it (optiq_cuda_flash_prefill), else
//                                    n_heads * rows * ctx (padded to 8) * 4   (scores, fp32)
//                                   + the same * 2 (fp16 probabilities when the cache is fp16)
//   logits                           vocab * 4 (generation asks for the last row)
int64_t optiq_cuda_compute_bytes(const ModelConfig& c, int64_t ctx, int64_t rows, bool half_kv);
// Whether the CUDA backend's prefill attention is its flash kernel, which
// holds no scores (backend/cuda/flash_prefill.cu's flash_prefill_applies: an
// fp16 cache and head_dim 64, 96, 128 or 256).
bool optiq_cuda_flash_prefill(int head_dim, bool half_kv);

// llama.cpp: its compute buffer (the graph reserved for a ubatch of `rows`
// tokens, all of them outputs, over `cells` KV cells), the largest of
//   attention  mask + rows * n_kv * n_heads * 4 (KQ scores, fp32; none with flash attention)
//              + rows * (2*dim + 2*q_dim + 2*kv_dim) * 4
//   MLP        mask + rows * (4*dim + 3*hidden_dim) * 4
//   output     rows * (vocab + 2*dim) * 4 (the logits of every row)
// where mask = rows * cells * (2 with flash attention (f16), else 4) bytes (a
// second mask over `swa_cells` for sliding-window models) lives through every
// layer; plus its output buffer, one row of vocab * 4 (exact: llama.cpp
// reserves n_seq_max rows and generation asks for no more).
struct LlamaCppCompute {
  int64_t graph = 0;   // the compute buffer ("compute buffer size" in its log)
  int64_t output = 0;  // the output (logits) buffer, host memory
};
LlamaCppCompute llamacpp_compute_bytes(const ModelConfig& c, int64_t rows, int64_t cells, int64_t swa_cells,
                                       bool flash_attention);

// mlx-lm on Metal, prefilling chunks of `rows` (prefill_step_size 2048), fp16/bf16:
//   activations of a chunk     rows * (2*dim + 2*q_dim + 2*kv_dim + 3*hidden_dim) * 2
//   attention                  none where Metal's fused kernel runs (head_dim 64, 72, 80, 96, 128);
//                              else scores and probabilities over the keys so far, 2 * n_heads * rows * ctx * 2
//   logits                     vocab * 4 * 2 (the last token's logits and log-probabilities)
//   growing the cache          one layer's K and V (`layer_kv_bytes`): concatenation copies them
int64_t mlx_compute_bytes(const ModelConfig& c, int64_t rows, int64_t ctx, int64_t layer_kv_bytes);
// Whether mlx's fused Metal attention runs a prefill of this head size.
bool mlx_fused_prefill_attention(int head_dim);

}  // namespace optiq

// What a runtime holds besides the weights while it runs a model with a
// context of C tokens: its KV cache, stored as that runtime stores it, its
// compute buffers (plan/compute_buffers.h) and a fixed cost. `--fit M --ctx C
// --runtime R` (plan/budget.h) gives the weights what is left of M.
//
// One row per runtime (runtime_spec in runtime_memory.cpp):
//
//   --runtime     counted memory  KV cache types (default first)   KV cells for a context of C
//   optiq-cpu     CPU             f32                              C
//   optiq-cuda    GPU             f16, f32                         C
//   llamacpp      CPU             f16, f32, bf16, q8_0, q5_1,      C rounded up to 256; Gemma 3's
//   llamacpp-gpu  GPU             q5_0, q4_1, q4_0, iq4_nl         sliding-window layers
//                                                                  min(C, window + n_ubatch) rounded up to 256
//   mlx           unified         the model's dtype: f16 (bf16     C rounded up to 256; Gemma 3's sliding-
//                                 for Gemma)                       window layers min(window, C + 256)
//
// Why (from each runtime's code):
//   * optiq CPU: the CPU backend stores the cache in fp32, also under
//     --numerics llamacpp (values rounded to fp16, kept in fp32 slots:
//     KVCache::half_storage is never set on the CPU).
//   * optiq CUDA: fp16 under fast numerics (the default of generate/bench),
//     fp32 under --numerics exact (CudaBackend::make_kv_cache).
//   * llama.cpp: --cache-type-k/-v (default f16; quantized V needs flash
//     attention); n_ctx is padded to 256 (llama_context); the sliding-window
//     cache (llama_kv_cache_iswa, llama-cli/llama-server's default
//     swa_full = false) holds window + n_ubatch cells. One sequence (n_seq_max 1).
//   * mlx-lm: the cache is the model's activation dtype and grows in steps of
//     256 tokens (KVCache.step); generate_step prefills in chunks of 2048, so
//     after C tokens it holds C rounded up to 256 cells. Gemma 3's sliding
//     layers use a RotatingKVCache of `window` cells once C >= window.
//
// The KV cache bytes are exact for these rules (tests/reference/
// test_runtime_memory.py checks llama.cpp and mlx-lm); compute buffers and the
// fixed cost are estimates (compute_buffers.h says how each is made).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/config.h"

namespace optiq {

enum class Runtime { OptiqCpu, OptiqCuda, LlamaCpp, LlamaCppGpu, Mlx };

std::string_view runtime_name(Runtime r);   // as --runtime spells it: "llamacpp-gpu"
// As printed: "llama.cpp (CPU)", with a context "llama.cpp (CPU, ctx 8192)", "mlx-lm (ctx 8192)".
std::string runtime_label(Runtime r, int64_t ctx = 0);
// "optiq-cpu, optiq-cuda, llamacpp, llamacpp-gpu, mlx"
std::string runtime_names();
// Throws "<what> 'x': unknown runtime; expected one of optiq-cpu, ..." for anything else.
Runtime parse_runtime(const std::string& text, const std::string& what = "--runtime");
// True where the budget is GPU memory (optiq-cuda, llamacpp-gpu).
bool runtime_counts_gpu_memory(Runtime r);

// How the user runs the model.
struct RuntimeOptions {
  Runtime runtime = Runtime::OptiqCpu;
  int64_t ctx = 0;               // context length (tokens), > 0
  std::string kv_cache;          // KV cache type; empty: the runtime's default
  bool flash_attention = true;   // llama.cpp only: -fa (its default "auto" is on for CPU, CUDA and Metal)
  int64_t batch = 0;             // rows per prefill pass; 0: the runtime's own (optiq CPU 512, CUDA 4096,
                                 // llama.cpp n_ubatch 512, mlx-lm prefill_step_size 2048)
  int threads = 16;              // optiq CPU: attention score rows held at once (one per thread)
};

// The KV cache types a runtime stores (the first is its default; for mlx the
// model's dtype); throws naming the valid ones when `kv_cache` is not among them.
std::vector<std::string> runtime_kv_types(Runtime r, const ModelConfig& config);
// Bytes of one KV element of a type name ("q8_0" -> 34/32); throws on unknown names.
double kv_type_bytes(const std::string& type);

// What the runtime holds besides the weights.
struct MemoryBreakdown {
  Runtime runtime = Runtime::OptiqCpu;
  int64_t ctx = 0;
  std::string kv_type;         // "f16"
  bool flash_attention = true; // llama.cpp
  int64_t batch = 0;           // rows per prefill pass used by the estimates
  int64_t kv_cells = 0;        // cells of a full-attention layer (the context as allocated)
  int64_t swa_cells = 0;       // cells of a sliding-window layer (0: none)
  int64_t kv_bytes = 0;        // exact
  int64_t compute_bytes = 0;   // estimate
  int64_t runtime_bytes = 0;   // estimate: the runtime's own fixed cost
  // GPU runtimes: buffers that stay in CPU memory, not counted (name, bytes).
  std::vector<std::pair<std::string, int64_t>> host_buffers;
  int64_t reserved() const { return kv_bytes + compute_bytes + runtime_bytes; }
};

// The runtime's KV cache, compute buffers and fixed cost for `o.ctx` tokens.
// Throws on ctx <= 0, a KV type the runtime does not store, or a quantized
// llama.cpp cache whose rows the 32-value blocks do not divide or whose V
// would need flash attention.
MemoryBreakdown runtime_memory(const ModelConfig& config, const RuntimeOptions& o);

// K and V of every layer as `o.runtime` allocates them (exact).
int64_t kv_cache_bytes(const ModelConfig& config, const RuntimeOptions& o);

}  // namespace optiq

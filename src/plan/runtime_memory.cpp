#include "plan/runtime_memory.h"

#include <algorithm>
#include <array>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "core/tensor.h"
#include "plan/compute_buffers.h"

namespace optiq {

namespace {

constexpr int64_t MiB = int64_t{1} << 20;

// Fixed costs (estimates): code, tokenizer (Gemma's 262k-token vocabulary
// alone takes ~60 MB), allocator slack, RoPE tables and the CPU work buffers
// of the CPU runtimes (optiq's peak RSS sat ~50 MB under this for SmolLM2);
// Python with mlx and mlx_lm imported took 75 MB of RSS on Linux (more with
// Metal); a CUDA context with cuBLAS loaded takes device memory of its own
// (512 MiB: not measured here, no GPU was lent), plus optiq's fixed 32 MiB
// cuBLAS workspace (exact).
constexpr int64_t kCpuRuntimeBytes = 64 * MiB;
constexpr int64_t kMlxRuntimeBytes = 128 * MiB;
constexpr int64_t kCudaContextBytes = 512 * MiB;
constexpr int64_t kCublasWorkspaceBytes = 32 * MiB;

struct RuntimeSpec {
  Runtime id;
  std::string_view name, product, where;  // "llamacpp", "llama.cpp", "CPU"
  bool gpu;
  int64_t batch;          // rows per prefill pass
  int64_t runtime_bytes;  // fixed cost
};

constexpr std::array<RuntimeSpec, 5> kRuntimes{{
    {Runtime::OptiqCpu, "optiq-cpu", "optiq", "CPU", false, 512, kCpuRuntimeBytes},
    {Runtime::OptiqCuda, "optiq-cuda", "optiq", "CUDA", true, 4096, kCudaContextBytes + kCublasWorkspaceBytes},
    {Runtime::LlamaCpp, "llamacpp", "llama.cpp", "CPU", false, 512, kCpuRuntimeBytes},
    {Runtime::LlamaCppGpu, "llamacpp-gpu", "llama.cpp", "every layer on the GPU", true, 512, kCudaContextBytes},
    {Runtime::Mlx, "mlx", "mlx-lm", "", false, 2048, kMlxRuntimeBytes},
}};

const RuntimeSpec& spec(Runtime r) {
  for (const auto& s : kRuntimes)
    if (s.id == r) return s;
  fail("unknown runtime {}", static_cast<int>(r));
}

constexpr std::array<std::string_view, 9> kLlamaCppKvTypes{"f16",  "f32",  "bf16", "q8_0",  "q5_1",
                                                            "q5_0", "q4_1", "q4_0", "iq4_nl"};

DType kv_dtype(const std::string& t) {
  static const std::array<std::pair<std::string_view, DType>, 9> types{{{"f32", DType::F32},
                                                                        {"f16", DType::F16},
                                                                        {"bf16", DType::BF16},
                                                                        {"q8_0", DType::Q8_0},
                                                                        {"q5_1", DType::Q5_1},
                                                                        {"q5_0", DType::Q5_0},
                                                                        {"q4_1", DType::Q4_1},
                                                                        {"q4_0", DType::Q4_0},
                                                                        {"iq4_nl", DType::IQ4_NL}}};
  for (const auto& [name, d] : types)
    if (name == t) return d;
  fail("KV cache type '{}': unknown; expected one of f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0, iq4_nl", t);
}

int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

// Gemma 3's sliding-window layers get a smaller cache in llama.cpp and mlx-lm
// (other families' windows, e.g. Phi-3's, are ignored by both).
bool sliding_cache(const ModelConfig& c, int layer) { return c.family == "Gemma 3" && c.window(layer) > 0; }

int max_window(const ModelConfig& c) {
  int w = 0;
  for (int l = 0; l < c.n_layers; ++l)
    if (sliding_cache(c, l)) w = std::max(w, c.window(l));
  return w;
}

}  // namespace

std::string_view runtime_name(Runtime r) { return spec(r).name; }
std::string runtime_label(Runtime r, int64_t ctx) {
  const RuntimeSpec& s = spec(r);
  std::string in = std::string(s.where);
  if (ctx > 0) in += fmt::format("{}ctx {}", in.empty() ? "" : ", ", ctx);
  return in.empty() ? std::string(s.product) : fmt::format("{} ({})", s.product, in);
}
bool runtime_counts_gpu_memory(Runtime r) { return spec(r).gpu; }

std::string runtime_names() {
  std::string s;
  for (const auto& r : kRuntimes) s += fmt::format("{}{}", s.empty() ? "" : ", ", r.name);
  return s;
}

Runtime parse_runtime(const std::string& text, const std::string& what) {
  for (const auto& r : kRuntimes)
    if (r.name == text) return r.id;
  fail("{} '{}': unknown runtime; expected one of {}", what, text, runtime_names());
}

std::vector<std::string> runtime_kv_types(Runtime r, const ModelConfig& c) {
  switch (r) {
    case Runtime::OptiqCpu: return {"f32"};
    case Runtime::OptiqCuda: return {"f16", "f32"};
    case Runtime::LlamaCpp:
    case Runtime::LlamaCppGpu: return {kLlamaCppKvTypes.begin(), kLlamaCppKvTypes.end()};
    case Runtime::Mlx: return {c.prefers_bf16 ? "bf16" : "f16"};
  }
  return {};
}

double kv_type_bytes(const std::string& type) {
  const BlockLayout b = block_layout(kv_dtype(type));
  return double(b.block_bytes) / double(b.block_elems);
}

namespace {

struct Resolved {
  std::string kv_type;
  int64_t batch = 0, rows = 0, cells = 0, swa_cells = 0;
};

Resolved resolve(const ModelConfig& c, const RuntimeOptions& o) {
  const RuntimeSpec& s = spec(o.runtime);
  check(o.ctx > 0, "--ctx {}: the context length must be > 0", o.ctx);
  check(o.batch >= 0, "runtime batch {} must be >= 0", o.batch);
  Resolved r;
  const std::vector<std::string> types = runtime_kv_types(o.runtime, c);
  r.kv_type = o.kv_cache.empty() ? types.front() : o.kv_cache;
  if (std::find(types.begin(), types.end(), r.kv_type) == types.end())
    fail("--kv-cache {}: {} stores its KV cache as {}", r.kv_type, s.name, fmt::join(types, ", "));
  r.batch = o.batch > 0 ? o.batch : s.batch;
  r.rows = std::min(r.batch, o.ctx);
  const int window = max_window(c);
  switch (o.runtime) {
    case Runtime::OptiqCpu:
    case Runtime::OptiqCuda: r.cells = o.ctx; break;
    case Runtime::LlamaCpp:
    case Runtime::LlamaCppGpu: {
      const DType t = kv_dtype(r.kv_type);
      const BlockLayout b = block_layout(t);
      check(b.block_elems == 1 || c.head_dim % b.block_elems == 0,
            "--kv-cache {}: llama.cpp stores each head's {} values in blocks of {}, which do not divide them",
            r.kv_type, c.head_dim, b.block_elems);
      check(b.block_elems == 1 || o.flash_attention,
            "--kv-cache {}: llama.cpp quantizes the V cache only with flash attention (--flash-attn on)", r.kv_type);
      r.cells = round_up(o.ctx, 256);
      if (window > 0) r.swa_cells = round_up(std::min(r.cells, int64_t(window) + r.rows), 256);
      break;
    }
    case Runtime::Mlx:
      r.cells = round_up(o.ctx, 256);
      if (window > 0) r.swa_cells = std::min<int64_t>(window, o.ctx + 256);
      break;
  }
  return r;
}

int64_t kv_bytes(const ModelConfig& c, const Resolved& r) {
  const double elem = kv_type_bytes(r.kv_type);
  int64_t total = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    const int64_t cells = sliding_cache(c, l) && r.swa_cells > 0 ? r.swa_cells : r.cells;
    total += 2 * static_cast<int64_t>(std::llround(double(cells) * double(c.kv_dim()) * elem));
  }
  return total;
}

}  // namespace

int64_t kv_cache_bytes(const ModelConfig& c, const RuntimeOptions& o) { return kv_bytes(c, resolve(c, o)); }

MemoryBreakdown runtime_memory(const ModelConfig& c, const RuntimeOptions& o) {
  const Resolved r = resolve(c, o);
  MemoryBreakdown m;
  m.runtime = o.runtime;
  m.ctx = o.ctx;
  m.kv_type = r.kv_type;
  m.flash_attention = o.flash_attention;
  m.batch = r.batch;
  m.kv_cells = r.cells;
  m.swa_cells = r.swa_cells;
  m.kv_bytes = kv_bytes(c, r);
  m.runtime_bytes = spec(o.runtime).runtime_bytes;
  switch (o.runtime) {
    case Runtime::OptiqCpu: m.compute_bytes = optiq_cpu_compute_bytes(c, o.ctx, r.rows, o.threads); break;
    case Runtime::OptiqCuda: m.compute_bytes = optiq_cuda_compute_bytes(c, o.ctx, r.rows, r.kv_type == "f16"); break;
    case Runtime::LlamaCpp:
    case Runtime::LlamaCppGpu: {
      const LlamaCppCompute lc = llamacpp_compute_bytes(c, r.rows, r.cells, r.swa_cells, o.flash_attention);
      m.compute_bytes = lc.graph;
      if (o.runtime == Runtime::LlamaCpp) m.compute_bytes += lc.output;
      else m.host_buffers.emplace_back("logits buffer", lc.output);
      break;
    }
    case Runtime::Mlx: {
      const int64_t layer_kv = 2 * int64_t(std::llround(double(r.cells) * double(c.kv_dim()) * kv_type_bytes(r.kv_type)));
      m.compute_bytes = mlx_compute_bytes(c, r.rows, o.ctx, layer_kv);
      // A sliding layer's RotatingKVCache holds window - 1 + chunk cells while a chunk is prefilled.
      for (int l = 0; l < c.n_layers; ++l)
        if (sliding_cache(c, l) && o.ctx > r.rows)
          m.compute_bytes += 2 * (r.rows - 1) * int64_t(c.kv_dim()) * 2;
      break;
    }
  }
  return m;
}

}  // namespace optiq

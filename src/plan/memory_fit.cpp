#include "plan/memory_fit.h"

#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/precision.h"

namespace optiq {

namespace {

const MemoryBreakdown& breakdown(const Budget& b) {
  check(b.memory.has_value(), "budget {}: no memory breakdown (not a --fit budget)", b.text);
  return *b.memory;
}

bool is_llamacpp(Runtime r) { return r == Runtime::LlamaCpp || r == Runtime::LlamaCppGpu; }

// What a GPU runtime keeps in CPU memory.
struct HostBuffer {
  std::string name;
  int64_t bytes;
  std::string remark;
};

std::vector<HostBuffer> host_buffers(const MemoryBreakdown& m, int64_t token_embedding_bytes) {
  std::vector<HostBuffer> out;
  for (const auto& [name, bytes] : m.host_buffers) out.push_back({name, bytes, ""});
  if (m.runtime == Runtime::LlamaCppGpu && token_embedding_bytes >= 0)
    out.push_back({"token embeddings", token_embedding_bytes, "llama.cpp's input layer stays on the CPU"});
  return out;
}

int64_t weight_bytes(const ModelConfig& c, const std::map<std::string, TensorFormat>& formats) {
  PrecisionMap plan;
  plan.formats = formats;
  return plan_bytes(c, plan);
}

// The token embeddings under the plan's format (llama.cpp keeps a tied
// model's copy in CPU memory too).
int64_t embedding_bytes(const ModelConfig& c, const std::map<std::string, TensorFormat>& formats) {
  for (const auto& mod : quantizable_modules(c)) {
    if (mod.kind != ModuleKind::Embed) continue;
    auto it = formats.find(mod.path);
    if (it != formats.end()) return module_bytes(mod, it->second);
  }
  return -1;
}

}  // namespace

std::string memory_sum_text(const MemoryBreakdown& m, int64_t weights, int64_t token_embedding_bytes) {
  std::string s = fmt::format("weights {} + KV cache {} {} + compute {}{} + runtime {} = {}", format_bytes(weights),
                              m.kv_type, format_bytes(m.kv_bytes), format_bytes(m.compute_bytes),
                              is_llamacpp(m.runtime) && !m.flash_attention ? " (no flash attention)" : "",
                              format_bytes(m.runtime_bytes), format_bytes(weights + m.reserved()));
  const std::vector<HostBuffer> host = host_buffers(m, token_embedding_bytes);
  if (!host.empty()) {
    s += "; in CPU memory:";
    for (size_t i = 0; i < host.size(); ++i)
      s += fmt::format("{} {} {}{}", i ? "," : "", host[i].name, format_bytes(host[i].bytes),
                       host[i].remark.empty() ? "" : " (" + host[i].remark + ")");
  }
  return s;
}

nlohmann::json memory_json(const MemoryBreakdown& m, int64_t weights, int64_t token_embedding_bytes) {
  nlohmann::json j = {{"runtime", std::string(runtime_name(m.runtime))},
                      {"counted", runtime_counts_gpu_memory(m.runtime) ? "GPU memory" : "CPU memory"},
                      {"ctx", m.ctx},
                      {"kv_cache_type", m.kv_type},
                      {"kv_cells", m.kv_cells}};
  if (m.swa_cells > 0) j["swa_cells"] = m.swa_cells;
  if (is_llamacpp(m.runtime)) j["flash_attention"] = m.flash_attention;
  j["prefill_rows"] = m.batch;
  j["weights_bytes"] = weights;
  j["kv_cache_bytes"] = m.kv_bytes;
  j["compute_bytes"] = m.compute_bytes;
  j["runtime_bytes"] = m.runtime_bytes;
  j["total_bytes"] = weights + m.reserved();
  const std::vector<HostBuffer> host = host_buffers(m, token_embedding_bytes);
  if (!host.empty()) {
    nlohmann::json h = nlohmann::json::object();
    for (const auto& x : host) h[x.name] = x.bytes;
    j["cpu_buffers"] = h;
  }
  j["exact"] = {"kv_cache_bytes"};
  j["estimated"] = {"compute_bytes", "runtime_bytes"};
  return j;
}

std::string memory_fit_line(const Budget& b, const ModelConfig& c, const std::map<std::string, TensorFormat>& formats) {
  const MemoryBreakdown& m = breakdown(b);
  return fmt::format("fits {}{} on {}: {}", format_bytes(b.fit_bytes),
                     runtime_counts_gpu_memory(m.runtime) ? " of GPU memory" : "", runtime_label(m.runtime, m.ctx),
                     memory_sum_text(m, weight_bytes(c, formats), embedding_bytes(c, formats)));
}

nlohmann::json memory_fit_json(const Budget& b, const ModelConfig& c, const std::map<std::string, TensorFormat>& formats) {
  nlohmann::json j = memory_json(breakdown(b), weight_bytes(c, formats), embedding_bytes(c, formats));
  j["fit_bytes"] = b.fit_bytes;
  return j;
}

}  // namespace optiq

// How a model fills the memory of the runtime that runs it: its weights plus
// what the runtime holds besides them (runtime_memory.h). Printed and recorded
// by `optiq plan` / `optiq auto` for a --fit budget (the plan file's "memory"
// object, docs/plan-format.md) and by `optiq info --runtime R --ctx C`.
//
//   fits 8.000 GB on llama.cpp (CPU, ctx 8192): weights 4.613 GB + KV cache f16 1.074 GB
//     + compute 0.280 GB + runtime 0.067 GB = 6.034 GB
//
// GPU runtimes (optiq-cuda, llamacpp-gpu) count GPU memory and say so; for
// llama.cpp the line names what it keeps in CPU memory instead: the logits
// buffer, and the token embeddings (its input layer stays on the CPU). Those
// are counted with the weights all the same: with separate output weights the
// GPU holds less than the line says; with tied ones the GPU holds the output
// copy and the CPU a second one.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "model/config.h"
#include "plan/budget.h"
#include "quant/format.h"

namespace optiq {

// "weights A + KV cache f16 B + compute C + runtime D = T", then for a GPU
// runtime "; in CPU memory: logits buffer E[, token embeddings F (...)]".
// `token_embedding_bytes` < 0: not known (not named).
std::string memory_sum_text(const MemoryBreakdown& m, int64_t weights, int64_t token_embedding_bytes = -1);

// {"runtime", "counted" ("CPU memory", "GPU memory"), "ctx", "kv_cache_type", "kv_cells", ["swa_cells"],
//  ["flash_attention"], "prefill_rows", "weights_bytes", "kv_cache_bytes", "compute_bytes", "runtime_bytes",
//  "total_bytes", ["cpu_buffers": {name: bytes}], "exact": [...], "estimated": [...]}
nlohmann::json memory_json(const MemoryBreakdown& m, int64_t weights, int64_t token_embedding_bytes = -1);

// A --fit budget (b.memory set) and the plan's formats: "fits M [of GPU
// memory] on RUNTIME (…, ctx C): " + memory_sum_text; memory_json + "fit_bytes".
std::string memory_fit_line(const Budget& b, const ModelConfig& config,
                            const std::map<std::string, TensorFormat>& formats);
nlohmann::json memory_fit_json(const Budget& b, const ModelConfig& config,
                               const std::map<std::string, TensorFormat>& formats);

}  // namespace optiq

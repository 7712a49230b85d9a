// How fast a runtime decodes a plan: predicted time per generated token, the
// sum over the matrices a decode step reads of (weights x the runtime's cost
// per weight in that matrix's storage type).
//
// Why a table per type and not bytes: llama.cpp's CPU decode cost per weight
// differs by type far more than the bytes do (Q5_0 unpacks a fifth bit per
// weight; Q4_0 and IQ4_NL are repacked into interleaved rows on x86; F16
// converts every weight), so a plan that spends its bytes on the "wrong"
// types decodes slower than llama.cpp's own file of the same size (SmolLM2 at
// the Q3_K_M size: 0.77x; Gemma 3 270M: 0.64x, BENCHMARKS.md §8). The planner
// bounds the predicted time (`--max-slowdown`, solver.h's max_time) against
// llama.cpp's own mix of the same size.
//
// The built-in table was measured by bench/llamacpp_speed_table.py (llama.cpp
// CPU, 2 threads, the machine named in its `source`); `--speed-table FILE`
// loads that script's JSON from another machine. Only ratios between types
// matter to the planner.
//
// What a decode step reads: every layer matrix and the output product (the
// lm_head, or the embedding when tied); an untied embedding is a row lookup
// and costs nothing here.
#pragma once
#include <map>
#include <optional>
#include <string>

#include "model/config.h"
#include "model/precision.h"

namespace optiq {

struct DecodeSpeedModel {
  std::string runtime;                         // "llamacpp-cpu"
  std::string source;                          // where and how the costs were measured
  std::map<std::string, double> ns_per_weight;  // by GGUF type name: "Q4_K", "F16", ...

  // The GGUF type a matrix of `cols` inputs in format `f` is stored as in a
  // GGUF file ("F16" for float, fallbacks applied; affine groups of 32 at 4, 5
  // or 8 bits as Q4_1, Q5_1, Q8_0), or nullopt when no GGUF type holds it.
  static std::optional<std::string> storage_type(const TensorFormat& f, int64_t cols);
  // ns per token spent on module `m` in format `f` (0 for an untied embedding);
  // throws when the table has no cost for the storage type.
  double module_ns(const ModelConfig& config, const ModuleInfo& m, const TensorFormat& f) const;
  // Sum over the plan's modules (formats missing from the map count as float).
  double plan_ns(const ModelConfig& config, const std::map<std::string, TensorFormat>& formats) const;
};

// llama.cpp's CPU backend, measured by bench/llamacpp_speed_table.py (see the .cpp).
const DecodeSpeedModel& llamacpp_cpu_speed_model();
// A table written by bench/llamacpp_speed_table.py (its "ns_per_weight" object).
DecodeSpeedModel load_speed_model(const std::string& path);

// llama.cpp's own type mixes (llama_tensor_get_type in its src/llama-quant.cpp,
// for a dense model, as GGUF formats; the k-quant fallbacks of rows that 256
// does not divide applied by format_for_shape): "Q2_K", "Q3_K_M", "IQ4_XS",
// "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0".
PrecisionMap llamacpp_mix_plan(const ModelConfig& config, const std::string& mix);

// The speed reference of a budget: llama.cpp's own file of that size, i.e.
// the predicted time of its mixes above interpolated linearly in bytes
// between the two whose sizes bracket the budget (the smallest or largest mix
// outside their range). `mix` names the bracket ("Q3_K_M..IQ4_XS") or the mix
// itself when the budget is a mix's size or outside the range; `bytes` is the
// budget there.
struct SpeedReference {
  std::string mix;  // "Q4_K_M", or "Q3_K_M..IQ4_XS" between two
  int64_t bytes = 0;
  double ns = 0;
};
SpeedReference llamacpp_speed_reference(const ModelConfig& config, int64_t budget, const DecodeSpeedModel& speed);

}  // namespace optiq

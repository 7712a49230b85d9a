// Memory budgets for a plan: what the user asks for on the command line
// (`--bpw 4.5`, `--size 9.7GB`, `--reduction 40%`, `--fit 8GB --ctx 8192
// [--runtime llamacpp]`), turned into one number, the bytes the model's
// weights may take. `--fit` subtracts what the chosen runtime holds besides
// the weights: its KV cache, compute buffers and fixed cost (runtime_memory.h).
//
// Size model (used by every planner and baseline, so comparisons at equal size
// are honest):
//   * a quantizable matrix (quantizable_modules) at affine qB gG takes
//     rows * (cols*B/8 + cols/G * 4) bytes: packed codes plus an fp16 scale and
//     an fp16 bias per group, i.e. bits_per_weight(fmt) = B + 32/G bits a weight;
//     kept in float it takes rows*cols*2 bytes (fp16);
//   * the parameters that are never quantized (the RMSNorm weights: 2 per layer
//     plus the final norm, each `dim` long) count as fp16, 2 bytes each;
//   * tied embeddings are counted once (there is no lm_head module then).
// "bits per weight" is always averaged over ALL parameters (quantizable + fixed).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/precision.h"
#include "plan/runtime_memory.h"

namespace optiq {

// Bytes of one module stored in format f (float = fp16). Throws if an affine
// format's group size does not divide the module's columns.
int64_t module_bytes(const ModuleInfo& m, const TensorFormat& f);
// Parameters never quantized (norm weights): n_layers*2*dim + dim.
int64_t fixed_weight_params(const ModelConfig& config);
int64_t fixed_weight_bytes(const ModelConfig& config);  // fixed_weight_params * 2
// All weight parameters (quantizable modules + fixed).
int64_t total_weight_params(const ModelConfig& config);
// FP16 size of the whole model: total_weight_params * 2.
int64_t fp16_weight_bytes(const ModelConfig& config);

// Bytes of all weights under a plan (modules + fixed). Throws if a quantizable
// module is missing from the map or a format does not fit its module.
int64_t plan_bytes(const ModelConfig& config, const PrecisionMap& plan);
// plan_bytes * 8 / total_weight_params.
double plan_bits_per_weight(const ModelConfig& config, const PrecisionMap& plan);

// Every format a planner may choose by default: affine bits {2,3,4,5,6,8} x
// group sizes {32,64,128}, plus float (nullopt), 19 in all.
std::vector<TensorFormat> all_tensor_formats();

// Smallest and largest weight bytes reachable when each module may take any of
// `formats` that fits it (float is always reachable, so max is the fp16 size
// when float is among `formats`).
struct SizeRange {
  int64_t min_bytes = 0, max_bytes = 0;
};
SizeRange achievable_size_range(const ModelConfig& config, const std::vector<TensorFormat>& formats);

// Byte-size strings: "9.7GB", "350MB", "1.5GiB", "512 MiB", "100kB", "123B";
// decimal units (kB/KB, MB, GB, TB = 10^3k) and binary ones (KiB, MiB, GiB, TiB
// = 2^10k), case-insensitive. A bare number (no unit) is rejected as ambiguous.
// `what` names the option in error messages ("--size").
int64_t parse_byte_size(const std::string& text, const std::string& what);
// "4.5" -> 4.5; must be a finite number > 0.
double parse_bits_per_weight(const std::string& text, const std::string& what);
// "40%" or "40" -> 0.40; must lie strictly between 0% and 100%.
double parse_reduction(const std::string& text, const std::string& what);

// The options as given on the command line; exactly one of bpw/size/reduction/fit.
struct BudgetOptions {
  std::optional<std::string> bpw, size, reduction, fit;
  RuntimeOptions runtime;  // used with fit (runtime.ctx must be > 0): what runs the model (runtime_memory.h)
};

struct Budget {
  int64_t weight_bytes = 0;  // what the plan's weights may take (plan_bytes <= this)
  std::string kind;          // "bpw", "size", "reduction", "fit"
  std::string text;          // the user's string, e.g. "4.5", "9.7GB", "8GB@ctx8192"
  std::string description;   // e.g. "--bpw 4.5: 4.213 GB of weights (4.500 bits/weight)"
  // fit only: the memory given and what the runtime holds besides the
  // weights (subtracted from it; plan/memory_fit.h prints and records it).
  int64_t fit_bytes = 0;
  std::optional<MemoryBreakdown> memory;
};

// Resolves the options for a model. Throws optiq::Error when none or several
// are given, a string is malformed, a value is <= 0, or the resulting weight
// budget lies outside achievable_size_range(config, formats) (the message
// gives the achievable range in bytes and in bits per weight), except that a
// --fit budget above the range is the range's top (everything in float fits).
Budget resolve_budget(const BudgetOptions& opts, const ModelConfig& config,
                      const std::vector<TensorFormat>& formats = all_tensor_formats());

// "9.70 GB" / "350.0 MB" style (decimal units).
std::string format_bytes(int64_t bytes);

}  // namespace optiq

// Baseline plans, for honest comparisons with the solver at equal size (all
// sizes through plan_bytes in plan/budget.h).
//
// llama.cpp k-quant mixes (llama_tensor_get_type in src/llama-quant.cpp), as
// they apply to a dense Llama-family model (no MoE, not Falcon, no imatrix
// rules, no fused qkv), with ggml's Qk_K types mapped to affine bits
// (Q3_K -> 3, Q4_K -> 4, Q5_K -> 5, Q6_K -> 6) at one group size:
//
//   use_more_bits(i, n) = i < n/8 || i >= 7*n/8 || (i - n/8) % 3 == 2
//   (integer division; i counts attn_v / ffn_down tensors = the layer index)
//
//   mix     base  attn_v                      ffn_down                          attn_output  output (lm_head)
//   Q3_K_M  3     5 if i < 2 else 4           5 if i < n/16 else 4              4            6
//   Q4_K_M  4     6 if use_more_bits else 4   6 if use_more_bits else 4         4            6
//   Q5_K_M  5     6 if use_more_bits else 5   6 if use_more_bits else 5         5            6
//
// q/k/gate/up stay at the base; the token embedding stays at the base too,
// except with tied embeddings, where llama.cpp treats token_embd as the output
// tensor (no "output.weight") and gives it 6 bits. Not modelled: the 70B rule
// (attn_v Q3/Q4 -> Q5 for LLM_TYPE_70B), MoE (n_expert == 8) rules, and the
// Q8_0 fallback for rows not divisible by 256 (here a format whose group size
// does not divide a module's columns leaves it in float, as PrecisionMap::uniform).
//
// The generalised rule ("k-quant shape") takes any base bits b and upgrade bits
// u: the Q4_K_M shape with 4 -> b and 6 -> u. kquant_plan_for_budget searches
// the named mixes and the generalised shapes for the largest plan within a
// budget.
//
// mlx-lm dynamic quantization (mlx_lm.quant.dynamic_quant): every module gets
// one of two formats, low or high; modules are ranked by a sensitivity score
// and those above a threshold get high, the threshold being the lowest that
// keeps the model within the budget (mlx-lm bisects on the threshold; we scan
// the sorted scores, which gives the same plan without tolerance).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/precision.h"

namespace optiq {

// Every quantizable module at fmt (modules the group size does not fit stay float).
PrecisionMap uniform_plan(const ModelConfig& config, const TensorFormat& fmt);
inline PrecisionMap uniform_plan(const ModelConfig& config, AffineFormat fmt) { return uniform_plan(config, TensorFormat(fmt)); }

// llama.cpp's layer selector (see above).
bool llama_use_more_bits(int i_layer, int n_layers);
// llama.cpp's output tensor: lm_head, or the embedding when tied (!has_output && token_embd).
bool llama_output_tensor(const ModelConfig& config, const ModuleInfo& m);

enum class KQuantMix { Q3_K_M, Q4_K_M, Q5_K_M };
std::string kquant_mix_name(KQuantMix mix);  // "Q4_K_M"

PrecisionMap kquant_plan(const ModelConfig& config, KQuantMix mix, int group_size = 64);
// The Q4_K_M shape with base bits `base` and upgrade bits `high` (>= base).
PrecisionMap kquant_shape_plan(const ModelConfig& config, int base, int high, int group_size = 64);

struct BaselinePlan {
  PrecisionMap map;
  std::string name;  // e.g. "Q4_K_M g64" or "kquant-shape b3/u5 g32"
  int64_t bytes = 0;  // plan_bytes
};
// The largest plan (by plan_bytes) among the named mixes and every generalised
// shape (base < high in {2,3,4,5,6,8}, plus uniform base == high) over group
// sizes `group_sizes`, with plan_bytes <= budget. Throws if none fits.
BaselinePlan kquant_plan_for_budget(const ModelConfig& config, int64_t budget,
                                    const std::vector<int>& group_sizes = {32, 64, 128});

// mlx-lm dynamic-quant style. `scores`: module path -> sensitivity (higher =
// more sensitive); modules missing from it rank lowest. Throws if even
// all-low exceeds the budget or a score is NaN. Ties in score are all high or
// all low (a threshold), so the plan can stay below the budget by more than
// one module.
BaselinePlan dynamic_plan(const ModelConfig& config, const std::map<std::string, double>& scores, int64_t budget,
                          AffineFormat low = {4, 64}, AffineFormat high = {8, 64});

// A baseline named on the command line (`optiq plan --baseline SPEC`), within
// `budget` bytes (plan_bytes):
//   uniform:q4g64             one format everywhere
//   kquant                    the largest k-quant-style plan that fits
//   kquant:Q4_K_M[/g32]       a named mix (Q3_K_M, Q4_K_M, Q5_K_M; group 64 by default)
//   kquant:b3u5[/g32]         the Q4_K_M shape with base 3 and upgrade 5 bits
//   dynamic                   two levels one step apart: the most bits that fit
//                             everywhere as low, the next level up as high
//   dynamic:q3g64/q5g64       explicit low and high formats
// `damage` (module -> format name -> predicted KL) ranks modules for dynamic
// (their damage at the low format, as mlx-lm ranks by loss at low bits).
// Throws when the spec is malformed or its plan exceeds the budget.
BaselinePlan baseline_plan_from_spec(const ModelConfig& config, const std::string& spec, int64_t budget,
                                     const std::map<std::string, std::map<std::string, double>>& damage);

}  // namespace optiq

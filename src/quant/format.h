// Tensor formats, spelled one way. A format is float (the model's fp16/bf16 or
// fp32, the unquantized reference) or an MLX affine group format; every name,
// parser and size rule for formats lives here, so plans, profiles, candidate
// lists, pins, budgets and the solver agree on them.
//
// Spellings accepted by parse_tensor_format (case and spaces ignored):
//   float | f16 | fp16 | bf16 | f32 | none      -> float
//   4 | q4 | q4g64 | q4-g64 | affine-q4-g64      -> affine, 4 bits (group: the default when not given)
// Printed names: tensor_format_name  "affine-q4-g64" / "float" (profiles, plans: stable keys)
//                tensor_format_short "q4g64" / "float"          (tables, reports)
//
// The registry is affine-only for now; GGUF block types (k-quants) are the
// next entries (issue 10): TensorFormat then becomes a variant, and these
// functions are where each kind's rules go.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "quant/affine.h"

namespace optiq {

// nullopt = kept in float.
using TensorFormat = std::optional<AffineFormat>;

std::string tensor_format_name(const TensorFormat& f);   // "affine-q4-g64" | "float"
std::string tensor_format_short(const TensorFormat& f);  // "q4g64" | "float"

// One format from any spelling above; throws "format '<text>': ..." when it is
// none or invalid (bits, group size).
TensorFormat parse_tensor_format(std::string_view text, int default_group_size = 64);

// A list of affine formats, distinct, in order: "q4g64,q8g64", "4,8" (group 64)
// or a product "2,3,4x32,64" (every bits x every group size).
std::vector<AffineFormat> parse_affine_format_list(std::string_view text);

// Plan JSON: {"bits": B, "group_size": G} | "float" (also "f16", "bf16", false).
nlohmann::json tensor_format_to_json(const TensorFormat& f);
// Throws "<source>: <what>: ..." on anything else.
TensorFormat tensor_format_from_json(const nlohmann::json& v, const std::string& source, const std::string& what);

// Can `fmt` store a matrix with `cols` inputs (group size divides cols)?
bool format_fits(const AffineFormat& fmt, int64_t cols);
inline bool format_fits(const TensorFormat& f, int64_t cols) { return !f || format_fits(*f, cols); }

// Storage bits per weight (float = 16).
double format_bits_per_weight(const TensorFormat& f);

}  // namespace optiq

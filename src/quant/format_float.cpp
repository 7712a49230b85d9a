// Format entry: float, the model's own fp16/bf16 (or fp32) weights, the
// unquantized reference. Plans count it at 2 bytes a weight.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "quant/format.h"

namespace optiq {

namespace {

class FloatKind final : public FormatKind {
 public:
  bool holds(const TensorFormat& f) const override { return f.is_float(); }
  std::optional<TensorFormat> parse(std::string_view s, std::string_view, int) const override {
    for (const char* n : {"float", "f16", "fp16", "bf16", "f32", "fp32", "none"})
      if (s == n) return TensorFormat{};
    return std::nullopt;
  }
  std::optional<TensorFormat> from_json(const nlohmann::json& v, const std::string&) const override {
    if (v.is_string() && (v == "float" || v == "f16" || v == "bf16")) return TensorFormat{};
    if (v.is_boolean() && !v.get<bool>()) return TensorFormat{};
    return std::nullopt;
  }
  std::string name(const TensorFormat&) const override { return "float"; }
  std::string short_name(const TensorFormat&) const override { return "float"; }
  nlohmann::json to_json(const TensorFormat&) const override { return "float"; }
  double bits_per_weight(const TensorFormat&) const override { return 16.0; }
  int64_t bytes(const TensorFormat&, int64_t rows, int64_t cols) const override { return rows * cols * 2; }
  bool fits(const TensorFormat&, int64_t) const override { return true; }
  QuantizedMatrix quantize(const TensorFormat&, const float*, int64_t, int64_t, const QuantizeOptions&) const override {
    fail("quantize: float is not a quantized format");
  }
  std::vector<float> dequantize(const QuantizedMatrix&) const override {
    fail("dequantize: float is not a quantized format");
  }
};

}  // namespace

const FormatKind& float_format_kind() {
  static const FloatKind k;
  return k;
}

}  // namespace optiq

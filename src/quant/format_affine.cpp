// Format entry: MLX affine groups {bits, group} (quant/affine.h), quantized by
// quant/quantizer.h (clipping search, optional activation weighting).
#include <regex>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_number.h"
#include "quant/format.h"
#include "quant/format_kind.h"

namespace optiq {

namespace {

class AffineKind final : public FormatKind {
 public:
  bool holds(const TensorFormat& f) const override { return f.affine() != nullptr; }
  std::optional<TensorFormat> parse(std::string_view s, std::string_view text, int default_group) const override {
    static const std::regex re(R"(^(?:affine-)?q?(\d+)(?:-?g(\d+))?$)");
    std::match_results<std::string_view::const_iterator> m;
    if (!std::regex_match(s.begin(), s.end(), m, re)) return std::nullopt;
    // parse_count, not std::stoi: "q99999999999" must be optiq's error, not std::out_of_range.
    const int bits = format_detail::parse_count(m[1].str(), text);
    const int group = m[2].matched ? format_detail::parse_count(m[2].str(), text) : default_group;
    return TensorFormat{format_detail::checked({bits, group}, text)};
  }
  std::optional<TensorFormat> from_json(const nlohmann::json& v, const std::string& context) const override {
    if (!v.is_object() || !v.contains("bits")) return std::nullopt;
    AffineFormat f;
    try {
      f.bits = json_int(v.at("bits"), context, "bits");
      f.group_size = json_int_or(v, "group_size", 64, context);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: {}", context, e.what());
    }
    try {
      check_affine_format(f);
    } catch (const Error& e) {
      fail("{}: {}", context, e.what());
    }
    return TensorFormat{f};
  }
  std::string name(const TensorFormat& f) const override { return affine_format_name(*f); }
  std::string short_name(const TensorFormat& f) const override {
    return fmt::format("q{}g{}", f->bits, f->group_size);
  }
  nlohmann::json to_json(const TensorFormat& f) const override {
    return {{"bits", f->bits}, {"group_size", f->group_size}};
  }
  double bits_per_weight(const TensorFormat& f) const override { return optiq::bits_per_weight(*f); }
  int64_t bytes(const TensorFormat& f, int64_t rows, int64_t cols) const override {
    // cols is a multiple of the group size (>= 32): cols*bits is whole bytes; fp16 scale + bias per group.
    return rows * (cols * f->bits / 8 + (cols / f->group_size) * 4);
  }
  bool fits(const TensorFormat& f, int64_t cols) const override { return format_fits(*f, cols); }
  QuantizedMatrix quantize(const TensorFormat& f, const float* w, int64_t rows, int64_t cols,
                           const QuantizeOptions& opt) const override {
    QuantizedMatrix q{f, rows, cols, optiq::quantize(w, rows, cols, *f, opt), {}};
    return q;
  }
  std::vector<float> dequantize(const QuantizedMatrix& q) const override {
    if (!q.affine) fail("dequantize: {} matrix without its affine groups", tensor_format_short(q.format));
    return optiq::dequantize(q.affine->view());
  }
};

}  // namespace

const FormatKind& affine_format_kind() {
  static const AffineKind k;
  return k;
}

}  // namespace optiq

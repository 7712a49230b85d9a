// The registry: the list of format kinds and the public functions, each of
// which finds the kind that holds (or parses) a format and asks it.
#include "quant/format.h"

#include <algorithm>
#include <array>
#include <cctype>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "quant/format_kind.h"

namespace optiq {

namespace {

// Every kind, in parsing order (float names first, then affine, then ggml).
const std::array<const FormatKind*, 3>& kinds() {
  static const std::array<const FormatKind*, 3> k = {&float_format_kind(), &affine_format_kind(),
                                                     &ggml_format_kind()};
  return k;
}

const FormatKind& kind_of(const TensorFormat& f) {
  for (const FormatKind* k : kinds())
    if (k->holds(f)) return *k;
  fail("tensor format: no registered kind holds it");
}

std::string squeeze_lower(std::string_view text) {
  std::string s;
  for (char ch : text)
    if (!std::isspace(static_cast<unsigned char>(ch))) s += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  while (true) {
    const size_t e = s.find(sep, b);
    out.push_back(s.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) return out;
    b = e + 1;
  }
}

}  // namespace

const AffineFormat& TensorFormat::operator*() const {
  const AffineFormat* a = affine();
  if (!a) fail("format {} is not an affine format", tensor_format_name(*this));  // not check(): its arguments are always evaluated
  return *a;
}

int TensorFormat::code_bits() const {
  if (const auto* a = affine()) return a->bits;
  if (const auto* g = ggml()) {
    switch (g->type) {
      case DType::F32: return 0;  // the candidate `source`, not resolved for a tensor
      case DType::Q2_K: return 2;
      case DType::Q3_K: return 3;
      case DType::Q4_0: case DType::Q4_1: case DType::Q4_K: case DType::IQ4_NL: case DType::IQ4_XS: return 4;
      case DType::Q5_0: case DType::Q5_1: case DType::Q5_K: return 5;
      case DType::Q6_K: return 6;
      default: return 8;
    }
  }
  return 16;
}

int TensorFormat::group_size() const {
  if (const auto* a = affine()) return a->group_size;
  if (is_source() && ggml()->type == DType::F32) return 0;
  return ggml() ? static_cast<int>(block_layout(ggml()->type).block_elems) : 0;
}

std::string tensor_format_name(const TensorFormat& f) { return kind_of(f).name(f); }
std::string tensor_format_short(const TensorFormat& f) { return kind_of(f).short_name(f); }

TensorFormat parse_tensor_format(std::string_view text, int default_group_size) {
  const std::string s = squeeze_lower(text);
  for (const FormatKind* k : kinds())
    if (auto f = k->parse(s, text, default_group_size)) return *f;
  fail("format '{}': expected bits (\"4\"), \"q4g64\", \"q8\", a GGUF type (\"q8_0\", \"q4_0\"), \"source\" or "
       "\"float\"",
       text);
}

std::vector<TensorFormat> parse_format_list(std::string_view text) {
  using format_detail::parse_count;
  const std::string s = squeeze_lower(text);
  check(!s.empty(), "formats '{}': empty: give e.g. \"2,3,4,5,6,8x32,64,128\" or \"q4g64,q8_0\"", text);
  std::vector<TensorFormat> out;
  auto add = [&](TensorFormat f) {
    if (std::find(out.begin(), out.end(), f) == out.end()) out.push_back(f);
  };
  auto add_named = [&](const std::string& tok) {
    TensorFormat f;
    try {
      f = parse_tensor_format(tok);
    } catch (const Error& e) {
      fail("formats '{}': '{}' is not a format (valid: affine BITSxGROUPS like 2,3,4x64,128 or q4g64 with bits 2, "
           "3, 4, 5, 6, 8 and groups 32, 64, 128; GGUF q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, "
           "iq4_nl, iq4_xs; source: each tensor's own type in a GGUF source)",
           text, tok);
    }
    check(!f.is_float(), "formats '{}': '{}' is float, not a quantized format", text, tok);
    add(f);
  };
  // Named formats ("q8_0", "source") may sit on either side of a product: "2,3,4x32,64,q8_0".
  // The product's 'x' is the first one outside a named format ("iq4_xs" has one too).
  auto is_named = [](const std::string& tok) {
    return tok.find('_') != std::string::npos ||
           std::none_of(tok.begin(), tok.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); });
  };
  size_t x = std::string::npos, start = 0;
  for (const auto& tok : split(s, ',')) {
    if (!is_named(tok) && tok.find('x') != std::string::npos) {
      x = start + tok.find('x');
      break;
    }
    start += tok.size() + 1;
  }
  if (x != std::string::npos) {
    std::vector<std::string> bits, groups, after;
    for (const auto& b : split(s.substr(0, x), ',')) {
      if (is_named(b)) add_named(b);
      else bits.push_back(b);
    }
    for (const auto& g : split(s.substr(x + 1), ',')) (is_named(g) ? after : groups).push_back(g);
    check(!bits.empty() && !groups.empty(), "formats '{}': a product needs bits and group sizes, e.g. 2,3,4x32,64", text);
    for (const auto& b : bits)
      for (const auto& g : groups) add(format_detail::checked({parse_count(b, text), parse_count(g, text)}, text));
    for (const auto& tok : after) add_named(tok);
    return out;
  }
  for (const auto& tok : split(s, ',')) add_named(tok);
  return out;
}

std::vector<AffineFormat> parse_affine_format_list(std::string_view text) {
  std::vector<AffineFormat> out;
  for (const TensorFormat& f : parse_format_list(text)) {
    check(f.affine() != nullptr, "formats '{}': {} is not an affine format", text, tensor_format_short(f));
    out.push_back(*f.affine());
  }
  return out;
}

nlohmann::json tensor_format_to_json(const TensorFormat& f) { return kind_of(f).to_json(f); }

TensorFormat tensor_format_from_json(const nlohmann::json& v, const std::string& source, const std::string& what) {
  const std::string context = fmt::format("{}: {}", source, what);
  for (const FormatKind* k : kinds())
    if (auto f = k->from_json(v, context)) return *f;
  fail("{}: expected {{\"bits\": B, \"group_size\": G}}, {{\"gguf\": \"Q8_0\"}} or \"float\"", context);
}

TensorFormat source_candidate() { return GgmlFormat{DType::F32, true}; }

TensorFormat resolve_source_format(const TensorFormat& f, DType stored) {
  if (!f.is_source()) return f;
  return source_type_keepable(stored) ? TensorFormat(GgmlFormat{stored, true}) : source_candidate();
}

bool format_fits(const AffineFormat& fmt, int64_t cols) { return cols > 0 && cols % fmt.group_size == 0; }
bool format_fits(const TensorFormat& f, int64_t cols) { return kind_of(f).fits(f, cols); }
TensorFormat format_for_shape(const TensorFormat& f, int64_t cols) { return kind_of(f).for_shape(f, cols); }

std::string tensor_format_label(const TensorFormat& f, int64_t cols) {
  const TensorFormat s = format_for_shape(f, cols);
  return s == f ? tensor_format_short(f) : tensor_format_short(f) + "\u2192" + tensor_format_short(s);
}

double format_bits_per_weight(const TensorFormat& f) { return kind_of(f).bits_per_weight(f); }
int64_t format_matrix_bytes(const TensorFormat& f, int64_t rows, int64_t cols) { return kind_of(f).bytes(f, rows, cols); }

QuantizedMatrix quantize_matrix(const TensorFormat& f, const float* w, int64_t rows, int64_t cols,
                                const QuantizeOptions& opt) {
  check(!f.is_float(), "quantize: float is not a quantized format");
  if (!format_fits(f, cols))
    fail("quantize: a {}x{} matrix cannot use {}: {} inputs are not a multiple of its group", rows, cols,
         tensor_format_short(f), cols);
  return kind_of(f).quantize(f, w, rows, cols, opt);
}

void append_rows(QuantizedMatrix& into, QuantizedMatrix&& part, int64_t total_rows) {
  if (into.rows == 0) {
    into = std::move(part);
    if (total_rows > into.rows && into.rows > 0) {
      auto room = [&](auto& v) { v.reserve(v.size() / static_cast<size_t>(into.rows) * static_cast<size_t>(total_rows)); };
      room(into.blocks);
      if (into.affine) room(into.affine->packed), room(into.affine->scales), room(into.affine->biases);
    }
    return;
  }
  check(part.format == into.format && part.cols == into.cols && part.affine.has_value() == into.affine.has_value(),
        "append_rows: {} rows of {} x {} after {} x {} (internal error)", tensor_format_short(part.format), part.rows,
        part.cols, tensor_format_short(into.format), into.cols);
  auto append = [](auto& a, const auto& b) { a.insert(a.end(), b.begin(), b.end()); };
  if (into.affine) {
    AffineMatrix &a = *into.affine, &b = *part.affine;
    check(a.bf16_scales == b.bf16_scales && a.zero_point == b.zero_point && a.biases.empty() == b.biases.empty(),
          "append_rows: scale layouts differ (internal error)");
    append(a.packed, b.packed);
    append(a.scales, b.scales);
    append(a.biases, b.biases);
    a.rows += b.rows;
  }
  append(into.blocks, part.blocks);
  into.rows += part.rows;
}

std::vector<float> dequantize_matrix(const QuantizedMatrix& q) { return kind_of(q.format).dequantize(q); }

std::vector<float> fake_quantize(const TensorFormat& f, const float* w, int64_t rows, int64_t cols,
                                 const QuantizeOptions& opt) {
  if (f.is_float()) return std::vector<float>(w, w + rows * cols);
  return dequantize_matrix(quantize_matrix(f, w, rows, cols, opt));
}

void fake_quantize_into(const TensorFormat& f, const float* w, int64_t rows, int64_t cols, const QuantizeOptions& opt,
                        bool error_out, float* out) {
  const int64_t block = std::max<int64_t>(1, (int64_t{64} << 20) / (4 * std::max<int64_t>(cols, 1)));
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t n = std::min(block, rows - r0);
    const float* wb = w + r0 * cols;
    float* ob = out + r0 * cols;
    const std::vector<float> dq = fake_quantize(f, wb, n, cols, opt);
    for (size_t i = 0; i < dq.size(); ++i) ob[i] = error_out ? wb[i] - dq[i] : dq[i];
  }
}

}  // namespace optiq

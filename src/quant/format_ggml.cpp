// Format entry: GGUF 32-weight block types kept as llama.cpp stores them.
//   Q8_0: fp16 d + 32 int8 codes (34 bytes, 8.5 bits a weight), w = d * q
//   Q4_0: fp16 d + 16 bytes of nibbles (18 bytes, 4.5 bits), w = d * (q - 8);
//         byte j holds code j (low nibble) and code j + 16 (high nibble)
// Symmetric: half a bit a weight less than the affine q8g32 / q4g32, which
// store a bias per group. Quantization follows ggml's reference
// (quantize_row_q8_0_ref / q4_0_ref) for QuantMethod::MinMax, so the blocks
// are what llama.cpp would write; QuantMethod::Search also tries scales
// around Q4_0's and keeps the one with the least (importance-weighted) error.
// At run time the blocks are re-laid losslessly into symmetric affine groups
// (quant/ggml_to_affine.h) and run on the affine kernels.
#include <algorithm>
#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "quant/format.h"
#include "quant/ggml_dequant.h"

namespace optiq {

namespace {

constexpr int kBlock = 32;

bool supported(DType t) { return t == DType::Q8_0 || t == DType::Q4_0; }
size_t block_bytes(DType t) { return t == DType::Q8_0 ? 34 : 18; }

void quantize_q8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::abs(x[j]));
  const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
  const uint16_t dh = f32_to_f16(d);
  std::memcpy(out, &dh, 2);
  for (int j = 0; j < kBlock; ++j) out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[j] * id)));
}

// Codes of one Q4_0 block for scale d (ggml's rounding: trunc(x/d + 8.5), capped at 15).
void q4_codes(const float* x, float d, uint8_t* q) {
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kBlock; ++j)
    q[j] = static_cast<uint8_t>(std::clamp(static_cast<int>(x[j] * id + 8.5f), 0, 15));
}

double q4_error(const float* x, const float* imp, float d, const uint8_t* q) {
  const float dr = f16_to_f32(f32_to_f16(d));
  double e = 0;
  for (int j = 0; j < kBlock; ++j) {
    const double r = x[j] - dr * (static_cast<int>(q[j]) - 8);
    e += (imp ? imp[j] : 1.0) * r * r;
  }
  return e;
}

void quantize_q4_0(const float* x, const float* imp, bool search, uint8_t* out) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < kBlock; ++j)
    if (amax < std::abs(x[j])) amax = std::abs(x[j]), max = x[j];
  float d = max / -8.0f;
  uint8_t q[kBlock];
  q4_codes(x, d, q);
  if (search && d != 0.0f) {
    double best = q4_error(x, imp, d, q);
    uint8_t t[kBlock];
    for (int k = 1; k <= 16; ++k) {  // |scale| from 0.80x to 1.10x of ggml's, both signs of the extreme's code
      const float s = 0.80f + 0.02f * static_cast<float>(k - 1);
      for (float sign : {1.0f, -1.0f}) {
        const float dk = d * s * sign;
        q4_codes(x, dk, t);
        const double e = q4_error(x, imp, dk, t);
        if (e < best) best = e, d = dk, std::memcpy(q, t, kBlock);
      }
    }
  }
  const uint16_t dh = f32_to_f16(d);
  std::memcpy(out, &dh, 2);
  for (int j = 0; j < kBlock / 2; ++j) out[2 + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
}

std::string lower_type_name(DType t) {
  std::string s(dtype_name(t));
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

class GgmlKind final : public FormatKind {
 public:
  bool holds(const TensorFormat& f) const override { return f.ggml() != nullptr; }
  std::optional<TensorFormat> parse(std::string_view s, std::string_view, int) const override {
    if (s.starts_with("gguf-")) s.remove_prefix(5);
    if (s == "q8_0") return TensorFormat{GgmlFormat{DType::Q8_0}};
    if (s == "q4_0") return TensorFormat{GgmlFormat{DType::Q4_0}};
    return std::nullopt;
  }
  std::optional<TensorFormat> from_json(const nlohmann::json& v, const std::string& context) const override {
    if (!v.is_object() || !v.contains("gguf")) return std::nullopt;
    check(v["gguf"].is_string(), "{}: \"gguf\" must be a type name such as \"Q8_0\"", context);
    const std::string t = v["gguf"].get<std::string>();
    if (t == "Q8_0") return TensorFormat{GgmlFormat{DType::Q8_0}};
    if (t == "Q4_0") return TensorFormat{GgmlFormat{DType::Q4_0}};
    fail("{}: GGUF type '{}' is not a plan format (Q8_0, Q4_0)", context, t);
  }
  std::string name(const TensorFormat& f) const override { return "gguf-" + lower_type_name(f.ggml()->type); }
  std::string short_name(const TensorFormat& f) const override { return lower_type_name(f.ggml()->type); }
  nlohmann::json to_json(const TensorFormat& f) const override {
    return {{"gguf", std::string(dtype_name(f.ggml()->type))}};
  }
  double bits_per_weight(const TensorFormat& f) const override {
    return 8.0 * static_cast<double>(block_bytes(f.ggml()->type)) / kBlock;
  }
  int64_t bytes(const TensorFormat& f, int64_t rows, int64_t cols) const override {
    return rows * (cols / kBlock) * static_cast<int64_t>(block_bytes(f.ggml()->type));
  }
  bool fits(const TensorFormat&, int64_t cols) const override { return cols > 0 && cols % kBlock == 0; }
  QuantizedMatrix quantize(const TensorFormat& f, const float* w, int64_t rows, int64_t cols,
                           const QuantizeOptions& opt) const override {
    const DType t = f.ggml()->type;
    check(supported(t), "quantize: GGUF type {} is not supported", dtype_name(t));
    const int64_t nb = cols / kBlock;
    QuantizedMatrix q{f, rows, cols, std::nullopt, std::vector<uint8_t>(rows * nb * block_bytes(t))};
    const bool search = opt.method == QuantMethod::Search;
    parallel_for(rows, [&](int64_t r) {
      for (int64_t b = 0; b < nb; ++b) {
        const float* x = w + r * cols + b * kBlock;
        uint8_t* out = q.blocks.data() + (r * nb + b) * block_bytes(t);
        const float* imp = opt.importance ? opt.importance + b * kBlock : nullptr;
        if (t == DType::Q8_0)
          quantize_q8_0(x, out);
        else
          quantize_q4_0(x, imp, search, out);
      }
    }, 16);
    return q;
  }
  std::vector<float> dequantize(const QuantizedMatrix& q) const override {
    const DType t = q.format.ggml()->type;
    check(q.blocks.size() == static_cast<size_t>(q.rows * (q.cols / kBlock)) * block_bytes(t),
          "dequantize: {} bytes for a {}x{} {} matrix", q.blocks.size(), q.rows, q.cols, dtype_name(t));
    std::vector<float> out(static_cast<size_t>(q.rows * q.cols));
    dequantize_row(t, q.blocks.data(), out.data(), q.rows * q.cols);
    return out;
  }
};

}  // namespace

const FormatKind& ggml_format_kind() {
  static const GgmlKind k;
  return k;
}

}  // namespace optiq

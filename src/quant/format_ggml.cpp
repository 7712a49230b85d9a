// Format entry: GGUF block types kept as llama.cpp stores them: the 32-weight
// blocks Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL and the 256-weight Q2_K, Q3_K,
// Q4_K, Q5_K, Q6_K, IQ4_XS (layouts: quant/ggml_dequant.cpp; quantizers:
// quant/ggml_quantize.h). QuantMethod::MinMax quantizes as llama.cpp's
// reference quantizers do (byte for byte for the 32-weight types);
// QuantMethod::Search searches wider scale grids, weighting errors by the
// importance when one is given (as llama.cpp's imatrix does). At run time the
// 32-weight types are re-laid losslessly into affine groups
// (quant/ggml_to_affine.h); k-quants run on their own kernels. A k-quant on
// rows its 256-weight blocks do not divide is stored as llama.cpp's fallback
// 32-weight type (format_for_shape), as llama-quantize does.
//
// The candidate `source` (GgmlFormat::source) is this kind too: a tensor kept
// in the type a GGUF source stores it in. It costs that type's bytes, has no
// fallback (the source's blocks already divide its rows) and quantizes to
// itself: its QuantizedMatrix carries the values it was given (the source's
// dequantized blocks, i.e. the model's weights) as fp32, so fake quantization
// (profiling, measured selection) sees no error, which is the truth: the
// export writes the source's own blocks (ModuleQuantizer keeps the loaded
// matrix; model/gguf_matrix.h writes its storage unchanged).
#include <algorithm>
#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "quant/format.h"
#include "quant/ggml_dequant.h"
#include "quant/ggml_quantize.h"

namespace optiq {

namespace {

// The GGUF block types that are plan formats, in llama.cpp's order of size.
constexpr DType kTypes[] = {DType::Q2_K,  DType::Q3_K, DType::IQ4_XS, DType::Q4_0, DType::IQ4_NL, DType::Q4_1,
                            DType::Q4_K,  DType::Q5_0, DType::Q5_1,   DType::Q5_K, DType::Q6_K,   DType::Q8_0};

bool supported(DType t) { return std::find(std::begin(kTypes), std::end(kTypes), t) != std::end(kTypes); }
bool unresolved(const GgmlFormat& g) { return g.source && g.type == DType::F32; }
int64_t block_elems(DType t) { return block_layout(t).block_elems; }
size_t block_bytes(DType t) { return block_layout(t).block_bytes; }

// llama.cpp's fallback for a 256-weight type whose blocks do not divide a
// row (llama-quant.cpp, tensor_type_fallback): the 32-weight type it writes
// instead (llama.cpp 0.3.36's choices: Q4_0 for Q2_K and Q3_K, though IQ4_NL
// would be better there).
DType fallback_type(DType t) {
  switch (t) {
    case DType::Q2_K: case DType::Q3_K: return DType::Q4_0;
    case DType::IQ4_XS: return DType::IQ4_NL;
    case DType::Q4_K: return DType::Q5_0;
    case DType::Q5_K: return DType::Q5_1;
    case DType::Q6_K: return DType::Q8_0;
    default: return t;
  }
}

// The type a row of `cols` inputs is stored in.
DType stored_type(DType t, int64_t cols) {
  return cols % block_elems(t) == 0 ? t : fallback_type(t);
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
    if (s == "source" || s == "keep") return source_candidate();
    for (DType t : kTypes)
      if (s == lower_type_name(t)) return TensorFormat{GgmlFormat{t}};
    return std::nullopt;
  }
  std::optional<TensorFormat> from_json(const nlohmann::json& v, const std::string& context) const override {
    if (!v.is_object() || !(v.contains("gguf") || v.contains("source"))) return std::nullopt;
    const bool source = v.contains("source");
    check(!source || v["source"] == true, "{}: \"source\" must be true (the tensor kept in its GGUF source's type)",
          context);
    if (source && !v.contains("gguf")) return source_candidate();
    check(v["gguf"].is_string(), "{}: \"gguf\" must be a type name such as \"Q8_0\"", context);
    const std::string t = v["gguf"].get<std::string>();
    std::string names;
    for (DType d : kTypes) {
      if (t == dtype_name(d)) return TensorFormat{GgmlFormat{d, source}};
      names += (names.empty() ? "" : ", ") + std::string(dtype_name(d));
    }
    fail("{}: GGUF type '{}' is not a plan format ({})", context, t, names);
  }
  // The candidate `source` is named "source" for every tensor (profiles and
  // damage tables key it so); printed with the type it keeps ("source-q4_k").
  std::string name(const TensorFormat& f) const override {
    return f.ggml()->source ? "source" : "gguf-" + lower_type_name(f.ggml()->type);
  }
  std::string short_name(const TensorFormat& f) const override {
    const GgmlFormat& g = *f.ggml();
    if (g.source) return unresolved(g) ? "source" : "source-" + lower_type_name(g.type);
    return lower_type_name(g.type);
  }
  nlohmann::json to_json(const TensorFormat& f) const override {
    const GgmlFormat& g = *f.ggml();
    if (unresolved(g)) return {{"source", true}};
    nlohmann::json j = {{"gguf", std::string(dtype_name(g.type))}};
    if (g.source) j["source"] = true;
    return j;
  }
  double bits_per_weight(const TensorFormat& f) const override {
    if (unresolved(*f.ggml())) return 0;  // none until a tensor gives it a type
    const DType t = f.ggml()->type;
    return 8.0 * static_cast<double>(block_bytes(t)) / static_cast<double>(block_elems(t));
  }
  TensorFormat for_shape(const TensorFormat& f, int64_t cols) const override {
    if (f.ggml()->source) return f;  // the source's blocks: no fallback
    return GgmlFormat{stored_type(f.ggml()->type, cols)};
  }
  int64_t bytes(const TensorFormat& f, int64_t rows, int64_t cols) const override {
    check(!unresolved(*f.ggml()), "the candidate 'source' has no size before it is resolved for a tensor "
                                  "(internal error)");
    const DType t = f.ggml()->source ? f.ggml()->type : stored_type(f.ggml()->type, cols);
    return rows * (cols / block_elems(t)) * static_cast<int64_t>(block_bytes(t));
  }
  // A k-quant fits a row its fallback fits (as llama-quantize, except that a
  // row no 32-block divides is not quantized at all rather than kept in F16).
  // `source` fits the tensors it was resolved for (their blocks divide their rows).
  bool fits(const TensorFormat& f, int64_t cols) const override {
    const GgmlFormat& g = *f.ggml();
    if (g.source) return !unresolved(g) && cols > 0 && cols % block_elems(g.type) == 0;
    return cols > 0 && cols % block_elems(stored_type(g.type, cols)) == 0;
  }
  QuantizedMatrix quantize(const TensorFormat& nominal, const float* w, int64_t rows, int64_t cols,
                           const QuantizeOptions& opt) const override {
    if (nominal.ggml()->source) {  // the values themselves (see the top of this file)
      QuantizedMatrix q{nominal, rows, cols, std::nullopt, std::vector<uint8_t>(static_cast<size_t>(rows * cols) * 4)};
      std::memcpy(q.blocks.data(), w, q.blocks.size());
      return q;
    }
    const TensorFormat f = for_shape(nominal, cols);
    const DType t = f.ggml()->type;
    check(supported(t) && ggml_can_quantize(t), "quantize: GGUF type {} is not supported", dtype_name(t));
    check(fits(f, cols), "quantize: {} inputs are not whole {} blocks of {}", cols, dtype_name(t), block_elems(t));
    const size_t row_bytes = static_cast<size_t>(cols / block_elems(t)) * block_bytes(t);
    QuantizedMatrix q{f, rows, cols, std::nullopt, std::vector<uint8_t>(static_cast<size_t>(rows) * row_bytes)};
    const bool thorough = opt.method == QuantMethod::Search;
    parallel_for(rows, [&](int64_t r) {
      ggml_quantize_row(t, w + r * cols, cols, opt.importance, thorough, q.blocks.data() + r * row_bytes);
    }, 4);
    return q;
  }
  std::vector<float> dequantize(const QuantizedMatrix& q) const override {
    if (q.format.ggml()->source) {
      check(q.blocks.size() == static_cast<size_t>(q.rows * q.cols) * 4, "dequantize: {} bytes for a {}x{} source "
            "matrix (internal error)", q.blocks.size(), q.rows, q.cols);
      std::vector<float> out(static_cast<size_t>(q.rows * q.cols));
      std::memcpy(out.data(), q.blocks.data(), q.blocks.size());
      return out;
    }
    const DType t = q.format.ggml()->type;
    check(q.blocks.size() == static_cast<size_t>(q.rows * (q.cols / block_elems(t))) * block_bytes(t),
          "dequantize: {} bytes for a {}x{} {} matrix", q.blocks.size(), q.rows, q.cols, dtype_name(t));
    std::vector<float> out(static_cast<size_t>(q.rows * q.cols));
    dequantize_row(t, q.blocks.data(), out.data(), q.rows * q.cols);
    return out;
  }
};

}  // namespace

bool source_type_keepable(DType stored) { return supported(stored); }

const FormatKind& ggml_format_kind() {
  static const GgmlKind k;
  return k;
}

}  // namespace optiq

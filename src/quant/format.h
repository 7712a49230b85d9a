// Tensor formats, in one registry. A TensorFormat is one of:
//   float                 the model's fp16/bf16 (or fp32): the unquantized reference
//   affine {bits, group}  MLX affine groups, w = scale * q + bias (quant/affine.h)
//   ggml {type}           a GGUF block type as llama.cpp stores it (Q4_0..Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS)
//   ggml {type, source}   the candidate `source`: a tensor kept in the block type a GGUF source
//                         stores it in, its blocks copied to the output byte for byte
// Each kind is one entry (a FormatKind: format_float/affine/ggml.cpp) that
// owns its names, parsing, JSON, bits per weight, bytes for a shape, whether
// it fits a shape, and quantize / dequantize; fake quantization is their
// composition. Plans, profiles, candidate lists, pins, budgets, the solver
// and the quantizer speak only these functions, so adding a format is one
// entry file plus its test (docs/architecture.md).
//
// Spellings accepted by parse_tensor_format (case and spaces ignored):
//   float | f16 | fp16 | bf16 | f32 | none      -> float
//   4 | q4 | q4g64 | q4-g64 | affine-q4-g64      -> affine, 4 bits (group: the default when not given)
//   q8_0 | q4_k | gguf-q6_k | ...                -> ggml blocks
//   source | keep                                -> the source's own type, per tensor (resolve_source_format)
// Printed names: tensor_format_name  "affine-q4-g64" / "gguf-q8_0" / "float" (profiles, plans: stable keys)
//                tensor_format_short "q4g64" / "q8_0" / "float"               (tables, reports)
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/tensor.h"
#include "quant/affine.h"
#include "quant/quantizer.h"

namespace optiq {

// A GGUF block type kept as such (quant/format_ggml.cpp).
// source: the candidate `source` (spelled "source" or "keep"): the tensor's
// own blocks in a GGUF source file, written to the output unchanged (no
// re-quantization; model/quantize_model.cpp copies them). Its cost is the
// source type's bytes and its damage none: its values are the source's
// dequantized blocks, which is what the model holds. One candidate for every
// tensor: `type` is DType::F32 until resolve_source_format gives it the type
// of one tensor; unresolved, it fits no matrix.
struct GgmlFormat {
  DType type = DType::Q8_0;
  bool source = false;
  bool operator==(const GgmlFormat&) const = default;
};

class TensorFormat {
 public:
  TensorFormat() = default;                 // float
  TensorFormat(std::nullopt_t) {}           // float (plans spelled it nullopt before the registry)
  TensorFormat(AffineFormat a) : v_(a) {}
  TensorFormat(GgmlFormat g) : v_(g) {}

  bool is_float() const { return std::holds_alternative<std::monostate>(v_); }
  // True when quantized (not float).
  explicit operator bool() const { return !is_float(); }
  bool has_value() const { return !is_float(); }
  const AffineFormat* affine() const { return std::get_if<AffineFormat>(&v_); }
  const GgmlFormat* ggml() const { return std::get_if<GgmlFormat>(&v_); }
  // The candidate `source` (resolved for a tensor or not).
  bool is_source() const { return ggml() && ggml()->source; }
  // The affine format; throws optiq::Error for any other kind.
  const AffineFormat& operator*() const;
  const AffineFormat* operator->() const { return &**this; }
  // Bits of one weight's code (affine bits; GGUF types: Q2_K 2 .. Q8_0 8; float: 16).
  int code_bits() const;
  // Weights per block (affine group; GGUF: 32, or 256 for the k-quants; 0 for float).
  int group_size() const;
  bool operator==(const TensorFormat&) const = default;

 private:
  std::variant<std::monostate, AffineFormat, GgmlFormat> v_;
};

// A matrix quantized to a format: affine groups (MLX layout) or GGUF blocks
// (rows x cols / 32 blocks as a GGUF file stores them).
struct QuantizedMatrix {
  TensorFormat format;
  int64_t rows = 0, cols = 0;
  std::optional<AffineMatrix> affine;
  std::vector<uint8_t> blocks;
};

// Appends `part` (rows quantized in the same format from the rows that follow
// `into`'s) to `into`: every format quantizes rows on their own, so a matrix
// quantized in row blocks is the matrix quantized whole.
// total_rows: the rows `into` will hold in the end (room is made for them at
// the first append, so the arrays are not copied as they grow).
void append_rows(QuantizedMatrix& into, QuantizedMatrix&& part, int64_t total_rows = 0);

std::string tensor_format_name(const TensorFormat& f);   // "affine-q4-g64" | "gguf-q8_0" | "float"
std::string tensor_format_short(const TensorFormat& f);  // "q4g64" | "q8_0" | "float"

// One format from any spelling above; throws "format '<text>': ..." when it is
// none or invalid (bits, group size, type).
TensorFormat parse_tensor_format(std::string_view text, int default_group_size = 64);

// A list of quantized formats, distinct, in order: "q4g64,q8_0", "4,8" (group
// 64) or a product "2,3,4x32,64" (every bits x every group size, affine),
// which may carry named formats on either side: "2,4x32,64,q8_0".
std::vector<TensorFormat> parse_format_list(std::string_view text);
// The same, affine formats only (an error names any other).
std::vector<AffineFormat> parse_affine_format_list(std::string_view text);

// Plan JSON: {"bits": B, "group_size": G} | {"gguf": "Q8_0"} | "float" (also "f16", "bf16", false).
nlohmann::json tensor_format_to_json(const TensorFormat& f);
// Throws "<source>: <what>: ..." on anything else.
TensorFormat tensor_format_from_json(const nlohmann::json& v, const std::string& source, const std::string& what);

// The candidate `source` (unresolved: fits nothing until resolved for a tensor).
TensorFormat source_candidate();
// Whether a GGUF tensor of this type can be kept as it is (`source`): one of
// the block types above, which optiq runs and writes.
bool source_type_keepable(DType stored);
// `f` for one tensor a source stores as `stored`: the candidate `source`
// becomes that type kept (GgmlFormat{stored, true}) when it is keepable, and
// stays unresolved (fitting nothing: that tensor has no `source` candidate)
// when it is not (F16/F32, or not a GGUF source: pass DType::F32). Any other
// format is returned as it is.
TensorFormat resolve_source_format(const TensorFormat& f, DType stored);

// Can the format store a matrix with `cols` inputs (its group divides cols)?
bool format_fits(const AffineFormat& fmt, int64_t cols);
bool format_fits(const TensorFormat& f, int64_t cols);
// The format a matrix with `cols` inputs is actually stored in: `f` itself,
// or, for a GGUF k-quant whose 256-weight blocks do not divide a row,
// llama.cpp's fallback (what llama-quantize writes for such a tensor): Q2_K
// and Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, IQ4_XS -> IQ4_NL. fits, bytes and
// quantize all go through it, so a plan that names q4_k for a 576-wide
// matrix gets, counts and ships Q5_0 blocks.
TensorFormat format_for_shape(const TensorFormat& f, int64_t cols);
// tensor_format_short, naming the fallback when one applies: "q4_k→q5_0".
std::string tensor_format_label(const TensorFormat& f, int64_t cols);
// Storage bits per weight (float = 16).
double format_bits_per_weight(const TensorFormat& f);
// Bytes of a {rows, cols} matrix in the format as plans count them (affine:
// fp16 scale and bias per group; float: 2 bytes a weight).
int64_t format_matrix_bytes(const TensorFormat& f, int64_t rows, int64_t cols);

// Quantizes a row-major {rows, cols} fp32 matrix (f must be quantized and fit).
QuantizedMatrix quantize_matrix(const TensorFormat& f, const float* w, int64_t rows, int64_t cols,
                                const QuantizeOptions& opt = {});
std::vector<float> dequantize_matrix(const QuantizedMatrix& q);
// dequantize(quantize(w)); float returns w unchanged.
std::vector<float> fake_quantize(const TensorFormat& f, const float* w, int64_t rows, int64_t cols,
                                 const QuantizeOptions& opt = {});
// fake_quantize into `out` (rows x cols), or with error_out the error w - Ŵ,
// made in blocks of rows (every format rounds rows on their own), so that no
// second whole-matrix copy is held (an 8B lm_head: 2 GB of fp32).
void fake_quantize_into(const TensorFormat& f, const float* w, int64_t rows, int64_t cols, const QuantizeOptions& opt,
                        bool error_out, float* out);

// One kind of format: what each entry file implements (format_float.cpp,
// format_affine.cpp, format_ggml.cpp), listed in format.cpp.
class FormatKind {
 public:
  virtual ~FormatKind() = default;
  virtual bool holds(const TensorFormat& f) const = 0;
  // Parses a squeezed, lower-case spelling; nullopt when it is not this kind's.
  virtual std::optional<TensorFormat> parse(std::string_view s, std::string_view text, int default_group) const = 0;
  virtual std::optional<TensorFormat> from_json(const nlohmann::json& v, const std::string& context) const = 0;
  virtual std::string name(const TensorFormat& f) const = 0;
  virtual std::string short_name(const TensorFormat& f) const = 0;
  virtual nlohmann::json to_json(const TensorFormat& f) const = 0;
  virtual double bits_per_weight(const TensorFormat& f) const = 0;
  virtual int64_t bytes(const TensorFormat& f, int64_t rows, int64_t cols) const = 0;
  virtual bool fits(const TensorFormat& f, int64_t cols) const = 0;
  // The format a row of `cols` inputs is stored in (format_for_shape).
  virtual TensorFormat for_shape(const TensorFormat& f, int64_t) const { return f; }
  virtual QuantizedMatrix quantize(const TensorFormat& f, const float* w, int64_t rows, int64_t cols,
                                   const QuantizeOptions& opt) const = 0;
  virtual std::vector<float> dequantize(const QuantizedMatrix& q) const = 0;
};

const FormatKind& float_format_kind();
const FormatKind& affine_format_kind();
const FormatKind& ggml_format_kind();

}  // namespace optiq

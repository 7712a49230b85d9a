// One weight matrix {out, in} in a storage the runtime multiplies directly:
// fp32 (owned, or borrowed from a memory-mapped file) or MLX-style packed
// affine groups (owned, or borrowed). The accuracy path (fake quantization:
// quantize, dequantize, fp32) and the runtime path (packed kernels) both go
// through Linear::forward, so they share everything but the storage.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/kquant_matmul.h"
#include "quant/affine.h"

namespace optiq {

// How activations are rounded before a product. Exact keeps fp32 (optiq's
// default). The others reproduce llama.cpp's CPU numerics, which converts
// activations to the weight type's "vec_dot" partner: 8-bit blocks of 32 with
// an fp16 scale (Q8_0/Q8_1, for Q4_0..Q8_0 weights), 8-bit blocks of 256 with
// an fp32 scale (Q8_K, for k-quants), or fp16/bf16 (for F16/BF16 weights).
enum class ActRounding : uint8_t { Exact, Q8Block32, Q8KBlock256, F16, BF16 };

class Linear {
 public:
  Linear() = default;
  static Linear from_f32(std::vector<float> w, int64_t rows, int64_t cols);
  // Borrowed: `w` must outlive the Linear (it points into a mapped file).
  static Linear from_f32_view(const float* w, int64_t rows, int64_t cols);
  // Borrowed fp16 (bf16 = false) or bf16 words, e.g. an HF checkpoint's
  // tensor in its mapped file: multiplied directly, never widened in memory.
  static Linear from_half_view(const uint16_t* w, bool bf16, int64_t rows, int64_t cols);
  static Linear from_affine(AffineMatrix m);
  // Borrowed: the view's arrays must outlive the Linear.
  static Linear from_affine_view(const AffineMatrixView& v);
  // Borrowed GGUF k-quant blocks (Q2_K..Q6_K, cols a multiple of 256), run
  // packed by kernels/kquant_matmul.h; `data` must outlive the Linear.
  static Linear from_ggml_view(DType dtype, const void* data, int64_t rows, int64_t cols);
  // Owned copy of such blocks (e.g. rows reordered at load).
  static Linear from_ggml(DType dtype, std::vector<uint8_t> blocks, int64_t rows, int64_t cols);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  bool empty() const { return rows_ == 0; }
  bool is_affine() const { return affine_view_.has_value(); }
  // Valid only when is_affine().
  const AffineMatrixView& affine() const { return *affine_view_; }
  bool is_kquant() const { return kq_view_.has_value(); }
  // Valid only when is_kquant().
  const KQuantView& kquant() const { return *kq_view_; }

  void set_act_rounding(ActRounding r) { act_rounding_ = r; }
  ActRounding act_rounding() const { return act_rounding_; }

  // Y[n x rows] = X[n x cols] . W^T (row-major, fp32 accumulation).
  void forward(const float* x, int64_t n, float* y) const;
  // One row of W as fp32 (embedding lookups).
  void row(int64_t r, float* out) const;
  std::vector<float> to_f32() const;
  // Bytes of weight storage (scales and biases included).
  size_t bytes() const;
  // "F32" or e.g. "affine-q4-g64".
  std::string format() const;

 private:
  const float* f32() const { return owned_.empty() ? f32_ : owned_.data(); }
  int64_t rows_ = 0, cols_ = 0;
  std::vector<float> owned_;
  const float* f32_ = nullptr;
  const uint16_t* half_ = nullptr;  // fp16/bf16 storage (borrowed)
  bool half_bf16_ = false;
  // Affine storage: owned_affine_ holds the arrays when owned; the view points
  // either into it (vector buffers survive moves) or into a mapped file.
  std::shared_ptr<const AffineMatrix> owned_affine_;
  std::optional<AffineMatrixView> affine_view_;
  std::shared_ptr<const std::vector<uint8_t>> owned_blocks_;
  std::optional<KQuantView> kq_view_;
  ActRounding act_rounding_ = ActRounding::Exact;
};

// Rounds n rows of `cols` activations in place as `r` says (see ActRounding).
void round_activations(ActRounding r, float* x, int64_t n, int64_t cols);

}  // namespace optiq

// One weight matrix {out, in} in host memory, in a storage the runtime
// multiplies directly: fp32 (owned, or borrowed from a memory-mapped file),
// fp16/bf16 (borrowed), MLX-style packed affine groups (owned or borrowed) or
// GGUF k-quant blocks (owned or borrowed). A Linear only holds the weights:
// backends multiply its view() (backend/backend.h). The accuracy path (fake
// quantization: quantize, dequantize, fp32) and the runtime path (packed
// kernels) differ only in the storage.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/weight_view.h"
#include "quant/format.h"

namespace optiq {

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
  // A matrix from the format registry (quant/format.h): affine groups as they
  // are, GGUF 32-blocks re-laid losslessly into symmetric affine groups.
  static Linear from_quantized(QuantizedMatrix q);

  int64_t rows() const { return view_.rows; }
  int64_t cols() const { return view_.cols; }
  bool empty() const { return view_.rows == 0; }
  // The storage as the kernels read it (valid while this Linear, or a copy of
  // it, lives: copies share owned arrays).
  const WeightView& view() const { return view_; }
  bool is_affine() const { return view_.as<AffineMatrixView>() != nullptr; }
  // Valid only when is_affine().
  const AffineMatrixView& affine() const { return *view_.as<AffineMatrixView>(); }
  bool is_kquant() const { return view_.as<KQuantView>() != nullptr; }
  // Valid only when is_kquant().
  const KQuantView& kquant() const { return *view_.as<KQuantView>(); }

  void set_act_rounding(ActRounding r) { view_.act = r; }
  ActRounding act_rounding() const { return view_.act; }

  // One row of W as fp32 (embedding lookups).
  void row(int64_t r, float* out) const { weight_row(view_, r, out); }
  std::vector<float> to_f32() const;
  // Bytes of weight storage (scales and biases included).
  size_t bytes() const { return weight_bytes(view_); }
  // "F32" or e.g. "affine-q4-g64".
  std::string format() const;

  // True when the storage is borrowed (points into a mapped file), not owned.
  bool borrows() const { return !owned_f32_ && !owned_affine_ && !owned_blocks_; }
  // True when both read the same weight array.
  bool shares_storage_with(const Linear& other) const;
  // Borrowed storage: its pages leave the process's resident memory now (the
  // file is re-read if they are touched again). For streamed exports, once a
  // matrix is quantized. No effect on owned storage.
  void release_pages() const;
  // Borrowed storage: asks the kernel to start reading rows [r0, r1) from the
  // file now (MADV_WILLNEED), so that a streamed pass overlaps reading with work.
  void prefetch_rows(int64_t r0, int64_t r1) const;

 private:
  WeightView view_;
  // Owned storage the view points into (shared so that copies are cheap and
  // vector buffers survive moves); empty when the view borrows.
  std::shared_ptr<const std::vector<float>> owned_f32_;
  std::shared_ptr<const AffineMatrix> owned_affine_;
  std::shared_ptr<const std::vector<uint8_t>> owned_blocks_;
};

}  // namespace optiq

// A weight matrix {rows, cols} as the kernels read it, in host memory and
// borrowed (the owner is a Linear, a mapped file, or a backend upload):
// fp32, fp16/bf16, MLX-style affine groups, or GGUF k-quant blocks. Plus how
// its input activations are rounded before the product (llama.cpp numerics).
// The CPU backend multiplies a WeightView directly; a GPU backend copies it.
#pragma once
#include <cstdint>
#include <variant>

#include "kernels/kquant_matmul.h"
#include "quant/affine.h"

namespace optiq {

// How activations are rounded before a product. Exact keeps fp32 (optiq's
// default). The others reproduce llama.cpp's CPU numerics, which converts
// activations to the weight type's "vec_dot" partner: 8-bit blocks of 32 with
// an fp16 scale (Q8_0/Q8_1, for Q4_0..Q8_0 weights), 8-bit blocks of 256 with
// an fp32 scale (Q8_K, for k-quants), or fp16/bf16 (for F16/BF16 weights).
enum class ActRounding : uint8_t { Exact, Q8Block32, Q8KBlock256, F16, BF16 };

// Rounds n rows of `cols` activations in place as `r` says.
void round_activations(ActRounding r, float* x, int64_t n, int64_t cols);

struct F32Weights {
  const float* data = nullptr;  // rows x cols
};
struct HalfWeights {
  const uint16_t* data = nullptr;  // rows x cols fp16 or bf16 words
  bool bf16 = false;
};

struct WeightView {
  int64_t rows = 0, cols = 0;
  std::variant<F32Weights, HalfWeights, AffineMatrixView, KQuantView> storage;
  ActRounding act = ActRounding::Exact;

  template <class T>
  const T* as() const { return std::get_if<T>(&storage); }
};

// Y[n x rows] = X[n x cols] . W^T (row-major, fp32 accumulation), on the CPU
// kernels of the running ISA.
void weight_matmul(const WeightView& w, const float* x, int64_t n, float* y);
// Row r of W as fp32 (embedding lookups, to_f32).
void weight_row(const WeightView& w, int64_t r, float* out);
// Bytes of the storage (scales and biases included).
size_t weight_bytes(const WeightView& w);

}  // namespace optiq

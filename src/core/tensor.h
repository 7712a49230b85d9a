// A named, typed, shaped view of tensor bytes that live elsewhere (usually in
// a MappedFile). Shapes are outermost-first, as in PyTorch/safetensors: a
// linear layer's weight is {out_features, in_features}.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace optiq {

// Storage types optiq can read. The ggml block types keep ggml's numbering in
// formats/gguf.cpp; here they are just names.
enum class DType : uint8_t {
  F32, F16, BF16,
  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
  Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
  IQ4_NL, IQ4_XS,  // 4-bit indices into a fixed non-linear table of 16 levels
  U32,    // MLX packed quantized words
  I32, I64, U8,
};

std::string_view dtype_name(DType t);

// ggml block types store `block_elems` weights in `block_bytes` bytes; plain
// types have block_elems == 1.
struct BlockLayout {
  int block_elems;
  int block_bytes;
};
BlockLayout block_layout(DType t);

// Bytes needed to store `n` elements (n must be a multiple of block_elems).
size_t dtype_bytes(DType t, int64_t n);

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // outermost first
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace optiq

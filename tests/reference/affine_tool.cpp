// Helper for tests/reference/test_mlx_pack.py: quantizes raw little-endian f32
// {rows, cols} with optiq and writes MLX-layout tensors to a safetensors file:
//   weight  U32 {rows, cols*bits/32}, scales / biases F16|BF16 {rows, cols/group},
//   dequant F32 {rows, cols} (optiq's own dequantization).
// usage: affine_tool IN.f32 ROWS COLS BITS GROUP f16|bf16 minmax|search OUT.safetensors
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "formats/safetensors.h"
#include "quant/quantizer.h"

namespace {
template <typename T>
std::span<const uint8_t> as_bytes(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}
}  // namespace

int main(int argc, char** argv) {
  using namespace optiq;
  try {
    check(argc == 9, "usage: affine_tool IN.f32 ROWS COLS BITS GROUP f16|bf16 minmax|search OUT.safetensors");
    const std::string in = argv[1];
    const int64_t rows = std::stoll(argv[2]), cols = std::stoll(argv[3]);
    const AffineFormat fmt{std::stoi(argv[4]), std::stoi(argv[5])};
    const std::string st = argv[6], method = argv[7];
    check(st == "f16" || st == "bf16", "{}: scale type must be f16 or bf16", st);
    check(method == "minmax" || method == "search", "{}: method must be minmax or search", method);
    std::ifstream f(in, std::ios::binary);
    check(f.good(), "{}: cannot open", in);
    std::vector<char> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    check(static_cast<int64_t>(raw.size()) == rows * cols * 4, "{}: {} bytes, expected {} for {}x{} f32", in,
          raw.size(), rows * cols * 4, rows, cols);
    std::vector<float> w(rows * cols);
    std::memcpy(w.data(), raw.data(), raw.size());
    QuantizeOptions opt;
    opt.method = method == "minmax" ? QuantMethod::MinMax : QuantMethod::Search;
    opt.bf16_scales = st == "bf16";
    AffineMatrix m = quantize(w.data(), rows, cols, fmt, opt);
    std::vector<float> deq = dequantize(m.view());
    const DType sd = opt.bf16_scales ? DType::BF16 : DType::F16;
    SafetensorsWriter wr;
    wr.add("weight", DType::U32, {rows, m.view().words_per_row()}, as_bytes(m.packed));
    wr.add("scales", sd, {rows, m.view().groups_per_row()}, as_bytes(m.scales));
    wr.add("biases", sd, {rows, m.view().groups_per_row()}, as_bytes(m.biases));
    wr.add("dequant", DType::F32, {rows, cols}, as_bytes(deq));
    wr.write(argv[8]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "affine_tool: %s\n", e.what());
    return 1;
  }
  return 0;
}

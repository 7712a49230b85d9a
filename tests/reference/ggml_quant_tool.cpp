// Helper for tests/reference/test_gguf_quantize.py: quantizes raw
// little-endian f32 {rows, cols} to a GGUF block type with optiq's format
// registry and writes the blocks and optiq's own dequantization of them.
// usage: ggml_quant_tool IN.f32 ROWS COLS TYPE minmax|search IMPORTANCE.f32|- OUT.blocks OUT_DEQUANT.f32
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/error.h"
#include "quant/format.h"

namespace {
std::vector<float> read_f32(const std::string& path, int64_t n) {
  std::ifstream f(path, std::ios::binary);
  optiq::check(f.good(), "{}: cannot open", path);
  std::vector<char> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  optiq::check(static_cast<int64_t>(raw.size()) == n * 4, "{}: {} bytes, expected {}", path, raw.size(), n * 4);
  std::vector<float> v(static_cast<size_t>(n));
  std::memcpy(v.data(), raw.data(), raw.size());
  return v;
}
void write(const std::string& path, const void* p, size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(p), static_cast<std::streamsize>(bytes));
  optiq::check(f.good(), "{}: cannot write", path);
}
}  // namespace

int main(int argc, char** argv) {
  using namespace optiq;
  try {
    check(argc == 9, "usage: ggml_quant_tool IN.f32 ROWS COLS TYPE minmax|search IMPORTANCE.f32|- OUT.blocks OUT.f32");
    const int64_t rows = std::stoll(argv[2]), cols = std::stoll(argv[3]);
    const TensorFormat f = parse_tensor_format(argv[4]);
    check(f.ggml() != nullptr, "{}: not a GGUF block type", argv[4]);
    const std::string method = argv[5], imp_path = argv[6];
    check(method == "minmax" || method == "search", "{}: method must be minmax or search", method);
    const std::vector<float> w = read_f32(argv[1], rows * cols);
    std::vector<float> imp;
    QuantizeOptions opt;
    opt.method = method == "minmax" ? QuantMethod::MinMax : QuantMethod::Search;
    if (imp_path != "-") {
      imp = read_f32(imp_path, cols);
      opt.importance = imp.data();
    }
    const QuantizedMatrix q = quantize_matrix(f, w.data(), rows, cols, opt);
    const std::vector<float> dq = dequantize_matrix(q);
    write(argv[7], q.blocks.data(), q.blocks.size());
    write(argv[8], dq.data(), dq.size() * 4);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ggml_quant_tool: %s\n", e.what());
    return 1;
  }
}

// Test helper for tests/reference/test_gguf_dequant.py (not part of the CLI).
//
//   gguf_dump FILE.gguf OUT.bin [MAX_ROWS]
//
// Parses FILE with optiq::GgufFile and prints one line per metadata entry and
// per tensor (tab-separated):
//   M <key> <type> <elem type or -> <array length or -> <value via metadata_to_string>
//   T <name> <dtype> <shape, comma-separated, outermost first>
// and writes the dequantized floats to OUT.bin: per tensor
//   u32 name length, name bytes, u64 row length, u64 n rows, u64 row index[n], f32 values[n * row length].
// Tensors with more than MAX_ROWS rows (default 64) dump MAX_ROWS rows spread
// over the tensor (first and last included) through dequantize_row; smaller
// ones go through dequantize() (the parallel whole-tensor path).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"
#include "formats/gguf.h"
#include "quant/ggml_dequant.h"

namespace {

void put(std::FILE* f, const void* p, size_t n) {
  if (n && std::fwrite(p, 1, n, f) != n) optiq::fail("gguf_dump: write failed");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: gguf_dump FILE.gguf OUT.bin [MAX_ROWS]\n");
    return 2;
  }
  try {
    const int64_t max_rows = argc > 3 ? std::atoll(argv[3]) : 64;
    optiq::GgufFile g(argv[1]);
    using VT = optiq::GgufValue::Type;
    for (const auto& [k, v] : g.metadata()) {
      std::string val = g.metadata_to_string(v, 4);
      for (char& c : val)
        if (c == '\t' || c == '\n') c = ' ';
      fmt::print("M\t{}\t{}\t{}\t{}\t{}\n", k, optiq::gguf_type_name(v.type),
                 v.type == VT::ARRAY ? optiq::gguf_type_name(v.elem_type) : "-",
                 v.type == VT::ARRAY ? fmt::format("{}", v.size()) : "-", val);
    }
    std::FILE* f = std::fopen(argv[2], "wb");
    if (!f) optiq::fail("{}: cannot create", argv[2]);
    std::vector<float> buf;
    for (const auto& t : g.tensors()) {
      std::string shape;
      for (size_t i = 0; i < t.shape.size(); ++i) {
        if (i) shape += ',';
        shape += std::to_string(t.shape[i]);
      }
      fmt::print("T\t{}\t{}\t{}\n", t.name, optiq::dtype_name(t.dtype), shape);
      const uint64_t row = static_cast<uint64_t>(t.shape.back());
      const uint64_t rows = static_cast<uint64_t>(t.numel()) / row;
      std::vector<uint64_t> idx;
      if (static_cast<int64_t>(rows) <= max_rows) {
        for (uint64_t r = 0; r < rows; ++r) idx.push_back(r);
        buf = optiq::dequantize(t);
      } else {
        for (int64_t k = 0; k < max_rows; ++k) idx.push_back(k * (rows - 1) / (max_rows - 1));
        buf.resize(idx.size() * row);
        const size_t row_bytes = optiq::dtype_bytes(t.dtype, static_cast<int64_t>(row));
        for (size_t k = 0; k < idx.size(); ++k)
          optiq::dequantize_row(t.dtype, static_cast<const uint8_t*>(t.data) + idx[k] * row_bytes,
                                buf.data() + k * row, static_cast<int64_t>(row));
      }
      const uint32_t nl = static_cast<uint32_t>(t.name.size());
      const uint64_t n = idx.size();
      put(f, &nl, 4);
      put(f, t.name.data(), nl);
      put(f, &row, 8);
      put(f, &n, 8);
      put(f, idx.data(), 8 * n);
      put(f, buf.data(), 4 * buf.size());
    }
    if (std::fclose(f) != 0) optiq::fail("{}: write failed", argv[2]);
  } catch (const optiq::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}

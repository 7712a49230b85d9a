// The GGUF block entry of the format registry (quant/format_ggml.cpp): Q8_0
// and Q4_0 blocks byte for byte as ggml's reference quantizer writes them
// (written out plainly here), names, sizes and JSON, the search never worse
// than the reference, and dequantization equal to quant/ggml_dequant.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/half.h"
#include "quant/format.h"
#include "quant/ggml_dequant.h"
#include "test_util.h"

namespace optiq {
namespace {

const TensorFormat kQ8{GgmlFormat{DType::Q8_0}}, kQ4{GgmlFormat{DType::Q4_0}};

// ggml quantize_row_q8_0_ref / quantize_row_q4_0_ref, one block of 32.
std::vector<uint8_t> ref_q8_0(const float* x) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127, id = d ? 1 / d : 0;
  std::vector<uint8_t> b(34);
  const uint16_t h = f32_to_f16(d);
  std::memcpy(b.data(), &h, 2);
  for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(roundf(x[j] * id)));
  return b;
}
std::vector<uint8_t> ref_q4_0(const float* x) {
  float amax = 0, max = 0;
  for (int j = 0; j < 32; ++j)
    if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
  const float d = max / -8, id = d ? 1 / d : 0;
  std::vector<uint8_t> b(18);
  const uint16_t h = f32_to_f16(d);
  std::memcpy(b.data(), &h, 2);
  for (int j = 0; j < 16; ++j) {
    const int8_t x0 = std::min<int8_t>(15, static_cast<int8_t>(x[j] * id + 8.5f));
    const int8_t x1 = std::min<int8_t>(15, static_cast<int8_t>(x[16 + j] * id + 8.5f));
    b[2 + j] = static_cast<uint8_t>(x0 | (x1 << 4));
  }
  return b;
}

TEST(FormatGgml, NamesSizesJson) {
  for (const char* s : {"q8_0", "Q8_0", "gguf-q8_0", " q8_0 "}) EXPECT_EQ(parse_tensor_format(s), kQ8) << s;
  EXPECT_EQ(parse_tensor_format("q4_0"), kQ4);
  EXPECT_EQ(tensor_format_name(kQ8), "gguf-q8_0");
  EXPECT_EQ(tensor_format_short(kQ4), "q4_0");
  for (const TensorFormat& f : {kQ8, kQ4}) {
    EXPECT_EQ(parse_tensor_format(tensor_format_name(f)), f);
    EXPECT_EQ(tensor_format_from_json(tensor_format_to_json(f), "t", "x"), f);
    EXPECT_TRUE(format_fits(f, 96));
    EXPECT_FALSE(format_fits(f, 100));
    EXPECT_FALSE(f.is_float());
    EXPECT_EQ(f.group_size(), 32);
  }
  EXPECT_EQ(tensor_format_to_json(kQ8), (nlohmann::json{{"gguf", "Q8_0"}}));
  EXPECT_DOUBLE_EQ(format_bits_per_weight(kQ8), 8.5);
  EXPECT_DOUBLE_EQ(format_bits_per_weight(kQ4), 4.5);
  EXPECT_EQ(format_matrix_bytes(kQ8, 3, 64), 3 * 2 * 34);
  EXPECT_EQ(format_matrix_bytes(kQ4, 5, 96), 5 * 3 * 18);
  EXPECT_EQ(kQ8.code_bits(), 8);
  EXPECT_EQ(kQ4.code_bits(), 4);
  EXPECT_THROW(tensor_format_from_json(nlohmann::json{{"gguf", "Q4_K"}}, "t", "x"), Error);
  EXPECT_THROW(tensor_format_from_json(nlohmann::json{{"gguf", 3}}, "t", "x"), Error);
  EXPECT_THROW(parse_tensor_format("q3_0"), Error);
  EXPECT_THROW((void)*kQ8, Error);  // not affine
  EXPECT_EQ(parse_format_list("q4g64, q8_0,q8_0"), (std::vector<TensorFormat>{AffineFormat{4, 64}, kQ8}));
  EXPECT_THROW(parse_affine_format_list("q4g64,q8_0"), Error);
  EXPECT_EQ(parse_format_list("q4_0,2,4x32,64,q8_0"),
            (std::vector<TensorFormat>{kQ4, AffineFormat{2, 32}, AffineFormat{2, 64}, AffineFormat{4, 32},
                                       AffineFormat{4, 64}, kQ8}));
  EXPECT_THROW(parse_format_list("q8_0x32"), Error);
}

TEST(FormatGgml, MinMaxIsGgmlsReferenceByteForByte) {
  const int64_t rows = 7, cols = 96;
  const auto w = test::random_floats(rows * cols, 21, 0.7f);
  QuantizeOptions mm;
  mm.method = QuantMethod::MinMax;
  for (const TensorFormat& f : {kQ8, kQ4}) {
    const QuantizedMatrix q = quantize_matrix(f, w.data(), rows, cols, mm);
    ASSERT_FALSE(q.affine.has_value());
    std::vector<uint8_t> want;
    for (int64_t b = 0; b < rows * cols / 32; ++b) {
      const auto blk = f == kQ8 ? ref_q8_0(&w[b * 32]) : ref_q4_0(&w[b * 32]);
      want.insert(want.end(), blk.begin(), blk.end());
    }
    EXPECT_EQ(q.blocks, want) << tensor_format_short(f);
    std::vector<float> dq(rows * cols);
    dequantize_row(f.ggml()->type, q.blocks.data(), dq.data(), rows * cols);
    EXPECT_EQ(dequantize_matrix(q), dq);
    EXPECT_EQ(fake_quantize(f, w.data(), rows, cols, mm), dq);
    // Within half a step of the block's scale (plus its fp16 rounding).
    for (int64_t b = 0; b < rows * cols / 32; ++b) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(w[b * 32 + j]));
      const float step = f == kQ8 ? amax / 127 : amax / 8;
      for (int j = 0; j < 32; ++j)
        ASSERT_LE(std::fabs(dq[b * 32 + j] - w[b * 32 + j]), (f == kQ8 ? 0.51f : 1.01f) * step + 1e-3f * amax);
    }
  }
}

TEST(FormatGgml, SearchNeverWorseThanReference) {
  const int64_t rows = 9, cols = 64;
  const auto w = test::random_floats(rows * cols, 22);
  const auto imp_raw = test::random_floats(cols, 23);
  std::vector<float> imp(cols);
  for (int64_t j = 0; j < cols; ++j) imp[j] = 0.1f + std::fabs(imp_raw[j]);
  QuantizeOptions mm, search;
  mm.method = QuantMethod::MinMax;
  mm.importance = search.importance = imp.data();
  auto err = [&](const std::vector<float>& dq) {
    double e = 0;
    for (int64_t i = 0; i < rows * cols; ++i) e += imp[i % cols] * (w[i] - dq[i]) * (w[i] - dq[i]);
    return e;
  };
  const double e_ref = err(fake_quantize(kQ4, w.data(), rows, cols, mm));
  const double e_search = err(fake_quantize(kQ4, w.data(), rows, cols, search));
  EXPECT_LE(e_search, e_ref);
  EXPECT_LT(e_search, 0.98 * e_ref);  // and it does find better scales on random data
}

TEST(FormatGgml, RejectsShapesThatDoNotFit) {
  const auto w = test::random_floats(4 * 40, 3);
  EXPECT_THROW(quantize_matrix(kQ8, w.data(), 4, 40), Error);
  EXPECT_THROW(quantize_matrix(TensorFormat{}, w.data(), 4, 40), Error);
  EXPECT_EQ(fake_quantize(TensorFormat{}, w.data(), 4, 40), w);
}

}  // namespace
}  // namespace optiq

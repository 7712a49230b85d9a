// The GGUF block entry of the format registry (quant/format_ggml.cpp): Q8_0
// and Q4_0 blocks byte for byte as ggml's reference quantizer writes them
// (written out plainly here), names, sizes and JSON, the search never worse
// than the reference, and dequantization equal to quant/ggml_dequant.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

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
  EXPECT_THROW(tensor_format_from_json(nlohmann::json{{"gguf", "IQ3_S"}}, "t", "x"), Error);
  EXPECT_THROW(tensor_format_from_json(nlohmann::json{{"gguf", 3}}, "t", "x"), Error);
  EXPECT_THROW(parse_tensor_format("q3_0"), Error);
  EXPECT_THROW((void)*kQ8, Error);  // not affine
  EXPECT_EQ(parse_format_list("q4g64, q8_0,q8_0"), (std::vector<TensorFormat>{AffineFormat{4, 64}, kQ8}));
  EXPECT_THROW(parse_affine_format_list("q4g64,q8_0"), Error);
  EXPECT_EQ(parse_format_list("q4_0,2,4x32,64,q8_0"),
            (std::vector<TensorFormat>{kQ4, AffineFormat{2, 32}, AffineFormat{2, 64}, AffineFormat{4, 32},
                                       AffineFormat{4, 64}, kQ8}));
  EXPECT_THROW(parse_format_list("q8_0x32"), Error);
  EXPECT_EQ(parse_format_list("iq4_xs,2,4x32,iq4_nl"),
            (std::vector<TensorFormat>{TensorFormat{GgmlFormat{DType::IQ4_XS}}, AffineFormat{2, 32},
                                       AffineFormat{4, 32}, TensorFormat{GgmlFormat{DType::IQ4_NL}}}));
  EXPECT_EQ(parse_format_list("q2_k,iq4_xs,q8_0").size(), 3u);
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

// ggml quantize_row_q4_1_ref / q5_0_ref / q5_1_ref, one block of 32 (written out plainly).
std::vector<uint8_t> ref_q4_1(const float* x) {
  float lo = x[0], hi = x[0];
  for (int j = 1; j < 32; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
  const float d = (hi - lo) / 15, id = d ? 1 / d : 0;
  std::vector<uint8_t> b(20);
  const uint16_t hd = f32_to_f16(d), hm = f32_to_f16(lo);
  std::memcpy(b.data(), &hd, 2);
  std::memcpy(b.data() + 2, &hm, 2);
  for (int j = 0; j < 16; ++j) {
    const uint8_t x0 = std::min<uint8_t>(15, static_cast<int8_t>((x[j] - lo) * id + 0.5f));
    const uint8_t x1 = std::min<uint8_t>(15, static_cast<int8_t>((x[16 + j] - lo) * id + 0.5f));
    b[4 + j] = static_cast<uint8_t>(x0 | (x1 << 4));
  }
  return b;
}
std::vector<uint8_t> ref_q5(const float* x, bool with_min) {
  float lo = x[0], hi = x[0], amax = 0, max = 0;
  for (int j = 0; j < 32; ++j) {
    lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
    if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
  }
  const float d = with_min ? (hi - lo) / 31 : max / -16, id = d ? 1 / d : 0;
  std::vector<uint8_t> b(with_min ? 24 : 22);
  const uint16_t hd = f32_to_f16(d), hm = f32_to_f16(lo);
  std::memcpy(b.data(), &hd, 2);
  if (with_min) std::memcpy(b.data() + 2, &hm, 2);
  uint32_t qh = 0;
  const size_t qs = with_min ? 8 : 6;
  for (int j = 0; j < 16; ++j) {
    const uint8_t x0 = with_min ? static_cast<uint8_t>((x[j] - lo) * id + 0.5f)
                                : std::min<uint8_t>(31, static_cast<int8_t>(x[j] * id + 16.5f));
    const uint8_t x1 = with_min ? static_cast<uint8_t>((x[16 + j] - lo) * id + 0.5f)
                                : std::min<uint8_t>(31, static_cast<int8_t>(x[16 + j] * id + 16.5f));
    b[qs + j] = static_cast<uint8_t>((x0 & 0x0f) | ((x1 & 0x0f) << 4));
    qh |= ((x0 & 0x10u) >> 4) << j;
    qh |= ((x1 & 0x10u) >> 4) << (j + 16);
  }
  std::memcpy(b.data() + (with_min ? 4 : 2), &qh, 4);
  return b;
}

const DType kAllTypes[] = {DType::Q2_K, DType::Q3_K, DType::Q4_0, DType::Q4_1, DType::Q4_K,  DType::Q5_0,
                           DType::Q5_1, DType::Q5_K, DType::Q6_K, DType::Q8_0, DType::IQ4_NL, DType::IQ4_XS};

TEST(FormatGgml, EveryTypeNamesBitsAndFit) {
  const struct {
    const char* name;
    double bpw;
    int bits, block;
  } want[] = {{"q2_k", 2.625, 2, 256}, {"q3_k", 3.4375, 3, 256}, {"q4_0", 4.5, 4, 32},  {"q4_1", 5.0, 4, 32},
              {"q4_k", 4.5, 4, 256},   {"q5_0", 5.5, 5, 32},      {"q5_1", 6.0, 5, 32}, {"q5_k", 5.5, 5, 256},
              {"q6_k", 6.5625, 6, 256}, {"q8_0", 8.5, 8, 32}, {"iq4_nl", 4.5, 4, 32},   {"iq4_xs", 4.25, 4, 256}};
  for (size_t i = 0; i < std::size(kAllTypes); ++i) {
    const TensorFormat f{GgmlFormat{kAllTypes[i]}};
    EXPECT_EQ(parse_tensor_format(want[i].name), f) << want[i].name;
    EXPECT_EQ(tensor_format_short(f), want[i].name);
    EXPECT_EQ(parse_tensor_format(tensor_format_name(f)), f);
    EXPECT_EQ(tensor_format_from_json(tensor_format_to_json(f), "t", "x"), f);
    EXPECT_DOUBLE_EQ(format_bits_per_weight(f), want[i].bpw) << want[i].name;
    EXPECT_EQ(f.code_bits(), want[i].bits) << want[i].name;
    EXPECT_EQ(f.group_size(), want[i].block) << want[i].name;
    EXPECT_TRUE(format_fits(f, 512));
    EXPECT_TRUE(format_fits(f, 96)) << want[i].name;  // k-quants through llama.cpp's fallback
    EXPECT_FALSE(format_fits(f, 100)) << want[i].name;
    EXPECT_EQ(format_matrix_bytes(f, 3, 512), static_cast<int64_t>(3 * 512 * want[i].bpw / 8));
  }
  EXPECT_EQ(parse_format_list("q4_k,Q6_K,gguf-q2_k"),
            (std::vector<TensorFormat>{TensorFormat{GgmlFormat{DType::Q4_K}}, TensorFormat{GgmlFormat{DType::Q6_K}},
                                       TensorFormat{GgmlFormat{DType::Q2_K}}}));
}

// A k-quant on rows its 256-blocks do not divide is stored as llama.cpp's
// fallback (llama-quant.cpp): bytes, quantization and the label say so.
TEST(FormatGgml, KQuantsFallBackAsLlamaCppDoes) {
  const struct {
    DType k, fallback;
    const char* label;
  } cases[] = {{DType::Q2_K, DType::Q4_0, "q2_k\u2192q4_0"}, {DType::Q3_K, DType::Q4_0, "q3_k\u2192q4_0"},
               {DType::Q4_K, DType::Q5_0, "q4_k\u2192q5_0"}, {DType::Q5_K, DType::Q5_1, "q5_k\u2192q5_1"},
               {DType::Q6_K, DType::Q8_0, "q6_k\u2192q8_0"}, {DType::IQ4_XS, DType::IQ4_NL, "iq4_xs\u2192iq4_nl"}};
  const int64_t rows = 3, cols = 576;  // SmolLM2's width: 18 blocks of 32, not whole blocks of 256
  const auto w = test::random_floats(rows * cols, 5, 0.3f);
  for (const auto& c : cases) {
    const TensorFormat f{GgmlFormat{c.k}}, fb{GgmlFormat{c.fallback}};
    EXPECT_EQ(format_for_shape(f, 512), f);
    EXPECT_EQ(format_for_shape(f, cols), fb);
    EXPECT_EQ(tensor_format_label(f, cols), c.label);
    EXPECT_EQ(tensor_format_label(f, 512), tensor_format_short(f));
    EXPECT_EQ(format_matrix_bytes(f, rows, cols), format_matrix_bytes(fb, rows, cols));
    const QuantizedMatrix q = quantize_matrix(f, w.data(), rows, cols);
    EXPECT_EQ(q.format, fb);
    EXPECT_EQ(q.blocks, quantize_matrix(fb, w.data(), rows, cols).blocks) << c.label;
  }
  const TensorFormat q8{GgmlFormat{DType::Q8_0}}, q4g64{AffineFormat{4, 64}};
  EXPECT_EQ(format_for_shape(q8, 576), q8);
  EXPECT_EQ(format_for_shape(q4g64, 576), q4g64);
}

// An unknown candidate is an error listing the valid ones.
TEST(FormatGgml, UnknownCandidateListsTheValidOnes) {
  try {
    parse_format_list("q4_k,q7_k");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'q7_k' is not a format"), std::string::npos) << msg;
    EXPECT_NE(msg.find("q6_k"), std::string::npos) << msg;
    EXPECT_NE(msg.find("groups 32, 64, 128"), std::string::npos) << msg;
  }
}

TEST(FormatGgml, LegacyMinMaxIsGgmlsReferenceByteForByte) {
  const int64_t rows = 5, cols = 128;
  const auto w = test::random_floats(rows * cols, 24, 0.3f);
  QuantizeOptions mm;
  mm.method = QuantMethod::MinMax;
  for (DType t : {DType::Q4_1, DType::Q5_0, DType::Q5_1}) {
    const QuantizedMatrix q = quantize_matrix(TensorFormat{GgmlFormat{t}}, w.data(), rows, cols, mm);
    std::vector<uint8_t> want;
    for (int64_t b = 0; b < rows * cols / 32; ++b) {
      const auto blk = t == DType::Q4_1 ? ref_q4_1(&w[b * 32]) : ref_q5(&w[b * 32], t == DType::Q5_1);
      want.insert(want.end(), blk.begin(), blk.end());
    }
    EXPECT_EQ(q.blocks, want) << dtype_name(t);
  }
}

// Every type on random data (odd row counts, several super-blocks a row):
// the blocks decode (quant/ggml_dequant) close to the input, the error falls
// with the bits, the search is no worse than the reference procedure, and
// importance weighting lowers the importance-weighted error.
TEST(FormatGgml, EveryTypeRoundTripsSearchAndImportance) {
  const int64_t rows = 7, cols = 768;
  const auto w = test::random_floats(rows * cols, 25, 0.05f);
  const auto imp_raw = test::random_floats(cols, 26);
  std::vector<float> imp(cols);
  for (int64_t j = 0; j < cols; ++j) imp[j] = 0.05f + imp_raw[j] * imp_raw[j] * (j % 7 == 0 ? 20.0f : 1.0f);
  auto rel_err = [&](const std::vector<float>& dq, const float* weight) {
    double e = 0, n = 0;
    for (int64_t i = 0; i < rows * cols; ++i) {
      const double k = weight ? weight[i % cols] : 1.0;
      e += k * (w[i] - dq[i]) * (w[i] - dq[i]);
      n += k * double(w[i]) * w[i];
    }
    return std::sqrt(e / n);
  };
  QuantizeOptions mm, search, weighted;
  mm.method = QuantMethod::MinMax;
  weighted.importance = imp.data();
  const std::map<DType, double> bound = {{DType::Q2_K, 0.45}, {DType::Q3_K, 0.22}, {DType::Q4_0, 0.13},
                                         {DType::Q4_1, 0.11}, {DType::Q4_K, 0.10}, {DType::Q5_0, 0.065},
                                         {DType::Q5_1, 0.055}, {DType::Q5_K, 0.05}, {DType::Q6_K, 0.025},
                                         {DType::Q8_0, 0.006}, {DType::IQ4_NL, 0.12}, {DType::IQ4_XS, 0.12}};
  for (DType t : kAllTypes) {
    const TensorFormat f{GgmlFormat{t}};
    const QuantizedMatrix q = quantize_matrix(f, w.data(), rows, cols, search);
    ASSERT_EQ(q.blocks.size(), static_cast<size_t>(format_matrix_bytes(f, rows, cols))) << dtype_name(t);
    std::vector<float> dq(rows * cols);
    dequantize_row(t, q.blocks.data(), dq.data(), rows * cols);
    EXPECT_EQ(dequantize_matrix(q), dq);
    for (float v : dq) ASSERT_TRUE(std::isfinite(v)) << dtype_name(t);
    const double e_search = rel_err(dq, nullptr);
    const double e_ref = rel_err(fake_quantize(f, w.data(), rows, cols, mm), nullptr);
    EXPECT_LT(e_search, bound.at(t)) << dtype_name(t);
    EXPECT_LE(e_search, e_ref * 1.01) << dtype_name(t) << ": search " << e_search << " reference " << e_ref;
    const double e_plain_w = rel_err(dq, imp.data());
    const double e_weighted_w = rel_err(fake_quantize(f, w.data(), rows, cols, weighted), imp.data());
    if (t != DType::Q8_0) {  // Q8_0 has one rounding, nothing to weigh
      EXPECT_LT(e_weighted_w, e_plain_w) << dtype_name(t);
    }
  }
}

TEST(FormatGgml, RejectsShapesThatDoNotFit) {
  const auto w = test::random_floats(4 * 40, 3);
  EXPECT_THROW(quantize_matrix(kQ8, w.data(), 4, 40), Error);
  EXPECT_THROW(quantize_matrix(TensorFormat{}, w.data(), 4, 40), Error);
  EXPECT_EQ(fake_quantize(TensorFormat{}, w.data(), 4, 40), w);
}

}  // namespace
}  // namespace optiq

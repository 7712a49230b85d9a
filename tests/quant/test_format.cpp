// quant/format.h: every spelling of a format parses to the same value, names
// round-trip, lists and JSON are read one way, and bad input is an error.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "quant/format.h"

namespace optiq {
namespace {

TEST(TensorFormat, SpellingsAgree) {
  const TensorFormat q4 = AffineFormat{4, 64};
  for (const char* s : {"4", "q4", "q4g64", "Q4G64", "q4-g64", "affine-q4-g64", " q4 g64 "})
    EXPECT_EQ(parse_tensor_format(s), q4) << s;
  EXPECT_EQ(parse_tensor_format("q8", 32), (TensorFormat{AffineFormat{8, 32}}));
  for (const char* s : {"float", "f16", "FP16", "bf16", "f32", "none"}) EXPECT_EQ(parse_tensor_format(s), std::nullopt) << s;
  for (const TensorFormat& f : {TensorFormat{}, TensorFormat{AffineFormat{3, 128}}, TensorFormat{AffineFormat{5, 32}}}) {
    EXPECT_EQ(parse_tensor_format(tensor_format_name(f)), f);
    EXPECT_EQ(parse_tensor_format(tensor_format_short(f)), f);
    EXPECT_EQ(tensor_format_from_json(tensor_format_to_json(f), "t", "x"), f);
  }
  EXPECT_EQ(tensor_format_name(q4), "affine-q4-g64");
  EXPECT_EQ(tensor_format_short(q4), "q4g64");
  EXPECT_EQ(tensor_format_name(std::nullopt), "float");
}

TEST(TensorFormat, BadSpellingsThrow) {
  for (const char* s : {"", "q", "q7", "q4g48", "k4", "q4g64x", "-4"}) EXPECT_THROW(parse_tensor_format(s), Error) << s;
  EXPECT_THROW(tensor_format_from_json(nlohmann::json{{"bits", 9}}, "t", "x"), Error);
  EXPECT_THROW(tensor_format_from_json(nlohmann::json("q4"), "t", "x"), Error);
  EXPECT_THROW(tensor_format_from_json(nlohmann::json{{"group_size", 64}}, "t", "x"), Error);
  // Fuzz finding (tests/fuzz/fuzz_profile_json): a profile's candidate
  // "affine-q42949672964-g64" threw std::out_of_range from std::stoi, past
  // every optiq::Error handler. Now optiq's error, naming the text.
  for (const char* s : {"affine-q42949672964-g64", "q4g99999999999", "99999999999"}) {
    try {
      (void)parse_tensor_format(s);
      ADD_FAILURE() << "accepted " << s;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(parse_format_list("2,q42949672964g64"), Error);
}

TEST(TensorFormat, Lists) {
  EXPECT_EQ(parse_affine_format_list("q4g64,q8g64,q4g64"), (std::vector<AffineFormat>{{4, 64}, {8, 64}}));
  EXPECT_EQ(parse_affine_format_list("4, 8"), (std::vector<AffineFormat>{{4, 64}, {8, 64}}));
  EXPECT_EQ(parse_affine_format_list("3,4x32,128"),
            (std::vector<AffineFormat>{{3, 32}, {3, 128}, {4, 32}, {4, 128}}));
  for (const char* s : {"", "float", "4,zz", "4x", "4x48", "x64", "4,8x3a"})
    EXPECT_THROW(parse_affine_format_list(s), Error) << s;
}

TEST(TensorFormat, SizesAndFit) {
  EXPECT_DOUBLE_EQ(format_bits_per_weight(AffineFormat{4, 64}), 4.5);
  EXPECT_DOUBLE_EQ(format_bits_per_weight(AffineFormat{3, 32}), 4.0);
  EXPECT_DOUBLE_EQ(format_bits_per_weight(std::nullopt), 16.0);
  EXPECT_TRUE(format_fits(AffineFormat{4, 64}, 576));
  EXPECT_FALSE(format_fits(AffineFormat{4, 128}, 576));
  EXPECT_FALSE(format_fits(AffineFormat{4, 32}, 0));
  EXPECT_TRUE(format_fits(TensorFormat{}, 7));
}

}  // namespace
}  // namespace optiq

namespace optiq {
namespace {

// The candidate `source`: one spelling for every tensor, resolved per tensor
// to the type its GGUF source stores it in; it costs that type's bytes, has no
// fallback, fits nothing unresolved, and quantizes to its own values.
TEST(TensorFormat, SourceCandidate) {
  const TensorFormat s = parse_tensor_format("source");
  EXPECT_EQ(parse_tensor_format("keep"), s);
  EXPECT_EQ(parse_tensor_format("SOURCE"), s);
  EXPECT_EQ(s, source_candidate());
  EXPECT_TRUE(s.is_source());
  EXPECT_EQ(tensor_format_name(s), "source");
  EXPECT_EQ(tensor_format_short(s), "source");
  EXPECT_FALSE(format_fits(s, 256));  // unresolved: no size, fits nothing
  EXPECT_THROW(format_matrix_bytes(s, 4, 256), Error);
  EXPECT_EQ(parse_format_list("q4_k,source,q8_0").size(), 3u);
  EXPECT_EQ(parse_format_list("2,4x64,source").back(), s);

  const TensorFormat k = resolve_source_format(s, DType::Q4_K);
  EXPECT_EQ(k, (TensorFormat{GgmlFormat{DType::Q4_K, true}}));
  EXPECT_NE(k, (TensorFormat{GgmlFormat{DType::Q4_K}}));  // not re-quantized to Q4_K: kept
  EXPECT_EQ(tensor_format_name(k), "source");              // the profile's key for every tensor
  EXPECT_EQ(tensor_format_short(k), "source-q4_k");
  EXPECT_EQ(format_matrix_bytes(k, 2, 512), 2 * 2 * 144);
  EXPECT_DOUBLE_EQ(format_bits_per_weight(k), 4.5);
  EXPECT_EQ(format_for_shape(k, 512), k);
  EXPECT_FALSE(format_fits(k, 576));  // (a source's Q4_K rows are whole blocks)
  const TensorFormat q50 = resolve_source_format(s, DType::Q5_0);
  EXPECT_TRUE(format_fits(q50, 576));
  EXPECT_EQ(format_matrix_bytes(q50, 1, 576), 18 * 22);
  // Not a keepable block type (float, or not a GGUF source): no candidate there.
  EXPECT_EQ(resolve_source_format(s, DType::F32), s);
  EXPECT_EQ(resolve_source_format(s, DType::F16), s);
  EXPECT_FALSE(source_type_keepable(DType::F16));
  EXPECT_TRUE(source_type_keepable(DType::IQ4_XS));
  // Other formats pass through.
  EXPECT_EQ(resolve_source_format(parse_tensor_format("q8_0"), DType::Q4_K), parse_tensor_format("q8_0"));

  // JSON: the kept type is recorded; the unresolved candidate too.
  EXPECT_EQ(tensor_format_to_json(k), (nlohmann::json{{"gguf", "Q4_K"}, {"source", true}}));
  EXPECT_EQ(tensor_format_from_json(tensor_format_to_json(k), "t", "x"), k);
  EXPECT_EQ(tensor_format_from_json(tensor_format_to_json(s), "t", "x"), s);
  EXPECT_THROW(tensor_format_from_json(nlohmann::json{{"gguf", "Q4_K"}, {"source", "yes"}}, "t", "x"), Error);

  // Its fake quantization is the identity: the values are the source's own.
  std::vector<float> w(2 * 256);
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.37f * static_cast<float>(i));
  EXPECT_EQ(fake_quantize(k, w.data(), 2, 256), w);
  std::vector<float> err(w.size(), 1.0f);
  fake_quantize_into(k, w.data(), 2, 256, {}, /*error_out=*/true, err.data());
  EXPECT_EQ(err, std::vector<float>(w.size(), 0.0f));
}

}  // namespace
}  // namespace optiq

// quant/format.h: every spelling of a format parses to the same value, names
// round-trip, lists and JSON are read one way, and bad input is an error.
#include <gtest/gtest.h>

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

// The plan summary's runtime notes: a GGUF mix that llama.cpp decodes slowly
// is named; other mixes are not.
#include <gtest/gtest.h>

#include "model/precision.h"
#include "plan/runtime_notes.h"
#include "plan_test_util.h"

namespace optiq {
namespace {

std::map<std::string, TensorFormat> all(const ModelConfig& c, const std::string& f) {
  std::map<std::string, TensorFormat> out;
  for (const auto& m : quantizable_modules(c)) out[m.path] = parse_tensor_format(f);
  return out;
}

TEST(RuntimeNotes, NamesFallbackHeavyGgufMixes) {
  const ModelConfig c = test::plan_test_config(4);  // 384-wide rows: k-quants fall back there
  const auto q5k = llamacpp_speed_notes(c, all(c, "q5_k"));
  ASSERT_EQ(q5k.size(), 1u);
  EXPECT_NE(q5k[0].find("Q5_0/Q5_1"), std::string::npos) << q5k[0];
  EXPECT_EQ(llamacpp_speed_notes(c, all(c, "q4_k")).size(), 1u);  // -> Q5_0
  EXPECT_TRUE(llamacpp_speed_notes(c, all(c, "q6_k")).empty());   // -> Q8_0
  EXPECT_TRUE(llamacpp_speed_notes(c, all(c, "q4_0")).empty());
  EXPECT_TRUE(llamacpp_speed_notes(c, all(c, "q4g64")).empty());  // MLX formats: not llama.cpp's concern
  EXPECT_TRUE(llamacpp_speed_notes(c, {}).empty());                // all float
}

}  // namespace
}  // namespace optiq

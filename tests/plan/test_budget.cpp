#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "plan/budget.h"
#include "plan_test_util.h"

using namespace optiq;
using optiq::test::error_of;

namespace {

}  // namespace

TEST(Budget, ParseByteSize) {
  EXPECT_EQ(parse_byte_size("9.7GB", "--size"), 9'700'000'000);
  EXPECT_EQ(parse_byte_size("350MB", "--size"), 350'000'000);
  EXPECT_EQ(parse_byte_size("1.5GiB", "--size"), 1'610'612'736);
  EXPECT_EQ(parse_byte_size(" 512 MiB ", "--size"), 512ll << 20);
  EXPECT_EQ(parse_byte_size("100kB", "--size"), 100'000);
  EXPECT_EQ(parse_byte_size("2KiB", "--size"), 2048);
  EXPECT_EQ(parse_byte_size("123B", "--size"), 123);
  EXPECT_EQ(parse_byte_size("8gb", "--fit"), 8'000'000'000);
  for (const char* bad : {"", "GB", "abc", "12", "-1GB", "0GB", "0.0MiB", "5XB", "1.2.3GB", "nanGB", "1e3GB"}) {
    const std::string e = error_of([&] { parse_byte_size(bad, "--size"); });
    EXPECT_NE(e, "") << bad;
    EXPECT_NE(e.find("--size"), std::string::npos) << e;
  }
  EXPECT_NE(error_of([] { parse_byte_size("12", "--size"); }).find("unit"), std::string::npos);
}

TEST(Budget, ParseBpwAndReduction) {
  EXPECT_DOUBLE_EQ(parse_bits_per_weight("4.5", "--bpw"), 4.5);
  EXPECT_DOUBLE_EQ(parse_bits_per_weight(" 3 ", "--bpw"), 3.0);
  for (const char* bad : {"", "x", "0", "-4", "4.5bits", "4,5"}) EXPECT_NE(error_of([&] { parse_bits_per_weight(bad, "--bpw"); }), "") << bad;
  EXPECT_DOUBLE_EQ(parse_reduction("40%", "--reduction"), 0.40);
  EXPECT_DOUBLE_EQ(parse_reduction("12.5 %", "--reduction"), 0.125);
  EXPECT_DOUBLE_EQ(parse_reduction("40", "--reduction"), 0.40);
  for (const char* bad : {"", "%", "0%", "100%", "150%", "-5%", "40%%", "forty"})
    EXPECT_NE(error_of([&] { parse_reduction(bad, "--reduction"); }), "") << bad;
}

TEST(Budget, SizeModel) {
  const ModelConfig c = test::plan_test_config(5);
  const auto mods = quantizable_modules(c);
  int64_t q = 0;
  for (const auto& m : mods) q += m.numel();
  EXPECT_EQ(fixed_weight_params(c), 5 * 2 * 384 + 384);
  EXPECT_EQ(total_weight_params(c), q + fixed_weight_params(c));
  EXPECT_EQ(fp16_weight_bytes(c), 2 * total_weight_params(c));
  // q4 g64: 4.5 bits per quantized weight, norms at 16 bits.
  const PrecisionMap p = PrecisionMap::uniform(c, {4, 64});
  EXPECT_EQ(plan_bytes(c, p), q * 9 / 16 + fixed_weight_bytes(c));
  EXPECT_NEAR(plan_bits_per_weight(c, p), (q * 4.5 + fixed_weight_params(c) * 16.0) / total_weight_params(c), 1e-12);
  // Every module's bytes agree with format_bits_per_weight.
  for (const auto& f : all_tensor_formats())
    for (const auto& m : mods)
      if (!f || format_fits(*f, m.cols)) {
        EXPECT_DOUBLE_EQ(double(module_bytes(m, f)) * 8 / m.numel(), format_bits_per_weight(f));
      }
  EXPECT_THROW(module_bytes({"x", ModuleKind::QProj, 0, 4, 96}, AffineFormat{4, 64}), Error);
  PrecisionMap missing = p;
  missing.formats.erase("lm_head");
  EXPECT_THROW(plan_bytes(c, missing), Error);
  // Tied: no lm_head counted.
  EXPECT_EQ(total_weight_params(test::plan_test_config(5, true)), total_weight_params(c) - 1003 * 384);
}

TEST(Budget, Resolve) {
  const ModelConfig c = test::plan_test_config(6);
  const int64_t params = total_weight_params(c);
  BudgetOptions o;
  o.bpw = "4.5";
  Budget b = resolve_budget(o, c);
  EXPECT_EQ(b.kind, "bpw");
  EXPECT_EQ(b.weight_bytes, int64_t(std::floor(4.5 * params / 8)));
  EXPECT_NE(b.description.find("4.500 bits/weight"), std::string::npos) << b.description;

  o = {};
  o.reduction = "40%";
  b = resolve_budget(o, c);
  EXPECT_EQ(b.weight_bytes, int64_t(std::floor(0.6 * fp16_weight_bytes(c))));

  o = {};
  o.size = "10MB";
  EXPECT_EQ(resolve_budget(o, c).weight_bytes, 10'000'000);

  // Below the smallest / above the largest: the message gives the range.
  o.size = "1MB";
  std::string e = error_of([&] { resolve_budget(o, c); });
  EXPECT_NE(e.find("below the smallest"), std::string::npos) << e;
  EXPECT_NE(e.find("achievable"), std::string::npos) << e;
  o.size = "1GB";
  e = error_of([&] { resolve_budget(o, c); });
  EXPECT_NE(e.find("above the largest"), std::string::npos) << e;
  o = {};
  o.bpw = "1.5";
  EXPECT_NE(error_of([&] { resolve_budget(o, c); }).find("2.2"), std::string::npos);  // min is ~2.25 bpw
  o.bpw = "17";
  EXPECT_NE(error_of([&] { resolve_budget(o, c); }), "");
  o.bpw = "16";  // everything in float is exactly 16 bits per weight
  EXPECT_EQ(resolve_budget(o, c).weight_bytes, fp16_weight_bytes(c));
  // Exactly one option.
  o.size = "10MB";
  EXPECT_NE(error_of([&] { resolve_budget(o, c); }).find("exactly one"), std::string::npos);
  EXPECT_NE(error_of([&] { resolve_budget(BudgetOptions{}, c); }).find("exactly one"), std::string::npos);
  // Only the range within candidate formats.
  o = {};
  o.bpw = "3";
  EXPECT_NE(error_of([&] { resolve_budget(o, c, {AffineFormat{4, 64}, std::nullopt}); }), "");
}

TEST(Budget, Fit) {
  const ModelConfig c = test::plan_test_config(6);
  BudgetOptions o;
  o.fit = "100MB";
  EXPECT_NE(error_of([&] { resolve_budget(o, c); }).find("--ctx"), std::string::npos);
  o.runtime.ctx = 1000;  // optiq-cpu by default: an fp32 cache of exactly ctx cells
  const int64_t kv = int64_t(6) * 2 * c.kv_dim() * 1000 * 4;
  EXPECT_EQ(kv_cache_bytes(c, o.runtime), kv);
  const MemoryBreakdown m = runtime_memory(c, o.runtime);
  // 512 rows of activations, 16 threads x 16 rows of scores, one row of logits.
  EXPECT_EQ(m.compute_bytes, 512 * (384 + 384 + 2 * 384 + 2 * 128 + 2 * 1024) * 4 + 16 * 16 * 1000 * 4 + 1003 * 4);
  EXPECT_EQ(m.runtime_bytes, 64ll << 20);
  // Weights get what is left.
  o.fit = "95MB";
  Budget b = resolve_budget(o, c);
  EXPECT_EQ(b.weight_bytes, 95'000'000 - kv - m.compute_bytes - m.runtime_bytes);
  ASSERT_TRUE(b.memory.has_value());
  EXPECT_EQ(b.memory->kv_bytes, kv);
  EXPECT_EQ(b.fit_bytes, 95'000'000);
  EXPECT_NE(b.description.find("--runtime optiq-cpu"), std::string::npos) << b.description;
  EXPECT_NE(b.description.find("KV cache f32"), std::string::npos) << b.description;
  // llama.cpp's f16 cache (1000 cells padded to 1024) leaves more for the weights.
  o.runtime.runtime = Runtime::LlamaCpp;
  const MemoryBreakdown l = runtime_memory(c, o.runtime);
  EXPECT_EQ(l.kv_bytes, int64_t(6) * 2 * c.kv_dim() * 1024 * 2);
  EXPECT_EQ(resolve_budget(o, c).weight_bytes, 95'000'000 - l.reserved());
  // More memory than the whole model in float needs: the float plan, said so.
  o.fit = "1GB";
  b = resolve_budget(o, c);
  EXPECT_EQ(b.weight_bytes, fp16_weight_bytes(c));
  EXPECT_NE(b.description.find("everything in float fits"), std::string::npos) << b.description;
  o.runtime.runtime = Runtime::OptiqCpu;
  o.fit = "60MB";  // less than the overhead alone
  const std::string e = error_of([&] { resolve_budget(o, c); });
  EXPECT_NE(e.find("exceed"), std::string::npos) << e;
  EXPECT_NE(e.find("--runtime optiq-cpu"), std::string::npos) << e;
}

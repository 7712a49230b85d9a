// GGUF metadata of the new families -> ModelConfig, including the constants
// llama.cpp hard-codes for Gemma 3 (every 6th layer global, local RoPE base
// 10000) and the errors for architectures and keys optiq does not handle.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "formats/gguf_writer.h"
#include "model/config.h"
#include "test_util.h"

namespace optiq {
namespace {

// A metadata-only GGUF (plus the embedding, which gives the vocabulary size).
std::string write_gguf(const std::string& arch, const std::function<void(GgufWriter&)>& extra, int64_t blocks = 7) {
  GgufWriter w;
  const std::string a = arch + ".";
  w.add_string("general.architecture", arch);
  w.add_u32(a + "embedding_length", 32);
  w.add_int(a + "block_count", blocks, GgufWriter::Type::I64);
  w.add_u32(a + "attention.head_count", 4);
  w.add_u32(a + "attention.head_count_kv", 1);
  w.add_u32(a + "attention.key_length", 16);
  w.add_u32(a + "attention.value_length", 16);
  w.add_u32(a + "feed_forward_length", 48);
  w.add_u32(a + "context_length", 2048);
  w.add_float(a + "attention.layer_norm_rms_epsilon", 1e-6);
  w.add_float(a + "rope.freq_base", 1e6);
  extra(w);
  auto emb = test::random_floats(50 * 32, 1);
  std::vector<uint8_t> bytes(emb.size() * 4);
  std::memcpy(bytes.data(), emb.data(), bytes.size());
  w.add_tensor("token_embd.weight", DType::F32, {50, 32}, std::move(bytes));
  static int n = 0;
  const std::string path = test::temp_dir() + "/m" + std::to_string(n++) + ".gguf";
  w.write(path);
  return path;
}

TEST(FamilyGguf, Gemma3UsesLlamaCppConstants) {
  const std::string path = write_gguf("gemma3", [](GgufWriter& w) { w.add_u32("gemma3.attention.sliding_window", 8); });
  const ModelConfig c = config_from_gguf(GgufFile(path));
  EXPECT_EQ(c.family, "Gemma 3");
  const std::vector<int> want = {8, 8, 8, 8, 8, 0, 8};
  EXPECT_EQ(c.layer_window, want);
  EXPECT_FLOAT_EQ(c.rope_theta_local, 10000.0f);
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_EQ(c.embed_scale, std::sqrt(32.0f));  // fp32, not bf16-rounded as in HF
  EXPECT_FLOAT_EQ(c.attention_scale(), 0.25f);
  EXPECT_TRUE(c.norm_offset_one && c.sandwich_norms && c.qk_norm && c.tied_embeddings);
  EXPECT_FALSE(c.gguf_interleaved_rope);
  EXPECT_EQ(c.final_softcap, 0.0f);
}

TEST(FamilyGguf, Gemma3PatternAndSoftcapKeys) {
  const std::string path = write_gguf("gemma3", [](GgufWriter& w) {
    w.add_u32("gemma3.attention.sliding_window", 8);
    w.add_u32("gemma3.attention.sliding_window_pattern", 3);
    w.add_float("gemma3.rope.freq_base_swa", 5000.0);
    w.add_float("gemma3.final_logit_softcapping", 30.0);
  });
  const ModelConfig c = config_from_gguf(GgufFile(path));
  const std::vector<int> want = {8, 8, 0, 8, 8, 0, 8};
  EXPECT_EQ(c.layer_window, want);
  EXPECT_FLOAT_EQ(c.rope_theta_local, 5000.0f);
  EXPECT_FLOAT_EQ(c.final_softcap, 30.0f);
}

TEST(FamilyGguf, QwenFlags) {
  ModelConfig c = config_from_gguf(GgufFile(write_gguf("qwen2", [](GgufWriter&) {})));
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.gguf_interleaved_rope);
  c = config_from_gguf(GgufFile(write_gguf("qwen3", [](GgufWriter&) {})));
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  c = config_from_gguf(GgufFile(write_gguf("llama", [](GgufWriter&) {})));
  EXPECT_TRUE(c.gguf_interleaved_rope);
}

TEST(FamilyGguf, Errors) {
  auto error_of = [](const std::string& path) {
    try {
      config_from_gguf(GgufFile(path));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  std::string e = error_of(write_gguf("falcon", [](GgufWriter&) {}));
  EXPECT_NE(e.find("'falcon'"), std::string::npos) << e;
  e = error_of(write_gguf("llama", [](GgufWriter& w) { w.add_string("llama.rope.scaling.type", "yarn"); }));
  EXPECT_NE(e.find("rope.scaling.type = 'yarn'"), std::string::npos) << e;
  e = error_of(write_gguf("gemma3", [](GgufWriter& w) { w.add_u32("gemma3.attention.value_length", 8); }));
  EXPECT_NE(e.find("value_length"), std::string::npos) << e;
  e = error_of(write_gguf("llama", [](GgufWriter& w) { w.add_u32("llama.attention.sliding_window", 64); }));
  EXPECT_NE(e.find("sliding_window"), std::string::npos) << e;
  // Layer counts out of range, before anything is sized by them (a negative one sized Gemma's
  // window list: the same class as the config.json fuzz finding).
  for (int64_t blocks : {int64_t{-1}, int64_t{0}, int64_t{5000}, int64_t{1} << 33}) {
    e = error_of(write_gguf("gemma3", [](GgufWriter&) {}, blocks));
    EXPECT_NE(e.find("block_count = " + std::to_string(blocks) + " is not a layer count (1 to 4096)"), std::string::npos)
        << e;
  }
}

}  // namespace
}  // namespace optiq

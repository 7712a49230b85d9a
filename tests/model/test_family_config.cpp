// config.json parsing of every supported family, and the errors for values
// optiq does not handle (each must name the file, the key and the value).
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/half.h"
#include "model/config.h"
#include "model/precision.h"

namespace optiq {
namespace {

using nlohmann::json;

json base(const std::string& type) {
  return {{"model_type", type},   {"hidden_size", 64},      {"num_hidden_layers", 6},
          {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 96},
          {"vocab_size", 300},    {"max_position_embeddings", 4096}, {"rms_norm_eps", 1e-6}};
}

// The error message of parsing `j`, or "" when it parses.
std::string error_of(const json& j) {
  try {
    config_from_hf(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has_quirk(const ModelConfig& c, const std::string& part) {
  for (const auto& q : c.quirks())
    if (q.find(part) != std::string::npos) return true;
  return false;
}

TEST(FamilyConfig, LlamaIsPlain) {
  ModelConfig c = config_from_hf(base("llama"), "cfg.json");
  EXPECT_EQ(c.family, "Llama");
  EXPECT_FALSE(c.qkv_bias || c.qk_norm || c.fused_qkv || c.sandwich_norms);
  EXPECT_TRUE(c.layer_window.empty());
  EXPECT_FLOAT_EQ(c.attention_scale(), 1.0f / 4.0f);
}

TEST(FamilyConfig, MistralSlidingWindow) {
  json j = base("mistral");
  j["sliding_window"] = 512;
  ModelConfig c = config_from_hf(j, "cfg.json");
  EXPECT_EQ(c.family, "Mistral");
  ASSERT_EQ(c.layer_window.size(), 6u);
  for (int w : c.layer_window) EXPECT_EQ(w, 512);
  EXPECT_TRUE(has_quirk(c, "sliding window 512 on 6 of 6 layers"));
  j["sliding_window"] = 4096;  // not smaller than the context: no window
  EXPECT_TRUE(config_from_hf(j, "cfg.json").layer_window.empty());
  j["sliding_window"] = nullptr;
  EXPECT_TRUE(config_from_hf(j, "cfg.json").layer_window.empty());
}

TEST(FamilyConfig, Qwen2BiasAndIgnoredWindow) {
  json j = base("qwen2");
  j["sliding_window"] = 32;
  j["use_sliding_window"] = false;
  ModelConfig c = config_from_hf(j, "cfg.json");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.layer_window.empty());
  EXPECT_TRUE(has_quirk(c, "qkv bias"));
  j["use_sliding_window"] = true;
  EXPECT_NE(error_of(j).find("use_sliding_window"), std::string::npos);
}

TEST(FamilyConfig, Qwen3QkNormAndHeadDim) {
  json j = base("qwen3");
  j["head_dim"] = 32;
  ModelConfig c = config_from_hf(j, "cfg.json");
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.q_dim(), 128);
  EXPECT_TRUE(has_quirk(c, "q/k norm"));
}

TEST(FamilyConfig, RopeParametersLayout) {
  json j = base("qwen3");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 123456.0}};
  EXPECT_FLOAT_EQ(config_from_hf(j, "cfg.json").rope_theta, 123456.0f);
}

TEST(FamilyConfig, Phi3FusedAndLongRope) {
  json j = base("phi3");
  ModelConfig c = config_from_hf(j, "cfg.json");
  EXPECT_TRUE(c.fused_qkv);
  EXPECT_TRUE(has_quirk(c, "fused qkv_proj/gate_up_proj"));
  const auto mods = quantizable_modules(c);
  EXPECT_EQ(mods[1].kind_name(), "qkv_proj");
  EXPECT_EQ(mods[1].rows, 64 + 2 * 32);
  EXPECT_EQ(mods[3].kind_name(), "gate_up_proj");
  EXPECT_EQ(mods[3].rows, 2 * 96);

  j["original_max_position_embeddings"] = 1024;
  j["rope_scaling"] = {{"type", "longrope"},
                       {"short_factor", std::vector<float>(8, 1.5f)},
                       {"long_factor", std::vector<float>(8, 4.0f)}};
  c = config_from_hf(j, "cfg.json");
  ASSERT_EQ(c.rope_scaling.type, RopeScalingType::LongRope);
  EXPECT_NEAR(c.rope_scaling.attn_factor, std::sqrt(1.0 + std::log(4.0) / std::log(1024.0)), 1e-6);
  j["rope_scaling"]["long_factor"] = std::vector<float>(5, 4.0f);  // wrong length
  EXPECT_NE(error_of(j).find("long_factor"), std::string::npos);

  j = base("phi3");
  j["partial_rotary_factor"] = 0.75;
  EXPECT_EQ(config_from_hf(j, "cfg.json").rot_dim(), 12);
  j["partial_rotary_factor"] = 0.3;  // 4.8 dims
  EXPECT_NE(error_of(j).find("partial_rotary_factor"), std::string::npos);
}

json gemma() {
  json j = base("gemma3_text");
  j["head_dim"] = 32;
  j["query_pre_attn_scalar"] = 24;
  j["sliding_window"] = 512;
  j["sliding_window_pattern"] = 6;
  j["rope_local_base_freq"] = 10000.0;
  j["rope_theta"] = 1000000.0;
  j["final_logit_softcapping"] = nullptr;
  j["attn_logit_softcapping"] = nullptr;
  j["hidden_activation"] = "gelu_pytorch_tanh";
  j["max_position_embeddings"] = 32768;
  return j;
}

TEST(FamilyConfig, Gemma3) {
  ModelConfig c = config_from_hf(gemma(), "cfg.json");
  EXPECT_EQ(c.family, "Gemma 3");
  EXPECT_TRUE(c.qk_norm && c.sandwich_norms && c.norm_offset_one && c.tied_embeddings);
  EXPECT_EQ(c.activation, Activation::GeluTanh);
  EXPECT_FLOAT_EQ(c.attention_scale(), static_cast<float>(1.0 / std::sqrt(24.0)));
  EXPECT_EQ(c.embed_scale, bf16_to_f32(f32_to_bf16(8.0f)));
  const std::vector<int> want = {512, 512, 512, 512, 512, 0};
  EXPECT_EQ(c.layer_window, want);
  EXPECT_TRUE(c.local_rope(0));
  EXPECT_FALSE(c.local_rope(5));
  EXPECT_TRUE(has_quirk(c, "sliding window 512 on 5 of 6 layers"));
  EXPECT_TRUE(has_quirk(c, "embedding scaled by sqrt(64)"));
  EXPECT_EQ(c.final_softcap, 0.0f);

  json j = gemma();
  j["final_logit_softcapping"] = 30.0;
  j["attn_logit_softcapping"] = 50.0;
  c = config_from_hf(j, "cfg.json");
  EXPECT_EQ(c.final_softcap, 30.0f);
  EXPECT_EQ(c.attn_softcap, 50.0f);
  EXPECT_TRUE(has_quirk(c, "logit softcap 30"));

  j = gemma();  // layer_types wins over the pattern
  j["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                      "full_attention", "full_attention"};
  const std::vector<int> want2 = {512, 0, 512, 512, 0, 0};
  EXPECT_EQ(config_from_hf(j, "cfg.json").layer_window, want2);

  j = gemma();  // a window wider than the context: the layers stay local (own RoPE base)
  j["sliding_window"] = 65536;
  c = config_from_hf(j, "cfg.json");
  EXPECT_TRUE(c.local_rope(0));
  EXPECT_FALSE(c.local_rope(5));

  // Multimodal config: the text model's config is nested.
  json mm = {{"model_type", "gemma3"}, {"text_config", gemma()}};
  mm["text_config"].erase("model_type");
  EXPECT_EQ(config_from_hf(mm, "cfg.json").arch, "gemma3_text");

  // transformers >= 5: rope bases per layer type.
  j = gemma();
  j.erase("rope_theta");
  j.erase("rope_local_base_freq");
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e6}}},
                          {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  c = config_from_hf(j, "cfg.json");
  EXPECT_FLOAT_EQ(c.rope_theta, 1e6f);
  EXPECT_FLOAT_EQ(c.rope_theta_local, 1e4f);
}

TEST(FamilyConfig, ErrorsNameFileKeyAndValue) {
  auto expect_error = [](json j, const std::vector<std::string>& parts) {
    const std::string e = error_of(j);
    ASSERT_FALSE(e.empty()) << j.dump();
    for (const auto& p : parts) EXPECT_NE(e.find(p), std::string::npos) << e;
    EXPECT_NE(e.find("cfg.json"), std::string::npos) << e;
  };
  expect_error(base("gpt2"), {"model_type", "gpt2"});
  json j = base("llama");
  j["hidden_act"] = "gelu";
  expect_error(j, {"hidden_act", "gelu"});
  j = base("llama");
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  expect_error(j, {"rope_scaling", "yarn"});
  j = base("llama");
  j["mlp_bias"] = true;
  expect_error(j, {"mlp_bias", "true"});
  j = base("qwen2");
  j["attn_logit_softcapping"] = 50.0;
  expect_error(j, {"attn_logit_softcapping", "50"});
  j = gemma();
  j["hidden_activation"] = "relu";
  expect_error(j, {"hidden_activation", "relu"});
  j = gemma();
  j["layer_types"] = {"chunked_attention", "full_attention", "full_attention", "full_attention", "full_attention",
                      "full_attention"};
  expect_error(j, {"layer_types", "chunked_attention"});
  j = gemma();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  expect_error(j, {"rope_scaling", "llama3"});
  expect_error({{"model_type", "gemma3"}}, {"text_config"});
  j = gemma();
  j["use_bidirectional_attention"] = true;
  expect_error(j, {"use_bidirectional_attention", "true"});
  j = base("phi3");
  j["attention_bias"] = true;
  expect_error(j, {"attention_bias", "true"});
}

// Fuzz finding (tests/fuzz/fuzz_config_hf): "head_dim": 11111111111111111111112
// parses as a float, and get<int>() on it was undefined behaviour (UBSan);
// integers beyond int were silently wrapped (4294967360 became 64).
TEST(FamilyConfig, IntegerKeysOutOfRangeAreRefused) {
  auto message = [](json j) {
    const std::string e = error_of(j);
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    return e;
  };
  json j = base("gemma3_text");
  j["head_dim"] = json::parse("11111111111111111111112");
  EXPECT_NE(message(j).find("cfg.json: head_dim = 1.1111111111111111e+22 is not an integer in range"), std::string::npos)
      << message(j);
  j = base("llama");
  j["hidden_size"] = 4294967360ull;
  EXPECT_NE(message(j).find("cfg.json: hidden_size = 4294967360 is out of range"), std::string::npos) << message(j);
  j = base("llama");
  j["num_hidden_layers"] = 18446744073709551615ull;
  EXPECT_NE(message(j).find("num_hidden_layers = 18446744073709551615 is not an integer"), std::string::npos);
  j = base("mistral");
  j["sliding_window"] = -1e300;
  EXPECT_NE(message(j).find("sliding_window = -1e+300 is not an integer"), std::string::npos) << message(j);
  // Found by the fuzz smoke test (fuzz_config_hf): the pattern was cast from a double unchecked.
  j = gemma();
  j["sliding_window_pattern"] = 2.18447e+20;
  EXPECT_NE(message(j).find("sliding_window_pattern = 2.18447e+20 is not an integer"), std::string::npos) << message(j);
  // Found by the fuzz smoke test: a negative layer count sized Gemma's and Mistral's per-layer
  // window lists before validate() ran (std::length_error, an abort).
  json with_windows = base("mistral");
  with_windows["sliding_window"] = 4;
  json with_types = gemma();
  with_types["layer_types"] = {"sliding_attention", "full_attention"};
  for (json w : {gemma(), with_types, with_windows})
    for (int layers : {-1, 0, 5000}) {
      w["num_hidden_layers"] = layers;
      EXPECT_NE(message(w).find("num_hidden_layers = " + std::to_string(layers) + " is not a layer count (1 to 4096)"),
                std::string::npos)
          << message(w);
    }
  j = base("llama");
  j["vocab_size"] = "300";
  EXPECT_NE(message(j).find("vocab_size = \"300\" is not an integer"), std::string::npos) << message(j);
  // Whole floats are integers; absent or null optional keys take their defaults.
  j = base("llama");
  j["hidden_size"] = 64.0;
  j["max_position_embeddings"] = nullptr;
  ModelConfig c = config_from_hf(j, "cfg.json");
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.max_seq, 2048);
}

}  // namespace
}  // namespace optiq

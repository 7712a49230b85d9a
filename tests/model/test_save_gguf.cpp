// The GGUF exporter: a model exported and loaded back by optiq has the same
// weights, tokenizer and logits, for every family and every storage it writes
// (k-quants, the 32-weight blocks, affine groups of 32, fp16); what GGUF cannot
// hold is an error naming the tensor; the file appears whole or not at all.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/diagnostics.h"
#include "core/error.h"
#include "core/half.h"
#include "formats/gguf.h"
#include "model/exporter.h"
#include "model/quantize_model.h"
#include "model/transformer.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;

// A family's tiny config, wide enough for 256-weight k-quant blocks, with what
// llama.cpp hard-codes for Gemma 3 (attention scale 1/sqrt(head_dim), no
// attention soft-capping).
ModelConfig wide(const std::string& family) {
  ModelConfig c = test::tiny(family);
  c.dim = 256, c.hidden_dim = 256, c.head_dim = 64;
  if (family == "gemma3") c.embed_scale = 16.0f, c.attn_scale = 0.0f, c.attn_softcap = 0.0f;
  c.validate(family);
  return c;
}

Model wide_model(const std::string& family, uint32_t seed) {
  Model m = test::random_model(wide(family), seed, /*half=*/true);
  m.path = "tiny-" + family;
  m.format = SourceFormat::Llama2c;  // not a file the exporter would re-read
  m.tokenizer = test::tiny_tokenizer(m.config.vocab_size);
  return m;
}

// Every storage the exporter writes, one module after another.
PrecisionMap every_gguf_format(const ModelConfig& c) {
  const char* formats[] = {"q4_k", "q6_k", "q2_k", "q3_k", "q5_k", "q8_0", "q4_0",
                           "q4_1", "q5_0", "q5_1", "q4g32", "q5g32", "float"};
  PrecisionMap p;
  size_t i = 0;
  for (const auto& m : quantizable_modules(c)) p.formats[m.path] = parse_tensor_format(formats[i++ % std::size(formats)]);
  return p;
}

std::vector<float> logits(const Model& m, const std::vector<int32_t>& ids) {
  Transformer tf(m, static_cast<int>(ids.size()));
  std::vector<float> out(ids.size() * static_cast<size_t>(m.config.vocab_size));
  tf.forward(ids, out.data(), 0);
  return out;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Files in `dir` (a temporary left behind shows up here).
size_t file_count(const std::string& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

TEST(SaveGguf, ExporterByName) {
  EXPECT_EQ(make_exporter("gguf")->name(), "gguf");
  try {
    make_exporter("onnx");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("known: mlx, gguf"), std::string::npos) << e.what();
  }
}

// Export, load: identical weights (every storage), norms, tokenizer and logits.
TEST(SaveGguf, RoundTripEveryFamilyAndStorage) {
  for (const std::string family : {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3"}) {
    SCOPED_TRACE(family);
    Model m = wide_model(family, 11);
    const PrecisionMap plan = every_gguf_format(m.config);
    quantize_model(m, plan, {.progress = false});
    const std::string out = test::temp_dir() + "/" + family + ".gguf";
    CollectDiagnostics diag;  // Mistral's dropped window is a warning
    make_exporter("gguf")->write(m, out, {});
    EXPECT_EQ(diag.text().find("re-quantized"), std::string::npos) << diag.text();
    Model back = load_model(out);
    EXPECT_EQ(back.config.arch, family == "mistral" ? "llama" : family);
    EXPECT_EQ(back.config.dim, m.config.dim);
    EXPECT_EQ(back.config.head_dim, m.config.head_dim);
    EXPECT_EQ(back.config.rot_dim(), m.config.rot_dim());
    EXPECT_EQ(back.config.layer_window, family == "mistral" ? std::vector<int>{} : m.config.layer_window);
    EXPECT_EQ(back.config.tied_embeddings, m.config.tied_embeddings);
    EXPECT_FLOAT_EQ(back.config.attention_scale(), m.config.attention_scale());
    for (const auto& mod : quantizable_modules(m.config)) {
      const Linear &a = module_linear(m.weights, mod), &b = module_linear(back.weights, mod);
      EXPECT_EQ(a.to_f32(), b.to_f32()) << mod.path << " " << a.format() << " -> " << b.format();
      if (a.is_affine() || a.is_kquant()) {
        EXPECT_EQ(a.bytes(), b.bytes()) << mod.path;
      }
    }
    for (int i = 0; i < m.config.n_layers; ++i) {
      const LayerWeights &a = m.weights.layers[i], &b = back.weights.layers[i];
      EXPECT_EQ(a.attn_norm, b.attn_norm);
      EXPECT_EQ(a.ffn_norm, b.ffn_norm);
      EXPECT_EQ(a.post_attn_norm, b.post_attn_norm);
      EXPECT_EQ(a.post_ffn_norm, b.post_ffn_norm);
      EXPECT_EQ(a.q_norm, b.q_norm);
      EXPECT_EQ(a.bq, b.bq);
      EXPECT_EQ(a.bv, b.bv);
    }
    EXPECT_EQ(back.tokenizer->to_spec().tokens, m.tokenizer->to_spec().tokens);
    // Mistral's window (5) is gone from the file: its first 5 positions agree.
    const auto ids = test::random_ids(family == "mistral" ? 5 : 12, m.config.vocab_size, 3);
    EXPECT_EQ(logits(back, ids), logits(m, ids));

    const GgufFile g(out);
    EXPECT_EQ(g.get_int("general.alignment"), 32);
    EXPECT_EQ(g.get_string("optiq.version"), "0.1.0");
    const auto j = nlohmann::json::parse(g.get_string("optiq.plan"));
    EXPECT_EQ(PrecisionMap::from_plan_json(j, m.config, out).formats, m.precision.formats);
    EXPECT_FALSE(j.contains("gguf_types"));  // the tensor table says each type
    EXPECT_EQ(g.find_tensor("token_embd.weight")->dtype, DType::Q4_K);
    EXPECT_EQ(g.find_tensor("output_norm.weight")->dtype, DType::F32);
  }
}

// Gemma 3 with a query_pre_attn_scalar other than head_dim: llama.cpp's
// gemma3 computes 1/sqrt(head_dim) from the shape, so the export folds the
// ratio into the q norm; the reloaded model computes the same logits.
TEST(SaveGguf, Gemma3AttentionScaleFoldsIntoTheQNorm) {
  Model m = wide_model("gemma3", 5);
  m.config.attn_scale = 0.2f;  // 1/sqrt(25), not 1/sqrt(64)
  const std::string out = test::temp_dir() + "/g.gguf";
  make_exporter("gguf")->write(m, out, {});
  Model back = load_model(out);
  EXPECT_FLOAT_EQ(back.config.attention_scale(), 1.0f / 8.0f);
  EXPECT_NE(back.weights.layers[0].q_norm, m.weights.layers[0].q_norm);
  const auto ids = test::random_ids(12, m.config.vocab_size, 4);
  const auto a = logits(m, ids), b = logits(back, ids);
  ASSERT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += double(a[i]) * a[i];
  EXPECT_LT(std::sqrt(num / den), 1e-5);
}

// Llama 3 rope scaling becomes llama.cpp's rope_freqs divisors (its
// converter's form), linear scaling its keys: the reloaded frequencies agree.
TEST(SaveGguf, RopeScalingRoundTrips) {
  for (const RopeScalingType t : {RopeScalingType::Llama3, RopeScalingType::Linear}) {
    Model m = wide_model("llama", 6);
    RopeScaling& rs = m.config.rope_scaling;
    rs.type = t, rs.factor = 8.0f, rs.low_freq_factor = 1.0f, rs.high_freq_factor = 4.0f, rs.original_max_position = 16;
    m.config.rope_theta = 500000.0f;
    const std::string out = test::temp_dir() + "/rope.gguf";
    make_exporter("gguf")->write(m, out, {.force = true});
    Model back = load_model(out);
    EXPECT_EQ(GgufFile(out).find_tensor("rope_freqs.weight") != nullptr, t == RopeScalingType::Llama3);
    const auto a = rope_inv_freq(m.config), b = rope_inv_freq(back.config);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 1e-6 * a[i]) << i;
  }
}

// A GGUF source (stories260K: llama, F32) keeps its tokenizer keys verbatim;
// its float matrices (172 wide: no 32-block divides them) go to F16.
TEST(SaveGguf, GgufSourceKeepsItsTokenizer) {
  const std::string src = test::shared_dir() + "/models/stories260K/stories260K.gguf";
  Model m = load_model(src);
  quantize_model(m, PrecisionMap::uniform(m.config, parse_tensor_format("q8_0")), {.progress = false});
  for (const auto& mod : quantizable_modules(m.config)) {
    Linear& l = module_linear(m.weights, mod);
    if (l.is_affine()) continue;
    std::vector<float> w = l.to_f32();  // what the file will hold
    for (float& x : w) x = f16_to_f32(f32_to_f16(x));
    l = Linear::from_f32(std::move(w), mod.rows, mod.cols);
  }
  const std::string out = test::temp_dir() + "/stories.gguf";
  make_exporter("gguf")->write(m, out, {});
  const GgufFile a(src), b(out);
  for (const auto& [k, v] : a.metadata()) {
    if (k.starts_with("tokenizer.")) {
      EXPECT_EQ(a.metadata_to_string(v, 1 << 20), b.metadata_to_string(*b.find_meta(k), 1 << 20)) << k;
    }
  }
  EXPECT_EQ(b.get_int("general.file_type"), 7);  // mostly Q8_0
  EXPECT_EQ(b.find_tensor("blk.0.ffn_down.weight")->dtype, DType::F16);
  EXPECT_EQ(b.find_tensor("blk.0.attn_q.weight")->dtype, DType::Q8_0);
  Model back = load_model(out);
  for (const auto& mod : quantizable_modules(m.config))
    EXPECT_EQ(module_linear(back.weights, mod).to_f32(), module_linear(m.weights, mod).to_f32()) << mod.path;
  const auto ids = test::random_ids(16, m.config.vocab_size, 5);
  EXPECT_EQ(logits(back, ids), logits(m, ids));
}

// An affine format no GGUF block holds is an error naming the tensor and what
// to do; nothing is written.
TEST(SaveGguf, UnrepresentableFormatIsAnErrorNamingTheTensor) {
  Model m = wide_model("llama", 2);
  PrecisionMap p = PrecisionMap::uniform(m.config, parse_tensor_format("q8_0"));
  p.formats["model.layers.1.mlp.up_proj"] = parse_tensor_format("q4g64");
  quantize_model(m, p, {.progress = false});
  const std::string dir = test::temp_dir() + "/bad";
  fs::create_directories(dir);
  try {
    make_exporter("gguf")->write(m, dir + "/m.gguf", {});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.layers.1.mlp.up_proj (blk.1.ffn_up.weight)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("affine-q4-g64 has no GGUF block type"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--target gguf"), std::string::npos) << msg;
  }
  EXPECT_EQ(file_count(dir), 0u);
}

// Replacing a file is all or nothing: a failed export leaves the old file
// as it was and no temporary behind; without force an existing file is kept.
TEST(SaveGguf, WrittenAtomically) {
  const std::string dir = test::temp_dir() + "/atomic";
  fs::create_directories(dir);
  const std::string out = dir + "/m.gguf";
  Model good = wide_model("qwen3", 3);
  quantize_model(good, PrecisionMap::uniform(good.config, parse_tensor_format("q4_k")), {.progress = false});
  make_exporter("gguf")->write(good, out, {});
  const std::string before = read_bytes(out);
  EXPECT_THROW(make_exporter("gguf")->write(good, out, {}), Error);  // exists, no force

  Model bad = wide_model("gemma3", 3);
  bad.config.attn_softcap = 20.0f;  // llama.cpp's gemma3 has no attention soft-capping: not expressible
  try {
    make_exporter("gguf")->write(bad, out, {.force = true});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("soft-capping"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_bytes(out), before);
  EXPECT_EQ(file_count(dir), 1u);
}

// 8-bit affine groups with biases have no lossless GGUF type (Q8_0 has no
// bias): they become Q8_0 from their values, and the export says so.
TEST(SaveGguf, AffineEightBitIsRequantizedWithAWarning) {
  Model m = wide_model("qwen2", 4);
  quantize_model(m, PrecisionMap::uniform(m.config, parse_tensor_format("q8g32")), {.progress = false});
  const std::string out = test::temp_dir() + "/q8.gguf";
  CollectDiagnostics diag;
  make_exporter("gguf")->write(m, out, {});
  EXPECT_NE(diag.text().find("re-quantized"), std::string::npos) << diag.text();
  Model back = load_model(out);
  for (const auto& mod : quantizable_modules(m.config)) {
    const auto a = module_linear(m.weights, mod).to_f32(), b = module_linear(back.weights, mod).to_f32();
    double err = 0, amax = 0;
    for (size_t i = 0; i < a.size(); ++i) err = std::max(err, double(std::abs(a[i] - b[i]))), amax = std::max(amax, double(std::abs(a[i])));
    EXPECT_LT(err, amax / 100) << mod.path;  // within one Q8_0 step
  }
}

}  // namespace
}  // namespace optiq

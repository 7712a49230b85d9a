// fuzz_seedgen OUT: writes the seed files that need optiq itself to make
// (called by make_seeds.sh, which adds the raw model files): small GGUFs with
// every tensor type and real tokenizer metadata, safetensors of every dtype,
// config.json of every family, tokenizer.json files, tiny llama2.c
// checkpoints, plans and profiles of stories260K's shape. Models come from
// ../shared (stories260K) and the model cache (SmolLM2, Gemma 3) when present.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "formats/safetensors.h"
#include "fuzz_util.h"
#include "model/hf_export.h"
#include "plan/plan_json.h"
#include "profile/sensitivity.h"
#include "quant/format.h"
#include "test_models.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_json.h"

using namespace optiq;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string g_out;

std::string out(const std::string& harness, const std::string& name) {
  fs::create_directories(g_out + "/" + harness);
  return g_out + "/" + harness + "/" + name;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(g());
  return v;
}

std::vector<std::string> existing(std::initializer_list<std::string> paths) {
  std::vector<std::string> v;
  for (const auto& p : paths)
    if (fs::exists(p)) v.push_back(p);
  return v;
}

// The GGUF's metadata with its vocabulary cut to the first `keep` tokens
// (merges and special ids that no longer fit dropped), so that a seed is a
// few KB and still builds a real tokenizer.
void copy_small_vocab(GgufWriter& w, const GgufFile& src, size_t keep) {
  w.copy_metadata(src, [](std::string_view k) {
    return k.rfind("tokenizer.ggml.", 0) != 0 || k == "tokenizer.ggml.model" || k == "tokenizer.ggml.pre" ||
           k.find("add_") != std::string_view::npos;
  });
  std::vector<std::string> tokens = src.get_string_array("tokenizer.ggml.tokens");
  tokens.resize(std::min(tokens.size(), keep));
  const std::set<std::string> kept(tokens.begin(), tokens.end());
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  if (src.has("tokenizer.ggml.scores")) {
    auto s = src.get_float_array("tokenizer.ggml.scores");
    s.resize(tokens.size());
    w.add_float_array("tokenizer.ggml.scores", s);
  }
  if (src.has("tokenizer.ggml.token_type")) {
    auto t = src.get_int_array("tokenizer.ggml.token_type");
    t.resize(tokens.size());
    w.add_int_array("tokenizer.ggml.token_type", t);
  }
  if (src.has("tokenizer.ggml.merges")) {
    std::vector<std::string> merges;
    for (const auto& m : src.get_string_array("tokenizer.ggml.merges")) {
      const size_t sp = m.find(' ');
      if (sp == std::string::npos) continue;
      const std::string a = m.substr(0, sp), b = m.substr(sp + 1);
      if (kept.count(a) && kept.count(b) && kept.count(a + b)) merges.push_back(m);
    }
    w.add_string_array("tokenizer.ggml.merges", merges);
  }
  for (const auto& [key, v] : src.metadata()) {
    if (key.rfind("tokenizer.ggml.", 0) != 0 || key.size() < 9 || key.substr(key.size() - 9) != "_token_id") continue;
    if (v.is_int() && v.i >= 0 && static_cast<size_t>(v.i) < tokens.size())
      w.add_int(key, v.i, GgufValue::Type::U32);
  }
}

void gguf_seeds(const std::string& stories_gguf) {
  // Every tensor type optiq reads, two rows of one 256-block each, after a
  // few plain keys (no vocabulary: a small seed the fuzzer mutates quickly).
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", 1);
  w.add_u32("llama.embedding_length", 256);
  w.add_u32("llama.attention.head_count", 4);
  w.add_float("llama.attention.layer_norm_rms_epsilon", 1e-5);
  uint32_t seed = 1;
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1,
                  DType::Q8_0, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_NL,
                  DType::IQ4_XS}) {
    const int64_t cols = 256, rows = 2;
    w.add_tensor(std::string("t.") + std::string(dtype_name(t)), t, {rows, cols},
                 random_bytes(dtype_bytes(t, rows * cols), seed++));
  }
  w.write(out("gguf", "all_types.gguf"));

  if (stories_gguf.empty()) return;
  GgufFile src(stories_gguf);
  GgufWriter m;  // stories260K's metadata and tokenizer, tensors cut to their first row
  m.copy_metadata(src);
  for (const auto& t : src.tensors()) {
    std::vector<int64_t> shape = t.shape;
    if (shape.size() > 1) shape[0] = 1;
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    const size_t n = dtype_bytes(t.dtype, numel);
    m.add_tensor_view(t.name, t.dtype, shape, t.data, n);
  }
  m.write(out("gguf", "stories260K_rows.gguf"));
}

void vocab_seeds(const std::vector<std::string>& ggufs) {
  int k = 0;
  for (const auto& p : ggufs) {
    GgufFile src(p);
    GgufWriter w;
    copy_small_vocab(w, src, 600);
    const std::string path = out("gguf_vocab", fmt::format("vocab{}_{}.gguf", k++, fs::path(p).stem().string()));
    w.write(path);
    try {
      GgufFile g(path);
      Tokenizer tok(tokenizer_spec_from_gguf(g));
      // The same tokenizer as tokenizer.json.
      const std::string dir = g_out + "/tmp-tokenizer";
      fs::create_directories(dir);
      write_hf_tokenizer(tok, dir);
      fs::copy_file(dir + "/tokenizer.json", out("tokenizer_json", fs::path(path).stem().string() + ".json"),
                    fs::copy_options::overwrite_existing);
      fs::remove_all(dir);
    } catch (const Error& e) {
      std::fprintf(stderr, "fuzz_seedgen: %s (seed kept)\n", e.what());
    }
  }
}

void safetensors_seeds() {
  SafetensorsWriter w;
  uint32_t seed = 100;
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::U32, DType::I32, DType::I64, DType::U8})
    w.add_owned(std::string("w.") + std::string(dtype_name(t)), t, {2, 3}, random_bytes(dtype_bytes(t, 6), seed++));
  w.add_owned("empty", DType::F32, {0, 4}, {});
  w.add_owned("scalar", DType::F32, {}, random_bytes(4, seed++));
  w.set_metadata("format", "mlx");
  w.write(out("safetensors", "all_dtypes.safetensors"));
}

void config_seeds() {
  for (const std::string fam : {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3", "llama3"}) {
    Model m;
    m.path = fam;
    m.config = test::tiny(fam == "llama3" ? "llama" : fam);
    if (fam == "llama3") {
      m.config.rope_scaling.type = RopeScalingType::Llama3;
      m.config.rope_scaling.factor = 8.0f;
    }
    TokenizerSpec s;
    for (int i = 0; i < 8; ++i) s.tokens.push_back(fmt::format("t{}", i));
    s.bos = 1, s.eos = 2;
    m.tokenizer = std::make_unique<Tokenizer>(s);
    write_text(out("config_hf", fam + ".json"), hf_export_config(m, fam == "gemma3").dump(2));
  }
}

// A version-0 checkpoint: dim 8, hidden 16, 1 layer, 2 heads (1 kv head),
// vocabulary 16, context 4; `untied` appends a classifier.
void llama2c_seed(bool untied) {
  const int32_t dim = 8, hidden = 16, layers = 1, heads = 2, kv_heads = 1, vocab = 16, seq = 4;
  const int32_t kv_dim = dim * kv_heads / heads, head = dim / heads;
  const size_t floats = size_t(vocab) * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv_dim * dim + 3 * hidden * dim) +
                        dim + 2 * seq * head / 2 + (untied ? size_t(vocab) * dim : 0);
  std::vector<int32_t> hdr = {dim, hidden, layers, heads, kv_heads, untied ? -vocab : vocab, seq};
  std::vector<float> w(floats);
  std::mt19937 g(7);
  for (auto& x : w) x = std::normal_distribution<float>(0, 0.1f)(g);
  std::ofstream f(out("llama2c", untied ? "untied.bin" : "tied.bin"), std::ios::binary);
  f.write(reinterpret_cast<const char*>(hdr.data()), hdr.size() * 4);
  f.write(reinterpret_cast<const char*>(w.data()), static_cast<std::streamsize>(w.size() * 4));
}

void plan_seeds() {
  const ModelConfig c = fuzz::stories_config();
  PlanMetadata meta;
  meta.budget = "--bpw 4.5";
  meta.method = "optiq dp+greedy";
  meta.predicted_kl = 0.01;
  PrecisionMap u = PrecisionMap::uniform(c, parse_tensor_format("q4g64"));
  write_text(out("plan_json", "uniform_q4g64.json"), plan_json(u, c, meta).dump(2));
  PrecisionMap mixed = PrecisionMap::uniform(c, parse_tensor_format("q4_k"));
  int i = 0;
  for (const auto& mod : quantizable_modules(c)) {
    const char* f[] = {"q8_0", "q3g32", "float", "iq4_nl", "q6_k", "q2g32"};
    const TensorFormat fmt = parse_tensor_format(f[i++ % 6]);
    if (!format_fits(fmt, mod.cols)) continue;  // down_proj's 172 inputs take few formats
    mixed.formats[mod.path] = fmt;
    if (i % 4 == 0) mixed.methods[mod.path] = "gptq";
  }
  write_text(out("plan_json", "mixed.json"), plan_json(mixed, c, meta).dump(2));
}

void profile_seeds() {
  const ModelConfig c = fuzz::stories_config();
  json j = {{"format", "optiq-profile"},
            {"candidates", {"2,4,8x32,64"}},
            {"model", {{"path", "stories260K.gguf"}, {"size", 1185376}, {"mtime", 1}}},
            {"calibration", {{"source", "c4"}, {"samples", 8}, {"seq", 64}, {"seed", 0}}},
            {"method", "fast"},
            {"modules", json::object()}};
  double x = 0.001;
  for (const auto& mod : quantizable_modules(c)) {
    json f = json::object();
    f["q4g64"] = {{"kl", x}, {"proxy", x * 3}};
    f["q2g32"] = {{"proxy", x * 40}, {"method", "gptq"}};
    f["q8g64"] = {{"kl", x / 50}};
    j["modules"][mod.path] = {{"formats", f}};
    x *= 1.3;
  }
  SensitivityTable t = SensitivityTable::from_json(j, c, "seed");
  t.calibrate_fast();
  write_text(out("profile_json", "stories_fast.json"), t.to_json().dump(1));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seedgen OUTDIR\n");
    return 2;
  }
  g_out = argv[1];
  try {
    const std::string stories = fuzz::stories_dir() + "/stories260K.gguf";
    const std::string cache = fuzz::cache_models_dir();
    gguf_seeds(fs::exists(stories) ? stories : "");
    vocab_seeds(existing({stories, cache + "/smollm2-135m-instruct-q4_1.gguf", cache + "/gemma-3-270m-q4_k_m.gguf"}));
    safetensors_seeds();
    config_seeds();
    llama2c_seed(false);
    llama2c_seed(true);
    plan_seeds();
    profile_seeds();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_seedgen: %s\n", e.what());
    return 1;
  }
  return 0;
}

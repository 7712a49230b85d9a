// synth_model: writes a model of a real architecture's shape with random
// weights as a Hugging Face directory (sharded bf16 safetensors, config.json,
// a byte-level tokenizer.json), one tensor at a time: a 70B-shaped model is
// written with ~1 GB of memory. For the scale benchmarks (issue 14) here and
// on the GPU, where no real 8-70B checkpoint can be downloaded.
//
//   synth_model --shape llama3-8b --out DIR [--shard-size 5GB] [--seed 1]
//
// Weights are not just noise of one scale: each matrix is N(0, s^2) with
// s = 0.5/sqrt(cols) (activations neither vanish nor explode through the
// layers), 1% of its input columns scaled by 4-8x (the salient channels that
// make real models hard to quantize: activation-aware methods have something
// to find), rows scaled by 0.75-1.25; norms near 1, biases small. The same
// seed gives the same bytes on every machine and thread count.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "formats/safetensors_shards.h"
#include "model/hf_export.h"
#include "plan/budget.h"
#include "random_model.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_json.h"

namespace optiq::bench {
namespace {

namespace fs = std::filesystem;

uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A uniform in (0, 1) from a counter: element i of tensor t never depends on
// how the work is split.
double unit(uint64_t seed, uint64_t t, uint64_t i) {
  return (static_cast<double>(mix(mix(seed * 0x9E3779B97F4A7C15ull + t) + i) >> 11) + 0.5) / 9007199254740992.0;
}

// Approximately normal: the sum of four uniforms, scaled to unit variance.
float normal(uint64_t seed, uint64_t t, uint64_t i) {
  double s = 0;
  for (uint64_t k = 0; k < 4; ++k) s += unit(seed, t, 4 * i + k);
  return static_cast<float>((s - 2.0) * std::sqrt(3.0));
}

void fill_matrix(uint8_t* dst, int64_t rows, int64_t cols, uint64_t seed, uint64_t t) {
  const float s = 0.5f / std::sqrt(static_cast<float>(cols));
  std::vector<float> col_scale(cols);
  for (int64_t j = 0; j < cols; ++j) {
    const double u = unit(seed, t ^ 0xC01u, j);
    col_scale[j] = u < 0.01 ? static_cast<float>(4.0 + 400.0 * u) : 1.0f;  // 1% of columns 4-8x
  }
  parallel_for(rows, [&](int64_t r) {
    const float row_scale = s * static_cast<float>(0.75 + 0.5 * unit(seed, t ^ 0x20Cu, r));
    uint16_t* out = reinterpret_cast<uint16_t*>(dst) + r * cols;
    for (int64_t j = 0; j < cols; ++j)
      out[j] = f32_to_bf16(normal(seed, t, static_cast<uint64_t>(r * cols + j)) * row_scale * col_scale[j]);
  }, 64);
}

// GPT-2's printable stand-ins for the 256 bytes (what byte-level BPE vocabularies hold).
std::string byte_symbol(int b) {
  auto printable = [](int c) { return (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255); };
  int cp = b;
  if (!printable(b)) {
    int n = 0;
    for (int c = 0; c < b; ++c) n += !printable(c);
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Byte-level BPE over the bytes plus the merges of lower-case letter pairs
// (text becomes bytes and letter pairs); the rest of the vocabulary is filler
// that no text produces, and the last two ids are BOS/EOS.
std::unique_ptr<Tokenizer> byte_tokenizer(int vocab) {
  TokenizerSpec s;
  s.kind = TokenizerSpec::Kind::ByteLevelBPE;
  s.pre = "llama-bpe";
  for (int b = 0; b < 256; ++b) s.tokens.push_back(byte_symbol(b));
  for (char x = 'a'; x <= 'z'; ++x)
    for (char y = 'a'; y <= 'z'; ++y)
      if (static_cast<int>(s.tokens.size()) < vocab - 2) {
        s.tokens.push_back(std::string{x, y});
        s.merges.push_back(std::string{x, ' ', y});
      }
  for (int i = static_cast<int>(s.tokens.size()); i < vocab - 2; ++i) s.tokens.push_back(fmt::format("<filler_{}>", i));
  s.tokens.push_back("<|bos|>");
  s.tokens.push_back("<|eos|>");
  s.token_types.assign(vocab, token_type::kNormal);
  s.token_types[vocab - 2] = s.token_types[vocab - 1] = token_type::kControl;
  s.bos = vocab - 2, s.eos = vocab - 1, s.add_bos = true;
  return std::make_unique<Tokenizer>(std::move(s));
}

int run(const std::string& shape_name, const std::string& out, const std::string& shard_size, uint64_t seed,
        int layers) {
  ModelConfig c = shape(shape_name);
  if (layers > 0) c.n_layers = layers;
  Model m;
  m.config = c;
  m.format = SourceFormat::Llama2c;  // no source files to copy: the tokenizer is written from m.tokenizer
  m.tokenizer = byte_tokenizer(c.vocab_size);
  m.weights.layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {  // the small vectors, in memory (hf_export_vectors names them)
    LayerWeights& L = m.weights.layers[i];
    auto vec = [&](int64_t n, float base, float spread, uint64_t t) {
      std::vector<float> v(n);
      for (int64_t j = 0; j < n; ++j) v[j] = base + spread * normal(seed, t, j);
      return v;
    };
    const uint64_t t = 1000u * (i + 1);
    L.attn_norm = vec(c.dim, 1.0f, 0.1f, t + 1);
    L.ffn_norm = vec(c.dim, 1.0f, 0.1f, t + 2);
    if (c.qkv_bias) {
      L.bq = vec(c.q_dim(), 0.0f, 0.05f, t + 3);
      L.bk = vec(c.kv_dim(), 0.0f, 0.05f, t + 4);
      L.bv = vec(c.kv_dim(), 0.0f, 0.05f, t + 5);
    }
  }
  m.weights.final_norm.assign(c.dim, 1.0f);
  std::error_code ec;
  check(!fs::exists(out, ec), "{}: already exists (choose another directory)", out);
  const fs::path tmp = fs::path(out).string() + ".partial";
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);

  SafetensorsShardWriter st;
  uint64_t t = 0;
  for (const auto& mod : quantizable_modules(c)) {
    const uint64_t id = ++t;
    st.add(mod.path + ".weight", DType::BF16, {mod.rows, mod.cols},
           [rows = mod.rows, cols = mod.cols, seed, id](uint8_t* dst) { fill_matrix(dst, rows, cols, seed, id); });
  }
  const auto vectors = hf_export_vectors(m);
  for (const auto& [name, v] : vectors)
    st.add(name, DType::BF16, {static_cast<int64_t>(v.size())}, [&v = v](uint8_t* dst) {
      for (size_t j = 0; j < v.size(); ++j) {
        const uint16_t h = f32_to_bf16(v[j]);
        std::memcpy(dst + 2 * j, &h, 2);
      }
    });
  Progress progress("write", static_cast<int64_t>(st.total_bytes() / 1000000), "MB");
  const auto files = st.write(tmp.string(), static_cast<uint64_t>(parse_byte_size(shard_size, "--shard-size")), "model",
                              [&](uint64_t done) { progress.update(static_cast<int64_t>(done / 1000000)); });
  progress.finish();
  write_file_atomic((tmp / "config.json").string(), hf_export_config(m, true).dump(2) + "\n");
  write_hf_tokenizer(*m.tokenizer, tmp.string());
  fs::rename(tmp, out);
  fmt::print("wrote {}: {} ({} layers), {:.2f} GB of bf16 weights in {} file(s)\n", out, c.family, c.n_layers,
             st.total_bytes() / 1e9, files.size());
  return 0;
}

}  // namespace
}  // namespace optiq::bench

int main(int argc, char** argv) {
  CLI::App app{"Writes a random-weight model of a real architecture's shape as a Hugging Face bf16 directory"};
  std::string shape = "llama3-8b", out, shard_size = "5GB";
  uint64_t seed = 1;
  int layers = 0;
  app.add_option("--shape", shape, "llama3-8b, qwen2.5-7b, llama3-70b, gemma3-270m (its matrices in Llama's layout), or tiny-llama (a few MB, for tests)")
      ->capture_default_str();
  app.add_option("-o,--out", out, "output directory (must not exist)")->required();
  app.add_option("--shard-size", shard_size, "safetensors shards of at most this size")->capture_default_str();
  app.add_option("--seed", seed, "random seed")->capture_default_str();
  app.add_option("--layers", layers, "keep only the first N layers (0: the shape's own count)");
  CLI11_PARSE(app, argc, argv);
  try {
    return optiq::bench::run(shape, out, shard_size, seed, layers);
  } catch (const std::exception& e) {
    fmt::print(stderr, "synth_model: {}\n", e.what());
    return 1;
  }
}

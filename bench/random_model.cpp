#include "random_model.h"

#include <algorithm>
#include <memory>
#include <random>

#include <fmt/format.h>

#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"

namespace optiq::bench {

ModelConfig shape(const std::string& name) {
  ModelConfig c;
  if (name == "llama3-8b") {
    c.arch = "llama";
    c.family = "Llama 3 8B shape";
    c.dim = 4096, c.n_layers = 32, c.n_heads = 32, c.n_kv_heads = 8, c.head_dim = 128, c.hidden_dim = 14336;
    c.vocab_size = 128256, c.max_seq = 8192, c.rope_theta = 500000.0f;
  } else if (name == "qwen2.5-7b") {
    c.arch = "qwen2";
    c.family = "Qwen2.5 7B shape";
    c.dim = 3584, c.n_layers = 28, c.n_heads = 28, c.n_kv_heads = 4, c.head_dim = 128, c.hidden_dim = 18944;
    c.vocab_size = 152064, c.max_seq = 32768, c.rope_theta = 1000000.0f, c.qkv_bias = true, c.norm_eps = 1e-6f;
  } else if (name == "llama3-70b") {
    c.arch = "llama";
    c.family = "Llama 3 70B shape";
    c.dim = 8192, c.n_layers = 80, c.n_heads = 64, c.n_kv_heads = 8, c.head_dim = 128, c.hidden_dim = 28672;
    c.vocab_size = 128256, c.max_seq = 8192, c.rope_theta = 500000.0f;
  } else if (name == "gemma3-270m") {  // Gemma 3 270M's matrices (tied) in Llama's layout: GPTQ timings
    c.arch = "llama";
    c.family = "Gemma 3 270M matrix shapes";
    c.dim = 640, c.n_layers = 18, c.n_heads = 4, c.n_kv_heads = 1, c.head_dim = 256, c.hidden_dim = 2048;
    c.vocab_size = 262144, c.max_seq = 32768, c.rope_theta = 1000000.0f, c.norm_eps = 1e-6f;
    c.tied_embeddings = true;
  } else if (name == "tiny-llama") {  // the Llama 3 layout at a size tests can afford
    c.arch = "llama";
    c.family = "tiny Llama 3 shape";
    c.dim = 256, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64, c.hidden_dim = 512;
    c.vocab_size = 1024, c.max_seq = 2048, c.rope_theta = 500000.0f;
  } else {
    fail("unknown shape '{}' (llama3-8b, qwen2.5-7b, llama3-70b, gemma3-270m, tiny-llama)", name);
  }
  c.validate(c.family);
  return c;
}

namespace {

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Fills n words with random bits, in parallel, deterministically.
template <class T>
void random_words(std::vector<T>& v, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(v.size()), chunk = 1 << 20;
  parallel_for((n + chunk - 1) / chunk, [&](int64_t c) {
    uint64_t s = seed * 1000003 + static_cast<uint64_t>(c);
    for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) v[i] = static_cast<T>(splitmix(s));
  });
}

// A {rows, cols} matrix in `fmt` ("bf16" or "q<bits>" with groups of 64),
// random codes and scales of a realistic size (weights ~ 0.02).
Linear random_matrix(const std::string& fmt, int64_t rows, int64_t cols, uint64_t seed) {
  if (fmt == "bf16") {
    auto owned = std::make_shared<std::vector<uint16_t>>(static_cast<size_t>(rows * cols));
    std::vector<uint16_t>& w = *owned;
    const int64_t n = rows * cols, chunk = 1 << 20;
    parallel_for((n + chunk - 1) / chunk, [&](int64_t c) {
      uint64_t s = seed * 1000003 + static_cast<uint64_t>(c);
      for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) {
        const double u = static_cast<double>(splitmix(s) >> 11) / 9007199254740992.0;  // [0, 1)
        w[i] = f32_to_bf16(static_cast<float>((u - 0.5) * 0.07));
      }
    });
    // from_half_view borrows: keep the words alive for the process (a benchmark).
    static std::vector<std::shared_ptr<std::vector<uint16_t>>> keep;
    keep.push_back(owned);
    return Linear::from_half_view(owned->data(), true, rows, cols);
  }
  if (fmt == "Q4_K" || fmt == "Q6_K") {  // random blocks, d (and dmin) sized for weights ~ 0.02
    const bool q4 = fmt == "Q4_K";
    const int64_t block_bytes = q4 ? 144 : 210, blocks = rows * (cols / 256);
    std::vector<uint8_t> b(static_cast<size_t>(blocks * block_bytes));
    random_words(b, seed);
    for (int64_t i = 0; i < blocks; ++i) {
      uint8_t* blk = b.data() + i * block_bytes;
      const uint16_t d = f32_to_f16(q4 ? 1.5e-4f : 6.5e-5f), dmin = f32_to_f16(1.5e-4f);
      uint8_t* dp = blk + (q4 ? 0 : 208);
      dp[0] = static_cast<uint8_t>(d & 0xff), dp[1] = static_cast<uint8_t>(d >> 8);
      if (q4) blk[2] = static_cast<uint8_t>(dmin & 0xff), blk[3] = static_cast<uint8_t>(dmin >> 8);
    }
    return Linear::from_ggml(q4 ? DType::Q4_K : DType::Q6_K, std::move(b), rows, cols);
  }
  check(fmt.size() == 2 && fmt[0] == 'q', "unknown format '{}'", fmt);
  AffineMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.fmt = AffineFormat{fmt[1] - '0', 64};
  m.packed.resize(static_cast<size_t>(rows * affine_words_per_row(m.fmt, cols)));
  random_words(m.packed, seed);
  const size_t groups = static_cast<size_t>(rows * (cols / 64));
  m.scales.resize(groups);
  m.biases.resize(groups);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  const float levels = static_cast<float>((1 << m.fmt.bits) - 1);
  for (size_t g = 0; g < groups; ++g) {
    const float s = u(rng) * 0.07f / levels;
    m.scales[g] = f32_to_f16(s);
    m.biases[g] = f32_to_f16(-s * levels / 2);
  }
  return Linear::from_affine(std::move(m));
}

// The per-module format of a preset.
std::string format_of(const std::string& preset, ModuleKind k, int layer, int layers) {
  if (preset == "bf16") return "bf16";
  if (preset == "q8") return "q8";
  if (preset == "q4") return "q4";
  if (preset == "q4_k_m") {  // llama.cpp's Q4_K_M mix (llama-quantize's use_more_bits rule for v and down)
    const bool more = layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
    if (k == ModuleKind::LmHead) return "Q6_K";
    if (k == ModuleKind::VProj || k == ModuleKind::DownProj) return more ? "Q6_K" : "Q4_K";
    return "Q4_K";
  }
  const bool edge = layer < layers / 8 || layer >= layers - layers / 8;
  // A per-module mix of the shape optiq's plans take (v and down get more
  // bits, so do the first and last eighth of the layers), sized to average
  // its name over the matrices a decode step reads (Llama-3-8B: 4.55 and 3.55).
  if (preset == "mixed4.5") {
    if (k == ModuleKind::LmHead || k == ModuleKind::VProj) return "q6";
    if (k == ModuleKind::Embed) return "q4";
    if (k == ModuleKind::DownProj) return "q5";
    if (k == ModuleKind::GateProj || k == ModuleKind::UpProj) return edge ? "q4" : "q3";
    return "q4";
  }
  if (preset == "mixed3.5") {
    if (k == ModuleKind::LmHead || k == ModuleKind::VProj) return "q5";
    if (k == ModuleKind::Embed) return "q3";
    if (k == ModuleKind::DownProj) return "q4";
    if (k == ModuleKind::GateProj || k == ModuleKind::UpProj) return edge ? "q3" : "q2";
    return "q3";
  }
  fail("unknown format preset '{}' (bf16, q8, q4, mixed4.5, mixed3.5, q4_k_m)", preset);
}

std::vector<float> small_bias(int64_t n) {
  std::vector<float> b(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) b[i] = 0.01f * static_cast<float>((i * 37) % 11 - 5);
  return b;
}

}  // namespace

Model random_model(const ModelConfig& c, const std::string& preset) {
  Model m;
  m.path = fmt::format("<random {} {}>", c.family, preset);
  m.config = c;
  ModelWeights& w = m.weights;
  uint64_t seed = 1;
  w.embed = random_matrix(format_of(preset, ModuleKind::Embed, 0, c.n_layers), c.vocab_size, c.dim, seed++);
  w.lm_head = random_matrix(format_of(preset, ModuleKind::LmHead, 0, c.n_layers), c.vocab_size, c.dim, seed++);
  w.final_norm.assign(c.dim, 1.0f);
  w.layers.resize(c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w.layers[l];
    auto mat = [&](ModuleKind k, int64_t rows, int64_t cols) {
      return random_matrix(format_of(preset, k, l, c.n_layers), rows, cols, seed++);
    };
    L.wq = mat(ModuleKind::QProj, c.q_dim(), c.dim);
    L.wk = mat(ModuleKind::KProj, c.kv_dim(), c.dim);
    L.wv = mat(ModuleKind::VProj, c.kv_dim(), c.dim);
    L.wo = mat(ModuleKind::OProj, c.dim, c.q_dim());
    L.w_gate = mat(ModuleKind::GateProj, c.hidden_dim, c.dim);
    L.w_up = mat(ModuleKind::UpProj, c.hidden_dim, c.dim);
    L.w_down = mat(ModuleKind::DownProj, c.dim, c.hidden_dim);
    L.attn_norm.assign(c.dim, 1.0f);
    L.ffn_norm.assign(c.dim, 1.0f);
    if (c.qkv_bias) {
      L.bq = small_bias(c.q_dim());
      L.bk = small_bias(c.kv_dim());
      L.bv = small_bias(c.kv_dim());
    }
  }
  return m;
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  if (s == "none") return v;
  size_t p = 0;
  while (p < s.size()) {
    const size_t e = s.find(',', p);
    v.push_back(std::stoll(s.substr(p, e == std::string::npos ? std::string::npos : e - p)));
    if (e == std::string::npos) break;
    p = e + 1;
  }
  return v;
}
std::vector<std::string> parse_names(const std::string& s) {
  std::vector<std::string> v;
  size_t p = 0;
  while (p <= s.size()) {
    const size_t e = s.find(',', p);
    v.push_back(s.substr(p, e == std::string::npos ? std::string::npos : e - p));
    if (e == std::string::npos) break;
    p = e + 1;
  }
  return v;
}

}  // namespace optiq::bench

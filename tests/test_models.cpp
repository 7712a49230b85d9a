#include "test_models.h"

#include <cmath>
#include <memory>
#include <random>

#include "core/half.h"
#include "test_util.h"

namespace optiq::test {

Model random_model(const ModelConfig& c, uint32_t seed, bool half) {
  Model m;
  m.config = c;
  uint32_t s = seed;
  auto store = std::make_shared<std::vector<std::vector<uint16_t>>>();
  m.keepalive = store;
  auto lin = [&](int64_t rows, int64_t cols) {
    auto w = test::random_floats(rows * cols, ++s, 1.0f / std::sqrt(float(cols)));
    if (!half) return Linear::from_f32(std::move(w), rows, cols);
    std::vector<uint16_t>& h = store->emplace_back(w.size());
    for (size_t j = 0; j < w.size(); ++j) h[j] = f32_to_f16(w[j]);
    return Linear::from_half_view(h.data(), false, rows, cols);
  };
  auto norm = [&](int64_t n) {
    auto v = test::random_floats(n, ++s, 0.2f);
    for (float& x : v) x += 1.0f;
    return v;
  };
  ModelWeights& w = m.weights;
  w.embed = lin(c.vocab_size, c.dim);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights L;
    L.attn_norm = norm(c.dim);
    L.ffn_norm = norm(c.dim);
    if (c.sandwich_norms) L.post_attn_norm = norm(c.dim), L.post_ffn_norm = norm(c.dim);
    if (c.qk_norm) L.q_norm = norm(c.head_dim), L.k_norm = norm(c.head_dim);
    if (c.qkv_bias) {
      L.bq = test::random_floats(c.q_dim(), ++s, 0.3f);
      L.bk = test::random_floats(c.kv_dim(), ++s, 0.3f);
      L.bv = test::random_floats(c.kv_dim(), ++s, 0.3f);
    }
    if (c.fused_qkv) {
      L.wqkv = lin(c.q_dim() + 2 * c.kv_dim(), c.dim);
      L.w_gate_up = lin(2 * c.hidden_dim, c.dim);
    } else {
      L.wq = lin(c.q_dim(), c.dim), L.wk = lin(c.kv_dim(), c.dim), L.wv = lin(c.kv_dim(), c.dim);
      L.w_gate = lin(c.hidden_dim, c.dim), L.w_up = lin(c.hidden_dim, c.dim);
    }
    L.wo = lin(c.dim, c.q_dim());
    L.w_down = lin(c.dim, c.hidden_dim);
    w.layers.push_back(std::move(L));
  }
  w.final_norm = norm(c.dim);
  if (!c.tied_embeddings) w.lm_head = lin(c.vocab_size, c.dim);
  return m;
}

ModelConfig tiny(const std::string& family) {
  ModelConfig c;
  c.arch = family;
  c.dim = 48, c.n_layers = 3, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 12, c.hidden_dim = 40;
  c.vocab_size = 61, c.max_seq = 64;
  if (family == "qwen2") c.qkv_bias = true;
  if (family == "qwen3") c.qk_norm = true, c.head_dim = 16;
  if (family == "mistral") c.layer_window.assign(3, 5);
  if (family == "phi3") {
    c.fused_qkv = true, c.rotary_dim = 8;
    c.rope_scaling.type = RopeScalingType::LongRope;
    c.rope_scaling.short_factor = {1.0f, 1.5f, 2.0f, 3.0f};
    c.rope_scaling.long_factor = {2.0f, 4.0f, 6.0f, 9.0f};
    c.rope_scaling.original_max_position = 16;
    c.rope_scaling.attn_factor = 1.1f;
  }
  if (family == "gemma3") {
    c.activation = Activation::GeluTanh, c.qk_norm = true, c.sandwich_norms = true, c.tied_embeddings = true;
    c.embed_scale = std::sqrt(48.0f), c.attn_scale = 0.2f, c.attn_softcap = 20.0f, c.final_softcap = 15.0f;
    c.layer_window = {4, 0, 4};
    c.rope_theta = 1e6f, c.rope_theta_local = 1e4f;
  }
  c.validate(family);
  return c;
}

std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = static_cast<int32_t>(g() % vocab);
  return ids;
}

std::unique_ptr<Tokenizer> tiny_tokenizer(int vocab) {
  TokenizerSpec s;
  s.kind = TokenizerSpec::Kind::SentencePiece;
  for (int i = 0; i < vocab; ++i) {
    s.tokens.push_back(i == 0 ? "<unk>" : i == 1 ? "<s>" : i == 2 ? "</s>" : "\xE2\x96\x81t" + std::to_string(i));
    s.scores.push_back(-static_cast<float>(i));
    s.token_types.push_back(i == 0 ? token_type::kUnknown : i < 3 ? token_type::kControl : token_type::kNormal);
  }
  s.unk = 0, s.bos = 1, s.eos = 2, s.add_bos = true;
  return std::make_unique<Tokenizer>(std::move(s));
}

}  // namespace optiq::test

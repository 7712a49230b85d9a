#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/parallel.h"
#include "core/error.h"
#include "core/half.h"
#include "kernels/activation.h"
#include "kernels/attention.h"
#include "model/ops.h"

namespace optiq {

std::vector<float> rope_inv_freq(const ModelConfig& c, int ctx) {
  const int rd = c.rot_dim(), half = rd / 2;
  const RopeScaling& s = c.rope_scaling;
  const bool long_ctx = ctx > s.original_max_position;
  std::vector<float> f(half);
  for (int i = 0; i < half; ++i) {
    double inv = std::pow(static_cast<double>(c.rope_theta), -2.0 * i / rd);
    if (s.type == RopeScalingType::Linear) {
      inv /= s.factor;
    } else if (s.type == RopeScalingType::Llama3) {
      const double wavelen = 2.0 * std::numbers::pi / inv;
      const double low_wavelen = s.original_max_position / s.low_freq_factor;
      const double high_wavelen = s.original_max_position / s.high_freq_factor;
      if (wavelen > low_wavelen) {
        inv /= s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth =
            (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        inv = (1.0 - smooth) * inv / s.factor + smooth * inv;
      }
    } else if (s.type == RopeScalingType::LongRope) {
      inv /= long_ctx ? s.long_factor[i] : s.short_factor[i];
    }
    if (!c.rope_freq_factors.empty()) inv /= c.rope_freq_factors[i];
    f[i] = static_cast<float>(inv);
  }
  return f;
}

std::vector<float> rope_inv_freq_local(const ModelConfig& c) {
  ModelConfig local = c;
  local.rope_theta = c.rope_theta_local;
  local.rope_scaling = {};
  local.rope_freq_factors.clear();
  return rope_inv_freq(local);
}

Transformer::Transformer(const Model& model, int max_ctx) : model_(model) {
  const ModelConfig& c = model.config;
  max_ctx_ = max_ctx > 0 ? max_ctx : std::min(c.max_seq, 4096);
  inv_freq_ = rope_inv_freq(c, max_ctx_);
  if (c.rope_theta_local > 0.0f) inv_freq_local_ = rope_inv_freq_local(c);
  if (c.rope_scaling.type == RopeScalingType::LongRope) rope_mscale_ = c.rope_scaling.attn_factor;
  const size_t kv = static_cast<size_t>(c.n_layers) * max_ctx_ * c.kv_dim();
  k_cache_.assign(kv, 0.0f);
  v_cache_.assign(kv, 0.0f);
}

void Transformer::ensure_scratch(int64_t n) {
  if (n <= scratch_n_) return;
  const ModelConfig& c = model_.config;
  scratch_n_ = n;
  x_.resize(n * c.dim);
  xn_.resize(n * std::max(c.dim, c.q_dim()));
  q_.resize(n * c.q_dim());
  k_.resize(n * c.kv_dim());
  v_.resize(n * c.kv_dim());
  att_.resize(n * c.q_dim());
  gate_.resize(n * c.hidden_dim);
  up_.resize(n * c.hidden_dim);
  if (c.fused_qkv) fused_.resize(n * std::max<int64_t>(c.q_dim() + 2 * c.kv_dim(), 2 * c.hidden_dim));
}

// Causal attention of the n new queries against the cache (which already
// holds their own keys and values), within the layer's sliding window.
void Transformer::attention(int layer, int64_t n, const float* q, float* out) {
  const ModelConfig& c = model_.config;
  const int kv_dim = c.kv_dim();
  AttentionParams p;
  p.n_heads = c.n_heads;
  p.n_kv_heads = c.n_kv_heads;
  p.head_dim = c.head_dim;
  p.q_stride = c.q_dim();
  p.kv_stride = kv_dim;
  p.scale = c.attention_scale();
  p.softcap = c.attn_softcap;
  p.window = c.window(layer);
  p.f16_probs = model_.llamacpp_numerics;  // llama.cpp multiplies V by fp16 probabilities
  p.max_ctx = max_ctx_;
  const float* kc = k_cache_.data() + static_cast<size_t>(layer) * max_ctx_ * kv_dim;
  const float* vc = v_cache_.data() + static_cast<size_t>(layer) * max_ctx_ * kv_dim;
  causal_attention(p, q, n, pos_, kc, vc, out);
}

void Transformer::forward(std::span<const int32_t> tokens, float* logits, int64_t logits_from) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return;
  check(pos_ + n <= max_ctx_, "context is full: {} tokens at position {} exceed the context of {}", n, pos_, max_ctx_);
  check(logits_from >= 0 && logits_from <= n, "logits_from {} out of range for {} tokens", logits_from, n);
  // Long prompts run in micro-batches (as llama.cpp's n_ubatch): the scratch
  // then stays at kMicroBatch rows (33 KB a row for Gemma 3 270M) whatever the
  // prompt, and the batch is still large enough for the GEMM tiles. With an
  // observer the call stays whole: observers index rows by token.
  if (!observer_ && n > kMicroBatch) {
    for (int64_t s = 0; s < n; s += kMicroBatch) {
      const int64_t e = std::min(n, s + kMicroBatch);
      const int64_t from = std::clamp<int64_t>(logits_from - s, 0, e - s);
      float* out = from < e - s ? logits + (s + from - logits_from) * c.vocab_size : nullptr;
      forward(tokens.subspan(s, e - s), out, from);
    }
    return;
  }
  ensure_scratch(n);
  const int64_t dim = c.dim;

  for (int64_t i = 0; i < n; ++i) {
    check(tokens[i] >= 0 && tokens[i] < c.vocab_size, "token id {} is outside the vocabulary of {}", tokens[i],
          c.vocab_size);
    float* row = x_.data() + i * dim;
    w.embed.row(tokens[i], row);
    if (c.embed_scale != 1.0f)
      for (int64_t d = 0; d < dim; ++d) row[d] *= c.embed_scale;
  }

  run_layers(0, n, logits, logits_from);
}

void Transformer::forward_from_layer(int first_layer, const float* hidden, int64_t n, float* logits,
                                     int64_t logits_from) {
  const ModelConfig& c = model_.config;
  check(pos_ == 0, "forward_from_layer needs an empty cache (position {})", pos_);
  check(first_layer >= 0 && first_layer <= c.n_layers, "layer {} out of range", first_layer);
  check(n > 0 && n <= max_ctx_, "{} tokens do not fit the context of {}", n, max_ctx_);
  check(logits_from >= 0 && logits_from <= n, "logits_from {} out of range for {} tokens", logits_from, n);
  ensure_scratch(n);
  std::copy_n(hidden, n * c.dim, x_.data());
  run_layers(first_layer, n, logits, logits_from);
}

namespace {

void add_bias(float* y, int64_t n, const std::vector<float>& b) {
  if (b.empty()) return;
  const int64_t m = static_cast<int64_t>(b.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) y[i * m + j] += b[j];
}

// Copies columns [from, from + width) of n rows of `cols` floats.
void take_columns(const float* src, int64_t n, int64_t cols, int64_t from, int64_t width, float* dst) {
  for (int64_t i = 0; i < n; ++i) std::copy_n(src + i * cols + from, width, dst + i * width);
}

}  // namespace

void Transformer::project_qkv(const LayerWeights& L, int64_t n) {
  const ModelConfig& c = model_.config;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  if (c.fused_qkv) {
    const int64_t cols = qd + 2 * kvd;
    L.wqkv.forward(xn_.data(), n, fused_.data());
    take_columns(fused_.data(), n, cols, 0, qd, q_.data());
    take_columns(fused_.data(), n, cols, qd, kvd, k_.data());
    take_columns(fused_.data(), n, cols, qd + kvd, kvd, v_.data());
  } else {
    L.wq.forward(xn_.data(), n, q_.data());
    L.wk.forward(xn_.data(), n, k_.data());
    L.wv.forward(xn_.data(), n, v_.data());
  }
  add_bias(q_.data(), n, L.bq);
  add_bias(k_.data(), n, L.bk);
  add_bias(v_.data(), n, L.bv);
  if (c.qk_norm) {
    const int hd = c.head_dim;
    for (int64_t r = 0; r < n * c.n_heads; ++r) rms_norm(&q_[r * hd], L.q_norm.data(), hd, c.norm_eps, &q_[r * hd]);
    for (int64_t r = 0; r < n * c.n_kv_heads; ++r) rms_norm(&k_[r * hd], L.k_norm.data(), hd, c.norm_eps, &k_[r * hd]);
  }
}

void Transformer::mlp_hidden(const LayerWeights& L, int64_t n) {
  const ModelConfig& c = model_.config;
  const int64_t hid = c.hidden_dim;
  if (c.fused_qkv) {
    L.w_gate_up.forward(xn_.data(), n, fused_.data());
    take_columns(fused_.data(), n, 2 * hid, 0, hid, gate_.data());
    take_columns(fused_.data(), n, 2 * hid, hid, hid, up_.data());
  } else {
    L.w_gate.forward(xn_.data(), n, gate_.data());
    L.w_up.forward(xn_.data(), n, up_.data());
  }
  if (c.activation == Activation::GeluTanh && model_.llamacpp_numerics) {
    for (int64_t i = 0; i < n * hid; ++i) gate_[i] = gelu_tanh_llamacpp(gate_[i]) * up_[i];
  } else {
    gated_activation(c.activation == Activation::GeluTanh ? GateAct::GeluTanh : GateAct::Silu, gate_.data(),
                     up_.data(), n * hid);
  }
}

void Transformer::run_layers(int first_layer, int64_t n, float* logits, int64_t logits_from) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  const int64_t dim = c.dim, kv_dim = c.kv_dim(), qd = c.q_dim(), hid = c.hidden_dim;
  using Site = ActivationObserver::Site;
  for (int l = first_layer; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    if (observer_) observer_->observe(l, Site::LayerIn, x_.data(), n, dim);
    for (int64_t i = 0; i < n; ++i) rms_norm(&x_[i * dim], L.attn_norm.data(), dim, c.norm_eps, &xn_[i * dim]);
    if (observer_) observer_->observe(l, Site::AttnIn, xn_.data(), n, dim);
    project_qkv(L, n);
    const std::vector<float>& inv_freq = c.local_rope(l) ? inv_freq_local_ : inv_freq_;
    const float mscale = c.local_rope(l) ? 1.0f : rope_mscale_;
    float* kc = k_cache_.data() + static_cast<size_t>(l) * max_ctx_ * kv_dim;
    float* vc = v_cache_.data() + static_cast<size_t>(l) * max_ctx_ * kv_dim;
    for (int64_t i = 0; i < n; ++i) {
      const int p = pos_ + static_cast<int>(i);
      rope(&q_[i * qd], c.n_heads, c.head_dim, c.rot_dim(), p, inv_freq, mscale);
      rope(&k_[i * kv_dim], c.n_kv_heads, c.head_dim, c.rot_dim(), p, inv_freq, mscale);
      if (model_.llamacpp_numerics) {  // fp16 KV cache, fp16 query (llama.cpp's KQ product)
        round_activations(ActRounding::F16, &q_[i * qd], 1, qd);
        round_activations(ActRounding::F16, &k_[i * kv_dim], 1, kv_dim);
        round_activations(ActRounding::F16, &v_[i * kv_dim], 1, kv_dim);
      }
      std::copy_n(&k_[i * kv_dim], kv_dim, kc + static_cast<size_t>(p) * kv_dim);
      std::copy_n(&v_[i * kv_dim], kv_dim, vc + static_cast<size_t>(p) * kv_dim);
    }
    attention(l, n, q_.data(), att_.data());
    if (observer_) observer_->observe(l, Site::OIn, att_.data(), n, qd);
    L.wo.forward(att_.data(), n, xn_.data());
    if (c.sandwich_norms)
      for (int64_t i = 0; i < n; ++i) rms_norm(&xn_[i * dim], L.post_attn_norm.data(), dim, c.norm_eps, &xn_[i * dim]);
    for (int64_t i = 0; i < n * dim; ++i) x_[i] += xn_[i];

    for (int64_t i = 0; i < n; ++i) rms_norm(&x_[i * dim], L.ffn_norm.data(), dim, c.norm_eps, &xn_[i * dim]);
    if (observer_) observer_->observe(l, Site::MlpIn, xn_.data(), n, dim);
    mlp_hidden(L, n);
    if (observer_) observer_->observe(l, Site::DownIn, gate_.data(), n, hid);
    L.w_down.forward(gate_.data(), n, xn_.data());
    if (c.sandwich_norms)
      for (int64_t i = 0; i < n; ++i) rms_norm(&xn_[i * dim], L.post_ffn_norm.data(), dim, c.norm_eps, &xn_[i * dim]);
    for (int64_t i = 0; i < n * dim; ++i) x_[i] += xn_[i];
  }
  pos_ += static_cast<int>(n);

  const int64_t n_out = n - logits_from;
  // An observer sees the lm_head input of every token, not only the scored ones.
  const int64_t norm_from = observer_ ? 0 : logits_from;
  if (n - norm_from == 0) return;
  for (int64_t i = norm_from; i < n; ++i)
    rms_norm(&x_[i * dim], w.final_norm.data(), dim, c.norm_eps, &xn_[(i - norm_from) * dim]);
  if (observer_) observer_->observe(-1, ActivationObserver::Site::HeadIn, xn_.data(), n, dim);
  if (n_out > 0) {
    w.output().forward(xn_.data() + (logits_from - norm_from) * dim, n_out, logits);
    if (c.final_softcap > 0.0f) softcap(logits, n_out * c.vocab_size, c.final_softcap);
  }
}

std::vector<float> Transformer::forward_last(std::span<const int32_t> tokens) {
  std::vector<float> logits(model_.config.vocab_size);
  forward(tokens, logits.data(), static_cast<int64_t>(tokens.size()) - 1);
  return logits;
}

}  // namespace optiq

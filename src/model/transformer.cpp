#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numbers>

#include "core/error.h"
#include "core/memory.h"
#include "kernels/elementwise.h"

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

Transformer::Transformer(const Model& model, int max_ctx)
    : own_weights_(std::make_unique<DeviceWeights>(model, default_backend())),
      weights_(*own_weights_),
      model_(model),
      backend_(weights_.backend()) {
  init(max_ctx);
}

Transformer::Transformer(const DeviceWeights& weights, int max_ctx)
    : weights_(weights), model_(weights.model()), backend_(weights.backend()) {
  init(max_ctx);
}

void Transformer::init(int max_ctx) {
  const ModelConfig& c = model_.config;
  if (const char* e = std::getenv("OPTIQ_RECORD_STEPS")) record_steps_ = e[0] != '0';
  max_ctx_ = max_ctx > 0 ? max_ctx : std::min(c.max_seq, 4096);
  const std::vector<float> f = rope_inv_freq(c, max_ctx_);
  inv_freq_ = backend_.upload(f.data(), static_cast<int64_t>(f.size()));
  if (c.rope_theta_local > 0.0f) {
    const std::vector<float> fl = rope_inv_freq_local(c);
    inv_freq_local_ = backend_.upload(fl.data(), static_cast<int64_t>(fl.size()));
  }
  if (c.rope_scaling.type == RopeScalingType::LongRope) rope_mscale_ = c.rope_scaling.attn_factor;
  // llama.cpp numerics: fp16 KV cache.
  cache_ = backend_.make_kv_cache(c.n_layers, max_ctx_, c.kv_dim(), model_.llamacpp_numerics);

  // A model run from its mapped file that is large next to the memory: each
  // layer's pages are released after the layer in every pass (the page cache
  // keeps them while it can), so the process holds about one layer of weights
  // rather than the whole model (profiling an 8B model on a 16 GB machine).
  int64_t borrowed = 0;
  const auto modules = quantizable_modules(c);
  for (const auto& m : modules) {
    const Linear& lin = module_linear(model_.weights, m);
    if (lin.borrows()) borrowed += static_cast<int64_t>(lin.bytes());
  }
  release_weights_ = backend_.host_memory() && borrowed > available_memory_bytes() / 4;
  if (const char* e = std::getenv("OPTIQ_RELEASE_WEIGHTS")) release_weights_ = e[0] == '1';
  if (release_weights_) {
    layer_linears_.resize(c.n_layers);
    for (const auto& m : modules) {
      const Linear* lin = &module_linear(model_.weights, m);
      if (m.layer >= 0) layer_linears_[m.layer].push_back(lin);
      else other_linears_.push_back(lin);
    }
  }
}

void Transformer::ensure_scratch(int64_t n) {
  if (n <= act_.rows) return;
  const ModelConfig& c = model_.config;
  Backend& b = backend_;
  act_.rows = n;
  act_.x = b.alloc(n * c.dim);
  act_.xn = b.alloc(n * std::max(c.dim, c.q_dim()));
  act_.q = b.alloc(n * c.q_dim());
  act_.k = b.alloc(n * c.kv_dim());
  act_.v = b.alloc(n * c.kv_dim());
  act_.att = b.alloc(n * c.q_dim());
  act_.gate = b.alloc(n * c.hidden_dim);
  act_.up = b.alloc(n * c.hidden_dim);
  if (c.fused_qkv) act_.fused = b.alloc(n * std::max<int64_t>(c.q_dim() + 2 * c.kv_dim(), 2 * c.hidden_dim));
}

void Transformer::observe(int layer, ActivationSite site, const Buffer& b, int64_t n, int64_t cols) {
  if (!observer_) return;
  const float* rows = b.data();
  if (!backend_.host_memory() && !observer_->backend_rows()) {
    host_rows_.resize(static_cast<size_t>(n * cols));
    backend_.to_host(b.data(), n * cols, host_rows_.data());
    rows = host_rows_.data();
  }
  observer_->observe(layer, site, rows, n, cols);
}

void Transformer::forward(std::span<const int32_t> tokens, float* logits, int64_t logits_from) {
  const ModelConfig& c = model_.config;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return;
  check(pos_ + n <= max_ctx_, "context is full: {} tokens at position {} exceed the context of {}", n, pos_, max_ctx_);
  check(logits_from >= 0 && logits_from <= n, "logits_from {} out of range for {} tokens", logits_from, n);
  // Long prompts run in micro-batches (as llama.cpp's n_ubatch): the scratch
  // then stays at kMicroBatch rows (33 KB a row for Gemma 3 270M) whatever the
  // prompt, and the batch is still large enough for the GEMM tiles. With an
  // observer the call stays whole: observers index rows by token.
  const int64_t batch = backend_.prefill_rows();
  if (!observer_ && !logits_in_backend_ && n > batch) {
    for (int64_t s = 0; s < n; s += batch) {
      const int64_t e = std::min(n, s + batch);
      const int64_t from = std::clamp<int64_t>(logits_from - s, 0, e - s);
      float* out = from < e - s ? logits + (s + from - logits_from) * c.vocab_size : nullptr;
      forward(tokens.subspan(s, e - s), out, from);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    check(tokens[i] >= 0 && tokens[i] < c.vocab_size, "token id {} is outside the vocabulary of {}", tokens[i],
          c.vocab_size);
  if (n == 1 && !observer_ && !logits_in_backend_ && record_steps_ && backend_.can_record_steps()) {
    decode_step(tokens, logits, logits_from);
    return;
  }
  ensure_scratch(n);
  backend_.embed(weights_.embed(), tokens.data(), n, c.embed_scale, act_.x.data());
  run_layers(0, n, logits, logits_from);
}

void Transformer::decode_step(std::span<const int32_t> tokens, float* logits, int64_t logits_from) {
  const ModelConfig& c = model_.config;
  Backend& b = backend_;
  ensure_scratch(1);
  // A step that wants logits needs the device logits buffer first (its address is part of the recording).
  if (logits_from == 0 && !b.host_memory() && act_.logits.size() < c.vocab_size) act_.logits = b.alloc(c.vocab_size);
  const StepKey key{logits_from, weights_.version(), act_.rows, act_.logits.data(), greedy_pick_ != nullptr};
  void* out = greedy_pick_ ? static_cast<void*>(greedy_pick_) : static_cast<void*>(logits);
  b.set_step_inputs(tokens.data(), 1, pos_);
  if (step_ && step_key_ == key) {
    b.replay(*step_, out);
    ++pos_;
    return;
  }
  if (!(warm_key_ == key)) {
    // The first step of a shape runs directly: it sizes every scratch buffer
    // the recording will use.
    warm_key_ = key;
    b.embed(weights_.embed(), tokens.data(), 1, c.embed_scale, act_.x.data());
    run_layers(0, 1, logits, logits_from);
    return;
  }
  step_.reset();
  const int pos = pos_;
  b.begin_recording();
  try {
    b.embed(weights_.embed(), tokens.data(), 1, c.embed_scale, act_.x.data());
    run_layers(0, 1, logits, logits_from);
    step_ = b.end_recording();
  } catch (...) {
    b.abort_recording();
    pos_ = pos;
    throw;
  }
  step_key_ = key;
  b.replay(*step_, out);  // run_layers advanced the position; the recording runs now
}

void Transformer::forward_from_layer(int first_layer, const float* hidden, int64_t n, float* logits,
                                     int64_t logits_from) {
  const ModelConfig& c = model_.config;
  check(pos_ == 0, "forward_from_layer needs an empty cache (position {})", pos_);
  check(first_layer >= 0 && first_layer <= c.n_layers, "layer {} out of range", first_layer);
  check(n > 0 && n <= max_ctx_, "{} tokens do not fit the context of {}", n, max_ctx_);
  check(logits_from >= 0 && logits_from <= n, "logits_from {} out of range for {} tokens", logits_from, n);
  ensure_scratch(n);
  backend_.to_device(hidden, n * c.dim, act_.x.data());
  run_layers(first_layer, n, logits, logits_from);
}

// Backend::prefetch_next before each norm and attention: the weights of the
// products that follow them.
void Transformer::hint(const WeightHandle& w) {
  const WeightHandle* ws[] = {&w};
  backend_.prefetch_next(ws);
}

void Transformer::hint_qkv(const DeviceLayer& L) {
  if (model_.config.fused_qkv) return hint(L.matrix(ModuleKind::QkvProj));
  const WeightHandle* ws[] = {&L.matrix(ModuleKind::QProj), &L.matrix(ModuleKind::KProj),
                              &L.matrix(ModuleKind::VProj)};
  backend_.prefetch_next(ws);
}

void Transformer::hint_mlp(const DeviceLayer& L) {
  if (model_.config.fused_qkv) return hint(L.matrix(ModuleKind::GateUpProj));
  const WeightHandle* ws[] = {&L.matrix(ModuleKind::GateProj), &L.matrix(ModuleKind::UpProj)};
  backend_.prefetch_next(ws);
}

void Transformer::project_qkv(const DeviceLayer& L, int64_t n) {
  const ModelConfig& c = model_.config;
  Backend& b = backend_;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  float *q = act_.q.data(), *k = act_.k.data(), *v = act_.v.data();
  if (c.fused_qkv) {
    const int64_t cols = qd + 2 * kvd;
    b.matmul(L.matrix(ModuleKind::QkvProj), act_.xn.data(), n, act_.fused.data());
    b.take_columns(act_.fused.data(), n, cols, 0, qd, q);
    b.take_columns(act_.fused.data(), n, cols, qd, kvd, k);
    b.take_columns(act_.fused.data(), n, cols, qd + kvd, kvd, v);
  } else {
    const WeightHandle* ws[] = {&L.matrix(ModuleKind::QProj), &L.matrix(ModuleKind::KProj),
                                &L.matrix(ModuleKind::VProj)};
    float* const ys[] = {q, k, v};
    b.matmul_group(ws, act_.xn.data(), n, ys);
  }
  if (L.bq.size()) b.add_rows(q, L.bq.data(), n, qd);
  if (L.bk.size()) b.add_rows(k, L.bk.data(), n, kvd);
  if (L.bv.size()) b.add_rows(v, L.bv.data(), n, kvd);
  if (c.qk_norm) {
    b.rms_norm(q, L.q_norm.data(), n * c.n_heads, c.head_dim, c.norm_eps, q);
    b.rms_norm(k, L.k_norm.data(), n * c.n_kv_heads, c.head_dim, c.norm_eps, k);
  }
}

void Transformer::mlp_hidden(const DeviceLayer& L, int64_t n) {
  const ModelConfig& c = model_.config;
  Backend& b = backend_;
  const int64_t hid = c.hidden_dim;
  const GateAct act = c.activation == Activation::GeluTanh ? GateAct::GeluTanh : GateAct::Silu;
  if (c.fused_qkv) {
    b.matmul(L.matrix(ModuleKind::GateUpProj), act_.xn.data(), n, act_.fused.data());
    b.take_columns(act_.fused.data(), n, 2 * hid, 0, hid, act_.gate.data());
    b.take_columns(act_.fused.data(), n, 2 * hid, hid, hid, act_.up.data());
    b.gated_activation(act, model_.llamacpp_numerics, act_.gate.data(), act_.up.data(), n * hid);
  } else {
    b.gated_matmul(L.matrix(ModuleKind::GateProj), L.matrix(ModuleKind::UpProj), act, model_.llamacpp_numerics,
                   act_.xn.data(), n, act_.gate.data(), act_.up.data());
  }
}

void Transformer::run_layers(int first_layer, int64_t n, float* logits, int64_t logits_from, int last_layer) {
  const ModelConfig& c = model_.config;
  const bool head = last_layer < 0;  // forward_layers stops before last_layer, without the head
  if (head) last_layer = c.n_layers;
  Backend& b = backend_;
  const int64_t dim = c.dim, qd = c.q_dim(), hid = c.hidden_dim;
  using Site = ActivationSite;
  float *x = act_.x.data(), *xn = act_.xn.data();
  // Without an observer, each residual add runs together with the norm after
  // it (Backend::add_rms_norm); `normed` says xn already holds this layer's
  // attention-norm input.
  const bool fuse = observer_ == nullptr;
  bool normed = false;
  for (int l = first_layer; l < last_layer; ++l) {
    const DeviceLayer& L = weights_.layer(l);
    observe(l, Site::LayerIn, act_.x, n, dim);
    if (!normed) {
      hint_qkv(L);
      b.rms_norm(x, L.attn_norm.data(), n, dim, c.norm_eps, xn);
    }
    observe(l, Site::AttnIn, act_.xn, n, dim);
    project_qkv(L, n);
    const bool local = c.local_rope(l);
    Backend::RopeStore rs;
    rs.n_heads = c.n_heads, rs.n_kv_heads = c.n_kv_heads, rs.head_dim = c.head_dim, rs.rot_dim = c.rot_dim();
    rs.q_stride = qd;
    rs.inv_freq = local ? inv_freq_local_.data() : inv_freq_.data();
    rs.mscale = local ? 1.0f : rope_mscale_;

    AttentionParams p;
    p.n_heads = c.n_heads;
    p.n_kv_heads = c.n_kv_heads;
    p.head_dim = c.head_dim;
    p.q_stride = qd;
    p.kv_stride = c.kv_dim();
    p.scale = c.attention_scale();
    p.softcap = c.attn_softcap;
    p.window = c.window(l);
    p.f16_probs = model_.llamacpp_numerics;  // llama.cpp multiplies V by fp16 probabilities
    p.max_ctx = max_ctx_;
    hint(L.matrix(ModuleKind::OProj));
    if (model_.llamacpp_numerics) {
      b.rope_kv_store(rs, act_.q.data(), act_.k.data(), act_.v.data(), n, pos_, cache_, l);
      b.round_f16(act_.q.data(), n * qd);  // llama.cpp's fp16 KQ product
      b.attention(p, act_.q.data(), n, pos_, cache_, l, act_.att.data());
    } else {
      b.rope_store_attention(rs, act_.q.data(), act_.k.data(), act_.v.data(), n, pos_, cache_, l, p,
                             act_.att.data());
    }
    observe(l, Site::OIn, act_.att, n, qd);
    hint_mlp(L);
    if (fuse && !c.sandwich_norms) {
      b.matmul_add_rms_norm(L.matrix(ModuleKind::OProj), act_.att.data(), n, xn, x, L.ffn_norm.data(), c.norm_eps, xn);
    } else {
      b.matmul(L.matrix(ModuleKind::OProj), act_.att.data(), n, xn);
      if (c.sandwich_norms) b.rms_norm(xn, L.post_attn_norm.data(), n, dim, c.norm_eps, xn);
      if (fuse) {
        b.add_rms_norm(x, xn, L.ffn_norm.data(), n, dim, c.norm_eps, xn);
      } else {
        b.add(x, xn, n * dim);
        b.rms_norm(x, L.ffn_norm.data(), n, dim, c.norm_eps, xn);
      }
    }
    observe(l, Site::MlpIn, act_.xn, n, dim);
    mlp_hidden(L, n);
    observe(l, Site::DownIn, act_.gate, n, hid);
    normed = fuse && l + 1 < last_layer;  // the next layer's norm, when this pass runs it
    if (normed) hint_qkv(weights_.layer(l + 1));
    if (normed && !c.sandwich_norms) {
      b.matmul_add_rms_norm(L.matrix(ModuleKind::DownProj), act_.gate.data(), n, xn, x,
                            weights_.layer(l + 1).attn_norm.data(), c.norm_eps, xn);
    } else {
      b.matmul(L.matrix(ModuleKind::DownProj), act_.gate.data(), n, xn);
      if (c.sandwich_norms) b.rms_norm(xn, L.post_ffn_norm.data(), n, dim, c.norm_eps, xn);
      if (normed)
        b.add_rms_norm(x, xn, weights_.layer(l + 1).attn_norm.data(), n, dim, c.norm_eps, xn);
      else
        b.add(x, xn, n * dim);
    }
    if (release_weights_ && !hold_pages_)
      for (const Linear* lin : layer_linears_[l]) lin->release_pages();
  }
  pos_ += static_cast<int>(n);
  if (!head) return;

  const int64_t n_out = n - logits_from;
  // An observer sees the lm_head input of every token, not only the scored ones.
  const int64_t norm_from = observer_ ? 0 : logits_from;
  if (n - norm_from == 0) return;
  if (n_out > 0) hint(weights_.output());
  b.rms_norm(x + norm_from * dim, weights_.final_norm().data(), n - norm_from, dim, c.norm_eps, xn);
  observe(-1, Site::HeadIn, act_.xn, n, dim);
  if (n_out > 0) {
    // Device logits: only the rows asked for (a long prompt usually wants one).
    if (!b.host_memory() && act_.logits.size() < n_out * c.vocab_size) act_.logits = b.alloc(n_out * c.vocab_size);
    float* out = b.host_memory() ? logits : act_.logits.data();
    b.matmul(weights_.output(), xn + (logits_from - norm_from) * dim, n_out, out);
    if (c.final_softcap > 0.0f) b.softcap(out, n_out * c.vocab_size, c.final_softcap);
    if (!b.host_memory() && greedy_pick_)
      b.argmax_to_host(out + (n_out - 1) * c.vocab_size, c.vocab_size, greedy_pick_);
    else if (!b.host_memory() && !logits_in_backend_)
      b.to_host(out, n_out * c.vocab_size, logits);
    last_logits_ = out;
  }
  if (release_weights_ && !hold_pages_)
    for (const Linear* lin : other_linears_) lin->release_pages();
}

void Transformer::forward_layers(int first_layer, int last_layer, const float* hidden, int64_t n, float* out) {
  const ModelConfig& c = model_.config;
  check(pos_ == 0, "forward_layers needs an empty cache (position {})", pos_);
  check(first_layer >= 0 && first_layer <= last_layer && last_layer <= c.n_layers, "layers [{}, {}) out of range",
        first_layer, last_layer);
  check(n > 0 && n <= max_ctx_, "{} tokens do not fit the context of {}", n, max_ctx_);
  ensure_scratch(n);
  backend_.to_device(hidden, n * c.dim, act_.x.data());
  run_layers(first_layer, n, nullptr, n, last_layer);
  backend_.to_host(act_.x.data(), n * c.dim, out);
}

void Transformer::embed_rows(std::span<const int32_t> tokens, float* out) {
  const ModelConfig& c = model_.config;
  const int64_t n = static_cast<int64_t>(tokens.size());
  check(n > 0 && n <= max_ctx_, "{} tokens do not fit the context of {}", n, max_ctx_);
  for (int64_t i = 0; i < n; ++i)
    check(tokens[i] >= 0 && tokens[i] < c.vocab_size, "token id {} is outside the vocabulary of {}", tokens[i],
          c.vocab_size);
  ensure_scratch(n);
  backend_.embed(weights_.embed(), tokens.data(), n, c.embed_scale, act_.x.data());
  backend_.to_host(act_.x.data(), n * c.dim, out);
}

void Transformer::release_pages(int layer) const {
  if (!release_weights_) return;
  for (const Linear* lin : layer < 0 ? other_linears_ : layer_linears_.at(static_cast<size_t>(layer)))
    lin->release_pages();
}

std::vector<float> Transformer::forward_last(std::span<const int32_t> tokens) {
  std::vector<float> logits(model_.config.vocab_size);
  forward(tokens, logits.data(), static_cast<int64_t>(tokens.size()) - 1);
  return logits;
}

int32_t Transformer::forward_greedy(int32_t token) {
  const int64_t vocab = model_.config.vocab_size;
  if (backend_.host_memory()) {  // the logits are in host memory anyway
    greedy_logits_.resize(static_cast<size_t>(vocab));
    forward(std::span<const int32_t>(&token, 1), greedy_logits_.data(), 0);
    return static_cast<int32_t>(argmax(greedy_logits_.data(), vocab));
  }
  int32_t pick = -1;
  struct PickScope {  // the head writes the pick for this call only, also when it throws
    int32_t*& slot;
    PickScope(int32_t*& s, int32_t* p) : slot(s) { slot = p; }
    ~PickScope() { slot = nullptr; }
  } scope(greedy_pick_, &pick);
  forward(std::span<const int32_t>(&token, 1), nullptr, 0);
  return pick;
}

}  // namespace optiq

#include "formats/llama2c.h"

#include <cstring>

#include <fmt/format.h>

#include "core/error.h"

namespace optiq {

namespace {

constexpr uint64_t kHeaderBytes = 7 * 4;

// Checked a*b and a+b on uint64; `ok` goes false on overflow.
struct Checked {
  bool ok = true;
  uint64_t mul(uint64_t a, uint64_t b) {
    uint64_t r = 0;
    if (__builtin_mul_overflow(a, b, &r)) ok = false;
    return r;
  }
  uint64_t add(uint64_t a, uint64_t b) {
    uint64_t r = 0;
    if (__builtin_add_overflow(a, b, &r)) ok = false;
    return r;
  }
};

// Float counts of each section, in file order.
struct Sections {
  uint64_t embed, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq, wcls;
  bool ok;
};

Sections sections(const Llama2cHeader& h) {
  Checked c;
  const uint64_t dim = static_cast<uint64_t>(h.dim), hidden = static_cast<uint64_t>(h.hidden_dim),
                 L = static_cast<uint64_t>(h.n_layers), vocab = static_cast<uint64_t>(h.vocab_size),
                 seq = static_cast<uint64_t>(h.seq_len);
  const uint64_t head = dim / static_cast<uint64_t>(h.n_heads);
  const uint64_t kv_dim = head * static_cast<uint64_t>(h.n_kv_heads);
  Sections s{};
  s.embed = c.mul(vocab, dim);
  s.rms_att = c.mul(L, dim);
  s.wq = c.mul(L, c.mul(dim, dim));
  s.wk = c.mul(L, c.mul(kv_dim, dim));
  s.wv = s.wk;
  s.wo = s.wq;
  s.rms_ffn = s.rms_att;
  s.w1 = c.mul(L, c.mul(hidden, dim));
  s.w2 = s.w1;
  s.w3 = s.w1;
  s.rms_final = dim;
  s.freq = c.mul(seq, head / 2);
  s.wcls = h.shared_classifier ? 0 : s.embed;
  s.ok = c.ok;
  return s;
}

}  // namespace

uint64_t Llama2cCheckpoint::expected_size(const Llama2cHeader& h) {
  if (h.dim <= 0 || h.n_heads <= 0 || h.n_layers <= 0 || h.hidden_dim <= 0 || h.n_kv_heads <= 0 ||
      h.vocab_size <= 0 || h.seq_len <= 0)
    return 0;
  Sections s = sections(h);
  Checked c;
  uint64_t floats = 0;
  for (uint64_t n : {s.embed, s.rms_att, s.wq, s.wk, s.wv, s.wo, s.rms_ffn, s.w1, s.w2, s.w3, s.rms_final, s.freq,
                     s.freq, s.wcls})
    floats = c.add(floats, n);
  uint64_t bytes = c.add(kHeaderBytes, c.mul(floats, 4));
  return s.ok && c.ok ? bytes : 0;
}

Llama2cCheckpoint::Llama2cCheckpoint(const std::string& path) : path_(path), map_(path) {
  const uint64_t size = map_.size();
  check(size >= kHeaderBytes, "{}: file is {} bytes, too small for a llama2.c checkpoint (28-byte header)", path,
        size);
  int32_t v[7];
  std::memcpy(v, map_.data(), sizeof v);
  uint32_t magic = 0;
  std::memcpy(&magic, map_.data(), 4);
  check(magic != 0x616b3432u,
        "{}: llama2.c export format version {} (magic \"ak42\") is not supported; export with the legacy version-0 "
        "format (export.py --version 0)",
        path, v[1]);
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    if (i == 5) continue;
    check(v[i] > 0, "{}: header {} = {} must be positive (not a llama2.c checkpoint?)", path, names[i], v[i]);
  }
  check(v[5] != 0 && v[5] != INT32_MIN, "{}: header vocab_size = {} is invalid (not a llama2.c checkpoint?)", path,
        v[5]);
  Llama2cHeader h;
  h.dim = v[0];
  h.hidden_dim = v[1];
  h.n_layers = v[2];
  h.n_heads = v[3];
  h.n_kv_heads = v[4];
  h.shared_classifier = v[5] > 0;
  h.vocab_size = v[5] > 0 ? v[5] : -v[5];
  h.seq_len = v[6];
  check(h.dim % h.n_heads == 0, "{}: header dim = {} is not a multiple of n_heads = {}", path, h.dim, h.n_heads);
  check(h.n_kv_heads <= h.n_heads && h.n_heads % h.n_kv_heads == 0,
        "{}: header n_kv_heads = {} does not divide n_heads = {}", path, h.n_kv_heads, h.n_heads);
  check((h.dim / h.n_heads) % 2 == 0, "{}: head size dim / n_heads = {} is odd (RoPE needs an even head size)", path,
        h.dim / h.n_heads);
  const uint64_t want = expected_size(h);
  const std::string desc =
      fmt::format("dim={} hidden_dim={} n_layers={} n_heads={} n_kv_heads={} vocab_size={} seq_len={}{}", h.dim,
                  h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len,
                  h.shared_classifier ? "" : " (untied classifier)");
  check(want != 0, "{}: header {} describes an absurdly large model (not a llama2.c checkpoint?)", path, desc);
  check(size == want,
        "{}: file is {} bytes, but a llama2.c version-0 checkpoint with {} has {} bytes ({}; or not a llama2.c file)",
        path, size, desc, want, size < want ? "truncated" : "trailing data");
  header_ = h;

  // Everything fits: lay out views.
  const Sections s = sections(h);
  const float* p = reinterpret_cast<const float*>(map_.data() + kHeaderBytes);  // mmap is page-aligned, +28 keeps 4
  const int64_t dim = h.dim, hidden = h.hidden_dim, vocab = h.vocab_size;
  const int64_t kv_dim = dim / h.n_heads * h.n_kv_heads;
  auto view = [](std::string name, std::vector<int64_t> shape, const float* data) {
    TensorView t;
    t.name = std::move(name);
    t.dtype = DType::F32;
    t.shape = std::move(shape);
    t.data = data;
    t.nbytes = static_cast<size_t>(t.numel()) * 4;
    return t;
  };
  const float* embed = p;
  const float* rms_att = embed + s.embed;
  const float* wq = rms_att + s.rms_att;
  const float* wk = wq + s.wq;
  const float* wv = wk + s.wk;
  const float* wo = wv + s.wv;
  const float* rms_ffn = wo + s.wo;
  const float* w1 = rms_ffn + s.rms_ffn;
  const float* w2 = w1 + s.w1;
  const float* w3 = w2 + s.w2;
  const float* rms_final = w3 + s.w3;
  const float* wcls = rms_final + s.rms_final + 2 * s.freq;

  tensors_.push_back(view("model.embed_tokens.weight", {vocab, dim}, embed));
  for (int64_t i = 0; i < h.n_layers; ++i) {
    const std::string pre = fmt::format("model.layers.{}.", i);
    tensors_.push_back(view(pre + "input_layernorm.weight", {dim}, rms_att + i * dim));
    tensors_.push_back(view(pre + "self_attn.q_proj.weight", {dim, dim}, wq + i * dim * dim));
    tensors_.push_back(view(pre + "self_attn.k_proj.weight", {kv_dim, dim}, wk + i * kv_dim * dim));
    tensors_.push_back(view(pre + "self_attn.v_proj.weight", {kv_dim, dim}, wv + i * kv_dim * dim));
    tensors_.push_back(view(pre + "self_attn.o_proj.weight", {dim, dim}, wo + i * dim * dim));
    tensors_.push_back(view(pre + "post_attention_layernorm.weight", {dim}, rms_ffn + i * dim));
    tensors_.push_back(view(pre + "mlp.gate_proj.weight", {hidden, dim}, w1 + i * hidden * dim));
    tensors_.push_back(view(pre + "mlp.up_proj.weight", {hidden, dim}, w3 + i * hidden * dim));
    tensors_.push_back(view(pre + "mlp.down_proj.weight", {dim, hidden}, w2 + i * dim * hidden));
  }
  tensors_.push_back(view("model.norm.weight", {dim}, rms_final));
  if (!h.shared_classifier) tensors_.push_back(view("lm_head.weight", {vocab, dim}, wcls));
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

const TensorView* Llama2cCheckpoint::find_tensor(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace optiq

// Karpathy's llama2.c checkpoints, legacy (version-0) format, read in place
// from a memory map.
//
// Layout (all little-endian): 7 int32 header
//   dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
// (vocab_size < 0 means an untied classifier follows at the end), then fp32:
//   token_embedding[vocab, dim], rms_att[L, dim], wq[L, dim, dim],
//   wk[L, kv_dim, dim], wv[L, kv_dim, dim], wo[L, dim, dim], rms_ffn[L, dim],
//   w1[L, hidden, dim], w2[L, dim, hidden], w3[L, hidden, dim], rms_final[dim],
//   freq_cis_real[seq, head_size/2], freq_cis_imag[seq, head_size/2],
//   wcls[vocab, dim] (only if untied).
// kv_dim = dim * n_kv_heads / n_heads, head_size = dim / n_heads.
//
// Tensors are exposed with Hugging Face names pointing into the map:
//   model.embed_tokens.weight {vocab, dim}
//   model.layers.{i}.input_layernorm.weight {dim}          (rms_att)
//   model.layers.{i}.self_attn.q_proj.weight {dim, dim}    (wq)
//   model.layers.{i}.self_attn.k_proj.weight {kv_dim, dim} (wk)
//   model.layers.{i}.self_attn.v_proj.weight {kv_dim, dim} (wv)
//   model.layers.{i}.self_attn.o_proj.weight {dim, dim}    (wo)
//   model.layers.{i}.post_attention_layernorm.weight {dim} (rms_ffn)
//   model.layers.{i}.mlp.gate_proj.weight {hidden, dim}    (w1)
//   model.layers.{i}.mlp.up_proj.weight {hidden, dim}      (w3)
//   model.layers.{i}.mlp.down_proj.weight {dim, hidden}    (w2)
//   model.norm.weight {dim}                                (rms_final)
//   lm_head.weight {vocab, dim}                            (wcls, untied only)
// The freq_cis tables are skipped (the model computes RoPE itself).
//
// NOTE: q_proj/k_proj rows are in llama2.c/Meta "interleaved" RoPE order
// (each head's rotary pairs are adjacent rows: x0,y0,x1,y1,...), NOT in
// Hugging Face's half-split order (x0,x1,...,y0,y1,...). They are left as
// stored; the model loader reorders them (as it does for GGUF).
//
// The header is validated (positive sizes, n_heads divides dim, n_kv_heads
// divides n_heads, even head size) and the file size must equal exactly the
// size those values imply; errors are optiq::Error("<path>: <problem>").
// The newer llama2.c export formats (magic "ak42", versions 1 and 2) are
// recognised and refused with a hint.
#pragma once
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace optiq {

struct Llama2cHeader {
  int dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0;
  int vocab_size = 0;  // always positive here; see shared_classifier
  int seq_len = 0;
  bool shared_classifier = true;  // header vocab_size > 0: lm_head is the embedding
};

class Llama2cCheckpoint {
 public:
  explicit Llama2cCheckpoint(const std::string& path);  // throws optiq::Error
  Llama2cCheckpoint(Llama2cCheckpoint&&) noexcept = default;
  Llama2cCheckpoint& operator=(Llama2cCheckpoint&&) noexcept = default;
  Llama2cCheckpoint(const Llama2cCheckpoint&) = delete;
  Llama2cCheckpoint& operator=(const Llama2cCheckpoint&) = delete;

  const Llama2cHeader& header() const { return header_; }
  // In file order (embedding, then layer by layer, norm, lm_head).
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find_tensor(std::string_view name) const;
  const std::string& path() const { return path_; }

  // Bytes a version-0 checkpoint with header `h` must have (0 if absurd).
  static uint64_t expected_size(const Llama2cHeader& h);

 private:
  std::string path_;
  MappedFile map_;
  Llama2cHeader header_;
  std::vector<TensorView> tensors_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace optiq

// Hyper-parameter keys: what llama.cpp's loader reads for each architecture
// (llama-model.cpp and models/<arch>.cpp), written the way its converter
// (convert_hf_to_gguf.py) does; config_gguf.cpp reads them back.
#include "model/gguf_metadata.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <fmt/format.h>

#include "core/diagnostics.h"
#include "core/error.h"
#include "model/transformer.h"

namespace optiq {

namespace {

// llama.cpp's gemma3 computes its attention scale from the shape
// (1/sqrt(head_dim), the 27B's 1/sqrt(dim/heads)).
float llamacpp_gemma3_scale(const ModelConfig& c) {
  return c.n_layers == 62 ? 1.0f / std::sqrt(static_cast<float>(c.dim / c.n_heads))
                          : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
}

// llama.cpp's gemma3 hard-codes what the HF config states: the attention
// scale (another one is folded into the q norm: gguf_q_norm_factor), the
// embedding scale sqrt(dim), GELU-tanh, no attention soft-capping.
void check_gemma3(const Model& m) {
  const ModelConfig& c = m.config;
  check(c.attn_softcap == 0.0f, "{}: attention logit soft-capping is not supported by llama.cpp's gemma3", m.path);
  check(std::abs(c.embed_scale - std::sqrt(static_cast<float>(c.dim))) <= 1e-4f * c.embed_scale,
        "{}: embedding scale {} is not sqrt(hidden size), which llama.cpp's gemma3 uses", m.path, c.embed_scale);
}

}  // namespace

float gguf_q_norm_factor(const Model& m) {
  const ModelConfig& c = m.config;
  if (c.arch != "gemma3" && c.arch != "gemma3_text") return 1.0f;
  const float want = llamacpp_gemma3_scale(c);
  if (std::abs(c.attention_scale() - want) <= 1e-6f * want) return 1.0f;
  check(c.qk_norm, "{}: attention scale {} is not the {} that llama.cpp's gemma3 computes, and without a q norm to "
        "fold it into GGUF cannot express it; export with --format mlx", m.path, c.attention_scale(), want);
  return c.attention_scale() / want;
}

std::string gguf_architecture(const Model& m) {
  const std::string& a = m.config.arch;
  if (a == "llama" || a == "mistral") return "llama";
  if (a == "qwen2" || a == "qwen3" || a == "phi3") return a;
  if (a == "gemma3" || a == "gemma3_text") {
    check_gemma3(m);
    return "gemma3";
  }
  fail("{}: exporting architecture '{}' to GGUF is not supported (supported: llama, mistral, qwen2, qwen3, phi3, "
       "gemma3)",
       m.path, a);
}

bool gguf_interleaves_qk(const ModelConfig& c) { return c.arch == "llama" || c.arch == "mistral"; }

void add_gguf_hparams(GgufWriter& w, const Model& m, const std::string& arch) {
  const ModelConfig& c = m.config;
  const std::string p = arch + ".";
  using T = GgufWriter::Type;
  std::string name = c.name;
  if (name.empty()) {  // the source's file or directory name ("dir/" names dir)
    std::filesystem::path p(m.path);
    if (p.filename().empty()) p = p.parent_path();
    name = p.filename().replace_extension().string();
  }
  w.add_string("general.name", name);
  w.add_u32(p + "context_length", static_cast<uint32_t>(c.max_seq));
  w.add_u32(p + "embedding_length", static_cast<uint32_t>(c.dim));
  w.add_u32(p + "block_count", static_cast<uint32_t>(c.n_layers));
  w.add_u32(p + "feed_forward_length", static_cast<uint32_t>(c.hidden_dim));
  w.add_u32(p + "attention.head_count", static_cast<uint32_t>(c.n_heads));
  w.add_u32(p + "attention.head_count_kv", static_cast<uint32_t>(c.n_kv_heads));
  w.add_u32(p + "attention.key_length", static_cast<uint32_t>(c.head_dim));
  w.add_u32(p + "attention.value_length", static_cast<uint32_t>(c.head_dim));
  w.add_float(p + "attention.layer_norm_rms_epsilon", c.norm_eps, T::F32);
  w.add_float(p + "rope.freq_base", c.rope_theta, T::F32);
  w.add_u32(p + "rope.dimension_count", static_cast<uint32_t>(c.rot_dim()));
  w.add_u32(p + "vocab_size", static_cast<uint32_t>(c.vocab_size));
  if (c.rope_scaling.type == RopeScalingType::Linear) {
    w.add_string(p + "rope.scaling.type", "linear");
    w.add_float(p + "rope.scaling.factor", c.rope_scaling.factor, T::F32);
  }
  if (arch == "llama" && c.max_window() > 0)
    warn("{}: the sliding window of {} tokens is dropped: llama.cpp's llama architecture attends to the whole "
         "context (as its converter does for Mistral); outputs differ beyond {} tokens",
         m.path, c.max_window(), c.max_window());
  if (arch == "phi3") {
    if (c.max_window() > 0) w.add_u32(p + "attention.sliding_window", static_cast<uint32_t>(c.max_window()));
    if (c.rope_scaling.type == RopeScalingType::LongRope) {
      w.add_u32(p + "rope.scaling.original_context_length", static_cast<uint32_t>(c.rope_scaling.original_max_position));
      w.add_float(p + "rope.scaling.attn_factor", c.rope_scaling.attn_factor, T::F32);
    }
  }
  if (arch == "gemma3") {
    if (c.final_softcap > 0.0f) w.add_float(p + "final_logit_softcapping", c.final_softcap, T::F32);
    if (c.max_window() > 0) {
      w.add_u32(p + "attention.sliding_window", static_cast<uint32_t>(c.max_window()));
      const int period = c.global_layer_period();
      if (period > 0) {
        w.add_u32(p + "attention.sliding_window_pattern", static_cast<uint32_t>(period));
      } else {  // per layer, as llama.cpp also reads it
        std::vector<int64_t> is_swa;
        for (int i = 0; i < c.n_layers; ++i) is_swa.push_back(c.window(i) > 0);
        w.add_int_array(p + "attention.sliding_window_pattern", std::move(is_swa), T::BOOL);
      }
      for (int i = 0; i < c.n_layers; ++i)
        check(c.window(i) == 0 || c.window(i) == c.max_window(),
              "{}: layer {} has window {}, another {}: llama.cpp has one window size", m.path, i, c.window(i),
              c.max_window());
      w.add_float(p + "rope.freq_base_swa", c.rope_theta_local > 0.0f ? c.rope_theta_local : c.rope_theta, T::F32);
    }
  }
}

std::vector<std::pair<std::string, std::vector<float>>> gguf_rope_tensors(const Model& m) {
  const ModelConfig& c = m.config;
  std::vector<std::pair<std::string, std::vector<float>>> out;
  if (c.rope_scaling.type == RopeScalingType::Llama3 || !c.rope_freq_factors.empty()) {
    // llama.cpp divides each frequency by rope_freqs[i]: the ratio of the
    // plain frequency to optiq's scaled one (Llama 3's rule, and any divisors
    // a GGUF source brought).
    ModelConfig plain = c;
    plain.rope_scaling = {};
    plain.rope_freq_factors.clear();
    const std::vector<float> base = rope_inv_freq(plain), scaled = rope_inv_freq(c);
    std::vector<float> f(base.size());
    for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(static_cast<double>(base[i]) / scaled[i]);
    if (!c.rope_freq_factors.empty() && c.rope_scaling.type != RopeScalingType::Llama3) f = c.rope_freq_factors;
    out.emplace_back("rope_freqs.weight", std::move(f));
  }
  if (c.rope_scaling.type == RopeScalingType::LongRope) {
    out.emplace_back("rope_factors_long.weight", c.rope_scaling.long_factor);
    out.emplace_back("rope_factors_short.weight", c.rope_scaling.short_factor);
  }
  return out;
}

}  // namespace optiq

// The kinds of quantizable weight matrix, in one table: each kind's name (as
// profiles, plans and reports spell it), its Hugging Face / MLX module path,
// its GGUF tensor name, where the weights keep it, and which activations it
// multiplies (the observer site that calibration and profiling read).
// Adding a kind is one row here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace optiq {

class Linear;
struct LayerWeights;
struct ModelWeights;

enum class ModuleKind : uint8_t {
  Embed,
  QProj,
  KProj,
  VProj,
  QkvProj,  // Phi-3: q, k, v fused (one quantizable matrix, as mlx-lm loads it)
  OProj,
  GateProj,
  UpProj,
  GateUpProj,  // Phi-3: gate and up fused
  DownProj,
  LmHead,
};
inline constexpr size_t kModuleKindCount = static_cast<size_t>(ModuleKind::LmHead) + 1;

// The inputs of the matrix products as the forward pass exposes them to an
// ActivationObserver: the four per-layer input sites (their order is an index
// into per-layer arrays), the lm_head input, and the residual stream entering
// a layer (no matrix reads it directly; profiling caches it).
enum class ActivationSite : uint8_t { AttnIn, OIn, MlpIn, DownIn, HeadIn, LayerIn };
inline constexpr int kLayerInputSites = 4;  // AttnIn, OIn, MlpIn, DownIn

struct ModuleKindInfo {
  ModuleKind kind;
  const char* name;      // "q_proj"
  const char* hf_path;   // per layer "self_attn.q_proj" (after "model.layers.N."), else the full path
  const char* gguf_name;  // per layer "attn_q" (after "blk.N."), else the full name
  bool per_layer;
  // Where LayerWeights keeps a per-layer kind (null for embed / lm_head).
  Linear LayerWeights::*member;
  // The activations it multiplies; nullopt for the embedding (a lookup).
  std::optional<ActivationSite> input;
};

const ModuleKindInfo& module_kind_info(ModuleKind k);
std::span<const ModuleKindInfo> module_kinds();
std::string_view module_kind_name(ModuleKind k);
// "q_proj" -> QProj; nullopt for an unknown name.
std::optional<ModuleKind> parse_module_kind(std::string_view name);

bool is_attention_input(ModuleKind k);  // q, k, v (or fused qkv): read the attention input
bool is_mlp_input(ModuleKind k);        // gate, up (or fused gate_up)

}  // namespace optiq

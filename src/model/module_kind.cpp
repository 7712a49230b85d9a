#include "model/module_kind.h"

#include <array>

#include "core/error.h"
#include "model/model.h"

namespace optiq {

namespace {

using S = ActivationSite;
using K = ModuleKind;

// Rows in ModuleKind order (module_kind_info indexes by the enum).
const std::array<ModuleKindInfo, 11> kKinds = {{
    {K::Embed, "embed", "model.embed_tokens", "token_embd", false, nullptr, std::nullopt},
    {K::QProj, "q_proj", "self_attn.q_proj", "attn_q", true, &LayerWeights::wq, S::AttnIn},
    {K::KProj, "k_proj", "self_attn.k_proj", "attn_k", true, &LayerWeights::wk, S::AttnIn},
    {K::VProj, "v_proj", "self_attn.v_proj", "attn_v", true, &LayerWeights::wv, S::AttnIn},
    {K::QkvProj, "qkv_proj", "self_attn.qkv_proj", "attn_qkv", true, &LayerWeights::wqkv, S::AttnIn},
    {K::OProj, "o_proj", "self_attn.o_proj", "attn_output", true, &LayerWeights::wo, S::OIn},
    {K::GateProj, "gate_proj", "mlp.gate_proj", "ffn_gate", true, &LayerWeights::w_gate, S::MlpIn},
    {K::UpProj, "up_proj", "mlp.up_proj", "ffn_up", true, &LayerWeights::w_up, S::MlpIn},
    // llama.cpp stores Phi-3's fused gate/up as ffn_up.
    {K::GateUpProj, "gate_up_proj", "mlp.gate_up_proj", "ffn_up", true, &LayerWeights::w_gate_up, S::MlpIn},
    {K::DownProj, "down_proj", "mlp.down_proj", "ffn_down", true, &LayerWeights::w_down, S::DownIn},
    {K::LmHead, "lm_head", "lm_head", "output", false, nullptr, S::HeadIn},
}};

}  // namespace

const ModuleKindInfo& module_kind_info(ModuleKind k) {
  const auto i = static_cast<size_t>(k);
  check(i < kKinds.size() && kKinds[i].kind == k, "module kind {} is not in the table", i);
  return kKinds[i];
}

std::span<const ModuleKindInfo> module_kinds() { return kKinds; }

std::string_view module_kind_name(ModuleKind k) { return module_kind_info(k).name; }

std::optional<ModuleKind> parse_module_kind(std::string_view name) {
  for (const auto& r : kKinds)
    if (name == r.name) return r.kind;
  return std::nullopt;
}

bool is_attention_input(ModuleKind k) { return k == K::QProj || k == K::KProj || k == K::VProj || k == K::QkvProj; }
bool is_mlp_input(ModuleKind k) { return k == K::GateProj || k == K::UpProj || k == K::GateUpProj; }

}  // namespace optiq

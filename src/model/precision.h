// The per-tensor precision map: which storage format each weight matrix of a
// model gets. It is what a plan (docs/plan-format.md) holds, what
// `optiq quantize --plan` reads, and what the MLX config.json "quantization"
// entry records.
//
// Tensors are named by module path as in Hugging Face / MLX checkpoints:
// "model.embed_tokens", "model.layers.3.self_attn.q_proj", "lm_head".
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/config.h"
#include "model/module_kind.h"
#include "quant/affine.h"
#include "quant/format.h"

namespace optiq {

struct PrecisionMap {
  std::map<std::string, TensorFormat> formats;  // module path -> format
  // module path -> how it is rounded when not the default search: "weighted"
  // (the search weighted by calibration activations) or "gptq" (a plan
  // entry's "method"; the profile measured that method for it).
  std::map<std::string, std::string> methods;

  // Reads a plan file ({"default": {...}, "tensors": {...}}); validates every
  // entry against the model's modules and their shapes. Throws "<path>: ...".
  static PrecisionMap from_plan_file(const std::string& path, const ModelConfig& config);
  static PrecisionMap from_plan_json(const nlohmann::json& j, const ModelConfig& config, const std::string& source);
  // Every quantizable module at one format (modules whose input width the
  // group size does not divide stay in float).
  // The format of module `path` (nullopt: float, or not in the map).
  TensorFormat format_of(const std::string& path) const {
    auto it = formats.find(path);
    return it == formats.end() ? std::nullopt : it->second;
  }
  static PrecisionMap uniform(const ModelConfig& config, const TensorFormat& fmt);
  static PrecisionMap uniform(const ModelConfig& config, AffineFormat fmt) { return uniform(config, TensorFormat(fmt)); }
  nlohmann::json to_plan_json() const;
  void write_plan_file(const std::string& path) const;
};

// One quantizable weight matrix of a model.
struct ModuleInfo {
  std::string path;  // "model.layers.0.mlp.down_proj"
  ModuleKind kind = ModuleKind::Embed;
  int layer = -1;    // -1 for embedding and lm_head
  int64_t rows = 0, cols = 0;
  // The type a GGUF source stores it in (ModelConfig::gguf_types); F32 when
  // the source is not a GGUF (or the tensor is F32).
  DType source_type = DType::F32;
  int64_t numel() const { return rows * cols; }
  std::string_view kind_name() const { return module_kind_name(kind); }  // "q_proj"
};

// Every quantizable module, in forward order (embedding, layers, lm_head when untied).
std::vector<ModuleInfo> quantizable_modules(const ModelConfig& config);

// Its tensor's name in a GGUF file, as llama.cpp names it ("blk.3.attn_q.weight").
std::string gguf_tensor_name(const ModuleInfo& m);

// `f` for module m: the candidate `source` resolved to the type m's GGUF
// source stores it in (quant/format.h, resolve_source_format); any other
// format as it is.
inline TensorFormat module_format(const TensorFormat& f, const ModuleInfo& m) {
  return resolve_source_format(f, m.source_type);
}

}  // namespace optiq

#include "model/precision.h"

#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"

namespace optiq {

std::vector<ModuleInfo> quantizable_modules(const ModelConfig& c) {
  using K = ModuleKind;
  std::vector<ModuleInfo> m;
  m.push_back({module_kind_info(K::Embed).hf_path, K::Embed, -1, c.vocab_size, c.dim});
  for (int i = 0; i < c.n_layers; ++i) {
    auto add = [&](K k, int64_t rows, int64_t cols) {
      m.push_back({fmt::format("model.layers.{}.{}", i, module_kind_info(k).hf_path), k, i, rows, cols});
    };
    // Phi-3's fused matrices stay one module each: mlx-lm loads them fused.
    if (c.fused_qkv) {
      add(K::QkvProj, c.q_dim() + 2 * c.kv_dim(), c.dim);
    } else {
      add(K::QProj, c.q_dim(), c.dim);
      add(K::KProj, c.kv_dim(), c.dim);
      add(K::VProj, c.kv_dim(), c.dim);
    }
    add(K::OProj, c.dim, c.q_dim());
    if (c.fused_qkv) {
      add(K::GateUpProj, 2 * c.hidden_dim, c.dim);
    } else {
      add(K::GateProj, c.hidden_dim, c.dim);
      add(K::UpProj, c.hidden_dim, c.dim);
    }
    add(K::DownProj, c.dim, c.hidden_dim);
  }
  if (!c.tied_embeddings) m.push_back({module_kind_info(K::LmHead).hf_path, K::LmHead, -1, c.vocab_size, c.dim});
  if (!c.gguf_types.empty())
    for (auto& mod : m) {
      auto it = c.gguf_types.find(gguf_tensor_name(mod));
      if (it != c.gguf_types.end()) mod.source_type = it->second;
    }
  return m;
}

std::string gguf_tensor_name(const ModuleInfo& mod) {
  const char* g = module_kind_info(mod.kind).gguf_name;
  return mod.layer >= 0 ? fmt::format("blk.{}.{}.weight", mod.layer, g) : fmt::format("{}.weight", g);
}

PrecisionMap PrecisionMap::uniform(const ModelConfig& config, const TensorFormat& fmt) {
  if (const AffineFormat* a = fmt.affine()) check_affine_format(*a);
  PrecisionMap p;
  for (const auto& m : quantizable_modules(config)) {
    const TensorFormat f = module_format(fmt, m);  // `source`: each tensor's own type, where it has one
    p.formats[m.path] = format_fits(f, m.cols) ? f : TensorFormat{};
  }
  return p;
}

PrecisionMap PrecisionMap::from_plan_json(const nlohmann::json& j, const ModelConfig& config, const std::string& source) {
  check(j.is_object(), "{}: a plan is a JSON object", source);
  const auto modules = quantizable_modules(config);
  PrecisionMap p;
  TensorFormat def = AffineFormat{4, 64};
  if (j.contains("default")) def = tensor_format_from_json(j["default"], source, "default");
  for (const auto& m : modules) {
    const TensorFormat f = module_format(def, m);
    p.formats[m.path] = format_fits(f, m.cols) ? f : TensorFormat{};
  }
  if (j.contains("tensors")) {
    check(j["tensors"].is_object(), "{}: \"tensors\" must map module paths to formats", source);
    std::map<std::string, const ModuleInfo*> by_path;
    for (const auto& m : modules) by_path[m.path] = &m;
    for (const auto& [name, v] : j["tensors"].items()) {
      std::string path = name;
      if (path.size() > 7 && path.ends_with(".weight")) path.resize(path.size() - 7);
      auto it = by_path.find(path);
      check(it != by_path.end(), "{}: tensor '{}' is not a quantizable module of this model (e.g. {})", source, name,
            modules.size() > 1 ? modules[1].path : modules[0].path);
      TensorFormat f = tensor_format_from_json(v, source, name);
      if (f.is_source()) {  // kept as the source stores it: only where it does, in that type
        const DType stored = it->second->source_type;
        check(source_type_keepable(stored),
              "{}: {}: the plan keeps the tensor in its GGUF source's type, but this model stores it as {} (not a "
              "GGUF block type optiq keeps: the source must be the GGUF the plan was made for)",
              source, name, dtype_name(stored));
        const TensorFormat kept = module_format(source_candidate(), *it->second);
        check(f.ggml()->type == DType::F32 || f == kept,
              "{}: {}: the plan keeps the tensor as its source's {}, but this model stores it as {} (a plan for "
              "another file?)",
              source, name, dtype_name(f.ggml()->type), dtype_name(stored));
        f = kept;
      }
      check(format_fits(f, it->second->cols), "{}: {}: group size {} does not divide its {} inputs", source,
            name, f.group_size(), it->second->cols);
      p.formats[path] = f;
      if (v.is_object() && v.contains("method")) {
        check(v["method"].is_string(), "{}: {}: \"method\" must be a string", source, name);
        const std::string method = v["method"].get<std::string>();
        check(method == "search" || method == "weighted" || method == "gptq",
              "{}: {}: method '{}' is not one optiq applies per tensor (search, weighted, gptq)", source, name, method);
        check(!f.is_float(), "{}: {}: a float tensor has no rounding method", source, name);
        if (method != "search") p.methods[path] = method;
      }
    }
  }
  return p;
}

PrecisionMap PrecisionMap::from_plan_file(const std::string& path, const ModelConfig& config) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot read plan file", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  return from_plan_json(j, config, path);
}

nlohmann::json PrecisionMap::to_plan_json() const {
  nlohmann::json t = nlohmann::json::object();
  for (const auto& [path, f] : formats) {
    t[path] = tensor_format_to_json(f);
    auto m = methods.find(path);
    if (m != methods.end() && t[path].is_object()) t[path]["method"] = m->second;
  }
  return {{"format", "optiq-plan"}, {"version", 1}, {"tensors", t}};
}

void PrecisionMap::write_plan_file(const std::string& path) const {
  write_file_atomic(path, to_plan_json().dump(2) + "\n");
}

}  // namespace optiq

// optiq info: what a model file holds.
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"

namespace optiq::cli {

namespace {

nlohmann::json config_json(const ModelConfig& c) {
  return {{"arch", c.arch},         {"family", c.family},       {"name", c.name},           {"dim", c.dim},
          {"n_layers", c.n_layers}, {"n_heads", c.n_heads},     {"n_kv_heads", c.n_kv_heads},
          {"head_dim", c.head_dim}, {"hidden_dim", c.hidden_dim}, {"vocab_size", c.vocab_size},
          {"max_seq", c.max_seq},   {"norm_eps", c.norm_eps},   {"rope_theta", c.rope_theta},
          {"tied_embeddings", c.tied_embeddings}, {"quirks", c.quirks()}};
}

std::string short_format(const TensorFormat& f) {
  return f ? fmt::format("q{}g{}", f->bits, f->group_size) : "float";
}

// Layers x tensor types, one cell per module: the per-tensor precision map.
// The columns are the modules of layer 0 (Phi-3 has fused qkv_proj/gate_up_proj).
void print_precision_map(const Model& m) {
  const auto& f = m.precision.formats;
  auto get = [&](const std::string& p) { auto it = f.find(p); return it == f.end() ? std::string("-") : short_format(it->second); };
  const auto modules = quantizable_modules(m.config);
  std::vector<std::string> kinds, prefixes;  // "q_proj", "self_attn"
  for (const auto& mod : modules)
    if (mod.layer == 0) {
      kinds.push_back(mod.kind);
      const std::string rest = mod.path.substr(mod.path.find(".0.") + 3);
      prefixes.push_back(rest.substr(0, rest.find('.')));
    }
  fmt::print("\nprecision map (bits and group size per tensor)\n");
  fmt::print("embed_tokens {}", get("model.embed_tokens"));
  if (!m.config.tied_embeddings) fmt::print(", lm_head {}", get("lm_head"));
  fmt::print("\n{:>5}", "layer");
  for (const auto& k : kinds) fmt::print(" {:>12}", k);
  fmt::print("\n");
  for (int i = 0; i < m.config.n_layers; ++i) {
    fmt::print("{:>5}", i);
    for (size_t k = 0; k < kinds.size(); ++k)
      fmt::print(" {:>12}", get(fmt::format("model.layers.{}.{}.{}", i, prefixes[k], kinds[k])));
    fmt::print("\n");
  }
}

void print_info(const Model& m, bool json) {
  const int64_t params = m.parameter_count();
  const size_t bytes = m.source_bytes();
  const double bpw = params > 0 ? 8.0 * bytes / params : 0.0;
  if (json) {
    nlohmann::json j;
    j["path"] = m.path;
    j["format"] = format_name(m.format);
    j["config"] = config_json(m.config);
    j["parameters"] = params;
    j["bytes"] = bytes;
    j["bits_per_weight"] = bpw;
    j["vocab_size"] = m.tokenizer->vocab_size();
    j["bos"] = m.tokenizer->bos();
    j["eos"] = m.tokenizer->eos();
    if (!m.precision.formats.empty()) {
      auto& pm = j["precision"] = nlohmann::json::object();
      for (const auto& [path, f] : m.precision.formats) pm[path] = tensor_format_name(f);
    }
    auto& ts = j["tensors"] = nlohmann::json::array();
    for (const auto& t : m.source_tensors)
      ts.push_back({{"name", t.name}, {"shape", t.shape}, {"type", dtype_name(t.dtype)}, {"bytes", t.bytes}});
    fmt::print("{}\n", j.dump(2));
    return;
  }
  const ModelConfig& c = m.config;
  fmt::print("model        {}\n", m.path);
  fmt::print("format       {}\n", format_name(m.format));
  fmt::print("architecture {} family, {}{}\n", c.family, c.arch, c.name.empty() ? "" : fmt::format(" ({})", c.name));
  fmt::print("layers {}, dim {}, heads {} (kv {}, head dim {}), mlp {}, vocab {}, context {}\n", c.n_layers, c.dim,
             c.n_heads, c.n_kv_heads, c.head_dim, c.hidden_dim, c.vocab_size, c.max_seq);
  fmt::print("rms eps {:g}, rope theta {:g}\n", c.norm_eps, c.rope_theta);
  for (const auto& q : c.quirks()) fmt::print("quirk        {}\n", q);
  fmt::print("tokenizer    {} tokens, bos {}, eos {}\n", m.tokenizer->vocab_size(), m.tokenizer->bos(),
             m.tokenizer->eos());
  fmt::print("\n{:<48} {:>18} {:>6} {:>12}\n", "tensor", "shape", "type", "bytes");
  for (const auto& t : m.source_tensors)
    fmt::print("{:<48} {:>18} {:>6} {:>12}\n", t.name, shape_str(t.shape), dtype_name(t.dtype), t.bytes);
  if (!m.precision.formats.empty()) print_precision_map(m);
  fmt::print("\nparameters   {} ({:.2f} M)\n", params, params / 1e6);
  fmt::print("size         {} bytes ({:.2f} MB)\n", bytes, bytes / 1e6);
  fmt::print("bits/weight  {:.3f} (all tensors, scales and biases included)\n", bpw);
}

}  // namespace

Runner register_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Show architecture, hyper-parameters and the tensor table of a model");
  auto args = std::make_shared<ModelArgs>();
  auto json = std::make_shared<bool>(false);
  args->add_to(*cmd);
  cmd->add_flag("--json", *json, "print one JSON object");
  return [args, json] { print_info(args->load(/*weights=*/false), *json); };
}

}  // namespace optiq::cli

// optiq info: what a model file holds.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <optional>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "plan/memory_fit.h"
#include "plan/runtime_memory.h"

namespace optiq::cli {

namespace {

nlohmann::json config_json(const ModelConfig& c) {
  return {{"arch", c.arch},         {"family", c.family},       {"name", c.name},           {"dim", c.dim},
          {"n_layers", c.n_layers}, {"n_heads", c.n_heads},     {"n_kv_heads", c.n_kv_heads},
          {"head_dim", c.head_dim}, {"hidden_dim", c.hidden_dim}, {"vocab_size", c.vocab_size},
          {"max_seq", c.max_seq},   {"norm_eps", c.norm_eps},   {"rope_theta", c.rope_theta},
          {"tied_embeddings", c.tied_embeddings}, {"quirks", c.quirks()}};
}


// Natural order: digit runs compare as numbers, so blk.2 sorts before blk.10
// and model.layers.2 before model.layers.10.
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const bool da = std::isdigit(static_cast<unsigned char>(a[i])), db = std::isdigit(static_cast<unsigned char>(b[j]));
    if (da && db) {
      size_t ie = i, je = j;
      while (ie < a.size() && std::isdigit(static_cast<unsigned char>(a[ie]))) ++ie;
      while (je < b.size() && std::isdigit(static_cast<unsigned char>(b[je]))) ++je;
      size_t is = i, js = j;  // skip leading zeros, then compare by length and digits
      while (is + 1 < ie && a[is] == '0') ++is;
      while (js + 1 < je && b[js] == '0') ++js;
      if (ie - is != je - js) return ie - is < je - js;
      const int c = a.compare(is, ie - is, b, js, je - js);
      if (c != 0) return c < 0;
      i = ie;
      j = je;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

// The kind of a tensor, from its Hugging Face or GGUF name.
std::string tensor_kind(const std::string& name) {
  std::string n = name;
  for (const char* suffix : {".weight", ".scales", ".biases", ".bias"})
    if (n.ends_with(suffix)) {
      if (std::string(suffix) == ".bias") return contains(n, "norm") ? "norms" : "other";  // linear biases
      n.resize(n.size() - std::string(suffix).size());
      break;
    }
  if (contains(n, "norm")) return "norms";  // before q/k: q_norm, attn_q_norm
  if (n.ends_with("embed_tokens") || n == "token_embd") return "embedding";
  if (n == "lm_head" || n == "output") return "lm_head";
  static const std::pair<const char*, const char*> kKinds[] = {
      {"self_attn.qkv_proj", "attn_qkv"}, {"attn_qkv", "attn_qkv"},     {"self_attn.q_proj", "attn_q"},
      {"attn_q", "attn_q"},               {"self_attn.k_proj", "attn_k"}, {"attn_k", "attn_k"},
      {"self_attn.v_proj", "attn_v"},     {"attn_v", "attn_v"},           {"self_attn.o_proj", "attn_o"},
      {"attn_output", "attn_o"},          {"mlp.gate_up_proj", "mlp_gate_up"}, {"ffn_gate_up", "mlp_gate_up"},
      {"mlp.gate_proj", "mlp_gate"},      {"ffn_gate", "mlp_gate"},       {"mlp.up_proj", "mlp_up"},
      {"ffn_up", "mlp_up"},               {"mlp.down_proj", "mlp_down"},  {"ffn_down", "mlp_down"}};
  for (const auto& [key, kind] : kKinds)
    if (n.ends_with(key)) return kind;
  return "other";
}

// Summary order of the kinds (anything else after them, by name).
int kind_rank(const std::string& k) {
  static const char* kOrder[] = {"embedding", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "mlp_gate",
                                 "mlp_up", "mlp_gate_up", "mlp_down", "lm_head", "norms", "other"};
  for (int i = 0; i < static_cast<int>(std::size(kOrder)); ++i)
    if (k == kOrder[i]) return i;
  return static_cast<int>(std::size(kOrder));
}

struct KindRow {
  std::string kind, type;
  int64_t count = 0, params = 0;
  size_t bytes = 0;
  double bpw() const { return params > 0 ? 8.0 * static_cast<double>(bytes) / static_cast<double>(params) : 0.0; }
};

// Tensors grouped by kind and storage type. An MLX-packed matrix (uint32
// weight + scales + biases) counts once, as its format (q4g64), with its
// logical parameter count and the bytes of all three tensors.
std::vector<KindRow> summarize(const Model& m) {
  std::map<std::string, const SourceTensor*> by_name;
  for (const auto& t : m.source_tensors) by_name[t.name] = &t;
  std::map<std::pair<std::string, std::string>, KindRow> rows;
  auto numel = [](const std::vector<int64_t>& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
  };
  for (const auto& t : m.source_tensors) {
    const std::string kind = tensor_kind(t.name);
    std::string type(dtype_name(t.dtype));
    int64_t params = numel(t.shape);
    size_t bytes = t.bytes;
    bool part_of_packed = false;
    for (const char* aux : {".scales", ".biases"})
      if (t.name.ends_with(aux)) {
        const std::string base = t.name.substr(0, t.name.size() - std::string(aux).size());
        auto f = m.precision.formats.find(base);
        part_of_packed = by_name.count(base + ".weight") && f != m.precision.formats.end() && f->second;
      }
    if (part_of_packed) continue;  // counted with its packed weight
    if (t.name.ends_with(".weight")) {
      const std::string base = t.name.substr(0, t.name.size() - 7);
      auto f = m.precision.formats.find(base);
      if (f != m.precision.formats.end() && f->second && by_name.count(base + ".scales") && !t.shape.empty()) {
        type = tensor_format_short(f->second);
        params = numel(t.shape) * 32 / f->second->bits;  // packed uint32 words -> weights
        bytes += by_name[base + ".scales"]->bytes + (by_name.count(base + ".biases") ? by_name[base + ".biases"]->bytes : 0);
      }
    }
    KindRow& r = rows[{kind, type}];
    r.kind = kind;
    r.type = type;
    r.count += 1;
    r.params += params;
    r.bytes += bytes;
  }
  std::vector<KindRow> out;
  for (auto& [k, r] : rows) out.push_back(r);
  std::stable_sort(out.begin(), out.end(), [](const KindRow& a, const KindRow& b) {
    return std::make_tuple(kind_rank(a.kind), a.kind, a.type) < std::make_tuple(kind_rank(b.kind), b.kind, b.type);
  });
  return out;
}

std::vector<const SourceTensor*> tensors_in_natural_order(const Model& m) {
  std::vector<const SourceTensor*> v;
  for (const auto& t : m.source_tensors) v.push_back(&t);
  std::stable_sort(v.begin(), v.end(), [](const SourceTensor* a, const SourceTensor* b) { return natural_less(a->name, b->name); });
  return v;
}

// Layers x tensor types, one cell per module: the per-tensor precision map.
// The columns are the modules of layer 0 (Phi-3 has fused qkv_proj/gate_up_proj).
void print_precision_map(const Model& m) {
  const auto& f = m.precision.formats;
  auto get = [&](const std::string& p) { auto it = f.find(p); return it == f.end() ? std::string("-") : tensor_format_short(it->second); };
  const auto modules = quantizable_modules(m.config);
  std::vector<std::string> kinds, prefixes;  // "q_proj", "self_attn"
  for (const auto& mod : modules)
    if (mod.layer == 0) {
      kinds.emplace_back(mod.kind_name());
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

// --runtime R --ctx C: what running this file takes (plan/runtime_memory.h).
struct MemoryArgs {
  std::string runtime, kv_cache, flash_attn;
  int64_t ctx = 0;
  bool given() const { return !runtime.empty() || ctx > 0 || !kv_cache.empty() || !flash_attn.empty(); }
};

std::optional<MemoryBreakdown> runtime_breakdown(const Model& m, const MemoryArgs& a) {
  if (!a.given()) return std::nullopt;
  check(!a.runtime.empty() && a.ctx > 0, "info: --runtime and --ctx go together (the memory R takes at a context of C)");
  RuntimeOptions o;
  o.runtime = parse_runtime(a.runtime);
  o.ctx = a.ctx;
  o.kv_cache = a.kv_cache;
  o.flash_attention = a.flash_attn != "off";
  return runtime_memory(m.config, o);
}

void print_info(const Model& m, bool json, bool tensors, const MemoryArgs& ma) {
  const std::optional<MemoryBreakdown> memory = runtime_breakdown(m, ma);
  const int64_t params = m.parameter_count();
  const size_t bytes = m.source_bytes();
  const double bpw = params > 0 ? 8.0 * bytes / params : 0.0;
  const std::vector<KindRow> summary = summarize(m);
  const std::vector<const SourceTensor*> sorted = tensors_in_natural_order(m);
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
    if (memory) j["memory"] = memory_json(*memory, static_cast<int64_t>(bytes));
    if (!m.precision.formats.empty()) {
      auto& pm = j["precision"] = nlohmann::json::object();
      for (const auto& [path, f] : m.precision.formats) pm[path] = tensor_format_name(f);
    }
    auto& sj = j["summary"] = nlohmann::json::array();
    for (const auto& r : summary)
      sj.push_back({{"kind", r.kind}, {"type", r.type}, {"count", r.count}, {"parameters", r.params},
                    {"bytes", r.bytes}, {"bits_per_weight", r.bpw()}});
    auto& ts = j["tensors"] = nlohmann::json::array();
    for (const SourceTensor* t : sorted)
      ts.push_back({{"name", t->name}, {"shape", t->shape}, {"type", dtype_name(t->dtype)}, {"bytes", t->bytes},
                    {"kind", tensor_kind(t->name)}});
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
  fmt::print("\n{:<12} {:>8} {:>6} {:>14} {:>14} {:>8}\n", "kind", "type", "count", "parameters", "bytes", "bits/w");
  for (const auto& r : summary)
    fmt::print("{:<12} {:>8} {:>6} {:>14} {:>14} {:>8.3f}\n", r.kind, r.type, r.count, r.params, r.bytes, r.bpw());
  if (tensors) {
    fmt::print("\n{:<48} {:>18} {:>6} {:>12}\n", "tensor", "shape", "type", "bytes");
    for (const SourceTensor* t : sorted)
      fmt::print("{:<48} {:>18} {:>6} {:>12}\n", t->name, shape_str(t->shape), dtype_name(t->dtype), t->bytes);
  }
  if (!m.precision.formats.empty()) print_precision_map(m);
  fmt::print("\nparameters   {} ({:.2f} M)\n", params, params / 1e6);
  fmt::print("size         {} bytes ({:.2f} MB)\n", bytes, bytes / 1e6);
  fmt::print("bits/weight  {:.3f} (all tensors, scales and biases included)\n", bpw);
  if (memory)
    fmt::print("memory       {}{}: {}\n", runtime_label(memory->runtime, memory->ctx),
               runtime_counts_gpu_memory(memory->runtime) ? " in GPU memory" : "",
               memory_sum_text(*memory, static_cast<int64_t>(bytes)));
}

}  // namespace

Runner register_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Show architecture, hyper-parameters and a summary of the tensors of a model");
  auto args = std::make_shared<ModelArgs>();
  auto json = std::make_shared<bool>(false);
  auto tensors = std::make_shared<bool>(false);
  auto memory = std::make_shared<MemoryArgs>();
  args->add_to(*cmd);
  cmd->add_flag("--tensors", *tensors, "also print the per-tensor table (name, shape, type, bytes) in natural order");
  cmd->add_flag("--json", *json, "print one JSON object: everything, the summary and every tensor");
  cmd->add_option("--runtime", memory->runtime,
                  fmt::format("with --ctx: the memory this file takes to run on {} (as --fit counts it)",
                              runtime_names()));
  cmd->add_option("--ctx", memory->ctx, "context length for --runtime")->check(CLI::PositiveNumber);
  cmd->add_option("--kv-cache", memory->kv_cache, "KV cache type for --runtime (as plan's --kv-cache)");
  cmd->add_option("--flash-attn", memory->flash_attn, "llama.cpp's flash attention for --runtime: on (default) or off")
      ->check(CLI::IsMember({"on", "off"}));
  return [args, json, tensors, memory] {
    print_info(args->load(/*weights=*/false), *json, *tensors, *memory);
  };
}

}  // namespace optiq::cli

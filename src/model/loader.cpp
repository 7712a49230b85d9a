#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <regex>

#include <fmt/format.h>

#include "core/error.h"
#include "core/json_number.h"
#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "formats/hf_checkpoint.h"
#include "formats/llama2c.h"
#include <nlohmann/json.hpp>
#include "model/model.h"
#include "quant/ggml_dequant.h"
#include "quant/ggml_to_affine.h"
#include "tokenizer/tokenizer.h"

namespace optiq {

namespace fs = std::filesystem;

std::string_view format_name(SourceFormat f) {
  switch (f) {
    case SourceFormat::Gguf: return "GGUF";
    case SourceFormat::HfDir: return "Hugging Face directory";
    case SourceFormat::Llama2c: return "llama2.c checkpoint";
  }
  return "?";
}

// Counted from the architecture, not the stored tensors: packed words,
// scales and biases are storage, not parameters.
int64_t Model::parameter_count() const {
  const ModelConfig& c = config;
  int64_t per_layer = 2 * c.dim;                        // norms
  if (c.sandwich_norms) per_layer += 2 * c.dim;
  if (c.qk_norm) per_layer += 2 * c.head_dim;
  if (c.qkv_bias) per_layer += c.q_dim() + 2 * c.kv_dim();
  int64_t n = static_cast<int64_t>(c.n_layers) * per_layer + c.dim;
  for (const auto& m : quantizable_modules(config)) n += m.numel();
  return n;
}

size_t Model::source_bytes() const {
  size_t n = 0;
  for (const auto& t : source_tensors) n += t.bytes;
  return n;
}

namespace {

// GGUF tensor names -> the Hugging Face names used everywhere else. The
// norms differ by family: GGUF's ffn_norm is the pre-MLP norm, which HF calls
// post_attention_layernorm in Llama but pre_feedforward_layernorm in Gemma 3
// (whose post_attention_layernorm is the norm after attention).
std::string hf_name_from_gguf(const std::string& name, const ModelConfig& c) {
  static const std::map<std::string, std::string> top = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
  };
  static const std::map<std::string, std::string> per_layer = {
      {"attn_norm.weight", "input_layernorm.weight"},  {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},    {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},     {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},        {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},
      {"attn_q_norm.weight", "self_attn.q_norm.weight"}, {"attn_k_norm.weight", "self_attn.k_norm.weight"},
      {"attn_qkv.weight", "self_attn.qkv_proj.weight"},
      {"post_attention_norm.weight", "post_attention_layernorm.weight"},
      {"post_ffw_norm.weight", "post_feedforward_layernorm.weight"},
  };
  if (auto it = top.find(name); it != top.end()) return it->second;
  static const std::regex blk(R"(blk\.(\d+)\.(.+))");
  std::smatch m;
  if (std::regex_match(name, m, blk)) {
    std::string local = m[2].str();
    std::string hf;
    if (c.sandwich_norms && local == "ffn_norm.weight") hf = "pre_feedforward_layernorm.weight";
    else if (c.fused_qkv && local == "ffn_up.weight") hf = "mlp.gate_up_proj.weight";  // Phi-3: gate and up fused
    else if (auto it = per_layer.find(local); it != per_layer.end()) hf = it->second;
    if (!hf.empty()) return fmt::format("model.layers.{}.{}", m[1].str(), hf);
  }
  return name;
}

// Multimodal Gemma 3 checkpoints nest the language model
// ("language_model.model.layers...", or "model.language_model.layers...").
std::string hf_text_name(const std::string& name) {
  for (const char* p : {"language_model.model.", "model.language_model."})
    if (name.starts_with(p)) return "model." + name.substr(std::string_view(p).size());
  if (name.starts_with("language_model.lm_head.")) return name.substr(15);
  return name;
}

// Rows of q/k in GGUF/llama2.c order interleave the two rotary halves
// (x0,y0,x1,y1,...); HF order is (x0,x1,...,y0,y1,...). The forward pass uses
// HF order, so interleaved files are reordered once here.
void interleaved_to_halves(std::vector<float>& w, int64_t n_heads, int64_t head_dim, int64_t cols) {
  std::vector<float> out(w.size());
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const float* src = w.data() + (h * head_dim + 2 * i + j) * cols;
        float* dst = out.data() + (h * head_dim + j * half + i) * cols;
        std::copy(src, src + cols, dst);
      }
  w.swap(out);
}

// The same reordering for packed rows (groups never cross rows).
AffineMatrix interleaved_to_halves(const AffineMatrix& a, int64_t n_heads, int64_t head_dim) {
  AffineMatrix out = a;
  const int64_t half = head_dim / 2, wpr = a.view().words_per_row(), gpr = a.view().groups_per_row();
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t src = h * head_dim + 2 * i + j, dst = h * head_dim + j * half + i;
        std::copy_n(&a.packed[src * wpr], wpr, &out.packed[dst * wpr]);
        std::copy_n(&a.scales[src * gpr], gpr, &out.scales[dst * gpr]);
        if (!a.biases.empty()) std::copy_n(&a.biases[src * gpr], gpr, &out.biases[dst * gpr]);
      }
  return out;
}

// Tensors of one source by HF name, with shape checks that name the file.
class TensorTable {
 public:
  TensorTable(std::string source, bool interleaved_rope) : source_(std::move(source)), interleaved_(interleaved_rope) {}
  void add(const std::string& hf_name, const TensorView& t) { by_name_[hf_name] = &t; }
  bool has(const std::string& name) const { return by_name_.count(name) > 0; }
  // True once a weight is used in place from the mapped file.
  bool borrowed() const { return borrowed_; }
  // Norms are in the family's HF layout (a HF directory), not GGUF's.
  bool hf_layout() const { return hf_layout_; }
  void set_hf_layout(bool on) { hf_layout_ = on; }

  const TensorView& get(const std::string& name, std::vector<int64_t> shape) const {
    auto it = by_name_.find(name);
    check(it != by_name_.end(), "{}: tensor {} is missing", source_, name);
    const TensorView& t = *it->second;
    check(t.shape == shape, "{}: tensor {} has shape {}, expected {}", source_, t.name, shape_str(t.shape),
          shape_str(shape));
    return t;
  }

  std::vector<float> vec(const std::string& name, int64_t n) const { return to_f32(get(name, {n}), name); }

  // MLX-quantized checkpoints: "<module>.weight" holds packed uint32 words
  // next to "<module>.scales" and "<module>.biases"; `formats` says the bits.
  void set_quantization(const PrecisionMap* formats) { formats_ = formats; }
  // GGUF: run Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 matrices packed (lossless re-layout)
  // instead of dequantizing them to fp32.
  void set_keep_packed(bool keep) { keep_packed_ = keep; }
  // Copy every matrix out of the file instead of using any in place. Why: a
  // file whose matrices are partly converted (Gemma's Q4_K_M holds Q5_0/Q8_0
  // next to Q4_K/Q6_K) cannot give the converted tensors' pages back while it
  // keeps the rest mapped: the kernel maps a whole large page-cache folio on a
  // fault, so touching a borrowed tensor maps its converted neighbours again
  // (40 MB of them for Gemma 3 270M). Owning everything lets the loader drop
  // the whole mapping.
  void set_copy_all(bool on) { copy_all_ = on; }

  // llama.cpp numerics: round each matrix's activations as llama.cpp's CPU
  // backend does for the stored type (see ActRounding).
  void set_llamacpp_numerics(bool on) { llamacpp_ = on; }

  Linear linear(const std::string& name, int64_t rows, int64_t cols, int64_t rope_heads = 0, int64_t head_dim = 0) const {
    const std::string module = name.substr(0, name.size() - 7);  // strip ".weight"
    if (formats_ && has(module + ".scales")) return affine_linear(module, rows, cols);
    const TensorView& t = get(name, {rows, cols});
    Linear l = make_linear(t, rows, cols, rope_heads, head_dim);
    if (llamacpp_) l.set_act_rounding(llamacpp_act_rounding(t.dtype));
    return l;
  }

 private:
  static ActRounding llamacpp_act_rounding(DType t) {
    switch (t) {
      case DType::Q4_0: case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::Q8_0:
      case DType::IQ4_NL:
        return ActRounding::Q8Block32;
      case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K:
      case DType::IQ4_XS:
        return ActRounding::Q8KBlock256;
      case DType::F16: return ActRounding::F16;
      case DType::BF16: return ActRounding::BF16;
      default: return ActRounding::Exact;
    }
  }

  Linear make_linear(const TensorView& t, int64_t rows, int64_t cols, int64_t rope_heads, int64_t head_dim) const {
    const bool reorder = interleaved_ && rope_heads > 0;
    if (keep_packed_ && ggml_maps_to_affine(t.dtype)) {
      AffineMatrix a = ggml_to_affine(t, /*release_source=*/true);  // GGUF tensors are file mappings
      if (reorder) a = interleaved_to_halves(a, rope_heads, head_dim);
      return Linear::from_affine(std::move(a));
    }
    if (keep_packed_ && is_kquant(t.dtype)) {  // run packed from the file (rows reordered: an owned copy)
      check(cols % block_layout(t.dtype).block_elems == 0, "{}: tensor {}: {} rows of {} cannot be {} blocks", source_,
            t.name, rows, cols, dtype_name(t.dtype));
      if (!reorder && !copy_all_) {
        borrowed_ = true;
        return Linear::from_ggml_view(t.dtype, t.data, rows, cols);
      }
      const size_t rb = dtype_bytes(t.dtype, cols);
      const uint8_t* src = static_cast<const uint8_t*>(t.data);
      std::vector<uint8_t> out;
      resize_huge(out, rb * rows);
      if (!reorder) {
        std::memcpy(out.data(), src, out.size());
        drop_mapped_pages(src, out.size());
        return Linear::from_ggml(t.dtype, std::move(out), rows, cols);
      }
      const int64_t half = head_dim / 2;
      for (int64_t h = 0; h < rope_heads; ++h)
        for (int64_t i = 0; i < half; ++i)
          for (int64_t j = 0; j < 2; ++j)
            std::memcpy(&out[(h * head_dim + j * half + i) * rb], src + (h * head_dim + 2 * i + j) * rb, rb);
      return Linear::from_ggml(t.dtype, std::move(out), rows, cols);
    }
    if (t.dtype == DType::F32 && !reorder && !copy_all_) {
      borrowed_ = true;
      return Linear::from_f32_view(static_cast<const float*>(t.data), rows, cols);
    }
    if ((t.dtype == DType::F16 || t.dtype == DType::BF16) && !reorder && !copy_all_ &&
        reinterpret_cast<uintptr_t>(t.data) % alignof(uint16_t) == 0) {
      borrowed_ = true;
      return Linear::from_half_view(static_cast<const uint16_t*>(t.data), t.dtype == DType::BF16, rows, cols);
    }
    std::vector<float> w = to_f32(t, t.name);
    if (reorder) interleaved_to_halves(w, rope_heads, head_dim, cols);
    return Linear::from_f32(std::move(w), rows, cols);
  }

  Linear affine_linear(const std::string& module, int64_t rows, int64_t cols) const {
    auto it = formats_->formats.find(module);
    check(it != formats_->formats.end() && it->second.has_value(),
          "{}: {} has scales but config.json's quantization does not give its bits", source_, module);
    const AffineFormat fmt = *it->second;
    check(format_fits(fmt, cols), "{}: {}: group size {} does not divide {} inputs", source_, module, fmt.group_size,
          cols);
    const TensorView& w = get(module + ".weight", {rows, affine_words_per_row(fmt, cols)});
    const TensorView& s = get(module + ".scales", {rows, affine_groups_per_row(fmt, cols)});
    const TensorView& b = get(module + ".biases", {rows, affine_groups_per_row(fmt, cols)});
    check(w.dtype == DType::U32, "{}: {}.weight is {}, expected U32 packed words", source_, module, dtype_name(w.dtype));
    check((s.dtype == DType::F16 || s.dtype == DType::BF16) && b.dtype == s.dtype,
          "{}: {}: scales and biases must both be F16 or BF16", source_, module);
    AffineMatrixView v;
    v.rows = rows;
    v.cols = cols;
    v.fmt = fmt;
    v.bf16_scales = s.dtype == DType::BF16;
    v.packed = static_cast<const uint32_t*>(w.data);
    v.scales = static_cast<const uint16_t*>(s.data);
    v.biases = static_cast<const uint16_t*>(b.data);
    return Linear::from_affine_view(v);
  }

  std::vector<float> to_f32(const TensorView& t, const std::string& name) const {
    try {
      return dequantize(t);
    } catch (const Error& e) {
      fail("{}: tensor {}: {}", source_, name, e.what());
    }
  }
  std::string source_;
  bool interleaved_;
  const PrecisionMap* formats_ = nullptr;
  bool keep_packed_ = false;
  bool copy_all_ = false;
  bool llamacpp_ = false;
  mutable bool borrowed_ = false;
  bool hf_layout_ = false;
  std::map<std::string, const TensorView*> by_name_;
};

// A norm's multiplier: HF Gemma files store w for a (1 + w) multiplier
// (`hf_layout`); GGUF files already hold 1 + w.
std::vector<float> norm_weights(const ModelConfig& c, const TensorTable& t, const std::string& name, int64_t n) {
  std::vector<float> v = t.vec(name, n);
  if (c.norm_offset_one && t.hf_layout())
    for (float& x : v) x += 1.0f;
  return v;
}

ModelWeights load_weights(const ModelConfig& c, const TensorTable& t) {
  ModelWeights w;
  const int64_t dim = c.dim, hd = c.head_dim;
  w.embed = t.linear("model.embed_tokens.weight", c.vocab_size, dim);
  w.layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    auto p = fmt::format("model.layers.{}.", i);
    LayerWeights& l = w.layers[i];
    l.attn_norm = norm_weights(c, t, p + "input_layernorm.weight", dim);
    if (c.sandwich_norms) {
      l.post_attn_norm = norm_weights(c, t, p + "post_attention_layernorm.weight", dim);
      l.ffn_norm = norm_weights(c, t, p + "pre_feedforward_layernorm.weight", dim);
      l.post_ffn_norm = norm_weights(c, t, p + "post_feedforward_layernorm.weight", dim);
    } else {
      l.ffn_norm = norm_weights(c, t, p + "post_attention_layernorm.weight", dim);
    }
    if (c.fused_qkv) {
      l.wqkv = t.linear(p + "self_attn.qkv_proj.weight", c.q_dim() + 2 * c.kv_dim(), dim);
      l.w_gate_up = t.linear(p + "mlp.gate_up_proj.weight", 2 * c.hidden_dim, dim);
    } else {
      l.wq = t.linear(p + "self_attn.q_proj.weight", c.q_dim(), dim, c.n_heads, hd);
      l.wk = t.linear(p + "self_attn.k_proj.weight", c.kv_dim(), dim, c.n_kv_heads, hd);
      l.wv = t.linear(p + "self_attn.v_proj.weight", c.kv_dim(), dim);
      l.w_gate = t.linear(p + "mlp.gate_proj.weight", c.hidden_dim, dim);
      l.w_up = t.linear(p + "mlp.up_proj.weight", c.hidden_dim, dim);
    }
    l.wo = t.linear(p + "self_attn.o_proj.weight", dim, c.q_dim());
    l.w_down = t.linear(p + "mlp.down_proj.weight", dim, c.hidden_dim);
    if (c.qkv_bias) {
      l.bq = t.vec(p + "self_attn.q_proj.bias", c.q_dim());
      l.bk = t.vec(p + "self_attn.k_proj.bias", c.kv_dim());
      l.bv = t.vec(p + "self_attn.v_proj.bias", c.kv_dim());
    }
    if (c.qk_norm) {
      l.q_norm = norm_weights(c, t, p + "self_attn.q_norm.weight", hd);
      l.k_norm = norm_weights(c, t, p + "self_attn.k_norm.weight", hd);
    }
  }
  w.final_norm = norm_weights(c, t, "model.norm.weight", dim);
  if (!c.tied_embeddings) w.lm_head = t.linear("lm_head.weight", c.vocab_size, dim);
  return w;
}

void record_sources(Model& m, const std::vector<TensorView>& tensors) {
  for (const auto& t : tensors) m.source_tensors.push_back({t.name, t.shape, t.dtype, t.nbytes});
}

Model load_gguf(const std::string& path, const LoadOptions& opt) {
  auto file = std::make_shared<GgufFile>(path);
  Model m;
  m.path = path;
  m.format = SourceFormat::Gguf;
  m.config = config_from_gguf(*file);
  m.tokenizer = std::make_unique<Tokenizer>(tokenizer_spec_from_gguf(*file));
  file->release_large_arrays();  // the tokenizer holds its own copy
  // The metadata's pages (a 262k vocabulary: 6.5 MB) are not read again.
  drop_mapped_pages(file->file().data(), file->data_offset());
  record_sources(m, file->tensors());
  if (opt.load_weights) {
    TensorTable table(path, m.config.gguf_interleaved_rope);
    table.set_keep_packed(!opt.dequantize);
    const auto& ts = file->tensors();
    table.set_copy_all(std::any_of(ts.begin(), ts.end(), [](const TensorView& t) {
                         return t.shape.size() == 2 && ggml_maps_to_affine(t.dtype);
                       }));
    table.set_llamacpp_numerics(opt.llamacpp_numerics);
    for (const auto& t : file->tensors()) table.add(hf_name_from_gguf(t.name, m.config), t);
    m.weights = load_weights(m.config, table);
    // Everything was converted: the file's pages need not stay resident.
    if (!table.borrowed()) file->file().drop_pages();
  }
  return_free_heap();
  m.llamacpp_numerics = opt.llamacpp_numerics;
  m.keepalive = file;
  return m;
}

// config.json "quantization": {"group_size": G, "bits": B, "<module>": {...} | false}.
// Modules without an entry use the defaults when their scales exist.
PrecisionMap mlx_precision_map(const nlohmann::json& q, const ModelConfig& c, const std::string& source) {
  check(q.is_object(), "{}: \"quantization\" must be an object", source);
  AffineFormat def;
  try {
    def.bits = json_int_or(q, "bits", 4, source);
    def.group_size = json_int_or(q, "group_size", 64, source);
    check(q.value("mode", std::string("affine")) == "affine", "{}: quantization mode '{}' is not supported (affine only)",
          source, q.value("mode", std::string()));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: bad quantization entry: {}", source, e.what());
  }
  check_affine_format(def);
  PrecisionMap p;
  for (const auto& m : quantizable_modules(c)) {
    TensorFormat f = def;
    if (q.contains(m.path)) {
      const auto& v = q[m.path];
      if (v.is_boolean()) {
        f = v.get<bool>() ? TensorFormat(def) : std::nullopt;
      } else {
        check(v.is_object(), "{}: quantization entry for {} must be an object or false", source, m.path);
        f = AffineFormat{v.value("bits", def.bits), v.value("group_size", def.group_size)};
        check_affine_format(*f);
      }
    }
    p.formats[m.path] = f;
  }
  return p;
}

Model load_hf(const std::string& dir, const LoadOptions& opt) {
  auto ckpt = std::make_shared<HfCheckpoint>(dir);
  Model m;
  m.path = dir;
  m.format = SourceFormat::HfDir;
  m.config = config_from_hf(ckpt->config(), (fs::path(dir) / "config.json").string());
  if (!ckpt->has_file("tokenizer.json"))
    fail("{}: tokenizer.json is missing (optiq needs the model's tokenizer next to its weights)", dir);
  m.tokenizer = std::make_unique<Tokenizer>(tokenizer_spec_from_hf(dir));
  record_sources(m, ckpt->tensors());
  if (!m.config.tied_embeddings && !ckpt->find_tensor("lm_head.weight") &&
      !ckpt->find_tensor("language_model.lm_head.weight"))
    m.config.tied_embeddings = true;
  const nlohmann::json& cfg = ckpt->config();
  const char* qkey = cfg.contains("quantization") ? "quantization"
                     : cfg.contains("quantization_config") ? "quantization_config" : nullptr;
  if (qkey) m.precision = mlx_precision_map(cfg[qkey], m.config, dir + "/config.json");
  if (opt.load_weights) {
    TensorTable table(dir, /*interleaved_rope=*/false);
    table.set_hf_layout(true);
    table.set_llamacpp_numerics(opt.llamacpp_numerics);
    if (qkey) table.set_quantization(&m.precision);
    for (const auto& t : ckpt->tensors()) table.add(hf_text_name(t.name), t);
    m.weights = load_weights(m.config, table);
    if (qkey)
      for (const auto& mod : quantizable_modules(m.config))
        if (!module_linear(m.weights, mod).is_affine()) m.precision.formats[mod.path] = std::nullopt;
  }
  m.llamacpp_numerics = opt.llamacpp_numerics;
  m.hf_checkpoint = ckpt.get();
  m.keepalive = ckpt;
  return m;
}

Model load_llama2c(const std::string& path, const LoadOptions& opt) {
  if (opt.tokenizer_path.empty())
    fail("{}: a llama2.c checkpoint needs its tokenizer: pass --tokenizer tokenizer.bin", path);
  auto ckpt = std::make_shared<Llama2cCheckpoint>(path);
  Model m;
  m.path = path;
  m.format = SourceFormat::Llama2c;
  m.config = config_from_llama2c(ckpt->header());
  m.tokenizer = std::make_unique<Tokenizer>(tokenizer_spec_from_llama2c(opt.tokenizer_path, m.config.vocab_size));
  record_sources(m, ckpt->tensors());
  if (opt.load_weights) {
    TensorTable table(path, /*interleaved_rope=*/true);
    table.set_llamacpp_numerics(opt.llamacpp_numerics);
    for (const auto& t : ckpt->tensors()) table.add(t.name, t);
    m.weights = load_weights(m.config, table);
  }
  m.llamacpp_numerics = opt.llamacpp_numerics;
  m.keepalive = ckpt;
  return m;
}

bool has_magic(const std::string& path, const char* magic) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  char buf[4] = {};
  size_t n = std::fread(buf, 1, 4, f);
  std::fclose(f);
  return n == 4 && std::equal(buf, buf + 4, magic);
}

}  // namespace

Model load_model(const std::string& path, const LoadOptions& opt) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("{}: no such file or directory", path);
  if (fs::is_directory(path, ec)) {
    if (!fs::exists(fs::path(path) / "config.json"))
      fail("{}: not a model directory (config.json is missing)", path);
    return load_hf(path, opt);
  }
  if (has_magic(path, "GGUF")) return load_gguf(path, opt);
  if (fs::path(path).extension() == ".gguf") fail("{}: not a GGUF file (wrong magic)", path);
  if (fs::path(path).extension() == ".bin") return load_llama2c(path, opt);
  fail("{}: unrecognised model: expected a Hugging Face directory, a .gguf file, or a llama2.c .bin with --tokenizer",
       path);
}

}  // namespace optiq

#include "model/save_gguf.h"

#include <deque>
#include <filesystem>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/partial_output.h"
#include "core/progress.h"
#include "core/version.h"
#include "formats/gguf_writer.h"
#include "model/gguf_matrix.h"
#include "model/gguf_metadata.h"
#include "model/matrix_source.h"
#include "model/provenance.h"

namespace optiq {

namespace fs = std::filesystem;

namespace {

// llama.cpp's LLAMA_FTYPE for a file whose most common matrix type is t (the
// k-quants as their _M mixes, the label llama-quantize gives such files).
uint32_t llama_file_type(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q4_1: return 3;
    case DType::Q8_0: return 7;
    case DType::Q5_0: return 8;
    case DType::Q5_1: return 9;
    case DType::Q2_K: return 10;
    case DType::Q3_K: return 12;  // Q3_K_M
    case DType::Q4_K: return 15;  // Q4_K_M
    case DType::Q5_K: return 17;  // Q5_K_M
    case DType::Q6_K: return 18;
    case DType::IQ4_NL: return 25;
    case DType::IQ4_XS: return 30;
    case DType::BF16: return 32;
    default: fail("GGUF export: no llama.cpp file type for {}", dtype_name(t));
  }
}

// The source row of GGUF row g of a q/k matrix in llama.cpp's interleaved
// order (rotary halves x0,y0,x1,y1,... per head): the inverse of the loader's
// re-ordering into HF's rotate-half order (x0,x1,...,y0,y1,...).
int64_t interleaved_source_row(int64_t g, int64_t head_dim) {
  const int64_t h = g / head_dim, k = g % head_dim, half = head_dim / 2;
  return h * head_dim + (k % 2) * half + k / 2;
}

class Writer {
 public:
  Writer(const Model& m, const GgufSaveOptions& opt, MatrixSource& src) : m_(m), opt_(opt), src_(src) {}

  void matrix(const ModuleInfo& mod) {
    const std::string name = gguf_tensor_name(mod);
    const std::string what = fmt::format("{}: {} ({})", m_.path, mod.path, name);
    // The type from a stand-in with the same storage; the matrix itself is made
    // when its turn comes in the file (a streamed export quantizes it then).
    const GgufMatrix gm = gguf_matrix_type(src_.layout(mod), what, opt_.bf16);
    const bool interleave = gguf_interleaves_qk(m_.config) && (mod.kind == ModuleKind::QProj || mod.kind == ModuleKind::KProj);
    const int64_t hd = m_.config.head_dim, rows = mod.rows;
    weights_by_type_[gm.type] += mod.numel();
    w_.add_tensor_lazy(name, gm.type, {rows, mod.cols}, gm.row_bytes * static_cast<size_t>(rows),
                       [this, &mod, what, gm, interleave, hd, rows](uint8_t* dst) {
                         const Linear& lin = src_.matrix(mod);
                         const GgufMatrix full = gguf_matrix_type(lin, what, opt_.bf16);
                         check(full.type == gm.type && full.row_bytes == gm.row_bytes,
                               "{}: stored as {}, but its layout said {} (internal error)", what,
                               dtype_name(full.type), dtype_name(gm.type));
                         if (full.requantized)
                           requantized_.push_back(fmt::format("{} ({} -> {})", mod.path, lin.format(), dtype_name(full.type)));
                         parallel_for(rows, [&](int64_t g) {
                           const int64_t src = interleave ? interleaved_source_row(g, hd) : g;
                           write_gguf_row(lin, full, src, dst + static_cast<size_t>(g) * full.row_bytes);
                         }, 16);
                       });
  }

  void vec(const std::string& name, const std::vector<float>& v) {
    w_.add_tensor_view(name, DType::F32, {static_cast<int64_t>(v.size())}, v.data(), v.size() * sizeof(float));
  }
  // A vector made for the file: kept until it is written (the writer holds views).
  void vec_owned(const std::string& name, std::vector<float> v) {
    owned_.push_back(std::move(v));
    vec(name, owned_.back());
  }

  void write(const std::string& out) {
    const ModelConfig& c = m_.config;
    const std::string arch = gguf_architecture(m_);
    check(!(gguf_interleaves_qk(c) && (c.qkv_bias || c.qk_norm)),
          "{}: a {} model with q/k biases or norms: llama.cpp's llama architecture has neither", m_.path, c.arch);
    w_.add_string("general.architecture", arch);
    add_gguf_hparams(w_, m_, arch);
    const float q_norm_factor = gguf_q_norm_factor(m_);

    const auto modules = quantizable_modules(c);
    auto module = [&](ModuleKind k, int layer) {
      for (const auto& mod : modules)
        if (mod.kind == k && mod.layer == layer) matrix(mod);
    };
    module(ModuleKind::Embed, -1);
    for (int i = 0; i < c.n_layers; ++i) {
      const LayerWeights& L = m_.weights.layers[i];
      const std::string p = fmt::format("blk.{}.", i);
      vec(p + "attn_norm.weight", L.attn_norm);
      for (ModuleKind k : {ModuleKind::QProj, ModuleKind::KProj, ModuleKind::VProj, ModuleKind::QkvProj}) module(k, i);
      if (c.qkv_bias) {
        vec(p + "attn_q.bias", L.bq);
        vec(p + "attn_k.bias", L.bk);
        vec(p + "attn_v.bias", L.bv);
      }
      if (c.qk_norm) {
        if (q_norm_factor == 1.0f) {
          vec(p + "attn_q_norm.weight", L.q_norm);
        } else {
          std::vector<float> qn = L.q_norm;
          for (float& v : qn) v *= q_norm_factor;
          vec_owned(p + "attn_q_norm.weight", std::move(qn));
        }
        vec(p + "attn_k_norm.weight", L.k_norm);
      }
      module(ModuleKind::OProj, i);
      if (c.sandwich_norms) vec(p + "post_attention_norm.weight", L.post_attn_norm);
      vec(p + "ffn_norm.weight", L.ffn_norm);
      for (ModuleKind k : {ModuleKind::GateProj, ModuleKind::UpProj, ModuleKind::GateUpProj, ModuleKind::DownProj})
        module(k, i);
      if (c.sandwich_norms) vec(p + "post_ffw_norm.weight", L.post_ffn_norm);
    }
    vec("output_norm.weight", m_.weights.final_norm);
    module(ModuleKind::LmHead, -1);
    rope_ = gguf_rope_tensors(m_);
    for (const auto& [name, v] : rope_) vec(name, v);

    add_summary();
    add_gguf_tokenizer(w_, m_);
    {
      std::optional<Progress> progress;
      std::optional<PartialOutput> partial;
      if (!opt_.resume_key.is_null()) partial.emplace(out, opt_.resume_key, !opt_.force);
      try {
        w_.write(out, [&](uint64_t done, uint64_t total) {
          if (!opt_.progress) return;
          if (!progress) {  // the first call: what a resumed file holds already
            progress.emplace("write", static_cast<int64_t>(total / 1000000), "MB");
            progress->resume_from(static_cast<int64_t>(done / 1000000));
          }
          progress->update(static_cast<int64_t>(done / 1000000));
        }, partial ? &*partial : nullptr);
      } catch (...) {
        if (partial) partial->discard();  // an error: the space comes back (an interruption keeps it)
        throw;
      }
      if (progress) progress->finish();
    }
    if (!requantized_.empty())
      warn("{}: {} matrices have no lossless GGUF block type and were re-quantized from their values: {}", out,
           requantized_.size(), fmt::join(requantized_, ", "));
  }

 private:
  // general.file_type, alignment, and the plan.
  void add_summary() {
    DType common = DType::F16;
    int64_t best = -1;
    for (const auto& [t, n] : weights_by_type_)
      if (n > best) best = n, common = t;
    w_.add_u32("general.file_type", llama_file_type(common));
    w_.add_u32("general.quantization_version", 2);  // ggml's block layouts as of 2023 (all llama.cpp writes)
    w_.add_u32("general.alignment", 32);
    const nlohmann::json prov = provenance_or_version(opt_.provenance);
    w_.add_string("optiq.version", prov.value("version", kOptiqVersion));
    if (prov.contains("command")) w_.add_string("optiq.command", prov["command"].get<std::string>());
    for (const char* k : {"source", "options"})
      if (prov.contains(k)) w_.add_string(std::string("optiq.") + k, prov[k].dump());
    // The plan only: each tensor's stored type is in the tensor table already
    // (repeating it cost ~8 kB on Gemma 3 270M, enough to push a file of
    // llama.cpp's own size over it).
    const nlohmann::json plan = m_.precision.formats.empty() ? nlohmann::json::object() : m_.precision.to_plan_json();
    w_.add_string("optiq.plan", plan.dump());
  }

  const Model& m_;
  const GgufSaveOptions& opt_;
  MatrixSource& src_;
  GgufWriter w_;
  std::deque<std::vector<float>> owned_;
  std::map<DType, int64_t> weights_by_type_;
  std::vector<std::string> requantized_;
  std::vector<std::pair<std::string, std::vector<float>>> rope_;
};

}  // namespace

void save_gguf(const Model& m, const std::string& out, const GgufSaveOptions& opt) {
  std::error_code ec;
  check(opt.force || !fs::exists(out, ec), "{}: already exists (choose another output file, or ask to replace it)",
        out);
  check(!fs::is_directory(out, ec), "{}: is a directory; a GGUF export is one file", out);
  const fs::path parent = fs::absolute(out).parent_path();
  check(fs::is_directory(parent, ec), "{}: parent directory {} does not exist", out, parent.string());
  remove_stale_temporaries(out);
  ModelMatrices own(m);
  Writer(m, opt, opt.matrices ? *opt.matrices : own).write(out);
}

}  // namespace optiq

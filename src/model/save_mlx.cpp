#include "model/save_mlx.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/half.h"
#include "core/partial_output.h"
#include "core/progress.h"
#include "formats/safetensors.h"
#include "formats/safetensors_shards.h"
#include "model/matrix_source.h"
#include "model/hf_export.h"
#include "model/provenance.h"
#include "tokenizer/tokenizer_json.h"

namespace optiq {

namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> to_half_bytes(const float* x, size_t n, bool bf16) {
  std::vector<uint8_t> out(n * 2);
  for (size_t i = 0; i < n; ++i) {
    const uint16_t h = bf16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
    std::memcpy(&out[i * 2], &h, 2);
  }
  return out;
}


// A float matrix as fp16/bf16 words, a row at a time (never a whole fp32
// copy: an 8B model's embedding would take 2 GB); words of the wanted type are
// copied as they are.
void write_half_rows(const Linear& lin, bool bf16, uint8_t* dst) {
  const int64_t rows = lin.rows(), cols = lin.cols();
  if (const auto* h = lin.view().as<HalfWeights>(); h && h->bf16 == bf16) {
    std::memcpy(dst, h->data, static_cast<size_t>(rows * cols) * 2);
    return;
  }
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    lin.row(r, row.data());
    const std::vector<uint8_t> h = to_half_bytes(row.data(), row.size(), bf16);
    std::memcpy(dst + static_cast<size_t>(r * cols) * 2, h.data(), h.size());
  }
}

}  // namespace

std::vector<ModuleInfo> mlx_matrix_order(const ModelConfig& c, const std::function<bool(const ModuleInfo&)>& packed) {
  std::vector<ModuleInfo> order, floats;
  for (auto& mod : quantizable_modules(c)) (packed(mod) ? order : floats).push_back(std::move(mod));
  order.insert(order.end(), std::make_move_iterator(floats.begin()), std::make_move_iterator(floats.end()));
  return order;
}

void save_mlx(const Model& m, const std::string& out, const MlxSaveOptions& opt) {
  std::string out_dir = out;
  while (out_dir.size() > 1 && out_dir.back() == '/') out_dir.pop_back();
  std::error_code ec;
  if (fs::exists(out_dir, ec) && !opt.force)
    fail("{}: already exists (choose another output directory, or ask to replace it)", out_dir);
  const fs::path parent = fs::absolute(out_dir).parent_path();
  check(fs::is_directory(parent, ec), "{}: parent directory {} does not exist", out_dir, parent.string());
  // Written under a temporary name beside OUT (what a killed run left is removed
  // first), then swapped into place whole (core/atomic_file.h commit_directory).
  // Resumable: the temporary is ".<out>.partial", kept when the run is
  // interrupted and continued by the next one (core/partial_output.h).
  remove_stale_temporaries(out_dir);
  std::optional<PartialOutput> partial;
  fs::path tmp;
  if (!opt.resume_key.is_null()) {
    partial.emplace(out_dir, opt.resume_key, !opt.force);
    tmp = partial->dir();
  } else {
    tmp = temporary_name(out_dir);
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    check(!ec, "{}: cannot create the temporary directory {}: {}", out_dir, tmp.string(), ec.message());
  }
  ModelMatrices own(m);
  MatrixSource& src = opt.matrices ? *opt.matrices : own;
  try {
    SafetensorsShardWriter st;
    const ModelConfig& c = m.config;
    const bool bf16 = opt.bf16;
    const DType half = bf16 ? DType::BF16 : DType::F16;
    nlohmann::json quant = nlohmann::json::object();
    bool any_quantized = false;
    AffineFormat most_common{4, 64};
    std::map<std::pair<int, int>, int64_t> format_weights;

    // Layout (mlx_matrix_order): every packed matrix as (uint32 codes,
    // scales, biases), then the float matrices, then the norms; a matrix's
    // three tensors are written one after another (each is made once, when
    // its codes are written).
    const std::vector<ModuleInfo> order = mlx_matrix_order(c, [&](const ModuleInfo& mod) {
      // MLX has no storage for GGUF's k-quant blocks; writing them as floats would undo the plan silently.
      const Linear& probe = src.layout(mod);
      check(!probe.is_kquant(), "{}: {} is {}, a GGUF k-quant or IQ4 type, which MLX cannot store: plan it with affine (MLX) or "
            "32-weight GGUF formats for an MLX export", m.path, mod.path, probe.format());
      return probe.is_affine();
    });
    for (const auto& mod : order) {
      const Linear& probe = src.layout(mod);
      if (!probe.is_affine()) {
        quant[mod.path] = false;
        st.add(mod.path + ".weight", half, {mod.rows, mod.cols}, [&src, &mod, bf16](uint8_t* dst) {
          write_half_rows(src.matrix(mod), bf16, dst);
        });
        continue;
      }
      const AffineMatrixView& v = probe.affine();
      check(v.bf16_scales == bf16, "{}: {} has {} scales but the export type is {}; quantize with the same scale type",
            m.path, mod.path, v.bf16_scales ? "bf16" : "fp16", bf16 ? "bf16" : "fp16");
      const int64_t rows = mod.rows, wpr = v.words_per_row(), gpr = v.groups_per_row();
      const size_t ng = static_cast<size_t>(rows * gpr);
      // Written from the matrix's own arrays (no copy).
      st.add(
          mod.path + ".weight", DType::U32, {rows, wpr},
          [&src, &mod] { return reinterpret_cast<const uint8_t*>(src.matrix(mod).affine().packed); },
          [&src, &mod, rows, wpr](uint8_t* dst) {
            std::memcpy(dst, src.matrix(mod).affine().packed, static_cast<size_t>(rows * wpr) * 4);
          });
      st.add(
          mod.path + ".scales", half, {rows, gpr},
          [&src, &mod] { return reinterpret_cast<const uint8_t*>(src.matrix(mod).affine().scales); },
          [&src, &mod, ng](uint8_t* dst) { std::memcpy(dst, src.matrix(mod).affine().scales, ng * 2); });
      // Symmetric groups (from a GGUF's Q8_0/Q5_0/Q4_0) store no biases: MLX wants them written out.
      st.add(mod.path + ".biases", half, {rows, gpr},
             [&src, &mod] { return reinterpret_cast<const uint8_t*>(src.matrix(mod).affine().biases); },
             [&src, &mod, rows, gpr, bf16](uint8_t* dst) {
        const AffineMatrixView& a = src.matrix(mod).affine();
        if (a.biases) {
          std::memcpy(dst, a.biases, static_cast<size_t>(rows * gpr) * 2);
          return;
        }
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t g = 0; g < gpr; ++g) {
            const uint16_t h = f32_to_scale(a.bias(r, g), bf16);
            std::memcpy(dst + (r * gpr + g) * 2, &h, 2);
          }
      });
      quant[mod.path] = {{"group_size", v.fmt.group_size}, {"bits", v.fmt.bits}};
      format_weights[{v.fmt.bits, v.fmt.group_size}] += mod.numel();
      any_quantized = true;
    }
    const auto vectors = hf_export_vectors(m);
    for (const auto& [name, v] : vectors)
      st.add(name, half, {static_cast<int64_t>(v.size())}, [&v = v, bf16](uint8_t* dst) {
        const std::vector<uint8_t> h = to_half_bytes(v.data(), v.size(), bf16);
        std::memcpy(dst, h.data(), h.size());
      });
    // The headers are laid out with the source's digests as zeros and the
    // digests written over them at the end (MlxSaveOptions::source): the
    // same bytes whether the hashes were known at the start or not.
    nlohmann::json prov = provenance_or_version(opt.provenance);
    auto metadata_of = [](const nlohmann::json& p) {
      std::map<std::string, std::string> md{{"format", "mlx"}};
      for (const auto& [k, v] : p.items()) md["optiq." + k] = v.is_string() ? v.get<std::string>() : v.dump();
      return md;
    };
    nlohmann::json laid_out = prov;
    if (laid_out.contains("source")) laid_out["source"] = pending_source(laid_out["source"]);
    for (const auto& [k, v] : metadata_of(laid_out)) st.set_metadata(k, v);
    bool source_known = !opt.source.valid();
    auto final_provenance = [&]() -> const nlohmann::json& {
      if (!source_known) prov["source"] = opt.source.get();  // waits for the hashing thread
      source_known = true;
      return prov;
    };
    if (laid_out != prov || opt.source.valid()) st.set_final_metadata([&] { return metadata_of(final_provenance()); });
    // A resume key made before the hashes were known: the full one once they are.
    bool key_final = !(partial && opt.resume_key.is_object() && opt.resume_key.contains("source pending"));
    if (!key_final) partial->defer_records();
    auto record_key = [&](bool wait) {
      if (key_final || !opt.source.valid() ||
          (!wait && opt.source.wait_for(std::chrono::seconds(0)) != std::future_status::ready))
        return;
      nlohmann::json key = opt.resume_key;
      key["source"] = opt.source.get();
      key.erase("source pending");
      partial->set_key(std::move(key));
      key_final = true;
    };
    {
      std::optional<Progress> progress;
      if (opt.progress) progress.emplace("write", static_cast<int64_t>(st.total_bytes() / 1000000), "MB");
      bool first = true;
      st.write(tmp.string(), opt.shard_bytes, "model", [&](uint64_t done) {
        record_key(false);
        if (!progress) return;
        if (first) progress->resume_from(static_cast<int64_t>(done / 1000000));  // rate and ETA of this run's work
        first = false;
        progress->update(static_cast<int64_t>(done / 1000000));
      }, partial ? &*partial : nullptr);
      if (progress) progress->finish();
    }
    final_provenance();
    record_key(true);

    nlohmann::json config = hf_export_config(m, bf16);
    if (any_quantized) {
      int64_t best = -1;
      for (const auto& [f, n] : format_weights)
        if (n > best) best = n, most_common = {f.first, f.second};
      nlohmann::json q = {{"group_size", most_common.group_size}, {"bits", most_common.bits}};
      for (const auto& [k, v] : quant.items()) q[k] = v;
      config["quantization"] = q;
      config["quantization_config"] = q;
    }
    config["optiq"] = prov;
    write_file_atomic((tmp / "config.json").string(), config.dump(2) + "\n");
    // A Hugging Face source keeps its own tokenizer files; others are converted.
    bool copied = false;
    if (m.format == SourceFormat::HfDir && fs::exists(fs::path(m.path) / "tokenizer.json")) {
      for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                            "generation_config.json", "chat_template.jinja"})
        if (fs::exists(fs::path(m.path) / f)) {
          fs::copy_file(fs::path(m.path) / f, tmp / f, ec);
          if (ec) fail("{}: write failed: {}: {}", (fs::path(out_dir) / f).string(), ec.message(), (fs::path(m.path) / f).string());
        }
      copied = true;
    }
    if (!copied) write_hf_tokenizer(*m.tokenizer, tmp.string());
    if (partial) partial->finish();
    commit_directory(tmp.string(), out_dir);
  } catch (const Error& e) {
    fs::remove_all(tmp, ec);
    // Name the output the user asked for, not the temporary directory.
    std::string msg = e.what();
    for (size_t at; (at = msg.find(tmp.string())) != std::string::npos;) msg.replace(at, tmp.string().size(), out_dir);
    throw Error(msg);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace optiq

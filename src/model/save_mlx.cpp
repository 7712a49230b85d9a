#include "model/save_mlx.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/half.h"
#include "formats/safetensors.h"
#include "model/hf_export.h"
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

template <typename T>
std::span<const uint8_t> as_bytes(const T* p, size_t n) {
  return {reinterpret_cast<const uint8_t*>(p), n * sizeof(T)};
}

}  // namespace

void save_mlx(const Model& m, const std::string& out_dir, const MlxSaveOptions& opt) {
  std::error_code ec;
  if (fs::exists(out_dir, ec) && !opt.force)
    fail("{}: already exists (choose another output directory, or ask to replace it)", out_dir);
  const fs::path parent = fs::absolute(out_dir).parent_path();
  check(fs::is_directory(parent, ec), "{}: parent directory {} does not exist", out_dir, parent.string());
  const fs::path tmp = parent / fmt::format(".{}.tmp-{}", fs::path(out_dir).filename().string(), getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  try {
    SafetensorsWriter st;
    const ModelConfig& c = m.config;
    const bool bf16 = opt.bf16;
    nlohmann::json quant = nlohmann::json::object();
    bool any_quantized = false;
    AffineFormat most_common{4, 64};
    std::map<std::pair<int, int>, int64_t> format_weights;

    for (const auto& mod : quantizable_modules(c)) {
      const Linear& lin = module_linear(m.weights, mod);
      // MLX has no storage for GGUF's k-quant blocks; writing them as floats would undo the plan silently.
      check(!lin.is_kquant(), "{}: {} is {}, a GGUF k-quant or IQ4 type, which MLX cannot store: plan it with affine (MLX) or "
            "32-weight GGUF formats for an MLX export", m.path, mod.path, lin.format());
      if (lin.is_affine()) {
        const AffineMatrixView& v = lin.affine();
        check(v.bf16_scales == bf16, "{}: {} has {} scales but the export type is {}; quantize with the same scale type",
              m.path, mod.path, v.bf16_scales ? "bf16" : "fp16", bf16 ? "bf16" : "fp16");
        st.add(mod.path + ".weight", DType::U32, {v.rows, v.words_per_row()},
               as_bytes(v.packed, static_cast<size_t>(v.rows * v.words_per_row())));
        const size_t ng = static_cast<size_t>(v.rows * v.groups_per_row());
        const DType sd = bf16 ? DType::BF16 : DType::F16;
        st.add(mod.path + ".scales", sd, {v.rows, v.groups_per_row()}, as_bytes(v.scales, ng));
        if (v.biases) {
          st.add(mod.path + ".biases", sd, {v.rows, v.groups_per_row()}, as_bytes(v.biases, ng));
        } else {  // symmetric (from a GGUF's Q8_0/Q5_0/Q4_0): MLX wants the biases written out
          std::vector<uint8_t> b(ng * 2);
          for (int64_t r = 0; r < v.rows; ++r)
            for (int64_t g = 0; g < v.groups_per_row(); ++g) {
              const uint16_t h = f32_to_scale(v.bias(r, g), bf16);
              std::memcpy(&b[(r * v.groups_per_row() + g) * 2], &h, 2);
            }
          st.add_owned(mod.path + ".biases", sd, {v.rows, v.groups_per_row()}, std::move(b));
        }
        quant[mod.path] = {{"group_size", v.fmt.group_size}, {"bits", v.fmt.bits}};
        format_weights[{v.fmt.bits, v.fmt.group_size}] += mod.numel();
        any_quantized = true;
      } else {
        std::vector<float> w = lin.to_f32();
        st.add_owned(mod.path + ".weight", bf16 ? DType::BF16 : DType::F16, {mod.rows, mod.cols},
                     to_half_bytes(w.data(), w.size(), bf16));
        quant[mod.path] = false;
      }
    }
    auto add_norm = [&](const std::string& name, const std::vector<float>& v) {
      st.add_owned(name, bf16 ? DType::BF16 : DType::F16, {static_cast<int64_t>(v.size())},
                   to_half_bytes(v.data(), v.size(), bf16));
    };
    for (const auto& [name, v] : hf_export_vectors(m)) add_norm(name, v);
    st.set_metadata("format", "mlx");
    st.write((tmp / "model.safetensors").string());

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
    {
      std::ofstream f(tmp / "config.json");
      f << config.dump(2) << "\n";
      check(static_cast<bool>(f), "{}: cannot write config.json", out_dir);
    }
    // A Hugging Face source keeps its own tokenizer files; others are converted.
    bool copied = false;
    if (m.format == SourceFormat::HfDir && fs::exists(fs::path(m.path) / "tokenizer.json")) {
      for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                            "generation_config.json", "chat_template.jinja"})
        if (fs::exists(fs::path(m.path) / f)) fs::copy_file(fs::path(m.path) / f, tmp / f);
      copied = true;
    }
    if (!copied) write_hf_tokenizer(*m.tokenizer, tmp.string());
    if (fs::exists(out_dir, ec)) fs::remove_all(out_dir);
    fs::rename(tmp, out_dir);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace optiq

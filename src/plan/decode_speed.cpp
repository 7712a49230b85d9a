#include "plan/decode_speed.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "plan/baselines.h"
#include "plan/budget.h"

namespace optiq {

std::optional<std::string> DecodeSpeedModel::storage_type(const TensorFormat& f, int64_t cols) {
  if (f.is_float()) return "F16";
  const TensorFormat stored = format_for_shape(f, cols);  // kept: ggml() points into it
  if (const GgmlFormat* g = stored.ggml()) return std::string(dtype_name(g->type));
  const AffineFormat& a = *f;
  if (a.group_size != 32) return std::nullopt;
  if (a.bits == 4) return "Q4_1";
  if (a.bits == 5) return "Q5_1";
  if (a.bits == 8) return "Q8_0";
  return std::nullopt;
}

double DecodeSpeedModel::module_ns(const ModelConfig& config, const ModuleInfo& m, const TensorFormat& f) const {
  if (m.kind == ModuleKind::Embed && !config.tied_embeddings) return 0;  // a row lookup
  const auto type = storage_type(f, m.cols);
  check(type.has_value(), "{}: {} has no GGUF type, so {} has no decode cost for it; plan GGUF formats",
        m.path, tensor_format_short(f), runtime);
  auto it = ns_per_weight.find(*type);
  check(it != ns_per_weight.end(), "{} speed table ({}) has no cost for {} (the storage of {} in {})", runtime,
        source, *type, m.path, tensor_format_label(f, m.cols));
  return it->second * static_cast<double>(m.numel());
}

double DecodeSpeedModel::plan_ns(const ModelConfig& config, const std::map<std::string, TensorFormat>& formats) const {
  double ns = 0;
  for (const auto& m : quantizable_modules(config)) {
    auto it = formats.find(m.path);
    ns += module_ns(config, m, it == formats.end() ? TensorFormat() : it->second);
  }
  return ns;
}

const DecodeSpeedModel& llamacpp_cpu_speed_model() {
  // bench/llamacpp_speed_table.py, bench/results/2026-12-05-llamacpp-speed-table.json:
  // llama.cpp (llama-cpp-python 0.3.36's; the "noamx" build: every ISA
  // extension of the CPU but AMX, whose path crashes on some files) on an
  // Intel Xeon with AVX-512 and AMX (KVM guest), 2 threads, a synthetic
  // 1024-wide Llama of 8 layers, each type alone; median of 15 decode
  // measurements per type. ns per weight read per token. On another CPU the
  // ratios differ (the same llama.cpp built with AMX ran the k-quants 2.1-2.4x
  // slower, Q8_0 and Q4_1 1.3x faster: bench/results/2026-12-05-llamacpp-speed-table-native-amx.json),
  // so `--speed-table` takes the table of the machine that will run the model.
  static const DecodeSpeedModel model{
      "llamacpp-cpu",
      "llama.cpp CPU (noamx build), 2 threads, Intel Xeon AVX-512 (bench/llamacpp_speed_table.py, 2026-12-05)",
      {
          {"F16", 0.10210}, {"Q8_0", 0.05406}, {"Q6_K", 0.03519}, {"Q5_K", 0.03142}, {"Q4_K", 0.01743},
          {"Q3_K", 0.02422}, {"Q2_K", 0.01674}, {"Q5_1", 0.04361}, {"Q5_0", 0.03428}, {"Q4_1", 0.02870},
          {"Q4_0", 0.01938}, {"IQ4_NL", 0.01867}, {"IQ4_XS", 0.02595},
      }};
  return model;
}

DecodeSpeedModel load_speed_model(const std::string& path) {
  std::ifstream in(path);
  check(in.good(), "{}: cannot open the speed table; write one with bench/llamacpp_speed_table.py", path);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not JSON ({}); write the speed table with bench/llamacpp_speed_table.py", path, e.what());
  }
  check(j.is_object() && j.contains("ns_per_weight") && j["ns_per_weight"].is_object(),
        "{}: no \"ns_per_weight\" object; write the speed table with bench/llamacpp_speed_table.py", path);
  DecodeSpeedModel m;
  m.runtime = j.value("runtime", std::string("llamacpp-cpu"));
  m.source = path;
  for (const auto& [type, v] : j["ns_per_weight"].items()) {
    check(v.is_number() && v.get<double>() > 0 && std::isfinite(v.get<double>()),
          "{}: ns_per_weight.{} must be a positive number", path, type);
    m.ns_per_weight[type] = v.get<double>();
  }
  check(!m.ns_per_weight.empty(), "{}: ns_per_weight is empty", path);
  return m;
}

PrecisionMap llamacpp_mix_plan(const ModelConfig& c, const std::string& mix) {
  using D = DType;
  const int n = c.n_layers;
  auto more = [&](int i) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; };  // use_more_bits
  std::function<D(const ModuleInfo&)> type_of;
  if (mix == "Q2_K")
    type_of = [&](const ModuleInfo& m) {
      if (m.kind == ModuleKind::VProj || m.kind == ModuleKind::DownProj) return D::Q3_K;
      return D::Q2_K;
    };
  else if (mix == "Q3_K_M")
    type_of = [&](const ModuleInfo& m) {
      if (m.kind == ModuleKind::VProj) return m.layer < 2 ? D::Q5_K : D::Q4_K;
      if (m.kind == ModuleKind::DownProj) return m.layer < n / 16 ? D::Q5_K : D::Q4_K;
      if (m.kind == ModuleKind::OProj) return D::Q4_K;
      return D::Q3_K;
    };
  else if (mix == "IQ4_XS")
    type_of = [&](const ModuleInfo&) { return D::IQ4_XS; };
  else if (mix == "Q4_K_M" || mix == "Q5_K_M") {
    const D base = mix == "Q4_K_M" ? D::Q4_K : D::Q5_K;
    type_of = [&, base](const ModuleInfo& m) {
      if ((m.kind == ModuleKind::VProj || m.kind == ModuleKind::DownProj) && more(m.layer)) return D::Q6_K;
      return base;
    };
  } else if (mix == "Q6_K")
    type_of = [&](const ModuleInfo&) { return D::Q6_K; };
  else if (mix == "Q8_0")
    type_of = [&](const ModuleInfo&) { return D::Q8_0; };
  else
    fail("llama.cpp mix '{}': expected Q2_K, Q3_K_M, IQ4_XS, Q4_K_M, Q5_K_M, Q6_K or Q8_0", mix);
  PrecisionMap p;
  for (const auto& m : quantizable_modules(c)) {
    // The output tensor: Q6_K (Q8_0 for Q8_0 files; rows 256 does not divide fall back to Q8_0).
    D t = llama_output_tensor(c, m) ? (mix == "Q8_0" ? D::Q8_0 : D::Q6_K) : type_of(m);
    const TensorFormat f = format_for_shape(TensorFormat(GgmlFormat{t}), m.cols);
    p.formats[m.path] = format_fits(f, m.cols) ? f : TensorFormat();  // no block fits: F16, as llama-quantize
  }
  return p;
}

SpeedReference llamacpp_speed_reference(const ModelConfig& config, int64_t budget, const DecodeSpeedModel& speed) {
  // llama.cpp's mixes as (bytes, time) points, smallest first. "Its own file
  // of this size" between two mixes is read off the line between them: taking
  // the largest mix within the budget instead would make the bound jump at
  // every mix's size (a budget 1 byte below Q4_K_M's would be held to Q3_K_M's
  // speed).
  std::vector<SpeedReference> mixes;
  for (const char* mix : {"Q2_K", "Q3_K_M", "IQ4_XS", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"}) {
    const PrecisionMap p = llamacpp_mix_plan(config, mix);
    mixes.push_back({mix, plan_bytes(config, p), speed.plan_ns(config, p.formats)});
  }
  std::sort(mixes.begin(), mixes.end(), [](const auto& a, const auto& b) { return a.bytes < b.bytes; });
  if (budget <= mixes.front().bytes) return mixes.front();
  if (budget >= mixes.back().bytes) return mixes.back();
  size_t hi = 1;
  while (mixes[hi].bytes < budget) ++hi;
  const SpeedReference& a = mixes[hi - 1];
  const SpeedReference& b = mixes[hi];
  if (b.bytes == budget || b.bytes == a.bytes) return b;
  const double f = double(budget - a.bytes) / double(b.bytes - a.bytes);
  return {fmt::format("{}..{}", a.mix, b.mix), budget, a.ns + f * (b.ns - a.ns)};
}

}  // namespace optiq

// Profiling time on the GPU for a 7-8B-shaped model (random bf16 weights
// built in memory, random calibration tokens): the whole fast profile
// (reference pass, Gram sums, quantization of every module at every
// candidate, proxies, exact anchors), timed by phase, with peak GPU memory
// and host RSS. The exact profile (one KL pass per module x candidate) takes
// hours at this size; it is estimated from the measured cost of its passes:
// sum over modules and candidates of the share of layers a pass from that
// module runs, times a full pass.
//
//   bench_gpu_profile [--shape llama3-8b|qwen2.5-7b] [--samples 128] [--seq 512]
//                     [--candidates 2,3,4,5,6,8x32,64,128] [--anchors N] [--anchor-windows N] [--numerics fast|exact]
//                     [--methods weighted|search|weighted,gptq] [--layers N] [--op-times] [--json FILE]
// --layers keeps the first N layers of the shape (a quicker run whose
// per-layer costs scale to the whole model); --op-times adds the device time
// of each kind of GPU operation. --methods: the roundings profiled, as
// `optiq profile --methods` (default weighted: what `optiq profile` does on a GPU).
#include <cuda_runtime.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/error.h"
#include "kernels/act_quant.h"
#include "model/device_weights.h"
#include "model/transformer.h"
#include "profile/sensitivity.h"
#include "random_model.h"

namespace optiq {
namespace {

// Largest device memory in use while it lives (polled every 20 ms).
class PeakDeviceMemory {
 public:
  PeakDeviceMemory() : poll_([this] { loop(); }) {}
  ~PeakDeviceMemory() {
    stop_ = true;
    poll_.join();
  }
  size_t peak() const { return peak_; }
  static size_t used() {
    size_t free = 0, total = 0;
    cudaMemGetInfo(&free, &total);
    return total - free;
  }

 private:
  void loop() {
    cudaSetDevice(0);
    while (!stop_) {
      peak_ = std::max(peak_.load(), used());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  std::atomic<bool> stop_{false};
  std::atomic<size_t> peak_{0};
  std::thread poll_;
};

double peak_rss_gb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1048576.0;
}

int run(int argc, char** argv) {
  std::string shape_name = "llama3-8b", candidates = "2,3,4,5,6,8x32,64,128", numerics = "fast", json_path,
              methods = "weighted";
  int samples = 128, seq = 512, anchors = 0, layers = 0, anchor_windows = 0;
  bool op_times = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      check(i + 1 < argc, "{} needs a value", a);
      return argv[++i];
    };
    if (a == "--shape") shape_name = next();
    else if (a == "--samples") samples = std::stoi(next());
    else if (a == "--seq") seq = std::stoi(next());
    else if (a == "--candidates") candidates = next();
    else if (a == "--anchors") anchors = std::stoi(next());
    else if (a == "--anchor-windows") anchor_windows = std::stoi(next());
    else if (a == "--numerics") numerics = next();
    else if (a == "--methods") methods = next();
    else if (a == "--json") json_path = next();
    else if (a == "--layers") layers = std::stoi(next());
    else if (a == "--op-times") op_times = true;
    else if (a == "-h" || a == "--help") {
      std::puts("bench_gpu_profile [--shape llama3-8b|qwen2.5-7b] [--samples 128] [--seq 512]\n"
                "                  [--candidates 2,3,4,5,6,8x32,64,128] [--anchors N] [--anchor-windows N] [--numerics fast|exact]\n"
                "                  [--methods weighted|search|weighted,gptq] [--layers N] [--op-times] [--json FILE]");
      return 0;
    } else {
      fail("unknown option '{}' (see --help)", a);
    }
  }
  check(numerics == "fast" || numerics == "exact", "--numerics takes fast or exact, not '{}'", numerics);
  check(methods == "search" || methods == "weighted" || methods == "weighted,gptq" || methods == "search,gptq",
        "--methods takes search, weighted, weighted,gptq or search,gptq, not '{}'", methods);
  Backend* gpu = cuda_backend();
  check(gpu != nullptr, "no GPU visible (or this build has no CUDA backend)");
  set_default_backend(*gpu);
  kernels::set_decode_int8(numerics == "fast");
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);

  ModelConfig c = bench::shape(shape_name);
  if (layers > 0) c.n_layers = std::min(c.n_layers, layers);
  const auto t_build = std::chrono::steady_clock::now();
  const Model m = bench::random_model(c, "bf16");
  fmt::print("{}: random bf16 weights built in {:.1f} s\n", c.family,
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t_build).count());
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(c.vocab_size - 1));
  std::vector<std::vector<int32_t>> windows(samples, std::vector<int32_t>(seq));
  for (auto& w : windows)
    for (auto& t : w) t = tok(rng);

  ProfileOptions o;
  o.method = ProfileMethod::Fast;
  o.candidates = parse_candidates(candidates);
  o.anchor_every = anchors;
  o.anchor_windows = anchor_windows;
  o.source.model_path = m.path;
  o.gram_memory = int64_t{2} << 30;
  o.weighted = methods.find("weighted") != std::string::npos;
  o.gptq = methods.find("gptq") != std::string::npos;
  o.progress = true;
  const size_t mem0 = PeakDeviceMemory::used();
  SensitivityTable t;
  size_t peak = 0;
  {
    PeakDeviceMemory poll;
    gpu->set_op_timing(op_times);
    t = profile_model(m, windows, o);
    peak = poll.peak();
  }
  if (op_times) {
    gpu->set_op_timing(false);
    fmt::print("device time by operation:\n");
    for (const OpTime& ot : gpu->take_op_times())
      fmt::print("  {:<28} {:8} calls {:10.1f} ms\n", ot.op, ot.calls, ot.ms);
  }
  const double bf16_gb = 2.0 * static_cast<double>(m.parameter_count()) / 1e9;
  const double peak_gb = static_cast<double>(peak - std::min(peak, mem0)) / 1e9;
  fmt::print("\nfast profile: {:.1f} s ({} proxies, {} exact anchors, {} candidates, {} x {} tokens, {} numerics, methods {})\n",
             t.seconds, t.proxy_measured, t.exact_measured, o.candidates.size(), samples, seq, numerics, methods);
  for (const auto& [phase, s] : t.phase_seconds) fmt::print("  {:<10} {:8.1f} s\n", phase, s);
  fmt::print("peak GPU memory {:.1f} GB (model in bf16: {:.1f} GB, ratio {:.2f}); peak host RSS {:.1f} GB\n", peak_gb,
             bf16_gb, peak_gb / bf16_gb, peak_rss_gb());

  // The exact profile: a KL pass per module x fitting candidate, from the
  // module's layer to the end. The anchors measured above are such passes:
  // their mean cost per layer run gives the estimate.
  double layer_runs = 0, anchor_layer_runs = 0;
  for (const auto& ms : t.modules) {
    const int from = ms.module.layer < 0 ? 0 : ms.module.layer;
    const double share = static_cast<double>(c.n_layers - from) / c.n_layers;
    layer_runs += share * static_cast<double>(ms.formats.size());
    for (const auto& [name, f] : ms.formats)
      if (f.kl) anchor_layer_runs += share;
  }
  const double per_full_pass = anchor_layer_runs > 0 ? t.phase_seconds["exact"] / anchor_layer_runs : 0;
  const double exact_est = layer_runs * per_full_pass + t.phase_seconds["reference"] + t.phase_seconds["quantize"];
  fmt::print("exact profile (estimated): {:.0f} s = {:.0f} full-pass equivalents x {:.2f} s + reference + quantization\n",
             exact_est, layer_runs, per_full_pass);

  if (!json_path.empty()) {
    nlohmann::json out = {{"gpu", prop.name},
                          {"shape", shape_name},
                          {"layers", c.n_layers},
                          {"samples", samples},
                          {"seq", seq},
                          {"numerics", numerics},
                          {"methods", methods},
                          {"candidates", o.candidates.size()},
                          {"fast_seconds", t.seconds},
                          {"phase_seconds", t.phase_seconds},
                          {"proxies", t.proxy_measured},
                          {"exact_anchors", t.exact_measured},
                          {"full_pass_seconds", per_full_pass},
                          {"exact_estimate_seconds", exact_est},
                          {"peak_gpu_gb", peak_gb},
                          {"model_bf16_gb", bf16_gb},
                          {"peak_rss_gb", peak_rss_gb()}};
    std::ofstream(json_path) << out.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace optiq

int main(int argc, char** argv) {
  try {
    return optiq::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_profile: error: %s\n", e.what());
    return 1;
  }
}

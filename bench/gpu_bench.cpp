// GPU speed on 7-8B-shaped models with random weights built in memory (no
// file, no download): batch-1 decode tok/s at a few context lengths against
// the memory-bandwidth roofline measured in the same run, and prefill tok/s.
//
//   bench_gpu [--shape llama3-8b|qwen2.5-7b] [--formats bf16,q8,q4,mixed4.5,mixed3.5]
//             [--ctx 128,4096] [--prefill 512,4096] [--tokens 64] [--reps 3] [--no-record] [--json FILE]
//             [--layers N] (the first N layers only: quick kernel profiles) [--prefill none]
//             [--host-pick] (decode copies the logits out and picks on the host, as before
//             the device pick: the A/B of Transformer::forward_greedy)
//
// Roofline: bytes one decode step must read (every weight matrix once, one
// embedding row, the KV cache up to the position) over the device-to-device
// copy bandwidth (bytes read + written) measured at the start of the run.
// Formats: bf16; q8 / q4 (uniform affine, groups of 64, fp16 scales and
// biases); mixed4.5 / mixed3.5 (a per-module mix of 3..8-bit affine formats
// averaging the named bits per weight, the shape of an optiq plan); q4_k_m
// (llama.cpp's Q4_K_M mix of GGUF k-quant blocks, random).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "kernels/act_quant.h"
#include "kernels/elementwise.h"
#include "model/device_weights.h"
#include "model/model.h"
#include "model/transformer.h"
#include "random_model.h"

namespace optiq {
namespace {

using bench::parse_list;
using bench::parse_names;
using bench::random_model;
using bench::shape;


double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Device-to-device copy bandwidth, bytes read + written per second (median of 10 after 3 warm-ups).
double copy_bandwidth() {
  const size_t bytes = size_t{4} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) fail("cannot allocate 8 GiB for the copy test");
  cudaMemset(a, 1, bytes);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<double> t;
  for (int i = 0; i < 13; ++i) {
    cudaEventRecord(e0);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 3) t.push_back(ms * 1e-3);
  }
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / median(t);
}

// Bytes and weights of the matrices one decode step reads whole (all but the embedding).
std::pair<size_t, double> matrix_bytes(const ModelWeights& w) {
  size_t b = w.output().bytes();
  double n = static_cast<double>(w.output().rows()) * w.output().cols();
  for (const LayerWeights& L : w.layers)
    for (const Linear* l : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) {
      b += l->bytes();
      n += static_cast<double>(l->rows()) * l->cols();
    }
  return {b, n};
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run(int argc, char** argv) {
  std::string shape_name = "llama3-8b", formats = "bf16,q8,q4,mixed4.5,mixed3.5", json_path;
  std::vector<int64_t> ctxs = {128, 4096}, prefills = {512, 4096};
  int tokens = 64, reps = 3;
  bool record = true, op_times = false;
  int layers = 0;  // 0: the shape's own count
  bool host_pick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      check(i + 1 < argc, "{} needs a value", a);
      return argv[++i];
    };
    if (a == "--shape") shape_name = next();
    else if (a == "--formats") formats = next();
    else if (a == "--ctx") ctxs = parse_list(next());
    else if (a == "--prefill") prefills = parse_list(next());
    else if (a == "--tokens") tokens = std::stoi(next());
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--no-record") record = false;
    else if (a == "--op-times") op_times = true;
    else if (a == "--host-pick") host_pick = true;
    else if (a == "--layers") layers = std::stoi(next());
    else if (a == "--json") json_path = next();
    else fail("unknown option '{}' (see the top of bench/gpu_bench.cpp)", a);
  }
  Backend* gpu = cuda_backend();
  check(gpu != nullptr, "no CUDA backend: this build has none or no GPU is visible");
  kernels::set_decode_int8(true);  // fast numerics, as generate/bench run
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const double bw = copy_bandwidth();
  fmt::print("GPU {} ({} SMs), copy bandwidth {:.0f} GB/s (read + write)\n", prop.name, prop.multiProcessorCount, bw / 1e9);
  ModelConfig c = shape(shape_name);
  if (layers > 0) c.n_layers = std::min(c.n_layers, layers);
  check(!ctxs.empty(), "--ctx needs at least one context length");
  const int64_t max_ctx = std::max(*std::max_element(ctxs.begin(), ctxs.end()) + tokens + 48,
                                   prefills.empty() ? int64_t{0} : *std::max_element(prefills.begin(), prefills.end()));
  nlohmann::json out = {{"gpu", prop.name}, {"copy_bandwidth_gbs", bw / 1e9}, {"shape", shape_name}, {"runs", nlohmann::json::array()}};
  std::vector<std::string> table;
  for (const std::string& preset : parse_names(formats)) {
    const auto t_build = std::chrono::steady_clock::now();
    Model m = random_model(c, preset);
    const auto [wbytes, params] = matrix_bytes(m.weights);
    DeviceWeights dw(m, *gpu);
    Transformer tf(dw, static_cast<int>(max_ctx));
    tf.set_record_steps(record);
    fmt::print("{}: {:.2f} GB of matrices, {:.2f} bits/weight, built and uploaded in {:.1f} s\n", preset, wbytes / 1e9,
               8.0 * wbytes / params, seconds_since(t_build));
    std::vector<int32_t> ids(static_cast<size_t>(max_ctx));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7919 + 13) % c.vocab_size);
    std::vector<float> logits(static_cast<size_t>(c.vocab_size));
    nlohmann::json run = {{"format", preset}, {"weight_bytes", wbytes}, {"bpw", 8.0 * wbytes / params}};
    for (int64_t ctx : ctxs) {
      std::vector<double> rates;
      for (int r = 0; r < reps; ++r) {
        tf.reset();
        if (ctx > 1) tf.forward(std::span<const int32_t>(ids.data(), ctx - 1), logits.data(), ctx - 2);
        // Greedy steps as `generate` runs them (the pick made on the device, one
        // index copied out), or with --host-pick the logits copied out and picked
        // on the host (before 2026-12-07's device pick). 12 warm-up steps in the
        // same mode (the second records the step; the rest bring the clocks up).
        int32_t tok = 1;
        auto step = [&] {
          if (!host_pick) return std::max(tf.forward_greedy(tok), 0);
          tf.forward(std::span<const int32_t>(&tok, 1), logits.data(), 0);
          return static_cast<int32_t>(std::max<int64_t>(argmax(logits.data(), c.vocab_size), 0));
        };
        for (int i = 0; i < 12; ++i) tok = step();
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < tokens; ++i) tok = step();
        rates.push_back(tokens / seconds_since(t0));
      }
      const double tps = median(rates);
      // KV bytes read per step at the middle of the timed steps (fp16 cache under fast numerics).
      const double kv = 2.0 * c.n_layers * static_cast<double>(ctx + tokens / 2) * c.kv_dim() * 2.0;
      const double step_bytes = static_cast<double>(wbytes) + kv + c.dim * 2.0;
      const double roof = bw / step_bytes;
      table.push_back(fmt::format("| {} | {:.2f} | decode @ctx {} | {:.1f} | {:.1f} | {:.0f}% |", preset, 8.0 * wbytes / params,
                                  ctx, tps, roof, 100.0 * tps / roof));
      run["decode"].push_back({{"ctx", ctx}, {"tok_s", tps}, {"roofline_tok_s", roof}, {"runs", rates}});
      fmt::print("  decode @ctx {}: {:.1f} tok/s (roofline {:.1f}, {:.0f}%)\n", ctx, tps, roof, 100.0 * tps / roof);
      if (op_times && ctx == ctxs.front()) {
        // Where a step's time goes: the same steps run directly, each operation timed on the device.
        tf.set_record_steps(false);
        int32_t tok = 1;
        tf.forward(std::span<const int32_t>(&tok, 1), logits.data(), 0);
        const auto t0 = std::chrono::steady_clock::now();
        const int steps = 8;
        for (int i = 0; i < steps; ++i) tf.forward(std::span<const int32_t>(&tok, 1), logits.data(), 0);
        const double direct = seconds_since(t0) / steps;
        gpu->set_op_timing(true);
        for (int i = 0; i < steps; ++i) tf.forward(std::span<const int32_t>(&tok, 1), logits.data(), 0);
        const std::vector<OpTime> times = gpu->take_op_times();
        gpu->set_op_timing(false);
        tf.set_record_steps(record);
        double total = 0;
        for (const OpTime& t : times) total += t.ms;
        fmt::print("    direct launches: {:.3f} ms/step; device time of the operations {:.3f} ms/step:\n", direct * 1e3,
                   total / steps);
        for (const OpTime& t : times)
          fmt::print("      {:<28} {:6} calls/step {:8.3f} ms/step {:7.2f} us/call\n", t.op, t.calls / steps,
                     t.ms / steps, 1e3 * t.ms / t.calls);
      }
    }
    for (int64_t n : prefills) {
      std::vector<double> rates;
      for (int r = 0; r < reps; ++r) {
        tf.reset();
        const auto t0 = std::chrono::steady_clock::now();
        tf.forward(std::span<const int32_t>(ids.data(), n), logits.data(), n - 1);
        rates.push_back(n / seconds_since(t0));
      }
      const double tps = median(rates);
      if (op_times && n == prefills.front()) {
        tf.reset();
        gpu->set_op_timing(true);
        tf.forward(std::span<const int32_t>(ids.data(), n), logits.data(), n - 1);
        const std::vector<OpTime> times = gpu->take_op_times();
        gpu->set_op_timing(false);
        double total = 0;
        for (const OpTime& t : times) total += t.ms;
        fmt::print("    prefill {}: device time of the operations {:.2f} ms:\n", n, total);
        for (const OpTime& t : times)
          fmt::print("      {:<28} {:6} calls {:8.3f} ms {:8.2f} us/call\n", t.op, t.calls, t.ms, 1e3 * t.ms / t.calls);
      }
      table.push_back(fmt::format("| {} | {:.2f} | prefill {} | {:.0f} | | |", preset, 8.0 * wbytes / params, n, tps));
      run["prefill"].push_back({{"tokens", n}, {"tok_s", tps}, {"runs", rates}});
      fmt::print("  prefill {}: {:.0f} tok/s\n", n, tps);
    }
    out["runs"].push_back(run);
  }
  fmt::print("\n{} on {}, copy bandwidth {:.0f} GB/s\n| format | bpw | test | tok/s | roofline tok/s | % |\n|---|---|---|---|---|---|\n",
             c.family, prop.name, bw / 1e9);
  for (const std::string& row : table) fmt::print("{}\n", row);
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}

}  // namespace
}  // namespace optiq

int main(int argc, char** argv) {
  try {
    return optiq::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: error: %s\n", e.what());
    return 1;
  }
}

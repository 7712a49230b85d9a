// bench_gptq: where a GPTQ quantization spends its time, on Gemma 3 270M's
// matrix shapes (hidden 640, MLP 2048; the tied embedding's 262,144 rows cut
// to 16,384) with a Hessian of correlated random inputs.
//   Prepare:  gptq_prepare (the factorisation of H^-1; once per input site).
//   Quantize: gptq_quantize at q3 g32 with `passes` grid refits (0: plain GPTQ).
// Arguments: rows, cols, passes. Example: bench_gptq --benchmark_filter=Quantize
#include <benchmark/benchmark.h>

#include <map>
#include <random>
#include <vector>

#include "model/gptq.h"
#include "quant/quantizer.h"

namespace {

using namespace optiq;

std::vector<float> randn(size_t n, uint32_t seed, float sd) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// H = X^T X / n of inputs with a few strong directions and uneven channel
// scales (as activations have), cached per width.
const std::vector<float>& hessian(int64_t cols) {
  static std::map<int64_t, std::vector<float>> cache;
  auto it = cache.find(cols);
  if (it != cache.end()) return it->second;
  const int64_t n = 2048, k = 16;
  const std::vector<float> z = randn(n * k, 2, 1.0f), mix = randn(k * cols, 3, 1.0f), noise = randn(n * cols, 4, 0.3f);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < cols; ++j) {
      float v = noise[t * cols + j];
      for (int64_t a = 0; a < k; ++a) v += z[t * k + a] * mix[a * cols + j];
      x[t * cols + j] = v * (1.0f + 3.0f * static_cast<float>(j % 7 == 0));
    }
  std::vector<float> h(static_cast<size_t>(cols * cols), 0.0f);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < cols; ++i) {
      const float xi = x[t * cols + i] / static_cast<float>(n);
      for (int64_t j = 0; j < cols; ++j) h[i * cols + j] += xi * x[t * cols + j];
    }
  return cache.emplace(cols, std::move(h)).first->second;
}

void Prepare(benchmark::State& st) {
  const int64_t cols = st.range(1);
  const std::vector<float>& h = hessian(cols);
  for (auto _ : st) benchmark::DoNotOptimize(gptq_prepare(h.data(), cols, true, 0.01, 3));
}

void Quantize(benchmark::State& st) {
  const int64_t rows = st.range(0), cols = st.range(1);
  const std::vector<float>& h = hessian(cols);
  const std::vector<float> w = randn(rows * cols, 1, 0.05f);
  GptqOptions g;
  g.grid_passes = static_cast<int>(st.range(2));
  const GptqHessian hs = gptq_prepare(h.data(), cols, true, g.damp, g.grid_passes);
  const TensorFormat f = AffineFormat{3, 32};
  for (auto _ : st) benchmark::DoNotOptimize(gptq_quantize(f, w.data(), rows, cols, hs, QuantizeOptions{}));
  st.counters["weights/s"] = benchmark::Counter(static_cast<double>(rows * cols), benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(Prepare)->ArgNames({"rows", "cols"})->Args({0, 640})->Args({0, 2048})->Unit(benchmark::kMillisecond);
BENCHMARK(Quantize)
    ->ArgNames({"rows", "cols", "passes"})
    ->ArgsProduct({{2048}, {640}, {0, 3}})
    ->ArgsProduct({{640}, {2048}, {0, 3}})
    ->ArgsProduct({{16384}, {640}, {0, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();

// bench_kernels: optiq's matmul kernels on SmolLM2-135M shapes.
//   Decode  (n = 1):  bytes/s = weight bytes (packed + scales + biases) per second.
//   Prefill (n = 64): FLOP/s = 2 * rows * cols * n per second.
// Arguments: isa (0 scalar, 1 avx2, 2 avx512), bits (0 = fp32 weights), rows, cols, threads.
//   Quantize: weights/s of quantize() (one thread) at bits x group 64, min/max
//   (method 0) or the search (method 1, with importance weights: 2), the
//   rounding the profile and the streamed export spend most of their time in.
//   Argmax: greedy decoding's pick over a vocabulary (SmolLM2 49152, Llama 3
//   128256, Gemma 3 262144 logits), optiq's kernel against std::max_element.
// Example: bench_kernels --benchmark_filter='Decode.*isa:2'
#include <benchmark/benchmark.h>

#include <algorithm>
#include <random>
#include <vector>

#include "core/parallel.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "model/sampler.h"
#include "quant/quantizer.h"

namespace {

using namespace optiq;

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.05f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

struct Setup {
  std::vector<float> w;
  AffineMatrix q;
  size_t bytes = 0;
};

Setup make(int bits, int64_t rows, int64_t cols) {
  Setup s;
  s.w = randn(rows * cols, 1);
  if (bits > 0) {
    QuantizeOptions o;
    o.method = QuantMethod::MinMax;
    s.q = quantize(s.w.data(), rows, cols, {bits, 64}, o);
    s.bytes = s.q.bytes();
  } else {
    s.bytes = rows * cols * sizeof(float);
  }
  return s;
}

void run(benchmark::State& st, int64_t n) {
  const Isa isa = static_cast<Isa>(st.range(0));
  const int bits = static_cast<int>(st.range(1));
  const int64_t rows = st.range(2), cols = st.range(3);
  if (!isa_supported(isa)) {
    st.SkipWithError("ISA not supported on this CPU");
    return;
  }
  set_isa(isa);
  set_num_threads(static_cast<int>(st.range(4)));
  Setup s = make(bits, rows, cols);
  auto x = randn(n * cols, 2);
  std::vector<float> y(n * rows);
  for (auto _ : st) {
    if (bits > 0) {
      affine_matmul(s.q.view(), x.data(), n, y.data());
    } else {
      f32_matmul(s.w.data(), rows, cols, x.data(), n, y.data());
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations()) * s.bytes);
  st.counters["GFLOPs"] =
      benchmark::Counter(2.0 * rows * cols * n * st.iterations(), benchmark::Counter::kIsRate,
                         benchmark::Counter::kIs1000);
  st.SetLabel(std::string(isa_name(isa)) + (bits ? " q" + std::to_string(bits) + " g64" : " f32"));
}

void Decode(benchmark::State& st) { run(st, 1); }
void Prefill(benchmark::State& st) { run(st, 64); }

void shapes(benchmark::internal::Benchmark* b, bool big) {
  b->ArgNames({"isa", "bits", "rows", "cols", "thr"});
  for (int isa : {0, 1, 2})
    for (int bits : {4, 8, 0})
      for (int thr : {1, 2}) {
        if (isa == 0 && thr == 2) continue;
        b->Args({isa, bits, 576, 1536, thr});
        b->Args({isa, bits, 1536, 576, thr});
        if (big && isa > 0) b->Args({isa, bits, 4096, 4096, thr});
      }
  b->UseRealTime();
}

BENCHMARK(Decode)->Apply([](auto* b) { shapes(b, true); });
BENCHMARK(Prefill)->Apply([](auto* b) { shapes(b, false); });

}  // namespace

void Quantize(benchmark::State& st) {
  const int bits = static_cast<int>(st.range(0)), method = static_cast<int>(st.range(1));
  const int64_t rows = 256, cols = 4096;
  set_num_threads(1);
  const auto w = randn(rows * cols, 3);
  std::vector<float> imp = randn(cols, 4);
  for (auto& v : imp) v = 0.01f + v * v;
  QuantizeOptions o;
  o.method = method == 0 ? QuantMethod::MinMax : QuantMethod::Search;
  if (method == 2) o.importance = imp.data();
  for (auto _ : st) benchmark::DoNotOptimize(quantize(w.data(), rows, cols, {bits, 64}, o));
  st.SetItemsProcessed(st.iterations() * rows * cols);
}
BENCHMARK(Quantize)->ArgNames({"bits", "method"})->ArgsProduct({{2, 4, 8}, {0, 1, 2}})->Unit(benchmark::kMillisecond);

void Argmax(benchmark::State& state) {
  const auto n = static_cast<int64_t>(state.range(0));
  std::vector<float> logits = randn(static_cast<size_t>(n), 3);
  int64_t i = 0;
  for (auto _ : state) {
    logits[static_cast<size_t>(i++ % n)] += 1e-3f;  // a new maximum now and then, as between decode steps
    const int64_t best = state.range(1) ? argmax(logits.data(), n)
                                        : std::max_element(logits.begin(), logits.end()) - logits.begin();
    benchmark::DoNotOptimize(best);
  }
}
BENCHMARK(Argmax)->ArgNames({"vocab", "kernel"})->ArgsProduct({{49152, 128256, 262144}, {0, 1}})
    ->Unit(benchmark::kMicrosecond);

// Sampling with llama.cpp's defaults (temperature 0.8, top-k 40, top-p 0.95),
// or from the whole distribution (top_k 0), over a vocabulary: host time
// between two decode steps.
void Sample(benchmark::State& state) {
  const auto n = static_cast<int64_t>(state.range(0));
  std::vector<float> logits = randn(static_cast<size_t>(n), 5);
  for (float& v : logits) v *= 3.0f;
  const bool all = state.range(1) == 0;  // top-k 0, top-p 1: self-generated calibration text's sampling
  Sampler s(all ? SamplerOptions{.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = 1}
                : SamplerOptions{.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 1});
  int64_t i = 0;
  for (auto _ : state) {
    logits[static_cast<size_t>(i++ % n)] += 1e-3f;
    benchmark::DoNotOptimize(s.sample(logits));
  }
}
BENCHMARK(Sample)->ArgNames({"vocab", "top_k"})->ArgsProduct({{49152, 128256, 262144}, {40, 0}})
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();

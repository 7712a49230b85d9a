// The CUDA backend's decode kernels one at a time, on the matrix shapes of a
// Llama-3-8B layer: microseconds per launch and GB/s of weight bytes, back to
// back launches cycling over enough copies that the L2 cache (50 MB) holds
// none of them; launch shapes swept (cuda_kernels.h matvec_tuned). Also the
// small per-token kernels (RMSNorm, int8 activation blocks, decode attention).
//   bench_gpu_kernels [--reps 200]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "backend/cuda/cuda_kernels.h"
#include "core/error.h"
#include "core/half.h"

namespace optiq {
namespace {

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("{}: {}", what, cudaGetErrorString(e));
}

struct DeviceArray {
  void* p = nullptr;
  explicit DeviceArray(size_t bytes) { ok(cudaMalloc(&p, std::max<size_t>(bytes, 256)), "cudaMalloc"); }
  ~DeviceArray() { cudaFree(p); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
};

template <class T>
std::vector<T> random_vec(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(g());
  return v;
}

// Times `launch(i)` over `reps` launches after 10 warm-ups; microseconds per launch.
template <class F>
double time_us(int reps, F launch) {
  for (int i = 0; i < 10; ++i) launch(i);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a);
  for (int i = 0; i < reps; ++i) launch(i);
  cudaEventRecord(b);
  ok(cudaEventSynchronize(b), "kernels");
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return 1e3 * ms / reps;
}

struct Copies {
  std::vector<std::unique_ptr<DeviceArray>> mem;
  std::vector<cuda::DevMatrix> mats;
  size_t bytes = 0;  // one copy
};

// A matrix in `fmt` (q2..q8: groups of 64, fp16 scales; bf16) with enough copies to exceed the L2.
Copies make(const std::string& fmt, int64_t rows, int64_t cols) {
  Copies c;
  cuda::DevMatrix m;
  m.rows = rows, m.cols = cols;
  size_t data_bytes, scale_bytes = 0;
  if (fmt == "bf16") {
    m.storage = cuda::DevStorage::BF16;
    data_bytes = static_cast<size_t>(rows * cols) * 2;
  } else {
    m.storage = cuda::DevStorage::Affine;
    m.bits = fmt[1] - '0';  // q2 .. q8
    m.group = 64;
    data_bytes = static_cast<size_t>(rows * cols) * m.bits / 8;
    scale_bytes = static_cast<size_t>(rows * (cols / 64)) * 2;
  }
  c.bytes = data_bytes + 2 * scale_bytes;
  const int copies = static_cast<int>(std::max<size_t>(1, (size_t{512} << 20) / c.bytes + 1));
  auto data = random_vec<uint32_t>(data_bytes / 4, 1);
  std::vector<uint16_t> scales(scale_bytes / 2, f32_to_f16(0.01f)), biases(scale_bytes / 2, f32_to_f16(-0.07f));
  if (m.storage == cuda::DevStorage::BF16) {
    // Sane bf16 values (random bits would be NaNs and infinities).
    std::vector<uint16_t> h(data_bytes / 2);
    for (size_t i = 0; i < h.size(); ++i) h[i] = f32_to_bf16(((data[i / 2] >> (i % 2 * 16)) & 0xffff) / 65536.0f - 0.5f);
    std::memcpy(data.data(), h.data(), data_bytes);
  }
  for (int i = 0; i < copies; ++i) {
    auto d = std::make_unique<DeviceArray>(c.bytes);
    auto* base = static_cast<uint8_t*>(d->p);
    ok(cudaMemcpy(base, data.data(), data_bytes, cudaMemcpyHostToDevice), "upload");
    cuda::DevMatrix mi = m;
    mi.data = base;
    if (scale_bytes) {
      ok(cudaMemcpy(base + data_bytes, scales.data(), scale_bytes, cudaMemcpyHostToDevice), "upload");
      ok(cudaMemcpy(base + data_bytes + scale_bytes, biases.data(), scale_bytes, cudaMemcpyHostToDevice), "upload");
      mi.scales = reinterpret_cast<const uint16_t*>(base + data_bytes);
      mi.biases = reinterpret_cast<const uint16_t*>(base + data_bytes + scale_bytes);
    }
    c.mem.push_back(std::move(d));
    c.mats.push_back(mi);
  }
  return c;
}

int run(int argc, char** argv) {
  int reps = 200;
  std::string only_fmt, only_shape;  // --only FORMAT,SHAPE-PREFIX,TUNING: one kernel (for ncu)
  int only_tuning = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::stoi(argv[++i]);
    } else if (a == "--only" && i + 1 < argc) {
      const std::string v = argv[++i];
      const size_t c1 = v.find(','), c2 = v.rfind(',');
      check(c1 != std::string::npos && c2 > c1, "--only FORMAT,SHAPE,TUNING");
      only_fmt = v.substr(0, c1), only_shape = v.substr(c1 + 1, c2 - c1 - 1), only_tuning = std::stoi(v.substr(c2 + 1));
    } else {
      fail("unknown option '{}' (--reps N, --only FORMAT,SHAPE,TUNING)", a);
    }
  }
  cudaDeviceProp prop{};
  ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  fmt::print("{} ({} SMs)\n", prop.name, prop.multiProcessorCount);
  const int64_t kMaxCols = 14336;
  DeviceArray x(kMaxCols * 4), xq(kMaxCols), xs(kMaxCols / 8), xsum(kMaxCols / 8), y(128256 * 4);
  const auto xv = random_vec<uint32_t>(kMaxCols, 7);
  std::vector<float> xf(kMaxCols);
  for (int64_t i = 0; i < kMaxCols; ++i) xf[i] = (xv[i] % 2001) / 1000.0f - 1.0f;
  ok(cudaMemcpy(x.p, xf.data(), kMaxCols * 4, cudaMemcpyHostToDevice), "upload x");
  const struct {
    const char* name;
    int64_t rows, cols;
  } shapes[] = {{"k/v 1024x4096", 1024, 4096},
                {"q/o 4096x4096", 4096, 4096},
                {"gate/up 14336x4096", 14336, 4096},
                {"down 4096x14336", 4096, 14336},
                {"lm_head 128256x4096", 128256, 4096}};
  fmt::print("\n| format | matrix | launch | grid | us | GB/s |\n|---|---|---|---|---|---|\n");
  for (const std::string fmtname : {"q4", "q3", "q5", "q6", "q2", "q8", "bf16"}) {
    if (!only_fmt.empty() && fmtname != only_fmt) continue;
    for (const auto& sh : shapes) {
      if (!only_shape.empty() && std::string(sh.name).rfind(only_shape, 0) != 0) continue;
      Copies c = make(fmtname, sh.rows, sh.cols);
      const int n = static_cast<int>(c.mats.size());
      cuda::quantize_act_int8(static_cast<float*>(x.p), 1, sh.cols, static_cast<int8_t*>(xq.p),
                              static_cast<float*>(xs.p), static_cast<int32_t*>(xsum.p), nullptr);
      for (int t = 0; t < cuda::kMatvecTuningCount; ++t) {
        if (only_tuning >= 0 && t != only_tuning) continue;
        for (unsigned grid : {0u}) {
          const double us = time_us(reps, [&](int i) {
            cuda::matvec_tuned(t, c.mats[i % n], static_cast<float*>(x.p), static_cast<int8_t*>(xq.p),
                               static_cast<float*>(xs.p), static_cast<int32_t*>(xsum.p), static_cast<float*>(y.p),
                               grid, nullptr);
          });
          fmt::print("| {} | {} | {} | {} | {:.2f} | {:.0f} |\n", fmtname, sh.name, cuda::kMatvecTunings[t],
                     grid ? std::to_string(grid) : "rows", us, c.bytes / us / 1e3);
        }
      }
      if (sh.rows == 14336 && (fmtname == "q4" || fmtname == "bf16") && n >= 2) {  // gate and up in one pass, with the activation
        const double us = time_us(reps, [&](int i) {
          cuda::matvec_gated(c.mats[i % n], c.mats[(i + 1) % n], GateAct::Silu, static_cast<float*>(x.p),
                             fmtname == "bf16" ? nullptr : static_cast<int8_t*>(xq.p), static_cast<float*>(xs.p),
                             static_cast<int32_t*>(xsum.p), 1, static_cast<float*>(y.p), nullptr);
        });
        fmt::print("| {} | gate+up fused | w4 pair | rows | {:.2f} | {:.0f} |\n", fmtname, us, 2 * c.bytes / us / 1e3);
      }
      std::fflush(stdout);
    }
  }
  if (!only_fmt.empty()) return 0;
  // The small kernels of a decode step (Llama-3-8B widths).
  DeviceArray w(4096 * 4), out(4096 * 4 * 8);
  std::vector<float> ones(4096, 1.0f);
  ok(cudaMemcpy(w.p, ones.data(), 4096 * 4, cudaMemcpyHostToDevice), "upload");
  fmt::print("\n| kernel | us |\n|---|---|\n");
  fmt::print("| rms_norm 1x4096 | {:.2f} |\n", time_us(reps, [&](int) {
               cuda::rms_norm(static_cast<float*>(x.p), static_cast<float*>(w.p), 1, 4096, 1e-5f,
                              static_cast<float*>(out.p), nullptr);
             }));
  fmt::print("| quantize_act 1x4096 | {:.2f} |\n", time_us(reps, [&](int) {
               cuda::quantize_act_int8(static_cast<float*>(x.p), 1, 4096, static_cast<int8_t*>(xq.p),
                                       static_cast<float*>(xs.p), static_cast<int32_t*>(xsum.p), nullptr);
             }));
  fmt::print("| add 4096 | {:.2f} |\n", time_us(reps, [&](int) {
               cuda::add(static_cast<float*>(out.p), static_cast<float*>(x.p), 4096, nullptr);
             }));
  for (int ctx : {128, 4096}) {
    AttentionParams p;
    p.n_heads = 32, p.n_kv_heads = 8, p.head_dim = 128, p.q_stride = 4096, p.kv_stride = 1024;
    p.scale = 0.088f, p.max_ctx = 4224;
    DeviceArray kc(static_cast<size_t>(p.max_ctx) * 1024 * 2), vc(static_cast<size_t>(p.max_ctx) * 1024 * 2);
    ok(cudaMemset(kc.p, 0x11, static_cast<size_t>(p.max_ctx) * 1024 * 2), "memset");
    ok(cudaMemset(vc.p, 0x22, static_cast<size_t>(p.max_ctx) * 1024 * 2), "memset");
    cuda::DevKV kv{kc.p, vc.p, true, 1024};
    for (int splits : {1, 8, 33, 64}) {
      DeviceArray part(cuda::attention_decode_partial_floats(p, 1, splits) * 4), counters(8 * 4);
      ok(cudaMemset(counters.p, 0, 8 * 4), "memset");
      const double us = time_us(reps, [&](int) {
        cuda::attention_decode(p, static_cast<float*>(x.p), 1, cuda::DevPos{nullptr, ctx - 1}, kv, splits,
                               static_cast<float*>(part.p), static_cast<int*>(counters.p), static_cast<float*>(out.p),
                               nullptr);
      });
      fmt::print("| attention decode ctx {} splits {} | {:.2f} |\n", ctx, splits, us);
    }
  }
  return 0;
}

}  // namespace
}  // namespace optiq

int main(int argc, char** argv) {
  try {
    return optiq::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu_kernels: error: %s\n", e.what());
    return 1;
  }
}

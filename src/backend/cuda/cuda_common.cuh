// Shared by the CUDA backend's files: error checks that say which call
// failed and where, device memory as an RAII value, and the small device
// helpers (fp16/bf16 words, warp sums) every kernel file uses.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string_view>
#include <utility>

namespace optiq::cuda {

// Throws optiq::Error "CUDA: <call> failed at <file>:<line>: <cuda message>".
void fail_cuda(cudaError_t e, const char* what, const char* file, int line);
inline void check_cuda(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) fail_cuda(e, what, file, line);
}
#define OPTIQ_CUDA_OK(expr) ::optiq::cuda::check_cuda((expr), #expr, __FILE__, __LINE__)
// The OPTIQ_CUDA_* switches of A/B runs (BENCHMARKS.md §6 says what each
// measured). env_switch: the fallback when unset or empty, off for "0", on
// for anything else. env_int: the number, or the fallback when unset or empty.
inline bool env_switch(const char* name, bool fallback) {
  const char* e = std::getenv(name);
  if (!e || !*e) return fallback;
  return std::string_view(e) != "0";
}
inline long long env_int(const char* name, long long fallback) {
  const char* e = std::getenv(name);
  return e && *e ? std::atoll(e) : fallback;
}

// After a kernel launch: a bad configuration shows up here, not at the next sync.
#define OPTIQ_CUDA_LAUNCHED() ::optiq::cuda::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// cudaFree, and the allocation log's account of it (never throws).
void release_device(void* p);

// A device allocation, freed when the value goes.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(size_t bytes);
  void* get() const { return ptr_.get(); }
  template <class T>
  T* as() const { return static_cast<T*>(ptr_.get()); }
  size_t bytes() const { return bytes_; }

 private:
  struct Free {
    void operator()(void* p) const { release_device(p); }
  };
  std::unique_ptr<void, Free> ptr_;
  size_t bytes_ = 0;
};

// Programmatic dependent launch (Hopper, sm_90): a kernel may start while the
// one before it finishes. Every kernel here calls pdl_trigger() first (its
// successor may then launch once all of its blocks run) and pdl_wait() before
// it reads anything an earlier kernel wrote or writes anything at all; what
// comes before the wait may only read constant data (weights, norms,
// frequencies). The decode products thus fetch their weights while the
// previous operation is still running, instead of paying a launch and a
// memory latency after it. Off below sm_90 and with OPTIQ_CUDA_PDL=0.
bool pdl_enabled();

// Launches the persistent decode steps queued on s, if any (persistent.cu:
// every other launch on s goes after them).
void persistent_flush(cudaStream_t s);

// Launches `kernel` on stream s, with programmatic serialisation when enabled.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args&&... args) {
  persistent_flush(s);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  check_cuda(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), "cudaLaunchKernelEx", __FILE__, __LINE__);
}

inline unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

#ifdef __CUDACC__
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Every thread of the grid takes its share of pf's lines (L2Prefetch in
// cuda_kernels.h): a few prefetch instructions a thread, issued before the
// kernel's own work; the lines arrive while it runs and after it ends.
template <class Prefetch>
__device__ __forceinline__ void l2_prefetch(const Prefetch& pf) {
  if (pf.count == 0) return;
  const uint32_t threads = gridDim.x * gridDim.y * gridDim.z * blockDim.x;
  const uint32_t t = ((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x;
  for (int r = 0; r < pf.count; ++r)
    for (uint32_t line = t; line < pf.lines[r]; line += threads)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(pf.start[r] + static_cast<size_t>(line) * 128));
}

__device__ __forceinline__ float half_word(uint16_t w) { return __half2float(__ushort_as_half(w)); }
__device__ __forceinline__ float bf16_word(uint16_t w) { return __uint_as_float(static_cast<uint32_t>(w) << 16); }
__device__ __forceinline__ float scale_word(uint16_t w, bool bf16) { return bf16 ? bf16_word(w) : half_word(w); }
// fp32 -> fp16 -> fp32, round to nearest even (core/half.h's f32_to_f16).
__device__ __forceinline__ float round_to_f16(float x) { return __half2float(__float2half_rn(x)); }
__device__ __forceinline__ float round_to_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Blocks of 32 of a row rounded to int8 by the warp that holds them (lane k
// holds element 32 b + k; every lane of the warp takes part), bit for bit as
// kernels/act_quant.h: the int8 decode products' activation blocks.
__device__ __forceinline__ void int8_block(float v, int64_t block, int8_t* q, float* scale, int32_t* sum) {
  const int lane = threadIdx.x & 31;
  const float amax = warp_max(fabsf(v));
  const float s = amax / 127.0f, inv = s > 0.0f ? 1.0f / s : 0.0f;
  const int qv = __float2int_rn(__fmul_rn(v, inv));
  q[block * 32 + lane] = static_cast<int8_t>(qv);
  int total = qv;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
  if (lane == 0) scale[block] = s, sum[block] = total;
}
// The gated MLP's activations (kernels/activation.h): silu(x) = x / (1 + e^-x),
// tanh-GELU(x) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3).
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.0f + expf(-2.0f * u));
}

// Sum over a block of `blockDim.x` (a multiple of 32, at most 1024) threads;
// every thread gets the result. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}
#endif

}  // namespace optiq::cuda

// The element-wise pieces of the forward pass on the GPU, each the same
// function as its CPU definition in kernels/elementwise.h, kernels/activation.h
// and kernels/weight_view.h (round_activations), plus the int8 activation
// blocks of kernels/act_quant.h bit for bit.
#include <cuda_fp16.h>

#include <algorithm>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/norm_rows.cuh"

namespace optiq::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int pos_of(DevPos p) { return (p.dev ? *p.dev : 0) + p.offset; }

template <class T>
__device__ __forceinline__ void store_kv(T* dst, float v);
template <>
__device__ __forceinline__ void store_kv<float>(float* dst, float v) { *dst = v; }
template <>
__device__ __forceinline__ void store_kv<__half>(__half* dst, float v) { *dst = __float2half_rn(v); }


// One block per row; the sum of squares in double as the CPU's.
__global__ void rms_norm_kernel(const float* __restrict__ x, const float* __restrict__ w, int64_t dim, float eps,
                                float* out) {
  pdl_trigger();
  pdl_wait();
  const float* xr = x + blockIdx.x * dim;
  float* o = out + blockIdx.x * dim;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += static_cast<double>(xr[i]) * xr[i];
  const float scale = rms_scale(block_sum_double(ss), dim, eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
}

// x += y, then out = rms_norm(x) * w; one block per row. Each thread keeps
// its own elements from the first pass to the second, so out may alias y.
// kPer values a thread: 16 for rows up to 8192, 8 for rows up to 4096 (half
// the registers: two blocks an SM instead of one, which a prefill's many rows
// need; each element has the same thread either way, so the same bits).
constexpr int kNormThreads = 512;
constexpr int kNormPerThread = 16;  // rows up to 8192 keep their values in registers

template <int kPer>
__global__ void __launch_bounds__(kNormThreads)
    add_rms_norm_kernel(float* x, const float* y, const float* __restrict__ w, int64_t dim, float eps, float* out,
                        int8_t* q, float* qscale, int32_t* qsum) {
  pdl_trigger();
  // The norm's weights are constant: fetched before waiting for the previous kernel.
  float wv[kPer], v[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    wv[k] = i < dim ? __ldg(w + i) : 0.0f;
  }
  pdl_wait();
  float* xr = x + blockIdx.x * dim;
  const float* yr = y + blockIdx.x * dim;
  float* o = out + blockIdx.x * dim;
  double ss = 0.0;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    v[k] = i < dim ? xr[i] + yr[i] : 0.0f;
  }
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (i < dim) xr[i] = v[k];
    ss += static_cast<double>(v[k]) * v[k];
  }
  const float scale = rms_scale(block_sum_double(ss), dim, eps);
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (i - threadIdx.x >= dim) break;  // the whole block is past the row (uniform)
    const float r = __fmul_rn(__fmul_rn(v[k], scale), wv[k]);
    if (i < dim) o[i] = r;
    // The int8 blocks the next decode products read (dim % 32 == 0: whole
    // warps). Warps past the row write nothing: their blocks would be the next row's.
    if (q && i < dim) int8_block(r, (blockIdx.x * dim + i) / 32, q, qscale, qsum);
  }
}

__global__ void __launch_bounds__(kSplitThreads)
    rms_norm_split_kernel(const float* __restrict__ x, const float* __restrict__ w, int64_t dim, float eps, float* out,
                          int8_t* q, float* qscale, int32_t* qsum, const __grid_constant__ L2Prefetch pf) {
  pdl_trigger();
  if (!pf.after_wait) l2_prefetch(pf);
  norm_split_block(x, w, dim, eps, out, q, qscale, qsum, blockIdx.x, blockIdx.y, [&] {
    pdl_wait();
    if (pf.after_wait) l2_prefetch(pf);
  });
}

// Rows too long for the registers of one block: two passes over memory.
__global__ void __launch_bounds__(kNormThreads) add_rms_norm_long_kernel(float* x, const float* y, const float* __restrict__ w, int64_t dim, float eps,
                                         float* out) {
  pdl_trigger();
  pdl_wait();
  float* xr = x + blockIdx.x * dim;
  const float* yr = y + blockIdx.x * dim;
  float* o = out + blockIdx.x * dim;
  double ss = 0.0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = xr[i] + yr[i];
    xr[i] = v;
    ss += static_cast<double>(v) * v;
  }
  const float scale = rms_scale(block_sum_double(ss), dim, eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
}

// RoPE of q and k, then k and v into the cache: one block per (row, head),
// query heads first, then kv heads (whose rotated keys, untouched dims and
// values go to the cache).
template <class T>
__global__ void rope_kv_store_kernel(RopeKV r, float* q, float* k, const float* __restrict__ v, DevPos pos0, T* kc,
                                     T* vc, int64_t kv_dim) {
  pdl_trigger();
  pdl_wait();
  const int64_t row = blockIdx.x;
  const int head = blockIdx.y, half = r.rot_dim / 2, hd = r.head_dim;
  const int pos = pos_of(pos0) + static_cast<int>(row);
  const bool is_q = head < r.n_heads;
  float* p = is_q ? q + row * r.q_stride + static_cast<int64_t>(head) * hd
                  : k + row * kv_dim + static_cast<int64_t>(head - r.n_heads) * hd;
  const int64_t cache_off = static_cast<int64_t>(pos) * kv_dim + static_cast<int64_t>(head - r.n_heads) * hd;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = __fmul_rn(static_cast<float>(pos), r.inv_freq[i]);
    float s, c;
    sincosf(angle, &s, &c);
    c = __fmul_rn(c, r.mscale);
    s = __fmul_rn(s, r.mscale);
    const float a = p[i], b = p[i + half];
    const float ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)), rb = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
    p[i] = ra;
    p[i + half] = rb;
    if (!is_q) {
      store_kv(kc + cache_off + i, ra);
      store_kv(kc + cache_off + i + half, rb);
    }
  }
  if (is_q) return;
  const float* vr = v + row * kv_dim + static_cast<int64_t>(head - r.n_heads) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    if (d >= r.rot_dim) store_kv(kc + cache_off + d, p[d]);
    store_kv(vc + cache_off + d, vr[d]);
  }
}

// The same for prefill (many rows): a block per row over every head, the
// row's angles computed once into shared memory (the kernel above runs
// n x heads blocks of one or two warps, each with its own sines: 29 us for
// 512 rows of a Llama-3-8B shape on an H100, a third of the flash attention
// after it). Same arithmetic, same bits.
constexpr int kRopeRowThreads = 256;
template <class T>
__global__ void __launch_bounds__(kRopeRowThreads)
    rope_kv_store_rows_kernel(RopeKV r, float* q, float* k, const float* __restrict__ v, DevPos pos0, T* kc, T* vc,
                              int64_t kv_dim) {
  extern __shared__ float angles[];  // cos * mscale, then sin * mscale, `half` each
  pdl_trigger();
  const int half = r.rot_dim / 2, hd = r.head_dim;
  pdl_wait();
  const int64_t row = blockIdx.x;
  const int pos = pos_of(pos0) + static_cast<int>(row);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(__fmul_rn(static_cast<float>(pos), r.inv_freq[i]), &s, &c);
    angles[i] = __fmul_rn(c, r.mscale);
    angles[half + i] = __fmul_rn(s, r.mscale);
  }
  __syncthreads();
  const int64_t cache_row = static_cast<int64_t>(pos) * kv_dim;
  for (int idx = threadIdx.x; idx < (r.n_heads + r.n_kv_heads) * half; idx += blockDim.x) {
    const int head = idx / half, i = idx % half;
    const bool is_q = head < r.n_heads;
    const int64_t kv_col = static_cast<int64_t>(head - r.n_heads) * hd;
    float* p = is_q ? q + row * r.q_stride + static_cast<int64_t>(head) * hd : k + row * kv_dim + kv_col;
    const float c = angles[i], s = angles[half + i];
    const float a = p[i], b = p[i + half];
    const float ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)), rb = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
    p[i] = ra;
    p[i + half] = rb;
    if (!is_q) {
      store_kv(kc + cache_row + kv_col + i, ra);
      store_kv(kc + cache_row + kv_col + i + half, rb);
    }
  }
  // Values, and the keys' dimensions past rot_dim (which the loop above leaves alone).
  for (int idx = threadIdx.x; idx < r.n_kv_heads * hd; idx += blockDim.x) {
    const int d = idx % hd;
    if (d >= r.rot_dim) store_kv(kc + cache_row + idx, k[row * kv_dim + idx]);
    store_kv(vc + cache_row + idx, v[row * kv_dim + idx]);
  }
}

__global__ void add_kernel(float* x, const float* __restrict__ y, int64_t n) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += y[i];
}

__global__ void add_rows_kernel(float* y, const float* __restrict__ b, int64_t n, int64_t m) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n * m) y[i] += b[i % m];
}

__global__ void take_columns_kernel(const float* __restrict__ src, int64_t n, int64_t cols, int64_t from,
                                    int64_t width, float* __restrict__ dst) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * width) return;
  const int64_t r = i / width, c = i % width;
  dst[i] = src[r * cols + from + c];
}

// One thread per (row, head, frequency).
__global__ void rope_kernel(float* x, int64_t n, int64_t stride, int heads, int head_dim, int rot_dim, DevPos pos0,
                            const float* __restrict__ inv_freq, float mscale) {
  pdl_trigger();
  pdl_wait();
  const int half = rot_dim / 2;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * heads * half) return;
  const int i = static_cast<int>(t % half);
  const int64_t rh = t / half;
  const int h = static_cast<int>(rh % heads);
  const int64_t row = rh / heads;
  const float angle = __fmul_rn(static_cast<float>(pos_of(pos0) + row), inv_freq[i]);
  float s, c;
  sincosf(angle, &s, &c);
  c = __fmul_rn(c, mscale);
  s = __fmul_rn(s, mscale);
  float* p = x + row * stride + static_cast<int64_t>(h) * head_dim;
  const float a = p[i], b = p[i + half];
  p[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  p[i + half] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
}

// llama.cpp's fp16-table GELU (kernels/elementwise.h gelu_tanh_llamacpp).
__device__ __forceinline__ float gelu_tanh_llamacpp(float x) {
  if (x <= -10.0f) return 0.0f;
  if (x >= 10.0f) return x;
  const float xh = round_to_f16(x);
  const float g = 0.5f * xh * (1.0f + tanhf(0.7978845608028654f * xh * (1.0f + 0.044715f * xh * xh)));
  return round_to_f16(g);
}

__device__ __forceinline__ float gated(GateAct act, bool llamacpp, float x, float u) {
  const float a = act == GateAct::Silu ? silu(x) : (llamacpp ? gelu_tanh_llamacpp(x) : gelu_tanh(x));
  return a * u;
}

__global__ void gated_kernel(GateAct act, bool llamacpp, float* gate, const float* __restrict__ up, int64_t n) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  gate[i] = gated(act, llamacpp, gate[i], up[i]);
}

// Four values a thread (prefill: 16-byte loads and stores; 42 us for 512 rows
// of a 14,336-wide MLP a thread a value on an H100, 70% of the copy bandwidth).
__global__ void gated4_kernel(GateAct act, bool llamacpp, float4* gate, const float4* __restrict__ up, int64_t n4) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n4) return;
  const float4 g = gate[i], u = up[i];
  gate[i] = make_float4(gated(act, llamacpp, g.x, u.x), gated(act, llamacpp, g.y, u.y), gated(act, llamacpp, g.z, u.z),
                        gated(act, llamacpp, g.w, u.w));
}

__global__ void softcap_kernel(float* x, int64_t n, float cap) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] = cap * tanhf(x[i] * (1.0f / cap));
}

// Greedy decoding's pick over the vocabulary. A candidate is one 64-bit key:
// the value's bits made order-preserving as unsigned in the high word, the
// index complemented in the low word (equal values: the lower index is the
// larger key), so a block's best and the grid's are each a max. Blocks meet
// through atomicMax on state's key; the last block to finish (a count in
// state) publishes the index and zeroes the state for the next launch.
__device__ __forceinline__ unsigned long long argmax_key(float v, int64_t i) {
  const uint32_t u = __float_as_uint(v);
  const uint32_t ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(ordered) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
}

__global__ void argmax_kernel(const float* x, int64_t n, uint32_t* state, int32_t* out) {
  pdl_trigger();
  pdl_wait();  // x is the previous kernel's output
  unsigned long long best = 0;  // no candidate (every real key is larger)
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = x[i];
    if (!isnan(v)) best = max(best, argmax_key(v, i));
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
  __shared__ unsigned long long warp_best[32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  if (warp != 0) return;
  best = lane < static_cast<int>(blockDim.x >> 5) ? warp_best[lane] : 0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
  if (lane != 0) return;
  auto* key = reinterpret_cast<unsigned long long*>(state);
  if (best) atomicMax(key, best);
  __threadfence();  // this block's key is visible before its count
  if (atomicAdd(state + 2, 1u) != gridDim.x - 1) return;
  const unsigned long long k = atomicExch(key, 0ull);
  state[2] = 0;
  *out = k ? static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(k)) : -1;
}

__global__ void round_half_kernel(const float* __restrict__ x, int64_t n, bool bf16, float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = bf16 ? round_to_bf16(x[i]) : round_to_f16(x[i]);
}

// ggml quantize_row_q8_0/q8_1: d = amax / 127 kept as fp16. One thread per block of 32.
__global__ void round_q8_32_kernel(const float* __restrict__ x, int64_t blocks, float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= blocks) return;
  const float* xb = x + 32 * b;
  float* ob = out + 32 * b;
  float amax = 0.0f;
  for (int j = 0; j < 32; ++j) amax = fmaxf(amax, fabsf(xb[j]));
  const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f, d16 = round_to_f16(d);
  for (int j = 0; j < 32; ++j) ob[j] = __fmul_rn(rintf(__fmul_rn(xb[j], id)), d16);
}

// ggml quantize_row_q8_K: the scale from the signed extreme, fp32. One thread per block of 256.
__global__ void round_q8k_kernel(const float* __restrict__ x, int64_t blocks, float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= blocks) return;
  const float* xb = x + 256 * b;
  float* ob = out + 256 * b;
  float amax = 0.0f, maxv = 0.0f;
  for (int j = 0; j < 256; ++j)
    if (fabsf(xb[j]) > amax) amax = fabsf(xb[j]), maxv = xb[j];
  if (amax == 0.0f) {
    for (int j = 0; j < 256; ++j) ob[j] = xb[j];
    return;
  }
  const float iscale = -127.0f / maxv, d = 1.0f / iscale;
  for (int j = 0; j < 256; ++j) ob[j] = __fmul_rn(d, static_cast<float>(min(127, __float2int_rn(__fmul_rn(iscale, xb[j])))));
}

__global__ void copy_kernel(const float* __restrict__ x, int64_t n, float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = x[i];
}

__global__ void to_half_kernel(const float* __restrict__ x, int64_t n, __half* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2half_rn(x[i]);
}

__global__ void to_bf16_kernel(const float* __restrict__ x, int64_t n, __nv_bfloat16* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16_rn(x[i]);
}

// One warp per block of 32, a lane per value (kernels/act_quant.cpp's arithmetic).
__global__ void quantize_act_kernel(const float* __restrict__ x, int n, int64_t cols, int8_t* q, float* scale,
                                    int32_t* sum, const __grid_constant__ L2Prefetch pf) {
  pdl_trigger();
  if (!pf.after_wait) l2_prefetch(pf);
  pdl_wait();
  if (pf.after_wait) l2_prefetch(pf);
  const int64_t blocks = (cols + 31) / 32;
  const int64_t t = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (t >= n * blocks) return;
  const int64_t i = t / blocks, b = t % blocks, k = 32 * b + lane;
  int8_block(k < cols ? x[i * cols + k] : 0.0f, t, q, scale, sum);
}

template <class T>
__global__ void kv_store_kernel(T* kc, T* vc, int64_t kv_dim, DevPos pos0, const float* __restrict__ k,
                                const float* __restrict__ v, int64_t n) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * kv_dim) return;
  const int64_t off = static_cast<int64_t>(pos_of(pos0)) * kv_dim + i;
  store_kv(kc + off, k[i]);
  store_kv(vc + off, v[i]);
}

}  // namespace

void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out, cudaStream_t s) {
  if (rows <= 0) return;
  const int threads = dim >= 1024 ? 512 : (dim >= 256 ? 256 : 64);
  launch(rms_norm_kernel, static_cast<unsigned>(rows), threads, 0, s, x, w, dim, eps, out);
  OPTIQ_CUDA_LAUNCHED();
}

bool rms_norm_split(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out, cudaStream_t s,
                    int8_t* q, float* qscale, int32_t* qsum, const L2Prefetch& pf) {
  if (rows <= 0 || dim % 32 != 0 || dim > kSplitNormMaxDim || x == out) return false;
  if (reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;  // float4 loads
  if (rows == 1 && pf.count == 0) {
    PersistentStep st;
    st.kind = StepKind::Norm, st.x = x, st.norm_w = w, st.cols = dim, st.eps = eps, st.out = out;
    st.q = q, st.qscale = qscale, st.qsum = qsum;
    if (persistent_take(s, st)) return true;
  }
  const dim3 grid(static_cast<unsigned>((dim + kSplitThreads - 1) / kSplitThreads), static_cast<unsigned>(rows));
  launch(rms_norm_split_kernel, grid, kSplitThreads, 0, s, x, w, dim, eps, out, q, qscale, qsum, pf);
  OPTIQ_CUDA_LAUNCHED();
  return true;
}

bool add_rms_norm(float* x, const float* y, const float* w, int64_t rows, int64_t dim, float eps, float* out,
                  cudaStream_t s, int8_t* q, float* qscale, int32_t* qsum) {
  if (rows <= 0) return false;
  if (dim > static_cast<int64_t>(kNormThreads) * kNormPerThread) {
    launch(add_rms_norm_long_kernel, static_cast<unsigned>(rows), kNormThreads, 0, s, x, y, w, dim, eps, out);
    return false;
  }
  if (dim % 32 != 0) q = nullptr, qscale = nullptr, qsum = nullptr;
  if (dim <= kNormThreads * kNormPerThread / 2)
    launch(add_rms_norm_kernel<kNormPerThread / 2>, static_cast<unsigned>(rows), kNormThreads, 0, s, x, y, w, dim, eps,
           out, q, qscale, qsum);
  else
    launch(add_rms_norm_kernel<kNormPerThread>, static_cast<unsigned>(rows), kNormThreads, 0, s, x, y, w, dim, eps,
           out, q, qscale, qsum);
  OPTIQ_CUDA_LAUNCHED();
  return q != nullptr;
}

void rope_kv_store(const RopeKV& r, float* q, float* k, const float* v, int64_t n, DevPos pos0, const DevKV& c,
                   cudaStream_t s) {
  if (n <= 0) return;
  if (n > kMatvecMaxRows) {
    const size_t smem = sizeof(float) * static_cast<size_t>(r.rot_dim);
    if (c.half)
      launch(rope_kv_store_rows_kernel<__half>, static_cast<unsigned>(n), kRopeRowThreads, smem, s, r, q, k, v, pos0,
             static_cast<__half*>(c.k), static_cast<__half*>(c.v), c.kv_dim);
    else
      launch(rope_kv_store_rows_kernel<float>, static_cast<unsigned>(n), kRopeRowThreads, smem, s, r, q, k, v, pos0,
             static_cast<float*>(c.k), static_cast<float*>(c.v), c.kv_dim);
    OPTIQ_CUDA_LAUNCHED();
    return;
  }
  const dim3 grid(static_cast<unsigned>(n), r.n_heads + r.n_kv_heads);
  const int threads = r.head_dim >= 128 ? 64 : 32;
  if (c.half)
    launch(rope_kv_store_kernel<__half>, grid, threads, 0, s, r, q, k, v, pos0, static_cast<__half*>(c.k),
                                                          static_cast<__half*>(c.v), c.kv_dim);
  else
    launch(rope_kv_store_kernel<float>, grid, threads, 0, s, r, q, k, v, pos0, static_cast<float*>(c.k),
                                                         static_cast<float*>(c.v), c.kv_dim);
  OPTIQ_CUDA_LAUNCHED();
}

void add(float* x, const float* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  launch(add_kernel, blocks_for(n, kThreads), kThreads, 0, s, x, y, n);
  OPTIQ_CUDA_LAUNCHED();
}

void add_rows(float* y, const float* b, int64_t n, int64_t m, cudaStream_t s) {
  if (n * m <= 0) return;
  launch(add_rows_kernel, blocks_for(n * m, kThreads), kThreads, 0, s, y, b, n, m);
  OPTIQ_CUDA_LAUNCHED();
}

void take_columns(const float* src, int64_t n, int64_t cols, int64_t from, int64_t width, float* dst, cudaStream_t s) {
  if (n * width <= 0) return;
  launch(take_columns_kernel, blocks_for(n * width, kThreads), kThreads, 0, s, src, n, cols, from, width, dst);
  OPTIQ_CUDA_LAUNCHED();
}

void rope(float* x, int64_t n, int64_t stride, int heads, int head_dim, int rot_dim, DevPos pos0,
          const float* inv_freq, float mscale, cudaStream_t s) {
  const int64_t total = n * heads * (rot_dim / 2);
  if (total <= 0) return;
  launch(rope_kernel, blocks_for(total, kThreads), kThreads, 0, s, x, n, stride, heads, head_dim, rot_dim, pos0, inv_freq,
                                                               mscale);
  OPTIQ_CUDA_LAUNCHED();
}

void gated_activation(GateAct act, bool llamacpp, float* gate, const float* up, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  if (n % 4 == 0 && reinterpret_cast<uintptr_t>(gate) % 16 == 0 && reinterpret_cast<uintptr_t>(up) % 16 == 0) {
    launch(gated4_kernel, blocks_for(n / 4, kThreads), kThreads, 0, s, act, llamacpp, reinterpret_cast<float4*>(gate),
           reinterpret_cast<const float4*>(up), n / 4);
    OPTIQ_CUDA_LAUNCHED();
    return;
  }
  launch(gated_kernel, blocks_for(n, kThreads), kThreads, 0, s, act, llamacpp, gate, up, n);
  OPTIQ_CUDA_LAUNCHED();
}

void softcap(float* x, int64_t n, float cap, cudaStream_t s) {
  if (n <= 0) return;
  launch(softcap_kernel, blocks_for(n, kThreads), kThreads, 0, s, x, n, cap);
  OPTIQ_CUDA_LAUNCHED();
}

void argmax(const float* x, int64_t n, uint32_t* state, int32_t* out, cudaStream_t s) {
  // A few values a thread: a 262k vocabulary takes 128 blocks (one wave), 50k takes 25.
  const int blocks = static_cast<int>(std::clamp<int64_t>(blocks_for(n, kThreads * 8), 1, 128));
  launch(argmax_kernel, blocks, kThreads, 0, s, x, n, state, out);
  OPTIQ_CUDA_LAUNCHED();
}

void round_activations(ActRounding r, const float* x, int64_t n, int64_t cols, float* out, cudaStream_t s) {
  const int64_t total = n * cols;
  if (total <= 0) return;
  switch (r) {
    case ActRounding::Exact:
      if (out != x) launch(copy_kernel, blocks_for(total, kThreads), kThreads, 0, s, x, total, out);
      break;
    case ActRounding::F16:
    case ActRounding::BF16:
      launch(round_half_kernel, blocks_for(total, kThreads), kThreads, 0, s, x, total, r == ActRounding::BF16, out);
      break;
    case ActRounding::Q8Block32:
      if (out != x) launch(copy_kernel, blocks_for(total, kThreads), kThreads, 0, s, x, total, out);
      launch(round_q8_32_kernel, blocks_for(total / 32, 128), 128, 0, s, x, total / 32, out);
      break;
    case ActRounding::Q8KBlock256:
      if (out != x) launch(copy_kernel, blocks_for(total, kThreads), kThreads, 0, s, x, total, out);
      launch(round_q8k_kernel, blocks_for(total / 256, 64), 64, 0, s, x, total / 256, out);
      break;
  }
  OPTIQ_CUDA_LAUNCHED();
}

void to_half(const float* x, int64_t n, __half* out, cudaStream_t s) {
  if (n <= 0) return;
  launch(to_half_kernel, blocks_for(n, kThreads), kThreads, 0, s, x, n, out);
  OPTIQ_CUDA_LAUNCHED();
}

void to_bf16(const float* x, int64_t n, __nv_bfloat16* out, cudaStream_t s) {
  if (n <= 0) return;
  launch(to_bf16_kernel, blocks_for(n, kThreads), kThreads, 0, s, x, n, out);
  OPTIQ_CUDA_LAUNCHED();
}

void quantize_act_int8(const float* x, int n, int64_t cols, int8_t* q, float* scale, int32_t* sum, cudaStream_t s,
                       const L2Prefetch& pf) {
  const int64_t blocks = (cols + 31) / 32;
  if (n <= 0 || blocks <= 0) return;
  if (n == 1 && pf.count == 0) {
    PersistentStep st;
    st.kind = StepKind::Quantize, st.x = x, st.cols = cols, st.q = q, st.qscale = scale, st.qsum = sum;
    if (persistent_take(s, st)) return;
  }
  launch(quantize_act_kernel, blocks_for(n * blocks * 32, 256), 256, 0, s, x, n, cols, q, scale, sum, pf);
  OPTIQ_CUDA_LAUNCHED();
}

void kv_store(const DevKV& c, DevPos pos0, const float* k, const float* v, int64_t n, cudaStream_t s) {
  const int64_t total = n * c.kv_dim;
  if (total <= 0) return;
  if (c.half)
    launch(kv_store_kernel<__half>, blocks_for(total, kThreads), kThreads, 0, s, 
        static_cast<__half*>(c.k), static_cast<__half*>(c.v), c.kv_dim, pos0, k, v, n);
  else
    launch(kv_store_kernel<float>, blocks_for(total, kThreads), kThreads, 0, s, 
        static_cast<float*>(c.k), static_cast<float*>(c.v), c.kv_dim, pos0, k, v, n);
  OPTIQ_CUDA_LAUNCHED();
}

}  // namespace optiq::cuda

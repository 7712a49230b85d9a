// The accuracy path's affine quantizers on the GPU (Backend::fake_quantize):
// quant/quantizer.h's min/max and search rules, one warp per group, returning
// the dequantized weights (or the error w - w^) instead of packed codes.
// The search visits the same candidates in the same order as the CPU's
// (quant/quantizer_search.inc); sums are reduced in another order, so a
// group whose candidates tie to the last bit may pick another one. With
// importance weights (QuantizeOptions::importance: one per input column) the
// search minimises the weighted error and refits by weighted least squares,
// as the host's does.
#include <cmath>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"

namespace optiq::cuda {

namespace {

__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ uint16_t to_storage(float f, bool bf16) {
  return bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(f)) : __half_as_ushort(__float2half_rn(f));
}
__device__ __forceinline__ float from_storage(uint16_t h, bool bf16) { return scale_word(h, bf16); }

// MLX's rule (quantizer.cpp minmax_params): the edge of larger magnitude gets an exact code.
__device__ void minmax_params(float w_min, float w_max, float nmax, float* scale_out, float* bias_out) {
  const bool min_edge = fabsf(w_min) > fabsf(w_max);
  float scale = fmaxf((w_max - w_min) / nmax, 1e-7f);
  scale = min_edge ? scale : -scale;
  const float edge = min_edge ? w_min : w_max;
  const float q0 = rintf(edge / scale);
  float bias = 0.0f;
  if (q0 != 0.0f) {
    scale = edge / q0;
    bias = edge;
  }
  *scale_out = scale;
  *bias_out = bias;
}

struct Pass {
  float err, sq, sqq, sqw;
};

template <int kPer>
__device__ Pass quant_pass(const float (&x)[kPer], const float (&a)[kPer], float nmax, float s, float b) {
  const float inv = s != 0.0f ? 1.0f / s : 0.0f;
  float err = 0, sq = 0, sqq = 0, sqw = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const float t = fminf(fmaxf((x[i] - b) * inv, 0.0f), nmax);
    const float qf = static_cast<float>(static_cast<int>(t + 0.5f));
    const float d = s * qf + b - x[i];
    const float aq = a[i] * qf;
    err += a[i] * d * d;
    sq += aq;
    sqq += aq * qf;
    sqw += aq * x[i];
  }
  return {warp_sum(err), warp_sum(sq), warp_sum(sqq), warp_sum(sqw)};
}

// One warp per group of kPer * 32 weights; lane l holds weights l, l + 32, ...
// imp: one weight per input column (groups_per_row groups a row), or null.
template <int kPer>
__global__ void fake_quant_kernel(const float* __restrict__ w, int64_t groups, int64_t groups_per_row, int bits,
                                  bool bf16, bool search, int grid, int refit_iters, const float* __restrict__ imp,
                                  bool error_out, float* __restrict__ out, uint16_t* __restrict__ scale_words,
                                  uint16_t* __restrict__ bias_words) {
  pdl_trigger();
  pdl_wait();
  constexpr int kGroup = kPer * 32;
  const int64_t g = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (g >= groups) return;  // whole warps: blockDim is a multiple of 32
  float x[kPer], a[kPer];
  const int64_t col0 = (g % groups_per_row) * kGroup;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    x[i] = w[g * kGroup + lane + 32 * i];
    a[i] = imp ? imp[col0 + lane + 32 * i] : 1.0f;
  }
  float w_min = x[0], w_max = x[0], si = 0, siw = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    w_min = fminf(w_min, x[i]);
    w_max = fmaxf(w_max, x[i]);
    si += a[i];
    siw += a[i] * x[i];
  }
  w_min = warp_min(w_min);
  w_max = warp_max(w_max);
  si = warp_sum(si);
  siw = warp_sum(siw);
  const float nmax = static_cast<float>((1 << bits) - 1);

  float sr, br;  // the chosen scale and bias, rounded to storage
  bool codes_from_unrounded = false;
  float s_raw = 0, b_raw = 0;
  if (!search) {
    minmax_params(w_min, w_max, nmax, &s_raw, &b_raw);
    sr = from_storage(to_storage(s_raw, bf16), bf16);
    br = from_storage(to_storage(b_raw, bf16), bf16);
    codes_from_unrounded = true;  // MLX rounds codes with the fp32 scale and bias
  } else {
    auto rs = [bf16](float f) { return from_storage(to_storage(f, bf16), bf16); };
    float best_err = INFINITY;
    uint16_t best_s = 0, best_b = to_storage(w_min, bf16);
    auto consider = [&](float s, float b) {
      const uint16_t hs = to_storage(s, bf16), hb = to_storage(b, bf16);
      const Pass r = quant_pass(x, a, nmax, from_storage(hs, bf16), from_storage(hb, bf16));
      if (r.err < best_err) {
        best_err = r.err;
        best_s = hs;
        best_b = hb;
      }
      return r;
    };
    const float range = w_max - w_min;
    if (range <= 0.0f || si <= 0.0f) {  // a constant group (or no importance): the bias alone
      consider(0.0f, si > 0.0f ? siw / si : w_min);
      consider(0.0f, w_min);
    } else {
      float ms, mb;
      minmax_params(w_min, w_max, nmax, &ms, &mb);
      consider(ms, mb);
      const float mid = 0.5f * (w_min + w_max);
      const float clip_max = 0.5f / sqrtf(nmax + 1.0f);
      const int ncand = max(grid, 1);
      for (int k = 0; k < ncand; ++k) {
        const float frac = ncand > 1 ? static_cast<float>(k) / static_cast<float>(ncand - 1) : 0.0f;
        float s = range * (1.0f - frac * clip_max) / nmax;
        float b = k == 0 ? w_min : mid - 0.5f * s * nmax;
        Pass r = consider(s, b);
        for (int it = 0; it < refit_iters; ++it) {
          const float det = r.sqq * si - r.sq * r.sq;
          if (!(det > 1e-12f * r.sqq * si)) break;
          const float s2 = (r.sqw * si - r.sq * siw) / det;
          const float b2 = (r.sqq * siw - r.sq * r.sqw) / det;
          if (!(s2 > 0.0f) || !isfinite(b2)) break;
          if (rs(s2) == rs(s) && rs(b2) == rs(b)) break;
          s = s2;
          b = b2;
          r = consider(s, b);
        }
      }
    }
    sr = from_storage(best_s, bf16);
    br = from_storage(best_b, bf16);
  }
  if (scale_words && lane == 0) {
    scale_words[g] = to_storage(sr, bf16);
    bias_words[g] = to_storage(br, bf16);
  }
  if (!out) return;
  const float cs = codes_from_unrounded ? s_raw : sr, cb = codes_from_unrounded ? b_raw : br;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    float q;
    if (codes_from_unrounded) {
      q = fminf(fmaxf(rintf((x[i] - cb) / cs), 0.0f), nmax);
    } else {
      const float inv = cs != 0.0f ? 1.0f / cs : 0.0f;
      q = static_cast<float>(static_cast<int>(fminf(fmaxf((x[i] - cb) * inv, 0.0f), nmax) + 0.5f));
    }
    const float dq = sr * q + br;
    out[g * kGroup + lane + 32 * i] = error_out ? x[i] - dq : dq;
  }
}

}  // namespace

bool fake_quantize_affine(const float* w, int64_t rows, int64_t cols, int bits, int group, bool bf16, bool search,
                          int grid, int refit_iters, const float* importance, bool error_out, float* out,
                          cudaStream_t s, uint16_t* scale_words, uint16_t* bias_words) {
  if (cols % group != 0 || bits < 1 || bits > 8) return false;
  const int64_t groups = rows * (cols / group), per_row = cols / group;
  if (groups == 0) return true;
  constexpr int kThreads = 256;
  const unsigned blocks = blocks_for(groups * 32, kThreads);
  switch (group) {
    case 32:
      launch(fake_quant_kernel<1>, blocks, kThreads, 0, s, w, groups, per_row, bits, bf16, search, grid, refit_iters,
             importance, error_out, out, scale_words, bias_words);
      break;
    case 64:
      launch(fake_quant_kernel<2>, blocks, kThreads, 0, s, w, groups, per_row, bits, bf16, search, grid, refit_iters,
             importance, error_out, out, scale_words, bias_words);
      break;
    case 128:
      launch(fake_quant_kernel<4>, blocks, kThreads, 0, s, w, groups, per_row, bits, bf16, search, grid, refit_iters,
             importance, error_out, out, scale_words, bias_words);
      break;
    default:
      return false;
  }
  OPTIQ_CUDA_LAUNCHED();
  return true;
}

}  // namespace optiq::cuda

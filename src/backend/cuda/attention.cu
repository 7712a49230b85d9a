// Attention on the GPU.
//  - Decode (a few queries): flash-decoding. The keys a query sees are cut
//    into `splits` ranges; one block per (kv head, range, query) scores its
//    range for all query heads that share the kv head (GQA: K and V are read
//    once for the group), keeps a local max and sum, and writes the partial
//    output; the last block of a range set combines them. The single-pass
//    kernel of fast numerics (decode_online_kernel) takes one query head a
//    block instead (a shorter dependent chain; K/V rows then come from L2 once
//    a head), and loads each batch of keys while the one before is computed,
//    the first before it waits for q where the cache is settled (DevKV). The
//    ranges are computed from the position at run time, so a recorded step
//    (CUDA graph) serves every position.
//  - Prefill: the flash kernel (flash_prefill.cu) where it applies; else
//    scores and the weighted sum of V are cuBLAS GEMMs (cuda_backend.cpp),
//    with attention_softmax the step between them.
#include <cfloat>
#include <climits>
#include <stdexcept>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"

namespace optiq::cuda {
namespace {

constexpr int kDecodeThreads = 128;
constexpr int kMaxSplits = 64;  // key ranges per (query, kv head)
constexpr int kMinKeys = 32;    // keys a range holds at least

__device__ __forceinline__ int first_key(int pos, int window) {
  return window > 0 && pos >= window ? pos - window + 1 : 0;
}

// Range s of the keys a query at pos sees, cut into `splits` ranges of at
// least min_keys keys (short contexts use fewer ranges: `active` hold keys):
// keys [a, b).
struct KeyRange {
  int a, b, active;
};
__device__ __forceinline__ KeyRange key_range(int pos, int window, int splits, int min_keys, int s) {
  const int t0 = first_key(pos, window), len = pos - t0 + 1;
  const int chunk = max((len + splits - 1) / splits, min_keys);
  const int a = t0 + s * chunk;
  return {a, min(pos + 1, a + chunk), (len + chunk - 1) / chunk};
}

__device__ __forceinline__ float capped(float s, float cap) { return cap > 0.0f ? cap * tanhf(s / cap) : s; }

// kD fp16 values as kD / 2 words (half the registers of floats, for rows
// held a while before use), and those words as floats.
template <int kD>
__device__ __forceinline__ void load_half_words(const __half* p, uint32_t (&w)[kD / 2]) {
  if constexpr (kD == 2) {
    w[0] = *reinterpret_cast<const uint32_t*>(p);
  } else if constexpr (kD == 4) {
    const uint2 r = *reinterpret_cast<const uint2*>(p);
    w[0] = r.x, w[1] = r.y;
  } else {
    const uint4 r = *reinterpret_cast<const uint4*>(p);
    w[0] = r.x, w[1] = r.y, w[2] = r.z, w[3] = r.w;
  }
}
template <int kD>
__device__ __forceinline__ void half_words_to_floats(const uint32_t (&w)[kD / 2], float (&v)[kD]) {
#pragma unroll
  for (int h = 0; h < kD / 2; ++h) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[h]));
    v[2 * h] = f.x, v[2 * h + 1] = f.y;
  }
}
// kD consecutive values of a cache row as fp32 (kD = 2, 4 or 8: one load of
// 4 to 32 bytes).
template <class T, int kD>
__device__ __forceinline__ void load_dims(const T* p, float (&v)[kD]) {
  if constexpr (sizeof(T) == 2) {
    uint32_t w[kD / 2];
    load_half_words<kD>(p, w);
    half_words_to_floats<kD>(w, v);
  } else {
#pragma unroll
    for (int h = 0; h < kD / 2; ++h) {
      const float2 f = reinterpret_cast<const float2*>(p)[h];
      v[2 * h] = f.x, v[2 * h + 1] = f.y;
    }
  }
}

// Partial results: for (query i, head h, split s) hd + 2 floats: max, sum, out[hd].
// One range's scores, softmax pieces and weighted values, into `part`.
// Dot products of one key with the kG query heads of its group (q in shared
// memory, kG x hd): a thread per key, the key's row read once.
template <class T, int kG>
__device__ __forceinline__ void key_dots(const float* qs, const T* kt, int hd, float (&d)[kG]) {
#pragma unroll
  for (int j = 0; j < kG; ++j) d[j] = 0.0f;
  if constexpr (sizeof(T) == 2) {
    if (hd % 8 == 0) {  // 16-byte loads
      for (int e = 0; e < hd; e += 8) {
        const uint4 raw = *reinterpret_cast<const uint4*>(kt + e);
        const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[h]));
#pragma unroll
          for (int j = 0; j < kG; ++j)
            d[j] = fmaf(qs[j * hd + e + 2 * h + 1], f.y, fmaf(qs[j * hd + e + 2 * h], f.x, d[j]));
        }
      }
      return;
    }
  }
  for (int e = 0; e < hd; e += 2) {
    float k[2];
    load_dims<T, 2>(kt + e, k);
#pragma unroll
    for (int j = 0; j < kG; ++j) d[j] = fmaf(qs[j * hd + e + 1], k[1], fmaf(qs[j * hd + e], k[0], d[j]));
  }
}

// The warp-per-key layout both decode passes share: a warp has kWarpKeys<kD>
// key rows in flight, each lane kD dimensions of the head (head_dim = 32 kD).
template <int kD>
inline constexpr int kWarpKeys = kD == 8 ? 4 : 8;

// Rows t0.. of kv head g, this lane's dimensions; rows past b - 1 read row
// b - 1 again (in bounds, branch-free; the callers skip them).
template <class T, int kD>
__device__ __forceinline__ void load_warp_rows(const T* __restrict__ cache, const AttentionParams& p, int g, int t0,
                                               int b, float (&rows)[kWarpKeys<kD>][kD]) {
  const T* base = cache + static_cast<int64_t>(g) * (32 * kD) + (threadIdx.x & 31) * kD;
#pragma unroll
  for (int u = 0; u < kWarpKeys<kD>; ++u)
    load_dims<T, kD>(base + static_cast<int64_t>(min(t0 + u, b - 1)) * p.kv_stride, rows[u]);
}

// Scores of keys [a, b) against the kG query heads of a group, a warp per
// key: the lanes hold kD dimensions each (head_dim = 32 kD), so a key's row
// is one coalesced read, and each warp has kKeys rows in flight before it
// sums. (A thread per key walks its row one load at a time: at short
// contexts that chain of memory round trips was most of the step's attention
// time.)
template <class T, int kG, int kD>
__device__ __forceinline__ void scores_by_warp(const AttentionParams& p, const float* qs, const T* __restrict__ kc,
                                               int g, int a, int b, int chunk_cap, float* sc) {
  constexpr int kKeys = kWarpKeys<kD>;
  constexpr int hd = 32 * kD;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = kDecodeThreads / 32;
  float qr[kG][kD];
#pragma unroll
  for (int j = 0; j < kG; ++j)
#pragma unroll
    for (int d = 0; d < kD; ++d) qr[j][d] = qs[j * hd + lane * kD + d];
  for (int t0 = a + warp * kKeys; t0 < b; t0 += warps * kKeys) {
    float kv[kKeys][kD];
    load_warp_rows<T, kD>(kc, p, g, t0, b, kv);
#pragma unroll
    for (int u = 0; u < kKeys; ++u)
#pragma unroll
      for (int j = 0; j < kG; ++j) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < kD; ++e) d = fmaf(qr[j][e], kv[u][e], d);
        d = warp_sum(d);
        if (lane == 0 && t0 + u < b) sc[j * chunk_cap + (t0 + u - a)] = capped(d * p.scale, p.softcap);
      }
  }
}

// Weighted values of keys [a, b) (probabilities in sc) with the same warp per
// key layout as scores_by_warp: every warp's loads in flight together, its
// sums per (head, dimension) into vsum (warps x group x hd) for the block to add.
template <class T, int kG, int kD>
__device__ __forceinline__ void values_by_warp(const AttentionParams& p, const T* __restrict__ vc, int g, int a,
                                               int b, int chunk_cap, const float* sc, float* vsum) {
  constexpr int kKeys = kWarpKeys<kD>;
  constexpr int hd = 32 * kD;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = kDecodeThreads / 32;
  float acc[kG][kD] = {};
  for (int t0 = a + warp * kKeys; t0 < b; t0 += warps * kKeys) {
    float vv[kKeys][kD];
    load_warp_rows<T, kD>(vc, p, g, t0, b, vv);
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      if (t0 + u >= b) break;  // uniform in the warp
#pragma unroll
      for (int j = 0; j < kG; ++j) {
        const float pj = sc[j * chunk_cap + (t0 + u - a)];
#pragma unroll
        for (int e = 0; e < kD; ++e) acc[j][e] = fmaf(pj, vv[u][e], acc[j][e]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kG; ++j)
#pragma unroll
    for (int e = 0; e < kD; ++e) vsum[(warp * kG + j) * hd + lane * kD + e] = acc[j][e];
}

// One range's scores, softmax pieces and weighted values, into `part`. kG:
// query heads per kv head (the group), known at compile time for the common
// ones; 0 = any (one head at a time). Needs an even head_dim.
template <class T, int kG>
__device__ void partial_range(const AttentionParams& p, const float* __restrict__ q, const T* __restrict__ kc,
                              const T* __restrict__ vc, int i, int g, int s, int splits, int a, int b, int chunk_cap,
                              float* qs, float* sc, float* stats, float* part, float* direct) {
  const int group = p.n_heads / p.n_kv_heads, hd = p.head_dim;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = kDecodeThreads / 32;
  for (int idx = tid; idx < group * hd; idx += kDecodeThreads)
    qs[idx] = q[static_cast<int64_t>(i) * p.q_stride + static_cast<int64_t>(g) * group * hd + idx];
  __syncthreads();
  // Scores: a warp per key where the head's width allows, else a thread per key.
  int lane_dims = 0;  // > 0: a warp per key, each lane holding this many dimensions
  if constexpr (kG > 0) {
    const bool aligned = p.kv_stride % 8 == 0;
    if (aligned && hd == 128) lane_dims = 4;
    else if (aligned && hd == 64) lane_dims = 2;
    else if (aligned && hd == 256 && kG <= 4) lane_dims = 8;
    if (lane_dims == 4) scores_by_warp<T, kG, 4>(p, qs, kc, g, a, b, chunk_cap, sc);
    if (lane_dims == 2) scores_by_warp<T, kG, 2>(p, qs, kc, g, a, b, chunk_cap, sc);
    if constexpr (kG <= 4)
      if (lane_dims == 8) scores_by_warp<T, kG, 8>(p, qs, kc, g, a, b, chunk_cap, sc);
  }
  const bool scored = lane_dims > 0;
  for (int t = a + tid; !scored && t < b; t += kDecodeThreads) {
    const T* kt = kc + static_cast<int64_t>(t) * p.kv_stride + static_cast<int64_t>(g) * hd;
    if constexpr (kG > 0) {
      float d[kG];
      key_dots<T, kG>(qs, kt, hd, d);
#pragma unroll
      for (int j = 0; j < kG; ++j) sc[j * chunk_cap + (t - a)] = capped(d[j] * p.scale, p.softcap);
    } else {
      for (int j = 0; j < group; ++j) {
        float d[1];
        key_dots<T, 1>(qs + j * hd, kt, hd, d);
        sc[j * chunk_cap + (t - a)] = capped(d[0] * p.scale, p.softcap);
      }
    }
  }
  __syncthreads();
  // Softmax pieces per head: a warp per head.
  for (int j = warp; j < group; j += warps) {
    float* row = sc + j * chunk_cap;
    float m = -FLT_MAX;
    for (int t = lane; t < b - a; t += 32) m = fmaxf(m, row[t]);
    m = warp_max(m);
    float l = 0.0f;
    for (int t = lane; t < b - a; t += 32) {
      const float e = expf(row[t] - m);
      row[t] = e;
      l += e;
    }
    l = warp_sum(l);
    if (p.f16_probs) {  // one range (the host makes sure): normalise, round like llama.cpp
      const float inv = 1.0f / l;
      for (int t = lane; t < b - a; t += 32) row[t] = round_to_f16(row[t] * inv);
      m = 0.0f;
      l = 1.0f;
    }
    if (lane == 0) stats[2 * j] = m, stats[2 * j + 1] = l;
  }
  __syncthreads();
  // Weighted values: the warps split the keys (each key's row read by one
  // warp, its lanes across pairs of dimensions, eight keys' loads in flight),
  // then the warps' partial sums meet in shared memory.
  constexpr int kHeads = kG > 0 ? kG : 1;
  constexpr int kPairs = 4;  // pairs of dimensions a lane holds: head_dim <= 256
  float* vsum = stats + 2 * group + group * kMaxSplits;  // warps x group x hd
  for (int jb = 0; jb < group; jb += kHeads) {
    if constexpr (kG > 0) {
      if (lane_dims == 4) values_by_warp<T, kG, 4>(p, vc, g, a, b, chunk_cap, sc, vsum);
      if (lane_dims == 2) values_by_warp<T, kG, 2>(p, vc, g, a, b, chunk_cap, sc, vsum);
      if constexpr (kG <= 4)
        if (lane_dims == 8) values_by_warp<T, kG, 8>(p, vc, g, a, b, chunk_cap, sc, vsum);
    }
    if (!scored) {
      float acc[kHeads][kPairs][2] = {};
      const T* vbase = vc + static_cast<int64_t>(a) * p.kv_stride + static_cast<int64_t>(g) * hd;
#pragma unroll 8
      for (int t = warp; t < b - a; t += warps) {
        const T* vt = vbase + static_cast<int64_t>(t) * p.kv_stride;
#pragma unroll
        for (int m = 0; m < kPairs; ++m) {
          const int e = 2 * (lane + 32 * m);
          if (e >= hd) break;
          float v[2];
          load_dims<T, 2>(vt + e, v);
#pragma unroll
          for (int j = 0; j < kHeads; ++j) {
            const float pj = sc[(jb + j) * chunk_cap + t];
            acc[j][m][0] = fmaf(pj, v[0], acc[j][m][0]);
            acc[j][m][1] = fmaf(pj, v[1], acc[j][m][1]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < kPairs; ++m) {
        const int e = 2 * (lane + 32 * m);
        if (e >= hd) break;
#pragma unroll
        for (int j = 0; j < kHeads; ++j) {
          float* d = vsum + (static_cast<int64_t>(warp) * group + jb + j) * hd + e;
          d[0] = acc[j][m][0], d[1] = acc[j][m][1];
        }
      }
    }
    __syncthreads();
    for (int idx = tid; idx < kHeads * hd; idx += kDecodeThreads) {
      const int j = jb + idx / hd, e = idx % hd;
      float total = 0.0f;
      for (int w = 0; w < warps; ++w) total += vsum[(static_cast<int64_t>(w) * group + j) * hd + e];
      if (direct) {  // normalised output of head j
        direct[static_cast<int64_t>(j) * hd + e] = total / stats[2 * j + 1];
        continue;
      }
      float* o = part + (static_cast<int64_t>(j) * splits + s) * (hd + 2);
      o[2 + e] = total;
      if (e == 0) o[0] = stats[2 * j], o[1] = stats[2 * j + 1];
    }
    __syncthreads();
  }
}



// Flash-decoding's second step without a second launch: this block's range
// is published in `part` (per head of the group: max, sum, hd values, one
// slot per range); the last block of the (query, kv head) to finish combines
// the `active` ranges into `out` (the group's heads, hd floats each) and puts
// the counter back to 0 for the next call (and the next graph replay).
// `weight`: shared memory, group x kMaxSplits floats.
// With int8.q, also the output's int8 blocks; `flat0`: the index of out[0] in
// the query rows (q_stride each) that the blocks number.
__device__ void publish_and_combine(const AttentionParams& p, const float* part, int active, int splits,
                                    int* counter, float* out, float* weight, Int8Out int8 = {}, int64_t flat0 = 0,
                                    int heads = 0) {
  // heads: the query heads this block's ranges hold (0: the kv head's group).
  const int group = heads > 0 ? heads : p.n_heads / p.n_kv_heads, hd = p.head_dim;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x / 32;
  __shared__ int last;
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(counter, 1) == active - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int j = warp; j < group; j += warps) {
    const float* pj = part + static_cast<int64_t>(j) * splits * (hd + 2);
    float m_s[2], l_s[2];
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int sp = lane + 32 * t;
      m_s[t] = sp < active ? __ldcg(pj + sp * (hd + 2)) : -FLT_MAX;
      l_s[t] = sp < active ? __ldcg(pj + sp * (hd + 2) + 1) : 0.0f;
    }
    const float m = warp_max(fmaxf(m_s[0], m_s[1]));
    float e[2], l = 0.0f;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      e[t] = l_s[t] > 0.0f ? expf(m_s[t] - m) : 0.0f;
      l += l_s[t] * e[t];
    }
    l = warp_sum(l);
#pragma unroll
    for (int t = 0; t < 2; ++t)
      if (lane + 32 * t < active) weight[j * kMaxSplits + lane + 32 * t] = e[t] / l;
  }
  __syncthreads();
  for (int idx = tid; idx < group * hd; idx += blockDim.x) {
    const int j = idx / hd, e = idx % hd;
    const float* pj = part + static_cast<int64_t>(j) * splits * (hd + 2) + 2 + e;
    // Sixteen ranges' loads in flight at a time (a loop with a run-time bound
    // would wait for each load in turn; at 64 ranges, eight at a time made
    // this one block's work most of the kernel's time).
    float acc = 0.0f;
    for (int k0 = 0; k0 < active; k0 += 16) {
      float v[16];
#pragma unroll
      for (int u = 0; u < 16; ++u) v[u] = k0 + u < active ? __ldcg(pj + (k0 + u) * (hd + 2)) : 0.0f;
#pragma unroll
      for (int u = 0; u < 16; ++u)
        if (k0 + u < active) acc = fmaf(v[u], weight[j * kMaxSplits + k0 + u], acc);
    }
    out[static_cast<int64_t>(j) * hd + e] = acc;
    // A warp holds 32 consecutive values of one head (head_dim % 32 == 0, a
    // multiple-of-32 block): one int8 block.
    if (int8.q) int8_block(acc, (flat0 + static_cast<int64_t>(j) * hd + e) / 32, int8.q, int8.scale, int8.sum);
  }
  if (tid == 0) *counter = 0;
}

// The last block of a (query, kv head) to finish combines the ranges' partial
// softmaxes (flash-decoding's second step, without a second launch); the
// counter goes back to 0 for the next call (and the next graph replay).
template <class T, int kG>
__global__ void __launch_bounds__(kDecodeThreads)
    decode_kernel(AttentionParams p, const float* __restrict__ q, DevPos pos0, const T* __restrict__ kc,
                  const T* __restrict__ vc, int splits, int chunk_cap, float* __restrict__ partial, int* counters,
                  float* __restrict__ out) {
  pdl_trigger();
  pdl_wait();
  extern __shared__ float smem[];
  const int g = blockIdx.x, s = blockIdx.y, i = blockIdx.z;
  const int group = p.n_heads / p.n_kv_heads, hd = p.head_dim;
  float* qs = smem;                      // group x hd
  float* sc = qs + group * hd;           // group x chunk_cap
  float* stats = sc + group * chunk_cap; // group x 2: max, sum
  float* weight = stats + 2 * group;     // group x kMaxSplits: the combine's weights
  const int pos = (pos0.dev ? *pos0.dev : 0) + pos0.offset + i;
  // At least kMinKeys keys a range: short contexts use fewer ranges (the rest
  // return at once), long ones all of them.
  const auto [a, b, active] = key_range(pos, p.window, splits, kMinKeys, s);
  float* part = partial + (static_cast<int64_t>(i) * p.n_heads + static_cast<int64_t>(g) * group) * splits * (hd + 2);
  if (s >= active) return;  // no keys here; the combine reads only the active ranges
  // One range (short contexts): the block's result is the answer.
  float* direct = active == 1 ? out + static_cast<int64_t>(i) * p.q_stride + static_cast<int64_t>(g) * group * hd : nullptr;
  partial_range<T, kG>(p, q, kc, vc, i, g, s, splits, a, b, chunk_cap, qs, sc, stats, part, direct);
  if (direct) return;
  publish_and_combine(p, part, active, splits, counters + static_cast<int64_t>(i) * p.n_kv_heads + g,
                      out + static_cast<int64_t>(i) * p.q_stride + static_cast<int64_t>(g) * group * hd, weight);
}

// Keys a warp has in flight in the single-pass kernel (registers: K and V
// rows, kG scores each).
template <int kG, int kD>
inline constexpr int kOnlineKeys = kD == 8 ? 2 : 4;
// Warps of the single-pass kernel: with one or two warps a scheduler, each
// instruction waits out its predecessor's latency (ncu: 8 cycles an
// instruction at 4 warps a block), so a block brings 8.
constexpr int kOnlineThreads = 256;

// Single pass (fast numerics: fp16 cache, probabilities in fp32; head_dim =
// 32 kD): a warp per key with its lanes across the head, kOnlineKeys keys' K
// and V rows loaded together, the softmax online (running max, sum and
// weighted values per head in registers); the block's warps meet in shared
// memory, the ranges in publish_and_combine. The two-pass kernel above waits
// on memory three times in a row (keys, then softmax, then values), and its
// one body for every layout (17k instructions) spent much of its time on
// instruction-cache misses (ncu on the H200: no-instruction stalls 31%).
// RoPE of one head's values held kD a lane (lane l: dimensions kD l..): the
// partner of dimension i < hd/2 is i + hd/2, kD * 16 dimensions on, in lane
// l ^ 16; the arithmetic is rope_kv_store's, so the results agree bit for bit.
// The angles depend on the position and the dimension only: rope_angles
// once, rope_lane for every head of q and for the key.
template <int kD>
struct RopeAngles {
  float cs[kD], sn[kD];
};
// The frequencies of a lane's dimensions (constant: loaded before pdl_wait).
template <int kD>
__device__ __forceinline__ void lane_freqs(const float* __restrict__ inv_freq, int lane, float (&f)[kD]) {
#pragma unroll
  for (int e = 0; e < kD; ++e) f[e] = __ldg(inv_freq + (lane & 15) * kD + e);  // index in the first half
}
template <int kD>
__device__ __forceinline__ RopeAngles<kD> rope_angles(int pos, const float (&freq)[kD], float mscale) {
  RopeAngles<kD> r;
#pragma unroll
  for (int e = 0; e < kD; ++e) {
    sincosf(__fmul_rn(static_cast<float>(pos), freq[e]), &r.sn[e], &r.cs[e]);
    r.cs[e] = __fmul_rn(r.cs[e], mscale);
    r.sn[e] = __fmul_rn(r.sn[e], mscale);
  }
  return r;
}
template <int kD>
__device__ __forceinline__ void rope_lane(float (&x)[kD], const RopeAngles<kD>& r, int lane) {
  const bool low = lane < 16;
#pragma unroll
  for (int e = 0; e < kD; ++e) {
    const float other = __shfl_xor_sync(0xffffffffu, x[e], 16);
    const float a = low ? x[e] : other, b = low ? other : x[e];
    x[e] = low ? __fsub_rn(__fmul_rn(a, r.cs[e]), __fmul_rn(b, r.sn[e]))
               : __fadd_rn(__fmul_rn(a, r.sn[e]), __fmul_rn(b, r.cs[e]));
  }
}

template <int kG, int kD, bool kPipe>
__global__ void __launch_bounds__(kOnlineThreads)
    decode_online_kernel(AttentionParams p, const float* __restrict__ q, DevPos pos0, __half* kc, __half* vc,
                         int splits, int min_keys, int blocks_per_group, float* __restrict__ partial,
                         int* counters, float* __restrict__ out, Int8Out int8, RopeIn rope,
                         const __grid_constant__ L2Prefetch pf) {
  constexpr int kKeys = kOnlineKeys<kG, kD>, hd = 32 * kD, kWarps = kOnlineThreads / 32;
  pdl_trigger();
  if (!pf.after_wait) l2_prefetch(pf);  // the next product's weights (constant: may go before the wait)
  __shared__ float red[kWarps][kG][hd + 2];
  __shared__ float weight[kG * kMaxSplits];
  __shared__ float new_kv[2][hd];  // the new token's key (rotated) and value, rounded to the cache's fp16
  // blockIdx.x: kv head g and which kG of its group's query heads (blocks_per_group
  // blocks a kv head: more, shorter blocks at the price of K/V read once each from L2).
  const int g = blockIdx.x / blocks_per_group, s = blockIdx.y, i = blockIdx.z;
  const int h0 = g * (p.n_heads / p.n_kv_heads) + (blockIdx.x % blocks_per_group) * kG;  // first query head
  const bool owner = blockIdx.x % blocks_per_group == 0;  // stores the new key and value
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float freq[kD];
  if (rope.k) lane_freqs<kD>(rope.inv_freq, lane, freq);  // constant: before the wait
  const __half* kbase = kc + static_cast<int64_t>(g) * hd + lane * kD;  // plain loads: this block may have just
  const __half* vbase = vc + static_cast<int64_t>(g) * hd + lane * kD;  // stored the newest row
  // kPipe (the cache is DevKV::settled): each batch of a warp's keys is
  // loaded while the one before is computed (kw/vw, fp16 words), the first
  // one's rows before the step's position before the wait, overlapping the
  // q/k/v product still running. The position is a step input (written by a
  // copy, never by a kernel); the range as below.
  uint32_t kw[kKeys][kD / 2], vw[kKeys][kD / 2];
  int early_end = INT_MIN;  // the first batch's rows before it are in kw/vw
  if constexpr (kPipe) {
    const int pos = (pos0.dev ? *pos0.dev : 0) + pos0.offset + i;
    const auto [a, b, active] = key_range(pos, p.window, splits, min_keys, s);  // as below
    const int tw = a + warp * kKeys;
    early_end = pos - i;
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      const int key = min(tw + u, b - 1);
      if (tw < b && key < early_end) {
        load_half_words<kD>(kbase + static_cast<int64_t>(key) * p.kv_stride, kw[u]);
        load_half_words<kD>(vbase + static_cast<int64_t>(key) * p.kv_stride, vw[u]);
      }
    }
  }
  pdl_wait();
  if (pf.after_wait) l2_prefetch(pf);
  // The position, this block's queries and (warp 0) the new key and value
  // are all loaded before any of them is used: one trip to memory, not three.
  const int pos = (pos0.dev ? *pos0.dev : 0) + pos0.offset + i;
  float qr[kG][kD];
  const float* qb = q + static_cast<int64_t>(i) * p.q_stride + static_cast<int64_t>(h0) * hd + lane * kD;
#pragma unroll
  for (int j = 0; j < kG; ++j)
#pragma unroll
    for (int d = 0; d < kD; ++d) qr[j][d] = qb[j * hd + d];
  const int64_t kv_off = static_cast<int64_t>(g) * hd + lane * kD;
  float knew[kD], vnew[kD];
  if (rope.k && warp == 0)
#pragma unroll
    for (int e = 0; e < kD; ++e) knew[e] = rope.k[kv_off + e], vnew[e] = rope.v[kv_off + e];
  const auto [a, b, active] = key_range(pos, p.window, splits, min_keys, s);
  if (s >= active) return;
  const bool stores_new = rope.k && s == active - 1;  // block-uniform
  RopeAngles<kD> angles;
  if (rope.k) angles = rope_angles<kD>(pos, freq, rope.mscale);
  if (stores_new && warp == 0) {
    // The new token (one query: i == 0): its key rotated, key and value into
    // the cache, by the (first) block whose range ends at it; the blocks of that
    // range take them from shared memory (another block of the kv head may not
    // have stored them yet), as the cache will hold them.
    rope_lane<kD>(knew, angles, lane);
    const int64_t row = static_cast<int64_t>(pos) * p.kv_stride + kv_off;
#pragma unroll
    for (int e = 0; e < kD; ++e) {
      const __half kh = __float2half_rn(knew[e]), vh = __float2half_rn(vnew[e]);
      if (owner) kc[row + e] = kh, vc[row + e] = vh;
      new_kv[0][lane * kD + e] = __half2float(kh), new_kv[1][lane * kD + e] = __half2float(vh);
    }
  }
#pragma unroll
  for (int j = 0; j < kG; ++j) {
    if (rope.k) rope_lane<kD>(qr[j], angles, lane);
#pragma unroll
    for (int d = 0; d < kD; ++d) qr[j][d] *= p.scale;
  }
  if (stores_new) __syncthreads();  // the new key and value in new_kv before any warp reads them
  float m[kG], l[kG], acc[kG][kD];
#pragma unroll
  for (int j = 0; j < kG; ++j) {
    m[j] = -FLT_MAX, l[j] = 0.0f;
#pragma unroll
    for (int d = 0; d < kD; ++d) acc[j][d] = 0.0f;
  }
  // The online softmax's update by the batch from tw on.
  auto update = [&](int tw, float (&kr)[kKeys][kD], float (&vr)[kKeys][kD]) {
    if (stores_new) {  // the newest row from shared memory (block-uniform branch, after the loads)
      // Slots past the range read row b - 1 = pos too: they weigh 0, but a
      // row another block has not stored yet may hold NaN or Inf bits, and
      // 0 * NaN poisons the sum (the GPU test caught it about one run in five).
#pragma unroll
      for (int u = 0; u < kKeys; ++u)
        if (tw + u >= pos)
#pragma unroll
          for (int e = 0; e < kD; ++e) kr[u][e] = new_kv[0][lane * kD + e], vr[u][e] = new_kv[1][lane * kD + e];
    }
    float sc[kKeys][kG];
#pragma unroll
    for (int u = 0; u < kKeys; ++u)
#pragma unroll
      for (int j = 0; j < kG; ++j) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < kD; ++e) d = fmaf(qr[j][e], kr[u][e], d);
        sc[u][j] = tw + u < b ? capped(warp_sum(d), p.softcap) : -FLT_MAX;
      }
#pragma unroll
    for (int j = 0; j < kG; ++j) {
      float mx = m[j];
#pragma unroll
      for (int u = 0; u < kKeys; ++u) mx = fmaxf(mx, sc[u][j]);
      const float corr = expf(m[j] - mx);  // 0 on the first batch (m = -FLT_MAX), 1 when the max stays
      l[j] *= corr;
#pragma unroll
      for (int e = 0; e < kD; ++e) acc[j][e] *= corr;
#pragma unroll
      for (int u = 0; u < kKeys; ++u) {
        const float pu = tw + u < b ? expf(sc[u][j] - mx) : 0.0f;
        l[j] += pu;
#pragma unroll
        for (int e = 0; e < kD; ++e) acc[j][e] = fmaf(pu, vr[u][e], acc[j][e]);
      }
      m[j] = mx;
    }
  };
  int tw = a + warp * kKeys;
  if constexpr (kPipe) {
    if (tw < b) {
#pragma unroll
      for (int u = 0; u < kKeys; ++u) {
        const int key = min(tw + u, b - 1);
        if (key >= early_end) {
          load_half_words<kD>(kbase + static_cast<int64_t>(key) * p.kv_stride, kw[u]);
          load_half_words<kD>(vbase + static_cast<int64_t>(key) * p.kv_stride, vw[u]);
        }
      }
      for (;;) {
        float kr[kKeys][kD], vr[kKeys][kD];
#pragma unroll
        for (int u = 0; u < kKeys; ++u) half_words_to_floats<kD>(kw[u], kr[u]), half_words_to_floats<kD>(vw[u], vr[u]);
        const int next = tw + kWarps * kKeys;
        if (next < b)
#pragma unroll
          for (int u = 0; u < kKeys; ++u) {
            const int64_t row = static_cast<int64_t>(min(next + u, b - 1)) * p.kv_stride;
            load_half_words<kD>(kbase + row, kw[u]);
            load_half_words<kD>(vbase + row, vw[u]);
          }
        update(tw, kr, vr);
        if (next >= b) break;
        tw = next;
      }
    }
  } else {
    for (; tw < b; tw += kWarps * kKeys) {
      float kr[kKeys][kD], vr[kKeys][kD];
#pragma unroll
      for (int u = 0; u < kKeys; ++u) {
        const int64_t row = static_cast<int64_t>(min(tw + u, b - 1)) * p.kv_stride;  // in bounds; skipped below
        load_dims<__half, kD>(kbase + row, kr[u]);
        load_dims<__half, kD>(vbase + row, vr[u]);
      }
      update(tw, kr, vr);
    }
  }
#pragma unroll
  for (int j = 0; j < kG; ++j) {
#pragma unroll
    for (int e = 0; e < kD; ++e) red[warp][j][2 + lane * kD + e] = acc[j][e];
    if (lane == 0) red[warp][j][0] = m[j], red[warp][j][1] = l[j];
  }
  __syncthreads();
  float* part = partial + ((static_cast<int64_t>(i) * p.n_heads + h0) * splits) * (hd + 2);
  const int64_t flat0 = static_cast<int64_t>(i) * p.q_stride + static_cast<int64_t>(h0) * hd;
  float* head_out = out + flat0;
  for (int idx = threadIdx.x; idx < kG * hd; idx += kOnlineThreads) {
    const int j = idx / hd, e = idx % hd;
    float M = -FLT_MAX;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, red[w][j][0]);
    float L = 0.0f, O = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = red[w][j][1] > 0.0f ? expf(red[w][j][0] - M) : 0.0f;  // a warp with no keys adds nothing
      L = fmaf(red[w][j][1], f, L);
      O = fmaf(red[w][j][2 + e], f, O);
    }
    if (active == 1) {
      const float v = O / L;
      head_out[static_cast<int64_t>(j) * hd + e] = v;
      // Whole warps over 32 consecutive values of a head: one int8 block of the o product's input.
      if (int8.q) int8_block(v, (flat0 + static_cast<int64_t>(j) * hd + e) / 32, int8.q, int8.scale, int8.sum);
    } else {
      float* o = part + (static_cast<int64_t>(j) * splits + s) * (hd + 2);
      o[2 + e] = O;
      if (e == 0) o[0] = M, o[1] = L;
    }
  }
  if (active == 1) return;
  publish_and_combine(p, part, active, splits,
                      counters + static_cast<int64_t>(i) * p.n_kv_heads * blocks_per_group + blockIdx.x, head_out,
                      weight, int8, flat0, kG);
}

// One block per (head, query) row of scores: keys 0..pos0+i are in the row;
// those before the window and after the query become 0.
__global__ void softmax_kernel(AttentionParams p, float* S, int64_t n, int64_t ld, int pos0, __half* p16) {
  pdl_trigger();
  pdl_wait();
  __shared__ float red[32];
  const int64_t row = blockIdx.x;  // h * n + i
  const int i = static_cast<int>(row % n);
  const int pos = pos0 + i, t0 = first_key(pos, p.window);
  float* sr = S + row * ld;
  const int64_t T = pos0 + n;
  float m = -FLT_MAX;
  for (int64_t t = t0 + threadIdx.x; t <= pos; t += blockDim.x) {
    const float v = capped(sr[t] * p.scale, p.softcap);
    sr[t] = v;
    m = fmaxf(m, v);
  }
  // Block max: every warp reduces the per-warp maxima itself.
  m = warp_max(m);
  const int lane = threadIdx.x & 31;
  if (lane == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  m = lane < static_cast<int>(blockDim.x >> 5) ? red[lane] : -FLT_MAX;
  m = warp_max(m);
  __syncthreads();
  float l = 0.0f;
  for (int64_t t = t0 + threadIdx.x; t <= pos; t += blockDim.x) {
    const float e = expf(sr[t] - m);
    sr[t] = e;
    l += e;
  }
  l = block_sum(l, red);
  const float inv = 1.0f / l;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    float v = (t >= t0 && t <= pos) ? sr[t] * inv : 0.0f;
    if (p.f16_probs) v = round_to_f16(v);
    if (p16)
      p16[row * ld + t] = __float2half_rn(v);
    else
      sr[t] = v;
  }
}

__global__ void prefill_pointers_kernel(PrefillHeads a, void** out) {
  const int h = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (h >= a.n_heads) return;
  const int H = a.n_heads;
  const int64_t kv_off = static_cast<int64_t>(h / a.group) * a.head_dim * a.esz;
  // (cuBLAS takes the read-only operands' arrays as const void* const[] too)
  auto bytes = [](const void* p, int64_t off) { return const_cast<char*>(static_cast<const char*>(p)) + off; };
  out[h] = bytes(a.k, kv_off);
  out[H + h] = bytes(a.q, static_cast<int64_t>(h) * a.head_dim * a.esz);
  out[2 * H + h] = a.scores + h * a.head_scores;
  out[3 * H + h] = bytes(a.v, kv_off);
  out[4 * H + h] = bytes(a.probs, h * a.head_scores * a.esz);
  out[5 * H + h] = a.out + static_cast<int64_t>(h) * a.head_dim;
}

}  // namespace

int64_t attention_decode_partial_floats(const AttentionParams& p, int n, int splits) {
  return static_cast<int64_t>(n) * p.n_heads * splits * (p.head_dim + 2);
}

namespace {
template <class T, int kG>
void launch_decode(const AttentionParams& p, const float* q, int n, DevPos pos0, const DevKV& c, int splits,
                   float* partial, int* counters, float* out, cudaStream_t s) {
  const int group = p.n_heads / p.n_kv_heads;
  const int chunk_cap = max((p.max_ctx + splits - 1) / splits, kMinKeys);
  const size_t smem = attention_decode_smem(p, splits);
  if (smem > 48 * 1024)
    OPTIQ_CUDA_OK(cudaFuncSetAttribute(decode_kernel<T, kG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  (void)group;
  launch(decode_kernel<T, kG>, dim3(p.n_kv_heads, splits, n), kDecodeThreads, smem, s, 
      p, q, pos0, static_cast<const T*>(c.k), static_cast<const T*>(c.v), splits, chunk_cap, partial, counters, out);
}

template <class T>
void decode_for(const AttentionParams& p, const float* q, int n, DevPos pos0, const DevKV& c, int splits,
                float* partial, int* counters, float* out, cudaStream_t s) {
  switch (p.n_heads / p.n_kv_heads) {
    case 1: launch_decode<T, 1>(p, q, n, pos0, c, splits, partial, counters, out, s); break;
    case 2: launch_decode<T, 2>(p, q, n, pos0, c, splits, partial, counters, out, s); break;
    case 3: launch_decode<T, 3>(p, q, n, pos0, c, splits, partial, counters, out, s); break;
    case 4: launch_decode<T, 4>(p, q, n, pos0, c, splits, partial, counters, out, s); break;
    case 5: launch_decode<T, 5>(p, q, n, pos0, c, splits, partial, counters, out, s); break;
    case 6: launch_decode<T, 6>(p, q, n, pos0, c, splits, partial, counters, out, s); break;
    case 7: launch_decode<T, 7>(p, q, n, pos0, c, splits, partial, counters, out, s); break;
    case 8: launch_decode<T, 8>(p, q, n, pos0, c, splits, partial, counters, out, s); break;
    default: launch_decode<T, 0>(p, q, n, pos0, c, splits, partial, counters, out, s); break;
  }
}
}  // namespace

size_t attention_decode_smem(const AttentionParams& p, int splits) {
  const size_t group = static_cast<size_t>(p.n_heads / p.n_kv_heads);
  const size_t chunk_cap = static_cast<size_t>(max((p.max_ctx + splits - 1) / splits, kMinKeys));
  return sizeof(float) * (group * (p.head_dim + chunk_cap + 2 + kMaxSplits) +
                          static_cast<size_t>(kDecodeThreads / 32) * group * p.head_dim);
}

namespace {
// Keys a range of the single-pass kernel holds at least (kMinKeys;
// OPTIQ_CUDA_ATTN_MIN_KEYS=N for A/B runs: fewer, longer ranges at short
// contexts trade the ranges' combine for more keys a warp).
int online_min_keys() {
  static const int v = [] {
    const long long n = env_int("OPTIQ_CUDA_ATTN_MIN_KEYS", 0);
    return n > 0 ? static_cast<int>(n) : kMinKeys;
  }();
  return v;
}
// A block per query head, not per kv head: ncu showed the kernel as a
// dependent chain of a few blocks (each warp reducing its keys against every
// head of the group, 106 registers); a block per head is a quarter of that
// chain at 64 registers, for K/V rows read once per head from L2. H100, q4
// decode: Llama-3-8B (groups of 4) +5% at ctx 128, +2% at 4096; Qwen2.5-7B
// (groups of 7) +9% and +18% (BENCHMARKS.md §6).
// OPTIQ_CUDA_ATTN_SPLIT_HEADS=0: a block per kv head again (A/B runs).
bool online_split_heads() {
  static const bool on = env_switch("OPTIQ_CUDA_ATTN_SPLIT_HEADS", true);
  return on;
}

// The per-query-head kernel on a settled cache loads each batch of keys
// while the one before is computed, the first before it waits for q. H100,
// decode at 4096 tokens: Llama-3-8B q4 361 -> 376 tok/s, Qwen2.5-7B 387 ->
// 400; at 128 tokens unchanged (BENCHMARKS.md §6). The early loads alone
// (the first batch only) gained nothing. OPTIQ_CUDA_ATTN_PIPE=0 for A/B runs.
bool online_pipelined(const DevKV& c) {
  static const bool on = env_switch("OPTIQ_CUDA_ATTN_PIPE", true);
  return on && c.settled;
}

template <int kD>
bool launch_online(const AttentionParams& p, const float* q, int n, DevPos pos0, const DevKV& c, int splits,
                   float* partial, int* counters, float* out, cudaStream_t s, Int8Out int8, RopeIn rope,
                   const L2Prefetch& pf) {
  const int min_keys = online_min_keys();
  auto* k = static_cast<__half*>(c.k);
  auto* v = static_cast<__half*>(c.v);
  const int group = p.n_heads / p.n_kv_heads;
  if (group > 1 && online_split_heads()) {
    const dim3 grid(p.n_heads, splits, n);
    if (online_pipelined(c))
      launch(decode_online_kernel<1, kD, true>, grid, kOnlineThreads, 0, s, p, q, pos0, k, v, splits, min_keys, group,
             partial, counters, out, int8, rope, pf);
    else
      launch(decode_online_kernel<1, kD, false>, grid, kOnlineThreads, 0, s, p, q, pos0, k, v, splits, min_keys, group,
             partial, counters, out, int8, rope, pf);
    return true;
  }
  const dim3 grid(p.n_kv_heads, splits, n);
#define OPTIQ_ONLINE(G) \
  case G: launch(decode_online_kernel<G, kD, false>, grid, kOnlineThreads, 0, s, p, q, pos0, k, v, splits, min_keys, 1, partial, counters, out, int8, rope, pf); return true;
  switch (group) {
    OPTIQ_ONLINE(1)
    OPTIQ_ONLINE(2)
    OPTIQ_ONLINE(3)
    OPTIQ_ONLINE(4)
    default: break;
  }
  if constexpr (kD < 8) {
    switch (p.n_heads / p.n_kv_heads) {
      OPTIQ_ONLINE(5)
      OPTIQ_ONLINE(6)
      OPTIQ_ONLINE(7)
      OPTIQ_ONLINE(8)
      default: break;
    }
  }
#undef OPTIQ_ONLINE
  return false;
}

// The single-pass kernel when it applies: fp16 cache, probabilities not
// rounded to fp16 (llama.cpp numerics normalise them first), head_dim 64, 128
// or 256 with rows aligned for its vector loads, groups up to 8 (4 at 256).
bool online_applies(const AttentionParams& p, const DevKV& c, int splits) {
  const int group = p.n_kv_heads > 0 ? p.n_heads / p.n_kv_heads : 0;
  const bool widths = p.head_dim == 64 || p.head_dim == 128 || (p.head_dim == 256 && group <= 4);
  return c.half && !p.f16_probs && p.kv_stride % 8 == 0 && splits <= kMaxSplits && widths && group >= 1 &&
         group <= 8 && p.n_heads % p.n_kv_heads == 0;
}

bool attention_decode_online(const AttentionParams& p, const float* q, int n, DevPos pos0, const DevKV& c, int splits,
                             float* partial, int* counters, float* out, cudaStream_t s, Int8Out int8,
                             RopeIn rope, const L2Prefetch& pf) {
  if (!online_applies(p, c, splits)) return false;
  switch (p.head_dim) {
    case 64: return launch_online<2>(p, q, n, pos0, c, splits, partial, counters, out, s, int8, rope, pf);
    case 128: return launch_online<4>(p, q, n, pos0, c, splits, partial, counters, out, s, int8, rope, pf);
    case 256: return launch_online<8>(p, q, n, pos0, c, splits, partial, counters, out, s, int8, rope, pf);
    default: return false;
  }
}
}  // namespace

bool attention_decode_single_pass(const AttentionParams& p, const DevKV& c, int splits) {
  return online_applies(p, c, splits);
}

bool attention_decode_per_query_head(const AttentionParams& p, const DevKV& c) {
  const int group = p.n_kv_heads > 0 ? p.n_heads / p.n_kv_heads : 0;
  return group > 1 && online_split_heads() && online_applies(p, c, 1);
}

int attention_decode_blocks_per_sm(const AttentionParams& p, const DevKV& c) {
  if (!attention_decode_per_query_head(p, c)) return 0;
  const int pipe = online_pipelined(c) ? 1 : 0;
  // cudaOccupancy... once a kernel (a driver query; this runs at every direct launch)
  static int cached[3][2] = {};
  const int d = p.head_dim == 64 ? 0 : p.head_dim == 128 ? 1 : 2;
  int& v = cached[d][pipe];
  if (v == 0) {
    const void* kernels[3][2] = {
        {reinterpret_cast<const void*>(decode_online_kernel<1, 2, false>),
         reinterpret_cast<const void*>(decode_online_kernel<1, 2, true>)},
        {reinterpret_cast<const void*>(decode_online_kernel<1, 4, false>),
         reinterpret_cast<const void*>(decode_online_kernel<1, 4, true>)},
        {reinterpret_cast<const void*>(decode_online_kernel<1, 8, false>),
         reinterpret_cast<const void*>(decode_online_kernel<1, 8, true>)}};
    int blocks = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernels[d][pipe], kOnlineThreads, 0),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor", __FILE__, __LINE__);
    v = blocks;
  }
  return v;
}

bool attention_decode_rope_applies(const AttentionParams& p, int n, const DevKV& c, int splits, int rot_dim) {
  return n == 1 && rot_dim == p.head_dim && online_applies(p, c, splits);
}

bool attention_decode_rope(const AttentionParams& p, const float* q, DevPos pos0, const DevKV& c, int splits,
                           float* partial, int* counters, float* out, cudaStream_t s, Int8Out int8, RopeIn rope,
                           const L2Prefetch& pf) {
  if (!attention_decode_rope_applies(p, 1, c, splits, p.head_dim) || !rope.k || !rope.v || !rope.inv_freq)
    throw std::logic_error("cuda: decode attention with RoPE called where it does not apply");
  attention_decode_online(p, q, 1, pos0, c, splits, partial, counters, out, s, int8, rope, pf);
  OPTIQ_CUDA_LAUNCHED();
  return int8.q != nullptr;
}

bool attention_decode(const AttentionParams& p, const float* q, int n, DevPos pos0, const DevKV& c, int splits,
                      float* partial, int* counters, float* out, cudaStream_t s, Int8Out int8,
                      const L2Prefetch& pf) {
  if (n <= 0) return false;
  if (attention_decode_online(p, q, n, pos0, c, splits, partial, counters, out, s, int8, {}, pf)) {
    OPTIQ_CUDA_LAUNCHED();
    return int8.q != nullptr;
  }
  if (c.half)
    decode_for<__half>(p, q, n, pos0, c, splits, partial, counters, out, s);
  else
    decode_for<float>(p, q, n, pos0, c, splits, partial, counters, out, s);
  OPTIQ_CUDA_LAUNCHED();
  return false;
}

void attention_prefill_pointers(const PrefillHeads& a, void** out, cudaStream_t s) {
  persistent_flush(s);
  prefill_pointers_kernel<<<blocks_for(a.n_heads, 128), 128, 0, s>>>(a, out);
  OPTIQ_CUDA_LAUNCHED();
}

void attention_softmax(const AttentionParams& p, float* S, int64_t n, int64_t ld, int pos0, __half* p16,
                       cudaStream_t s) {
  if (n <= 0) return;
  launch(softmax_kernel, static_cast<unsigned>(n * p.n_heads), 256, 0, s, p, S, n, ld, pos0, p16);
  OPTIQ_CUDA_LAUNCHED();
}

}  // namespace optiq::cuda

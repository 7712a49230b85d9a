#include "kernels/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "core/cpu_features.h"
#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "kernels/act_quant.h"
#include "kernels/half_matvec.h"
#include "kernels/int8_gemm.h"
#include "kernels/kernels_impl.h"

namespace optiq {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    case Isa::Avx512:
      return isa_supported(Isa::Avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
}

namespace {

Isa best_supported(Isa want) {
  for (int i = static_cast<int>(want); i > 0; --i)
    if (isa_supported(static_cast<Isa>(i))) return static_cast<Isa>(i);
  return Isa::Scalar;
}

std::atomic<int> g_avx_vnni{-1};  // -1: not decided yet

Isa initial_isa() {
  Isa want = Isa::Avx512;
  if (const char* e = std::getenv("OPTIQ_ISA")) {
    std::string_view s(e);
    if (s == "scalar") want = Isa::Scalar;
    else if (s == "avx2") want = Isa::Avx2;
    else if (s == "avx2-novnni") want = Isa::Avx2, g_avx_vnni.store(0);
    else if (s == "avx512") want = Isa::Avx512;
  }
  return best_supported(want);
}

std::atomic<int> g_isa{-1};

bool cpu_avx_vnni() { return cpu_has_avx_vnni(); }
bool cpu_avx512_vnni() { return __builtin_cpu_supports("avx512vnni"); }

}  // namespace

Isa active_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(initial_isa());
    g_isa.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

Isa set_isa(Isa isa) {
  const Isa got = best_supported(isa);
  g_isa.store(static_cast<int>(got), std::memory_order_relaxed);
  return got;
}

bool avx_vnni_enabled() {
  active_isa();  // OPTIQ_ISA=avx2-novnni decides first
  int v = g_avx_vnni.load(std::memory_order_relaxed);
  if (v < 0) {
    v = cpu_avx_vnni() ? 1 : 0;
    g_avx_vnni.store(v, std::memory_order_relaxed);
  }
  return v != 0;
}

bool set_avx_vnni(bool on) {
  active_isa();
  const bool got = on && cpu_avx_vnni();
  g_avx_vnni.store(got ? 1 : 0, std::memory_order_relaxed);
  return got;
}

// One switch for every packed format (affine and GGUF k-quants): kernels/act_quant.h.
void set_int8_decode(bool on) { kernels::set_decode_int8(on); }
bool int8_decode() { return kernels::decode_int8_enabled(); }

namespace kern {

void permute_q4_act(const int8_t* q, int64_t blocks, int cb, int8_t* out) {
  for (int64_t b0 = 0; b0 < blocks; b0 += cb) {
    const int64_t m = std::min<int64_t>(cb, blocks - b0);
    int8_t* o = out + b0 * 32;
    for (int64_t j = 0; j < m; ++j) {
      const int8_t* src = q + (b0 + j) * 32;
      for (int t = 0; t < 16; ++t) {
        o[j * 16 + t] = src[2 * t];
        o[m * 16 + j * 16 + t] = src[2 * t + 1];
      }
    }
  }
}

namespace {
// 8 codes occupy `bits` bytes (K is a multiple of 32). The width is a template
// argument so that the loads and shifts are constants (a runtime width made
// this loop 60% of Gemma's decode).
template <int bits>
void unpack_codes(const uint8_t* p, int64_t K, uint8_t* out) {
  constexpr uint64_t mask = (uint64_t{1} << bits) - 1;
  for (int64_t j = 0; j < K; j += 8) {
    uint64_t v = 0;
    std::memcpy(&v, p + j / 8 * bits, bits);
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) out[j + t] = static_cast<uint8_t>((v >> (bits * t)) & mask);
  }
}
}  // namespace

void unpack_codes_row(const AffineMatrixView& W, int64_t r, uint8_t* out) {
  const uint8_t* p = reinterpret_cast<const uint8_t*>(W.packed + r * W.words_per_row());
  const int64_t K = W.cols;
  switch (W.fmt.bits) {
    case 2: return unpack_codes<2>(p, K, out);
    case 3: return unpack_codes<3>(p, K, out);
    case 4: return unpack_codes<4>(p, K, out);
    case 5: return unpack_codes<5>(p, K, out);
    case 6: return unpack_codes<6>(p, K, out);
    default: std::memcpy(out, p, K); return;
  }
}

// Reference integer path: natural order, int32 dot per block, fp32 sums.
void int8_block_scalar(const Int8Args& a, int64_t r0, int64_t r1) {
  const AffineMatrixView& W = *a.W;
  const int64_t K = W.cols, nblk = K / 32, ng = W.groups_per_row(), bpg = W.fmt.group_size / 32;
  thread_local std::vector<uint8_t> codes;
  if (static_cast<int64_t>(codes.size()) < K) codes.resize(K);
  for (int64_t r = r0; r < r1; ++r) {
    unpack_codes_row(W, r, codes.data());
    for (int64_t i = 0; i < a.n; ++i) {
      const int8_t* x = a.xq + i * a.ldq;
      const float* sx = a.sx + i * nblk;
      const float* xs = a.xsum + i * ng;
      float acc = 0;
      for (int64_t g = 0; g < ng; ++g) {
        float t = 0;
        for (int64_t b = g * bpg; b < (g + 1) * bpg; ++b) {
          int32_t d = 0;
          for (int k = 0; k < 32; ++k) d += static_cast<int32_t>(codes[b * 32 + k]) * x[b * 32 + k];
          t += sx[b] * static_cast<float>(d);
        }
        acc += W.scale(r, g) * t + W.bias(r, g) * xs[g];
      }
      a.Y[i * W.rows + r] = acc;
    }
  }
}

void affine_block_scalar(const AffineArgs& a, int64_t r0, int64_t r1) {
  const AffineMatrixView& W = *a.W;
  const int64_t K = W.cols;
  std::vector<float> row(K);
  for (int64_t r = r0; r < r1; ++r) {
    dequantize_row(W, r, row.data());
    for (int64_t i = 0; i < a.n; ++i) {
      const float* x = a.X + i * K;
      float acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += row[k] * x[k];
      a.Y[i * W.rows + r] = acc;
    }
  }
}

void dense_block_scalar(const DenseArgs& a, int64_t r0, int64_t r1) {
  const int64_t K = a.cols;
  std::vector<float> row(K);
  for (int64_t r = r0; r < r1; ++r) {
    const float* w;
    if (a.kind == 0) {
      w = static_cast<const float*>(a.W) + r * K;
    } else {
      const uint16_t* h = static_cast<const uint16_t*>(a.W) + r * K;
      for (int64_t k = 0; k < K; ++k) row[k] = a.kind == 2 ? bf16_to_f32(h[k]) : f16_to_f32(h[k]);
      w = row.data();
    }
    for (int64_t i = 0; i < a.n; ++i) {
      const float* x = a.X + i * K;
      float acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += w[k] * x[k];
      a.Y[i * a.rows + r] = acc;
    }
  }
}

}  // namespace kern

namespace {

// Per-call buffers of the decode paths, owned by the calling thread and reused
// (no allocation once they are large enough).
struct DecodeScratch {
  Int8Activations act;
  std::vector<int8_t> xperm8;
  std::vector<float> xsum, xperm;
};
DecodeScratch& decode_scratch() {
  static thread_local DecodeScratch s;
  return s;
}

template <typename T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

}  // namespace

void affine_matmul_int8(const AffineMatrixView& W, const float* X, int64_t n, float* Y) {
  check_view(W);
  if (n <= 0) return;
  const Isa isa = active_isa();
  DecodeScratch& s = decode_scratch();
  quantize_activations_simd(X, n, W.cols, s.act);
  const int64_t nblk = s.act.blocks, ng = W.groups_per_row(), bpg = W.fmt.group_size / kActBlock;
  const int64_t ldq = nblk * kActBlock;
  float* xsum = grow(s.xsum, n * ng);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t g = 0; g < ng; ++g) {
      float t = 0;
      for (int64_t b = g * bpg; b < (g + 1) * bpg; ++b)
        t += s.act.row_scale(i)[b] * static_cast<float>(s.act.row_sum(i)[b]);
      xsum[i * ng + g] = t;
    }
  void (*fn)(const kern::Int8Args&, int64_t, int64_t) = kern::int8_block_scalar;
  int cb = 0;  // q4 chunk (blocks) of the chosen kernel; 0: natural order
  if (isa == Isa::Avx512 && cpu_avx512_vnni()) {
    fn = kern::int8_block_avx512;
    cb = 4;
  } else if (isa != Isa::Scalar) {
    fn = avx_vnni_enabled() ? kern::int8_block_avxvnni : kern::int8_block_avx2;
    cb = 2;
  }
  const int8_t* xq = s.act.q.data();
  if (cb && W.fmt.bits == 4) {
    int8_t* p = grow(s.xperm8, n * ldq);
    for (int64_t i = 0; i < n; ++i) kern::permute_q4_act(s.act.row_q(i), nblk, cb, p + i * ldq);
    xq = p;
  }
  const kern::Int8Args a{&W, n, xq, ldq, s.act.scale.data(), xsum, Y};
  kern::for_row_blocks(W.rows, static_cast<double>(W.rows) * W.cols * n, [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
}

void affine_matmul(const AffineMatrixView& W, const float* X, int64_t n, float* Y) {
  if (n > 0 && n < kern::kFusedMaxN && int8_decode()) return affine_matmul_int8(W, X, n, Y);
  if (n >= kern::kFusedMaxN && int8_prefill_active()) return affine_matmul_int8_gemm(W, X, n, Y);
  affine_matmul_f32(W, X, n, Y);
}

void affine_matmul_f32(const AffineMatrixView& W, const float* X, int64_t n, float* Y) {
  check_view(W);
  if (n <= 0) return;
  const Isa isa = active_isa();
  const int64_t ng = W.groups_per_row(), gs = W.fmt.group_size;
  DecodeScratch& s = decode_scratch();
  float* xsum = nullptr;
  if (n < kern::kFusedMaxN) {
    xsum = grow(s.xsum, n * ng);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t g = 0; g < ng; ++g) {
        const float* x = X + i * W.cols + g * gs;
        float t = 0;
        for (int64_t j = 0; j < gs; ++j) t += x[j];
        xsum[i * ng + g] = t;
      }
  }
  float* xperm = nullptr;
  if (isa == Isa::Avx512 && W.fmt.bits == 4 && n < kern::kFusedMaxN) {
    xperm = grow(s.xperm, n * W.cols);
    for (int64_t i = 0; i < n; ++i) kern::permute_x_q4_avx512(X + i * W.cols, W.cols, xperm + i * W.cols);
  }
  const kern::AffineArgs a{&W, X, n, Y, xsum, xperm};
  auto fn = isa == Isa::Avx512 ? kern::affine_block_avx512
            : isa == Isa::Avx2 ? kern::affine_block_avx2
                               : kern::affine_block_scalar;
  kern::for_row_blocks(W.rows, static_cast<double>(W.rows) * W.cols * n, [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
}

namespace {
void dense_matmul(const kern::DenseArgs& a) {
  check(a.rows > 0 && a.cols > 0, "matmul: empty {}x{} weight matrix", a.rows, a.cols);
  if (a.n <= 0) return;
  const Isa isa = active_isa();
  auto fn = isa == Isa::Avx512 ? kern::dense_block_avx512
            : isa == Isa::Avx2 ? kern::dense_block_avx2
                               : kern::dense_block_scalar;
  if (a.kind != 0 && a.n < kern::kFusedMaxN && isa != Isa::Scalar)  // decode: widen fp16/bf16 in registers
    fn = isa == Isa::Avx512 ? kern::half_matvec_block_avx512 : kern::half_matvec_block_avx2;
  kern::for_row_blocks(a.rows, static_cast<double>(a.rows) * a.cols * a.n, [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
}
}  // namespace

void f32_matmul(const float* W, int64_t rows, int64_t cols, const float* X, int64_t n, float* Y) {
  dense_matmul({W, 0, rows, cols, X, n, Y});
}

void half_matmul(const uint16_t* W, bool bf16, int64_t rows, int64_t cols, const float* X, int64_t n, float* Y) {
  dense_matmul({W, bf16 ? 2 : 1, rows, cols, X, n, Y});
}

}  // namespace optiq

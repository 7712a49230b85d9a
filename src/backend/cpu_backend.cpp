// The CPU backend: buffers are host memory, weight handles borrow the host
// storage (nothing is copied at upload), and every operation is a call into
// src/kernels/ (SIMD paths chosen at run time, threads from core/parallel.h).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "core/half.h"
#include "core/memory.h"
#include "core/parallel.h"
#include "kernels/divergence.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"

namespace optiq {

namespace {

class CpuWeight final : public WeightHandle {
 public:
  explicit CpuWeight(const WeightView& w) : WeightHandle(w.rows, w.cols), view(w) {}
  WeightView view;
};

const WeightView& view_of(const WeightHandle& w) { return static_cast<const CpuWeight&>(w).view; }

void free_host(float* p) { std::free(p); }

class CpuBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }
  bool host_memory() const override { return true; }
  int64_t free_bytes() const override { return available_memory_bytes(); }

  Buffer alloc(int64_t n) override {
    check(n >= 0, "cpu backend: cannot allocate {} floats", n);
    if (n == 0) return {};
    // 64-byte aligned (one cache line, one AVX-512 vector); untouched pages stay unmapped until written.
    const size_t bytes = (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64;
    auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    return Buffer(p, n, free_host);
  }
  void to_device(const float* host, int64_t n, float* dst) override {
    if (host != dst) std::memcpy(dst, host, static_cast<size_t>(n) * sizeof(float));
  }
  void to_host(const float* src, int64_t n, float* host) override {
    if (src != host) std::memcpy(host, src, static_cast<size_t>(n) * sizeof(float));
  }

  std::unique_ptr<WeightHandle> upload(const WeightView& w) override { return std::make_unique<CpuWeight>(w); }
  void matmul(const WeightHandle& w, const float* x, int64_t n, float* y) override {
    weight_matmul(view_of(w), x, n, y);
  }
  void weight_rows_to_f32(const WeightHandle& w, int64_t first, int64_t last, float* out) override {
    const WeightView& v = view_of(w);
    check(first >= 0 && first <= last && last <= v.rows, "weight rows [{}, {}) of a matrix of {}", first, last, v.rows);
    parallel_for_range(last - first, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) weight_row(v, first + r, out + r * v.cols);
    });
  }
  void embed(const WeightHandle& w, const int32_t* tokens, int64_t n, float scale, float* out) override {
    const WeightView& v = view_of(w);
    for (int64_t i = 0; i < n; ++i) {
      float* row = out + i * v.cols;
      weight_row(v, tokens[i], row);
      if (scale != 1.0f)
        for (int64_t d = 0; d < v.cols; ++d) row[d] *= scale;
    }
  }

  void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out) override {
    for (int64_t r = 0; r < rows; ++r) optiq::rms_norm(x + r * dim, w, dim, eps, out + r * dim);
  }
  void add(float* x, const float* y, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
  }
  void fill_zero(float* x, int64_t n) override { std::fill_n(x, n, 0.0f); }
  void add_rows(float* y, const float* b, int64_t n, int64_t m) override {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) y[i * m + j] += b[j];
  }
  void take_columns(const float* src, int64_t n, int64_t cols, int64_t from, int64_t width, float* dst) override {
    for (int64_t i = 0; i < n; ++i) std::copy_n(src + i * cols + from, width, dst + i * width);
  }
  void rope(float* x, int64_t n, int64_t stride, int heads, int head_dim, int rot_dim, int pos0,
            const float* inv_freq, float mscale) override {
    for (int64_t i = 0; i < n; ++i)
      optiq::rope(x + i * stride, heads, head_dim, rot_dim, pos0 + static_cast<int>(i), inv_freq, mscale);
  }
  void gated_activation(GateAct act, bool llamacpp, float* gate, const float* up, int64_t n) override {
    if (act == GateAct::GeluTanh && llamacpp) {
      for (int64_t i = 0; i < n; ++i) gate[i] = gelu_tanh_llamacpp(gate[i]) * up[i];
    } else {
      optiq::gated_activation(act, gate, up, n);
    }
  }
  void softcap(float* x, int64_t n, float cap) override { optiq::softcap(x, n, cap); }
  void round_f16(float* x, int64_t n) override { round_activations(ActRounding::F16, x, 1, n); }

  void kv_store(KVCache& c, int layer, int pos0, const float* k, const float* v, int64_t n) override {
    const int64_t off = c.layer_offset(layer) + static_cast<int64_t>(pos0) * c.kv_dim;
    std::copy_n(k, n * c.kv_dim, c.k.data() + off);
    std::copy_n(v, n * c.kv_dim, c.v.data() + off);
    if (c.f16) {
      round_f16(c.k.data() + off, n * c.kv_dim);
      round_f16(c.v.data() + off, n * c.kv_dim);
    }
  }
  void attention(const AttentionParams& p, const float* q, int64_t n, int pos0, const KVCache& c, int layer,
                 float* out) override {
    causal_attention(p, q, n, pos0, c.k.data() + c.layer_offset(layer), c.v.data() + c.layer_offset(layer), out);
  }

  bool fake_quantize(const TensorFormat& fmt, const QuantizeOptions& opt, const float* w, int64_t rows, int64_t cols,
                     bool error_out, float* out) override {
    optiq::fake_quantize_into(fmt, w, rows, cols, opt, error_out, out);
    return true;
  }
  void gram_add(const float* x, int64_t n, int64_t cols, float* g) override {
    // X^T X through the matmul kernel on X^T (its rows are the weight rows).
    std::vector<float> xt(static_cast<size_t>(cols) * n), y(static_cast<size_t>(cols) * cols);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < cols; ++j) xt[j * n + i] = x[i * cols + j];
    f32_matmul(xt.data(), cols, n, xt.data(), cols, y.data());
    for (size_t i = 0; i < y.size(); ++i) g[i] += y[i];
  }
  double gram_quadratic(const float* d, int64_t rows, int64_t cols, const float* g) override {
    // In blocks of rows (an 8B model's lm_head: D G would be 2 GB at once).
    const int64_t block = std::max<int64_t>(16, (int64_t{256} << 20) / (4 * cols));
    std::vector<float> dg(static_cast<size_t>(std::min(rows, block)) * cols);
    double s = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
      const int64_t n = std::min(block, rows - r0);
      const float* db = d + r0 * cols;
      f32_matmul(g, cols, cols, db, n, dg.data());  // D G^T = D G
      s += parallel_sum(n, [&](int64_t r) {
        double t = 0;
        for (int64_t j = 0; j < cols; ++j) t += static_cast<double>(db[r * cols + j]) * dg[r * cols + j];
        return t;
      }, 16);
    }
    return std::max(s, 0.0);
  }
  double rows_quadratic(const float* d, int64_t rows, int64_t cols, const float* x, int64_t n) override {
    if (n <= 0) return 0.0;
    // D X^T in blocks of D's rows (<= 256 MB of products at once).
    const int64_t block = std::max<int64_t>(16, (int64_t{256} << 20) / (4 * n));
    std::vector<float> dx(static_cast<size_t>(std::min(rows, block)) * n);
    double s = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
      const int64_t nr = std::min(block, rows - r0);
      f32_matmul(x, n, cols, d + r0 * cols, nr, dx.data());  // (D X^T)[r, t] = d_r . x_t
      s += parallel_sum(nr, [&](int64_t r) {
        double t = 0;
        for (int64_t j = 0; j < n; ++j) t += static_cast<double>(dx[r * n + j]) * dx[r * n + j];
        return t;
      }, 16);
    }
    return s;
  }
  void log_softmax_rows(float* x, int64_t rows, int64_t vocab) override {
    parallel_for_range(rows, 4, [&](int64_t r0, int64_t r1) {
      std::vector<double> lp(vocab);
      for (int64_t r = r0; r < r1; ++r) {
        log_softmax(x + r * vocab, vocab, lp.data());
        for (int64_t v = 0; v < vocab; ++v) x[r * vocab + v] = static_cast<float>(lp[v]);
      }
    });
  }
  double kl_sum(const void* ref, bool ref_bf16, const float* logits, int64_t rows, int64_t vocab) override {
    std::vector<double> row_kl(rows);
    parallel_for_range(rows, 4, [&](int64_t r0, int64_t r1) {
      std::vector<double> lq(vocab), lp(vocab);
      for (int64_t r = r0; r < r1; ++r) {
        log_softmax(logits + r * vocab, vocab, lq.data());
        const size_t base = static_cast<size_t>(r) * vocab;
        if (ref_bf16)
          for (int64_t v = 0; v < vocab; ++v) lp[v] = bf16_to_f32(static_cast<const uint16_t*>(ref)[base + v]);
        else
          for (int64_t v = 0; v < vocab; ++v) lp[v] = static_cast<const float*>(ref)[base + v];
        row_kl[r] = kl_divergence(lp.data(), lq.data(), vocab);
      }
    });
    double s = 0;  // in row order: the same sum however the rows were split
    for (double k : row_kl) s += k;
    return s;
  }
  void row_sq_sums(const float* d, int64_t rows, int64_t cols, double* out) override {
    parallel_for_range(rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        double s = 0;
        for (int64_t j = 0; j < cols; ++j) s += static_cast<double>(d[r * cols + j]) * d[r * cols + j];
        out[r] = s;
      }
    });
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

}  // namespace optiq

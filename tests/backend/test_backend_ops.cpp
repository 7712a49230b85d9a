// Every operation of every available backend (backend/backend.h) against a
// plain double-precision reference on random data with odd shapes. Data goes
// in and out through to_device / to_host only, so a GPU backend runs the same
// tests unchanged.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/half.h"
#include "kernels/act_quant.h"
#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "quant/format.h"
#include "quant/ggml_dequant.h"
#include "quant/quantizer.h"
#include "test_util.h"

namespace optiq {
namespace {

class BackendOps : public ::testing::TestWithParam<std::string> {
 protected:
  Backend& b = backend_named(GetParam());
  Buffer put(const std::vector<float>& v) { return b.upload(v.data(), static_cast<int64_t>(v.size())); }
  std::vector<float> get(const Buffer& buf, int64_t n) {
    std::vector<float> out(n);
    b.to_host(buf.data(), n, out.data());
    return out;
  }
  // q, k and v (ws, with rows[i] rows) in one matmul_group against three
  // matmuls of the same n rows of x: bit for bit.
  void expect_group_equals_products(const WeightHandle* const (&ws)[3], const int64_t (&rows)[3],
                                    const std::vector<float>& x, int64_t n, const std::string& what) {
    Buffer bx = put(x);
    std::vector<Buffer> want, got;
    for (int i = 0; i < 3; ++i) {
      want.push_back(b.alloc(n * rows[i]));
      got.push_back(b.alloc(n * rows[i]));
      b.matmul(*ws[i], bx.data(), n, want.back().data());
    }
    float* const ys[] = {got[0].data(), got[1].data(), got[2].data()};
    b.matmul_group(ws, bx.data(), n, ys);
    for (int i = 0; i < 3; ++i) {
      const auto w = get(want[i], n * rows[i]), g = get(got[i], n * rows[i]);
      for (int64_t j = 0; j < n * rows[i]; ++j) ASSERT_EQ(g[j], w[j]) << what << " matrix " << i << " n=" << n;
    }
  }
};

std::vector<std::string> backend_names() {
  std::vector<std::string> names;
  for (Backend* be : available_backends()) names.emplace_back(be->name());
  return names;
}

// Sets the int8 decode numerics for a scope (kernels::set_decode_int8).
struct Int8Decode {
  bool saved = kernels::decode_int8_enabled();
  explicit Int8Decode(bool on) { kernels::set_decode_int8(on); }
  ~Int8Decode() { kernels::set_decode_int8(saved); }
  Int8Decode(const Int8Decode&) = delete;
  Int8Decode& operator=(const Int8Decode&) = delete;
};

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * (1.0 + std::abs(want[i]))) << what << " [" << i << "]";
}

TEST_P(BackendOps, BufferRoundTrip) {
  const auto v = test::random_floats(1001, 1);
  Buffer buf = put(v);
  EXPECT_EQ(buf.size(), 1001);
  EXPECT_EQ(get(buf, 1001), v);
  b.fill_zero(buf.data(), 1000);
  const std::vector<float> z = get(buf, 1001);
  EXPECT_EQ(z[999], 0.0f);
  EXPECT_EQ(z[1000], v[1000]);  // exactly n values
  EXPECT_EQ(b.alloc(0).size(), 0);
  EXPECT_THROW(b.alloc(-1), Error);
}

TEST_P(BackendOps, RmsNormRowsInPlaceAndNot) {
  const int64_t rows = 7, dim = 37;
  const auto x = test::random_floats(rows * dim, 2), w = test::random_floats(dim, 3);
  std::vector<double> want(rows * dim);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    const double s = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int64_t i = 0; i < dim; ++i) want[r * dim + i] = x[r * dim + i] * s * w[i];
  }
  Buffer bx = put(x), bw = put(w), out = b.alloc(rows * dim);
  b.rms_norm(bx.data(), bw.data(), rows, dim, 1e-5f, out.data());
  expect_close(get(out, rows * dim), want, 1e-5, "rms_norm");
  b.rms_norm(bx.data(), bw.data(), rows, dim, 1e-5f, bx.data());
  expect_close(get(bx, rows * dim), want, 1e-5, "rms_norm in place");
}

TEST_P(BackendOps, AddBiasColumnsSoftcapF16) {
  const int64_t n = 5, m = 19;
  const auto x = test::random_floats(n * m, 4), y = test::random_floats(n * m, 5), bias = test::random_floats(m, 6);
  Buffer bx = put(x), by = put(y), bb = put(bias);
  b.add(bx.data(), by.data(), n * m);
  std::vector<double> want(n * m);
  for (int64_t i = 0; i < n * m; ++i) want[i] = double(x[i]) + y[i];
  expect_close(get(bx, n * m), want, 1e-6, "add");
  b.add_rows(bx.data(), bb.data(), n, m);
  for (int64_t i = 0; i < n * m; ++i) want[i] += bias[i % m];
  expect_close(get(bx, n * m), want, 1e-6, "add_rows");

  Buffer cols = b.alloc(n * 6);
  b.take_columns(by.data(), n, m, 11, 6, cols.data());
  const auto got = get(cols, n * 6);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < 6; ++j) ASSERT_EQ(got[i * 6 + j], y[i * m + 11 + j]);

  Buffer sc = put(y);
  b.softcap(sc.data(), n * m, 0.7f);
  for (int64_t i = 0; i < n * m; ++i) want[i] = 0.7 * std::tanh(y[i] / 0.7);
  expect_close(get(sc, n * m), want, 1e-6, "softcap");

  Buffer h = put(y);
  b.round_f16(h.data(), n * m);
  const auto hv = get(h, n * m);
  for (int64_t i = 0; i < n * m; ++i) ASSERT_EQ(hv[i], f16_to_f32(f32_to_f16(y[i])));
}

TEST_P(BackendOps, RopePartialRowsAtPositions) {
  const int64_t n = 3;
  const int heads = 3, hd = 10, rot = 6, pos0 = 5;
  const int64_t stride = heads * hd + 4;  // rows wider than the heads: only the heads rotate
  const std::vector<float> inv = {1.0f, 0.13f, 0.011f};
  const auto x = test::random_floats(n * stride, 7);
  std::vector<double> want(x.begin(), x.end());
  for (int64_t i = 0; i < n; ++i)
    for (int h = 0; h < heads; ++h)
      for (int k = 0; k < rot / 2; ++k) {
        const double a = double(pos0 + i) * inv[k], c = std::cos(a) * 1.25, s = std::sin(a) * 1.25;
        const int64_t o = i * stride + h * hd;
        want[o + k] = x[o + k] * c - x[o + k + rot / 2] * s;
        want[o + k + rot / 2] = x[o + k] * s + x[o + k + rot / 2] * c;
      }
  Buffer bx = put(x), bf = put(inv);
  b.rope(bx.data(), n, stride, heads, hd, rot, pos0, bf.data(), 1.25f);
  expect_close(get(bx, n * stride), want, 2e-5, "rope");
}

// (n = 304: a GPU takes four values a thread; 301: one.)
TEST_P(BackendOps, GatedActivations) {
  for (const int64_t n : {301, 304}) {
    const auto g = test::random_floats(n, 8, 3.0f), u = test::random_floats(n, 9);
    for (GateAct act : {GateAct::Silu, GateAct::GeluTanh}) {
      std::vector<double> want(n);
      for (int64_t i = 0; i < n; ++i) {
        const double x = g[i];
        const double a = act == GateAct::Silu ? x / (1 + std::exp(-x))
                                              : 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
        want[i] = a * u[i];
      }
      Buffer bg = put(g), bu = put(u);
      b.gated_activation(act, false, bg.data(), bu.data(), n);
      expect_close(get(bg, n), want, 2e-5, act == GateAct::Silu ? "silu" : "gelu");
      Buffer lg = put(g);  // llama.cpp's fp16 GELU: within fp16 rounding
      b.gated_activation(act, true, lg.data(), bu.data(), n);
      expect_close(get(lg, n), want, act == GateAct::Silu ? 2e-5 : 3e-3, "llama.cpp gelu");
    }
  }
}

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  p[0] = h & 0xff;
  p[1] = h >> 8;
}

// Valid random k-quant blocks: random codes and scales, sane fp16 d / dmin.
std::vector<uint8_t> random_kquant(DType t, int64_t rows, int64_t cols, uint32_t seed) {
  const size_t bb = block_layout(t).block_bytes, nb = static_cast<size_t>(rows * (cols / 256));
  std::vector<uint8_t> b(bb * nb);
  std::mt19937 rng(seed);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  for (size_t i = 0; i < nb; ++i) {
    uint8_t* blk = b.data() + i * bb;
    const float d = (0.5f + (rng() % 1000) / 1000.0f) * 1e-2f;
    switch (t) {
      case DType::Q2_K: put_f16(blk + 80, d), put_f16(blk + 82, d); break;
      case DType::Q3_K: put_f16(blk + 108, d); break;
      case DType::Q4_K: case DType::Q5_K: put_f16(blk, d), put_f16(blk + 2, d); break;
      default: put_f16(blk + 208, d * 0.1f); break;
    }
  }
  return b;
}

// Storages of every kind the runtime multiplies, on random data with odd row counts.
struct StorageCase {
  std::string name;
  WeightView view;
  std::shared_ptr<void> keep;  // the arrays the view points into
};

std::vector<StorageCase> storage_cases(int64_t rows, int64_t cols) {
  std::vector<StorageCase> cases;
  const auto w = test::random_floats(rows * cols, 10);
  auto f32 = std::make_shared<std::vector<float>>(w);
  cases.push_back({"f32", {rows, cols, F32Weights{f32->data()}}, f32});
  for (bool bf16 : {false, true}) {
    auto half = std::make_shared<std::vector<uint16_t>>(w.size());
    for (size_t i = 0; i < w.size(); ++i) (*half)[i] = bf16 ? f32_to_bf16(w[i]) : f32_to_f16(w[i]);
    cases.push_back({bf16 ? "bf16" : "f16", {rows, cols, HalfWeights{half->data(), bf16}}, half});
  }
  for (int bits : {2, 3, 4, 5, 6, 8})
    for (int group : {32, 64, 128}) {
      if (cols % group) continue;
      QuantizeOptions o;
      o.bf16_scales = (bits + group) % 3 == 0;  // both scale types across the cases
      auto q = std::make_shared<AffineMatrix>(quantize(w.data(), rows, cols, AffineFormat{bits, group}, o));
      cases.push_back({fmt::format("q{}g{}{}", bits, group, o.bf16_scales ? "bf16" : ""), {rows, cols, q->view()}, q});
    }
  // Symmetric groups (GGUF Q4_0/Q8_0 re-laid): no biases, a zero point.
  for (int bits : {4, 8}) {
    auto q = std::make_shared<AffineMatrix>(quantize(w.data(), rows, cols, AffineFormat{bits, 32}, {}));
    q->biases.clear();
    q->zero_point = 1 << (bits - 1);
    cases.push_back({fmt::format("q{}g32sym", bits), {rows, cols, q->view()}, q});
  }
  if (cols % 256 == 0)
    for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
      auto b = std::make_shared<std::vector<uint8_t>>(random_kquant(t, rows, cols, 20 + static_cast<int>(t)));
      cases.push_back({std::string(dtype_name(t)), {rows, cols, KQuantView{t, rows, cols, b->data()}}, b});
    }
  // The IQ4s (their own blocks, 32 or 256 weights), quantized from w.
  for (DType t : {DType::IQ4_NL, DType::IQ4_XS}) {
    if (cols % block_layout(t).block_elems) continue;
    const QuantizedMatrix q = quantize_matrix(TensorFormat{GgmlFormat{t}}, w.data(), rows, cols);
    auto b = std::make_shared<std::vector<uint8_t>>(q.blocks);
    cases.push_back({std::string(dtype_name(t)), {rows, cols, KQuantView{t, rows, cols, b->data()}}, b});
  }
  return cases;
}

// A storage's rows, dequantized (the values every product multiplies).
std::vector<float> dense_rows(const WeightView& v) {
  std::vector<float> dense(v.rows * v.cols);
  for (int64_t r = 0; r < v.rows; ++r) weight_row(v, r, &dense[r * v.cols]);
  return dense;
}

// y[i][r] = x[i] . dense[r] in double: the exact product of n rows of x.
std::vector<double> exact_products(const std::vector<float>& x, const std::vector<float>& dense, int64_t n,
                                   int64_t rows, int64_t cols) {
  std::vector<double> want(n * rows);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t c = 0; c < cols; ++c) s += double(x[i * cols + c]) * dense[r * cols + c];
      want[i * rows + r] = s;
    }
  return want;
}

// Exact numerics: fp32 activations on every path, every storage, decode-sized
// and prefill-sized batches; embeddings return the dequantized rows exactly.
TEST_P(BackendOps, MatmulAndEmbedEveryStorage) {
  const Int8Decode int8_off(false);
  const int64_t rows = 13, cols = 256;
  const std::vector<int32_t> tokens = {12, 0, 5, 5};
  for (const StorageCase& sc : storage_cases(rows, cols)) {
    const WeightView& v = sc.view;
    const std::vector<float> dense = dense_rows(v);
    auto h = b.upload(v);
    EXPECT_EQ(h->rows(), rows);
    EXPECT_EQ(h->cols(), cols);
    for (int64_t n : {1, 3, 20}) {
      const auto x = test::random_floats(n * cols, 11 + n);
      const std::vector<double> want = exact_products(x, dense, n, rows, cols);
      Buffer bx = put(x), y = b.alloc(n * rows);
      b.matmul(*h, bx.data(), n, y.data());
      expect_close(get(y, n * rows), want, 2e-4, (sc.name + " matmul n=" + std::to_string(n)).c_str());
    }
    Buffer e = b.alloc(4 * cols);
    b.embed(*h, tokens.data(), 4, 0.5f, e.data());
    const auto got = get(e, 4 * cols);
    for (size_t t = 0; t < tokens.size(); ++t)
      for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(got[t * cols + c], 0.5f * dense[tokens[t] * cols + c]) << sc.name;
    Buffer all = b.alloc(rows * cols);
    b.weights_to_f32(*h, all.data());
    EXPECT_EQ(get(all, rows * cols), dense) << sc.name << ": weights_to_f32";
  }
}

// Decode products (one activation row) on shapes the small cases miss: more
// rows than a GPU holds warps at once, and rows of 12k and 40k weights (many
// chunks a lane; wider than a block's shared memory holds x in fp32).
TEST_P(BackendOps, DecodeProductsOnTallAndWideMatrices) {
  struct Shape {
    int64_t rows, cols;
  };
  for (const Shape sh : {Shape{6007, 128}, Shape{5, 12352}, Shape{3, 40064}}) {
    const auto w = test::random_floats(sh.rows * sh.cols, 90);
    std::vector<uint16_t> bf16(w.size());
    for (size_t i = 0; i < w.size(); ++i) bf16[i] = f32_to_bf16(w[i]);
    const AffineMatrix q4 = quantize(w.data(), sh.rows, sh.cols, AffineFormat{4, 64}, {});
    const AffineMatrix q3 = quantize(w.data(), sh.rows, sh.cols, AffineFormat{3, 64}, {});
    const std::vector<std::pair<std::string, WeightView>> views = {
        {"bf16", {sh.rows, sh.cols, HalfWeights{bf16.data(), true}}},
        {"q4g64", {sh.rows, sh.cols, q4.view()}},
        {"q3g64", {sh.rows, sh.cols, q3.view()}}};
    const auto x = test::random_floats(sh.cols, 91);
    Int8Activations act;
    quantize_activations(x.data(), 1, sh.cols, act);
    Buffer bx = put(x), y = b.alloc(sh.rows), y2 = b.alloc(sh.rows), up = b.alloc(sh.rows);
    for (bool fast : {false, true}) {
      const Int8Decode numerics(fast);
      for (const auto& [name, view] : views) {
        const bool int8 = fast && view.as<AffineMatrixView>() != nullptr;
        std::vector<double> want(sh.rows);
        std::vector<float> row(sh.cols);
        for (int64_t r = 0; r < sh.rows; ++r) {
          weight_row(view, r, row.data());
          double s = 0;
          for (int64_t c = 0; c < sh.cols; ++c)
            s += (int8 ? double(act.row_q(0)[c]) * act.row_scale(0)[c / 32] : double(x[c])) * row[c];
          want[r] = s;
        }
        const std::string what = fmt::format("{} {}x{}{}", name, sh.rows, sh.cols, fast ? " fast" : " exact");
        auto h = b.upload(view);
        b.matmul(*h, bx.data(), 1, y.data());
        expect_close(get(y, sh.rows), want, 2e-4, what.c_str());
        // The fused launches walk rows as the product does: the same numbers.
        const WeightHandle* ws[] = {h.get(), h.get()};
        float* const ys[] = {y2.data(), up.data()};
        b.matmul_group(ws, bx.data(), 1, ys);
        EXPECT_EQ(get(y2, sh.rows), get(y, sh.rows)) << what << " group";
        b.gated_matmul(*h, *h, GateAct::Silu, false, bx.data(), 1, y2.data(), up.data());
        b.gated_activation(GateAct::Silu, false, y.data(), y.data(), sh.rows);  // silu(g) * g
        const auto gw = get(y, sh.rows), gg = get(y2, sh.rows);
        for (int64_t r = 0; r < sh.rows; ++r)
          ASSERT_NEAR(gg[r], gw[r], 1e-4f * (1 + std::abs(gw[r]))) << what << " gated [" << r << "]";
      }
    }
  }
}

// Fast numerics on prefill-sized batches round the activations: to int8
// blocks of 32 on a CPU with AVX-512 VNNI (kernels/int8_gemm.h), to fp16 or
// bf16 on a GPU (whose GEMMs also round the weights to fp16), not at all on
// other CPUs. Each product's error is then a sum of independent roundings;
// this is six standard deviations of the largest of them, per output.
std::vector<double> fast_rounding_bound(const std::vector<float>& x, const std::vector<float>& dense, int64_t n,
                                        int64_t rows, int64_t cols) {
  std::vector<double> bound(n * rows);
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = &x[i * cols];
    for (int64_t r = 0; r < rows; ++r) {
      double var = 0;
      for (int64_t c = 0; c < cols; ++c) {
        double amax = 0;
        for (int64_t k = c / 32 * 32; k < std::min(cols, c / 32 * 32 + 32); ++k) amax = std::max(amax, std::abs(double(xi[k])));
        const double w = dense[r * cols + c], step = amax / 127.0;  // int8: uniform error over one step
        const double half_ulp = std::abs(double(xi[c])) * std::ldexp(1.0, -8);  // bf16 x (fp16 is finer)
        const double w_ulp = std::abs(w * xi[c]) * std::ldexp(1.0, -11);        // fp16 weights
        var += w * w * (step * step / 12.0 + half_ulp * half_ulp / 3.0) + w_ulp * w_ulp / 3.0;
      }
      bound[i * rows + r] = 6.0 * std::sqrt(var) + 1e-5;
    }
  }
  return bound;
}

TEST_P(BackendOps, PrefillProductsInFastNumerics) {
  const Int8Decode fast(true);
  const int64_t rows = 45, cols = 256, n = 24;  // n > the decode kernels' rows
  const auto x = test::random_floats(n * cols, 51);
  for (const StorageCase& sc : storage_cases(rows, cols)) {
    const std::vector<float> dense = dense_rows(sc.view);
    const std::vector<double> want = exact_products(x, dense, n, rows, cols);
    const std::vector<double> bound = fast_rounding_bound(x, dense, n, rows, cols);
    auto h = b.upload(sc.view);
    Buffer bx = put(x), y = b.alloc(n * rows);
    b.matmul(*h, bx.data(), n, y.data());
    const std::vector<float> got = get(y, n * rows);
    for (size_t k = 0; k < got.size(); ++k)
      ASSERT_NEAR(got[k], want[k], bound[k]) << sc.name << " fast n=24 [" << k << "]";
  }
}

// Dense storages whose width is no multiple of 8 (tiny models, odd heads).
TEST_P(BackendOps, MatmulOddWidths) {
  for (int64_t cols : {5, 12, 37}) {
    const int64_t rows = 7, n = 2;
    const auto w = test::random_floats(rows * cols, 30), x = test::random_floats(n * cols, 31);
    const std::vector<double> want = exact_products(x, w, n, rows, cols);
    auto h = b.upload(WeightView{rows, cols, F32Weights{w.data()}});
    Buffer bx = put(x), y = b.alloc(n * rows);
    b.matmul(*h, bx.data(), n, y.data());
    expect_close(get(y, n * rows), want, 1e-5, "odd width");
  }
}

// A matrix uploaded for the accuracy path's passes (WeightSwap) multiplies a
// batch of rows exactly as the plain upload does, in exact and fast numerics
// (the CUDA backend keeps it in fp16 in fast numerics, where its products
// round the weights to fp16 anyway), at odd widths.
TEST_P(BackendOps, UploadForPassesMultipliesAsUpload) {
  for (bool fast : {false, true}) {
    const Int8Decode numerics(fast);
    for (int64_t cols : {37, 256}) {
      const int64_t rows = 45, n = 24;  // n > the decode kernels' rows: the batched path
      const auto w = test::random_floats(rows * cols, 40 + cols), x = test::random_floats(n * cols, 41);
      const WeightView v{rows, cols, F32Weights{w.data()}};
      auto plain = b.upload(v), passes = b.upload_for_passes(v);
      EXPECT_EQ(passes->rows(), rows);
      EXPECT_EQ(passes->cols(), cols);
      Buffer bx = put(x), y0 = b.alloc(n * rows), y1 = b.alloc(n * rows);
      b.matmul(*plain, bx.data(), n, y0.data());
      b.matmul(*passes, bx.data(), n, y1.data());
      EXPECT_EQ(get(y1, n * rows), get(y0, n * rows)) << "fast " << fast << " cols " << cols;
    }
  }
}

// Page-locked host memory copies in and out as any other; unpinned when the value goes.
TEST_P(BackendOps, PinnedHostMemoryCopies) {
  auto v = test::random_floats(4099, 42);
  {
    const Backend::HostPin pin = b.pin_host(v.data(), v.size() * sizeof(float));
    if (b.host_memory()) {
      EXPECT_EQ(pin.get(), nullptr);
    }
    Buffer buf = put(v);
    std::vector<float> back(v.size(), 0.0f);
    const Backend::HostPin pin_back = b.pin_host(back.data(), back.size() * sizeof(float));
    b.to_host(buf.data(), static_cast<int64_t>(back.size()), back.data());
    EXPECT_EQ(back, v);
  }
  EXPECT_EQ(b.pin_host(nullptr, 0).get(), nullptr);
}

// Fast numerics on affine weights: activations rounded to int8 blocks of 32
// (kernels/act_quant.h), integer dot products; the result is the exact
// product with those rounded activations.
TEST_P(BackendOps, Int8DecodeEqualsRoundedActivations) {
  const Int8Decode int8_on(true);
  const int64_t rows = 19, cols = 384, n = 2;
  const auto x = test::random_floats(n * cols, 40);
  Int8Activations act;
  quantize_activations(x.data(), n, cols, act);
  for (const StorageCase& sc : storage_cases(rows, cols)) {
    if (!sc.view.as<AffineMatrixView>()) continue;
    const std::vector<float> dense = dense_rows(sc.view);
    std::vector<double> want(n * rows);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0;
        for (int64_t c = 0; c < cols; ++c)
          s += double(act.row_q(i)[c]) * act.row_scale(i)[c / 32] * dense[r * cols + c];
        want[i * rows + r] = s;
      }
    auto h = b.upload(sc.view);
    Buffer bx = put(x), y = b.alloc(n * rows);
    b.matmul(*h, bx.data(), n, y.data());
    expect_close(get(y, n * rows), want, 2e-4, (sc.name + " int8").c_str());
  }
}

// GGUF k-quants under fast numerics: decode products round the activations
// to int8 blocks as the affine ones do (the CPU's kquant_matmul int8 path, a
// GPU's k-quant int8 kernels), on a few rows, many rows, and wide rows; the
// gated pair and the product with its residual add give what the separate
// operations give. (A GPU takes one row a warp up to 4096 rows, two above.)
TEST_P(BackendOps, KQuantInt8DecodeEqualsRoundedActivations) {
  const Int8Decode int8_on(true);
  struct Shape {
    int64_t rows, cols;
  };
  for (const Shape sh : {Shape{64, 512}, Shape{2051, 256}, Shape{4099, 256}, Shape{3, 14336}}) {
    for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
      const auto blocks = random_kquant(t, sh.rows, sh.cols, 300 + static_cast<int>(t));
      const auto blocks2 = random_kquant(t, sh.rows, sh.cols, 400 + static_cast<int>(t));
      const WeightView view{sh.rows, sh.cols, KQuantView{t, sh.rows, sh.cols, blocks.data()}};
      const WeightView view2{sh.rows, sh.cols, KQuantView{t, sh.rows, sh.cols, blocks2.data()}};
      const std::vector<float> dense = dense_rows(view);
      const auto h = b.upload(view), h2 = b.upload(view2);
      for (int64_t n : {1, 3}) {
        const std::string what = fmt::format("{} {}x{} n={}", dtype_name(t), sh.rows, sh.cols, n);
        const auto x = test::random_floats(n * sh.cols, 310 + n);
        Int8Activations act;
        quantize_activations(x.data(), n, sh.cols, act);
        std::vector<double> want(n * sh.rows);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t r = 0; r < sh.rows; ++r) {
            double acc = 0;
            for (int64_t c = 0; c < sh.cols; ++c)
              acc += double(act.row_q(i)[c]) * act.row_scale(i)[c / 32] * dense[r * sh.cols + c];
            want[i * sh.rows + r] = acc;
          }
        Buffer bx = put(x), y = b.alloc(n * sh.rows), y2 = b.alloc(n * sh.rows), g = b.alloc(n * sh.rows),
               up = b.alloc(n * sh.rows);
        b.matmul(*h, bx.data(), n, y.data());
        expect_close(get(y, n * sh.rows), want, 2e-4, what.c_str());
        // The gated pair against its two products and the activation.
        b.matmul(*h2, bx.data(), n, y2.data());
        b.gated_activation(GateAct::Silu, false, y.data(), y2.data(), n * sh.rows);
        b.gated_matmul(*h, *h2, GateAct::Silu, false, bx.data(), n, g.data(), up.data());
        const auto want_g = get(y, n * sh.rows), got_g = get(g, n * sh.rows);
        for (int64_t i = 0; i < n * sh.rows; ++i)
          ASSERT_NEAR(got_g[i], want_g[i], 1e-5f * (1 + std::abs(want_g[i]))) << what << " gated " << i;
        // The product with the residual add and the norm after it (fused on a GPU when rows are a
        // multiple of 32, the 64-row case).
        const auto resid = test::random_floats(n * sh.rows, 320 + n), nw = test::random_floats(sh.rows, 321);
        Buffer bw = put(nw), x1 = put(resid), y1 = b.alloc(n * sh.rows), x3 = put(resid), y3 = b.alloc(n * sh.rows);
        b.matmul(*h, bx.data(), n, y1.data());
        b.add_rms_norm(x1.data(), y1.data(), bw.data(), n, sh.rows, 1e-5f, y1.data());
        b.matmul_add_rms_norm(*h, bx.data(), n, y3.data(), x3.data(), bw.data(), 1e-5f, y3.data());
        const auto want_x = get(x1, n * sh.rows), got_x = get(x3, n * sh.rows);
        for (int64_t i = 0; i < n * sh.rows; ++i) ASSERT_EQ(got_x[i], want_x[i]) << what << " residual " << i;
      }
    }
  }
}

// Causal attention of n queries at positions pos0.. in double precision, as
// the cache stores K and V (`stored`), with a sliding window (0: none).
std::vector<double> attention_reference(const AttentionParams& p, const std::vector<float>& q, int n, int pos0,
                                        const std::function<double(bool key, int64_t i)>& stored) {
  const int64_t qd = int64_t(p.n_heads) * p.head_dim, kvd = p.kv_stride, hd = p.head_dim;
  std::vector<double> want(n * qd);
  for (int i = 0; i < n; ++i)
    for (int h = 0; h < p.n_heads; ++h) {
      const int pos = pos0 + i, t0 = p.window > 0 ? std::max(0, pos - p.window + 1) : 0;
      const int64_t kvo = (h / (p.n_heads / p.n_kv_heads)) * hd;
      std::vector<double> s;
      double mx = -INFINITY, z = 0;
      for (int t = t0; t <= pos; ++t) {
        double d = 0;
        for (int j = 0; j < hd; ++j) d += double(q[i * qd + h * hd + j]) * stored(true, t * kvd + kvo + j);
        d *= p.scale;
        if (p.softcap > 0) d = p.softcap * std::tanh(d / p.softcap);
        s.push_back(d);
        mx = std::max(mx, s.back());
      }
      for (double& e : s) z += (e = std::exp(e - mx));
      for (int j = 0; j < hd; ++j) {
        double o = 0;
        for (int t = t0; t <= pos; ++t) o += s[t - t0] / z * stored(false, t * kvd + kvo + j);
        want[i * qd + h * hd + j] = o;
      }
    }
  return want;
}

TEST_P(BackendOps, KvCacheAndAttention) {
  const int layers = 2, max_ctx = 9, heads = 4, kv_heads = 2, hd = 6;
  const int64_t kvd = kv_heads * hd, qd = heads * hd;
  for (bool f16 : {false, true}) {
    KVCache c = b.make_kv_cache(layers, max_ctx, kvd, f16);
    EXPECT_EQ(c.bytes(), size_t{2} * layers * max_ctx * kvd * (c.half_storage ? 2 : 4));
    EXPECT_TRUE(!c.half_storage || f16 || kernels::decode_int8_enabled()) << "fp16 storage only where values allow";
    // Two calls fill positions 0..2 and 3..6 of layer 1.
    const auto k = test::random_floats(7 * kvd, 12), v = test::random_floats(7 * kvd, 13);
    Buffer bk = put(k), bv = put(v);
    b.kv_store(c, 1, 0, bk.data(), bv.data(), 3);
    b.kv_store(c, 1, 3, bk.data() + 3 * kvd, bv.data() + 3 * kvd, 4);
    const auto q = test::random_floats(4 * qd, 14);
    Buffer bq = put(q), out = b.alloc(4 * qd);
    AttentionParams p;
    p.n_heads = heads;
    p.n_kv_heads = kv_heads;
    p.head_dim = hd;
    p.q_stride = qd;
    p.kv_stride = kvd;
    p.scale = 0.4f;
    p.window = 3;
    p.max_ctx = max_ctx;
    b.attention(p, bq.data(), 4, 3, c, 1, out.data());  // queries at 3..6
    auto stored = [&](bool key, int64_t i) {
      const float x = key ? k[i] : v[i];
      return f16 || c.half_storage ? double(f16_to_f32(f32_to_f16(x))) : double(x);
    };
    const std::vector<double> want = attention_reference(p, q, 4, 3, stored);  // queries at 3..6
    expect_close(get(out, 4 * qd), want, 1e-5, f16 ? "attention (fp16 cache)" : "attention");
  }
}

// Prefill attention (more queries than a decode step) against a double
// reference, whole and with the GPU's query rows in blocks of one and of
// three (OPTIQ_CUDA_ATTENTION_SCORE_BYTES caps a block's scores; a CPU
// ignores it): the blocks must give one pass's numbers (to float rounding).
TEST_P(BackendOps, PrefillAttentionInBlocksOfQueryRows) {
  const int layers = 1, max_ctx = 40, heads = 4, kv_heads = 2, hd = 8, n = 21, pos0 = 5;
  const int64_t kvd = kv_heads * hd, qd = heads * hd;
  KVCache c = b.make_kv_cache(layers, max_ctx, kvd, true);
  const auto k = test::random_floats((pos0 + n) * kvd, 21), v = test::random_floats((pos0 + n) * kvd, 22);
  Buffer bk = put(k), bv = put(v);
  b.kv_store(c, 0, 0, bk.data(), bv.data(), pos0 + n);
  const auto q = test::random_floats(n * qd, 23);
  Buffer bq = put(q);
  AttentionParams p;
  p.n_heads = heads;
  p.n_kv_heads = kv_heads;
  p.head_dim = hd;
  p.q_stride = qd;
  p.kv_stride = kvd;
  p.scale = 0.35f;
  p.max_ctx = max_ctx;
  auto stored = [&](bool key, int64_t i) { return double(f16_to_f32(f32_to_f16(key ? k[i] : v[i]))); };
  const std::vector<double> want = attention_reference(p, q, n, pos0, stored);
  // fp16 cache: stored values are rounded as above; a GPU also rounds q and the probabilities to fp16.
  const double tol = c.half_storage && GetParam() != std::string("cpu") ? 3e-3 : 1e-5;
  std::vector<float> whole;
  for (const char* cap : {"", "1", "1600"}) {  // whole; one row a block (below a row: 512 bytes); three rows
    if (*cap) setenv("OPTIQ_CUDA_ATTENTION_SCORE_BYTES", cap, 1);
    Buffer out = b.alloc(n * qd);
    b.attention(p, bq.data(), n, pos0, c, 0, out.data());
    unsetenv("OPTIQ_CUDA_ATTENTION_SCORE_BYTES");
    const auto got = get(out, n * qd);
    expect_close(got, want, tol, fmt::format("prefill attention, score cap '{}'", cap).c_str());
    // A block's products reduce over its own key count, so cuBLAS may sum in
    // another order than for the whole pass: equal to float rounding, not bits.
    if (whole.empty()) whole = got;
    else
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], whole[i], 1e-5 * (1 + std::abs(whole[i]))) << "cap " << cap << " [" << i << "]";
  }
}

// Prefill attention at real head widths (a GPU's flash kernel takes 64, 96,
// 128 and 256 over an fp16 cache; its tiles are 64 query rows by 64 keys, 32
// at 256):
// groups, sliding windows, soft-caps, earlier positions in the cache, row
// counts that end inside a tile; and on a GPU the cuBLAS path it replaced
// (OPTIQ_CUDA_FLASH_PREFILL=0) on the same cases.
TEST_P(BackendOps, PrefillAttentionRealHeadWidths) {
  struct Case {
    int hd, heads, kv_heads, window;
    float softcap;
    int n, pos0;
  };
  const Case cases[] = {{128, 8, 2, 0, 0.0f, 130, 0}, {64, 4, 4, 0, 0.0f, 70, 37}, {96, 6, 2, 20, 0.0f, 75, 10},
                        {128, 7, 1, 0, 30.0f, 65, 100}, {64, 8, 2, 50, 0.0f, 200, 3},
                        {256, 4, 1, 0, 0.0f, 90, 20}, {256, 8, 2, 30, 50.0f, 70, 5}};
  for (const Case& cs : cases) {
    const int64_t kvd = int64_t{cs.kv_heads} * cs.hd, qd = int64_t{cs.heads} * cs.hd;
    const int ctx = cs.pos0 + cs.n;
    KVCache c = b.make_kv_cache(1, ctx, kvd, true);
    const auto k = test::random_floats(ctx * kvd, 300 + cs.hd), v = test::random_floats(ctx * kvd, 301 + cs.hd);
    Buffer bk = put(k), bv = put(v);
    b.kv_store(c, 0, 0, bk.data(), bv.data(), ctx);
    const auto q = test::random_floats(cs.n * qd, 302 + cs.hd);
    Buffer bq = put(q);
    AttentionParams p;
    p.n_heads = cs.heads, p.n_kv_heads = cs.kv_heads, p.head_dim = cs.hd, p.q_stride = qd, p.kv_stride = kvd;
    p.scale = 1.0f / std::sqrt(float(cs.hd)), p.window = cs.window, p.softcap = cs.softcap, p.max_ctx = ctx;
    auto stored = [&](bool key, int64_t i) { return double(f16_to_f32(f32_to_f16(key ? k[i] : v[i]))); };
    const std::vector<double> want = attention_reference(p, q, cs.n, cs.pos0, stored);
    const double tol = c.half_storage && GetParam() != std::string("cpu") ? 3e-3 : 1e-5;
    for (const char* flash : {"1", "0"}) {
      setenv("OPTIQ_CUDA_FLASH_PREFILL", flash, 1);
      Buffer out = b.alloc(cs.n * qd);
      b.attention(p, bq.data(), cs.n, cs.pos0, c, 0, out.data());
      unsetenv("OPTIQ_CUDA_FLASH_PREFILL");
      const std::string what = fmt::format("hd {} heads {}/{} window {} cap {} n {} pos {} flash {}", cs.hd, cs.heads,
                                           cs.kv_heads, cs.window, cs.softcap, cs.n, cs.pos0, flash);
      expect_close(get(out, cs.n * qd), want, tol, what.c_str());
    }
  }
}

// The fused steps equal the operations they stand for.
TEST_P(BackendOps, AddRmsNormEqualsAddThenNorm) {
  const int64_t rows = 3, dim = 200;
  const auto x = test::random_floats(rows * dim, 50), y = test::random_floats(rows * dim, 51),
             w = test::random_floats(dim, 52);
  Buffer x1 = put(x), y1 = put(y), w1 = put(w), out1 = b.alloc(rows * dim);
  b.add(x1.data(), y1.data(), rows * dim);
  b.rms_norm(x1.data(), w1.data(), rows, dim, 1e-6f, out1.data());
  Buffer x2 = put(x), y2 = put(y);
  b.add_rms_norm(x2.data(), y2.data(), w1.data(), rows, dim, 1e-6f, y2.data());  // out aliases y
  const auto want_x = get(x1, rows * dim), want = get(out1, rows * dim);
  const auto got_x = get(x2, rows * dim), got = get(y2, rows * dim);
  for (int64_t i = 0; i < rows * dim; ++i) {
    ASSERT_EQ(got_x[i], want_x[i]) << i;
    ASSERT_NEAR(got[i], want[i], 1e-6f * (1 + std::abs(want[i]))) << i;
  }
}

// A block's last product, the residual add and the next norm in one step;
// the norm's output then feeds another product (a GPU hands it over as int8
// blocks made by the norm: they must be the ones the product would make).
// (Rows of 8320 weights: a GPU splits rows that wide over two warps.)
TEST_P(BackendOps, MatmulAddRmsNormEqualsMatmulThenAddNorm) {
  for (const int64_t cols : {384, 8320}) {
    const int64_t dim = 256, next_rows = 9;
    const std::vector<StorageCase> cases = storage_cases(dim, cols);
    const std::vector<StorageCase> nexts = storage_cases(next_rows, dim);
    const auto w = test::random_floats(dim, 81);
    Buffer bw = put(w);
    for (bool fast : {false, true}) {
      const Int8Decode numerics(fast);
      for (size_t c = 0; c < cases.size(); ++c) {
        const auto h = b.upload(cases[c].view);
        const auto hn = b.upload(nexts[c].view);
        for (int64_t n : {1, 3, 12}) {
          const auto a = test::random_floats(n * cols, 82 + n), x = test::random_floats(n * dim, 83 + n);
          Buffer ba = put(a), x1 = put(x), y1 = b.alloc(n * dim), z1 = b.alloc(n * next_rows);
          b.matmul(*h, ba.data(), n, y1.data());
          b.add_rms_norm(x1.data(), y1.data(), bw.data(), n, dim, 1e-5f, y1.data());
          b.matmul(*hn, y1.data(), n, z1.data());
          Buffer x2 = put(x), y2 = b.alloc(n * dim), z2 = b.alloc(n * next_rows);
          b.matmul_add_rms_norm(*h, ba.data(), n, y2.data(), x2.data(), bw.data(), 1e-5f, y2.data());
          b.matmul(*hn, y2.data(), n, z2.data());
          const std::string what = cases[c].name + " cols=" + std::to_string(cols) + " n=" + std::to_string(n) +
                                   (fast ? " fast" : " exact");
          const auto want_x = get(x1, n * dim), got_x = get(x2, n * dim);
          for (int64_t i = 0; i < n * dim; ++i) ASSERT_EQ(got_x[i], want_x[i]) << what << " residual " << i;
          const auto want = get(y1, n * dim), got = get(y2, n * dim);
          for (int64_t i = 0; i < n * dim; ++i)
            ASSERT_NEAR(got[i], want[i], 1e-6f * (1 + std::abs(want[i]))) << what << " norm " << i;
          // The next product from the fused step's output, against the same product of a fresh copy of it.
          Buffer y3 = put(got), z3 = b.alloc(n * next_rows);
          b.matmul(*hn, y3.data(), n, z3.data());
          const auto z_fused = get(z2, n * next_rows), z_fresh = get(z3, n * next_rows), z_ref = get(z1, n * next_rows);
          for (int64_t i = 0; i < n * next_rows; ++i) {
            ASSERT_EQ(z_fused[i], z_fresh[i]) << what << " next product " << i;
            ASSERT_NEAR(z_fused[i], z_ref[i], 2e-3f * (1 + std::abs(z_ref[i]))) << what << " next product " << i;
          }
        }
      }
    }
  }
}

// Backend::prefetch_next is a hint: a decode norm, a residual product's norm
// and decode attention give the same bits after a hint as without one, for
// every storage hinted (a GPU prefetches each one's arrays into L2), and a
// hint whose weights were freed before its use is dropped, not followed.
TEST_P(BackendOps, PrefetchHintsChangeNothing) {
  const Int8Decode numerics(true);
  const int64_t dim = 256, hd = 64, heads = 4, kv_heads = 2, qd = heads * hd, kvd = kv_heads * hd;
  const int ctx = 300, pos0 = 150;
  const auto nw = test::random_floats(dim, 90);
  Buffer bnw = put(nw);
  const std::vector<StorageCase> cases = storage_cases(dim, qd);
  const auto h_o = b.upload(cases.back().view);
  std::vector<float> inv(hd / 2);
  for (size_t i = 0; i < inv.size(); ++i) inv[i] = std::pow(10000.0f, -2.0f * float(i) / float(hd));
  Buffer binv = put(inv);
  const auto early = test::random_floats(pos0 * kvd, 91), early_v = test::random_floats(pos0 * kvd, 92);
  const auto x = test::random_floats(dim, 93), a = test::random_floats(qd, 94);
  const auto q = test::random_floats(qd, 95), k = test::random_floats(kvd, 96), v = test::random_floats(kvd, 97);
  // One decode layer's latency-bound steps; `hint` before each (or not).
  auto run = [&](const WeightHandle* hinted) {
    std::vector<std::vector<float>> outs;
    const WeightHandle* ws[] = {hinted};
    auto hint = [&] {
      if (hinted) b.prefetch_next(ws);
    };
    Buffer bx = put(x), bn = b.alloc(dim);
    hint();
    b.rms_norm(bx.data(), bnw.data(), 1, dim, 1e-5f, bn.data());
    outs.push_back(get(bn, dim));
    Buffer ba = put(a), by = b.alloc(dim);
    hint();
    b.matmul_add_rms_norm(*h_o, ba.data(), 1, by.data(), bx.data(), bnw.data(), 1e-5f, by.data());
    outs.push_back(get(by, dim));
    outs.push_back(get(bx, dim));
    KVCache c = b.make_kv_cache(1, ctx, kvd, true);
    Buffer e = put(early), ev = put(early_v);
    b.kv_store(c, 0, 0, e.data(), ev.data(), pos0);
    Backend::RopeStore rs;
    rs.n_heads = heads, rs.n_kv_heads = kv_heads, rs.head_dim = hd, rs.rot_dim = hd, rs.q_stride = qd;
    rs.inv_freq = binv.data();
    AttentionParams p;
    p.n_heads = heads, p.n_kv_heads = kv_heads, p.head_dim = hd, p.q_stride = qd, p.kv_stride = kvd;
    p.scale = 0.125f, p.max_ctx = ctx;
    Buffer bq = put(q), bk = put(k), bv = put(v), bo = b.alloc(qd);
    hint();
    b.rope_store_attention(rs, bq.data(), bk.data(), bv.data(), 1, pos0, c, 0, p, bo.data());
    outs.push_back(get(bo, qd));
    return outs;
  };
  const auto want = run(nullptr);
  for (const StorageCase& sc : cases) {
    const auto h = b.upload(sc.view);
    EXPECT_EQ(run(h.get()), want) << sc.name;
  }
  // A hint, then its weights freed: the norm after it must not prefetch them (nor fail).
  {
    auto gone = b.upload(cases[1].view);
    const WeightHandle* ws[] = {gone.get()};
    b.prefetch_next(ws);
    gone.reset();
    Buffer bx = put(x), bn = b.alloc(dim);
    b.rms_norm(bx.data(), bnw.data(), 1, dim, 1e-5f, bn.data());
    EXPECT_EQ(get(bn, dim), want[0]);
  }
}

// Under fast numerics a GPU's attention and gated products also write their
// outputs as int8 blocks for the product that follows: that product must
// give exactly what it gives on a fresh copy of the same values.
TEST_P(BackendOps, ProducersHandOverInt8BlocksExactly) {
  const Int8Decode numerics(true);
  const int hd = 64, heads = 8, kv_heads = 2, max_ctx = 200;
  const int64_t qd = heads * hd, kvd = kv_heads * hd, hid = 128, out_rows = 64;
  const auto q4 = [](int64_t rows, int64_t cols) {
    for (StorageCase& c : storage_cases(rows, cols))
      if (c.name == "q4g64") return c;
    throw Error("no q4g64 storage case");
  };
  const StorageCase o = q4(out_rows, qd), gate = q4(hid, out_rows), down = q4(out_rows, hid);
  const auto ho = b.upload(o.view), hg = b.upload(gate.view), hdn = b.upload(down.view);
  KVCache c = b.make_kv_cache(1, max_ctx, kvd, false);
  const auto k = test::random_floats(max_ctx * kvd, 93), v = test::random_floats(max_ctx * kvd, 94);
  Buffer bk = put(k), bv = put(v);
  b.kv_store(c, 0, 0, bk.data(), bv.data(), max_ctx);
  for (int64_t n : {1, 3}) {
    for (int pos : {7, 150}) {
      const auto q = test::random_floats(n * qd, 95 + pos, 0.3f);
      Buffer bq = put(q), att = b.alloc(n * qd), y1 = b.alloc(n * out_rows), y2 = b.alloc(n * out_rows);
      AttentionParams p;
      p.n_heads = heads, p.n_kv_heads = kv_heads, p.head_dim = hd, p.q_stride = qd, p.kv_stride = kvd;
      p.scale = 0.125f, p.max_ctx = max_ctx;
      b.attention(p, bq.data(), n, pos - static_cast<int>(n) + 1, c, 0, att.data());
      b.matmul(*ho, att.data(), n, y1.data());
      Buffer att2 = put(get(att, n * qd));
      b.matmul(*ho, att2.data(), n, y2.data());
      const auto g1 = get(y1, n * out_rows), g2 = get(y2, n * out_rows);
      for (int64_t i = 0; i < n * out_rows; ++i) ASSERT_EQ(g1[i], g2[i]) << "o after attention, n=" << n << " pos " << pos << " [" << i << "]";
      // gated (hid rows, a multiple of 32) then down
      const auto x = test::random_floats(n * out_rows, 96 + n);
      Buffer bx = put(x), h = b.alloc(n * hid), scratch = b.alloc(n * hid), z1 = b.alloc(n * out_rows),
             z2 = b.alloc(n * out_rows);
      b.gated_matmul(*hg, *hg, GateAct::Silu, false, bx.data(), n, h.data(), scratch.data());
      b.matmul(*hdn, h.data(), n, z1.data());
      Buffer h2 = put(get(h, n * hid));
      b.matmul(*hdn, h2.data(), n, z2.data());
      const auto d1 = get(z1, n * out_rows), d2 = get(z2, n * out_rows);
      for (int64_t i = 0; i < n * out_rows; ++i) ASSERT_EQ(d1[i], d2[i]) << "down after gated, n=" << n << " [" << i << "]";
    }
  }
}

// Decode attention at the head widths of real models (64, 128, 256), GQA
// groups 1..8, with windows and soft-caps, at positions short of one key
// range and long enough for many, against a double-precision reference on
// the values the cache holds. Under fast numerics a GPU takes its
// single-pass kernel here.
TEST_P(BackendOps, DecodeAttentionRealHeadWidths) {
  struct Case {
    int hd, heads, kv_heads, window;
    float softcap;
  };
  const Case cases[] = {{128, 32, 8, 0, 0.0f}, {128, 8, 8, 0, 0.0f},  {64, 16, 2, 100, 0.0f},
                        {256, 8, 2, 0, 50.0f}, {128, 7, 1, 0, 0.0f},   {64, 12, 4, 0, 0.0f},
                        {128, 24, 3, 0, 30.0f}, {128, 16, 2, 64, 0.0f}};
  // Up to 2100 keys: many key ranges for a GPU's decode kernels to combine.
  const int max_ctx = 2100;
  for (bool fast : {false, true}) {
    const Int8Decode numerics(fast);
    for (const Case& cs : cases) {
      const int64_t kvd = int64_t{cs.kv_heads} * cs.hd, qd = int64_t{cs.heads} * cs.hd;
      KVCache c = b.make_kv_cache(1, max_ctx, kvd, false);
      const auto k = test::random_floats(max_ctx * kvd, 90), v = test::random_floats(max_ctx * kvd, 91);
      Buffer bk = put(k), bv = put(v);
      b.kv_store(c, 0, 0, bk.data(), bv.data(), max_ctx);
      for (int pos : {0, 5, 31, 40, 257, 299, 300, 1500, max_ctx - 1}) {
        const auto q = test::random_floats(qd, 92 + pos, 0.2f);
        Buffer bq = put(q), out = b.alloc(qd);
        AttentionParams p;
        p.n_heads = cs.heads;
        p.n_kv_heads = cs.kv_heads;
        p.head_dim = cs.hd;
        p.q_stride = qd;
        p.kv_stride = kvd;
        p.scale = 1.0f / std::sqrt(float(cs.hd));
        p.window = cs.window;
        p.softcap = cs.softcap;
        p.max_ctx = max_ctx;
        b.attention(p, bq.data(), 1, pos, c, 0, out.data());
        auto stored = [&](const std::vector<float>& a, int64_t i) {
          return c.half_storage ? double(f16_to_f32(f32_to_f16(a[i]))) : double(a[i]);
        };
        std::vector<double> want(qd);
        const int t0 = cs.window > 0 ? std::max(0, pos - cs.window + 1) : 0;
        for (int h = 0; h < cs.heads; ++h) {
          const int64_t kvo = (h / (cs.heads / cs.kv_heads)) * cs.hd;
          std::vector<double> sc;
          double mx = -INFINITY, z = 0;
          for (int t = t0; t <= pos; ++t) {
            double d = 0;
            for (int j = 0; j < cs.hd; ++j) d += double(q[h * cs.hd + j]) * stored(k, t * kvd + kvo + j);
            d *= p.scale;
            if (cs.softcap > 0) d = cs.softcap * std::tanh(d / cs.softcap);
            sc.push_back(d);
            mx = std::max(mx, d);
          }
          for (double& e : sc) z += (e = std::exp(e - mx));
          for (int j = 0; j < cs.hd; ++j) {
            double o = 0;
            for (int t = t0; t <= pos; ++t) o += sc[t - t0] / z * stored(v, t * kvd + kvo + j);
            want[h * cs.hd + j] = o;
          }
        }
        const std::string what = fmt::format("hd {} heads {}/{} window {} softcap {} pos {}{}", cs.hd, cs.heads,
                                             cs.kv_heads, cs.window, cs.softcap, pos, fast ? " fast" : " exact");
        expect_close(get(out, qd), want, 2e-5, what.c_str());
      }
    }
  }
}

// A GPU's decode attention may load cache rows before the step's position
// ahead of the q/k/v product it waits on, when no kernel has written the
// layer there since the stream's last copy (DevKV::settled); rows written by
// a kernel just before it must not be loaded early. Both ways give the same
// bits, in fast numerics (the single-pass kernel) and exact.
TEST_P(BackendOps, DecodeAttentionSameBitsAfterAStoreAndAfterACopy) {
  const int hd = 128, heads = 8, kv_heads = 2, max_ctx = 600;
  const int64_t kvd = int64_t{kv_heads} * hd, qd = int64_t{heads} * hd;
  AttentionParams p;
  p.n_heads = heads, p.n_kv_heads = kv_heads, p.head_dim = hd, p.q_stride = qd, p.kv_stride = kvd;
  p.scale = 1.0f / std::sqrt(float(hd)), p.max_ctx = max_ctx;
  for (bool fast : {false, true}) {
    const Int8Decode numerics(fast);
    for (int pos : {3, 64, 513}) {
      const auto k = test::random_floats((pos + 1) * kvd, 300 + pos), v = test::random_floats((pos + 1) * kvd, 301 + pos);
      const auto q = test::random_floats(qd, 302 + pos, 0.3f);
      Buffer bk = put(k), bv = put(v), bq = put(q), after_store = b.alloc(qd), after_copy = b.alloc(qd);
      KVCache c = b.make_kv_cache(1, max_ctx, kvd, false);
      b.kv_store(c, 0, 0, bk.data(), bv.data(), pos + 1);  // every row, just before the attention
      b.attention(p, bq.data(), 1, pos, c, 0, after_store.data());
      const auto want = get(after_store, qd);  // (a copy: the rows are settled now)
      b.attention(p, bq.data(), 1, pos, c, 0, after_copy.data());
      EXPECT_EQ(get(after_copy, qd), want) << "pos " << pos << (fast ? " fast" : " exact");
    }
  }
}

TEST_P(BackendOps, MatmulGroupEqualsSeparateProducts) {
  // q, k and v of one storage (a GPU fuses them into one launch) and mixed
  // with an fp32 k (one product at a time): the same numbers either way.
  const int64_t cols = 256;
  const std::vector<StorageCase> qs = storage_cases(19, cols), ks = storage_cases(5, cols), vs = storage_cases(7, cols);
  for (bool fast : {false, true}) {
    const Int8Decode numerics(fast);
    for (size_t c = 0; c < qs.size(); ++c) {
      const auto hq = b.upload(qs[c].view), hk = b.upload(ks[c].view), hv = b.upload(vs[c].view);
      const auto hk32 = b.upload(ks.front().view);
      for (int64_t n : {1, 3}) {
        const auto x = test::random_floats(n * cols, 70 + n);
        for (const WeightHandle* k : {hk.get(), hk32.get()}) {
          const WeightHandle* const ws[] = {hq.get(), k, hv.get()};
          const int64_t rows[] = {19, 5, 7};
          expect_group_equals_products(
              ws, rows, x, n, qs[c].name + (k == hk.get() ? " same" : " mixed") + (fast ? " fast" : " exact"));
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

// q, k and v of different widths and groups, as an optiq plan mixes them (a
// GPU runs one or two widths in one launch, three one product at a time): the
// same numbers as three products, with rows that pair up and rows that do not.
TEST_P(BackendOps, MatmulGroupOfMixedWidthsEqualsSeparateProducts) {
  struct Mix {
    int bits[3], group[3];
  };
  const Mix mixes[] = {{{4, 4, 6}, {64, 64, 64}}, {{3, 5, 3}, {32, 128, 64}}, {{8, 2, 8}, {64, 32, 64}},
                       {{4, 6, 8}, {64, 64, 64}}, {{4, 4, 4}, {64, 32, 128}}};
  const int64_t cols = 512;
  for (bool fast : {false, true}) {
    const Int8Decode numerics(fast);
    for (const Mix& mix : mixes)
      for (const int64_t q_rows : {20, 19}) {
        const int64_t rows[] = {q_rows, 6, 10};
        std::vector<AffineMatrix> mats;
        for (int i = 0; i < 3; ++i) {
          const auto w = test::random_floats(rows[i] * cols, 500 + i);
          QuantizeOptions o;
          o.bf16_scales = i == 1;
          mats.push_back(quantize(w.data(), rows[i], cols, AffineFormat{mix.bits[i], mix.group[i]}, o));
        }
        std::vector<std::unique_ptr<WeightHandle>> hs;
        for (int i = 0; i < 3; ++i) hs.push_back(b.upload(WeightView{rows[i], cols, mats[i].view()}));
        const WeightHandle* const ws[] = {hs[0].get(), hs[1].get(), hs[2].get()};
        for (int64_t n : {1, 3}) {
          expect_group_equals_products(ws, rows, test::random_floats(n * cols, 510 + n), n,
                                       fmt::format("q{}/k{}/v{} q rows {}{}", mix.bits[0], mix.bits[1], mix.bits[2],
                                                   q_rows, fast ? " fast" : " exact"));
          if (HasFatalFailure()) return;
        }
      }
  }
}

TEST_P(BackendOps, GatedMatmulEqualsTwoProductsAndActivation) {
  const int64_t rows = 11, cols = 256;
  const std::vector<StorageCase> gates = storage_cases(rows, cols);
  const StorageCase& f32_up = gates.front();  // the f32 storage: a mixed pair with every gate
  for (bool fast : {false, true}) {
    const Int8Decode numerics(fast);
    for (const StorageCase& g : gates) {
      const auto hg = b.upload(g.view);
      const auto hu = b.upload(f32_up.view);  // the CPU's handle borrows the view: it must outlive hu
      for (int64_t n : {1, 3, 12}) {
        for (GateAct act : {GateAct::Silu, GateAct::GeluTanh}) {
          const auto x = test::random_floats(n * cols, 60 + n);
          Buffer bx = put(x), want = b.alloc(n * rows), up = b.alloc(n * rows), got = b.alloc(n * rows),
                 scratch = b.alloc(n * rows);
          for (const WeightHandle* u : {hg.get(), hu.get()}) {
            b.matmul(*hg, bx.data(), n, want.data());
            b.matmul(*u, bx.data(), n, up.data());
            b.gated_activation(act, false, want.data(), up.data(), n * rows);
            b.gated_matmul(*hg, *u, act, false, bx.data(), n, got.data(), scratch.data());
            const auto w = get(want, n * rows), gv = get(got, n * rows);
            for (int64_t i = 0; i < n * rows; ++i)
              ASSERT_NEAR(gv[i], w[i], 1e-4f * (1 + std::abs(w[i])))
                  << g.name << (u == hg.get() ? " pair" : " mixed") << " n=" << n << (fast ? " fast" : " exact");
          }
        }
      }
    }
  }
}

// (n = 4: a decode step's few rows; 21: a prefill's, which a GPU does a row a block.)
TEST_P(BackendOps, RopeKvStoreEqualsRopeThenStore) {
  for (const int64_t n : {4, 21}) {
    const int heads = 4, kv_heads = 2, hd = 16, rot = 12, layers = 2, ctx = 30, pos0 = 3;
    const int64_t qd = heads * hd + 8, kvd = kv_heads * hd;
    const std::vector<float> inv = {1.0f, 0.5f, 0.2f, 0.1f, 0.05f, 0.01f};
    const auto q = test::random_floats(n * qd, 70), k = test::random_floats(n * kvd, 71), v = test::random_floats(n * kvd, 72);
    Buffer bf = put(inv);
    KVCache c1 = b.make_kv_cache(layers, ctx, kvd, false), c2 = b.make_kv_cache(layers, ctx, kvd, false);
    Buffer q1 = put(q), k1 = put(k), v1 = put(v), q2 = put(q), k2 = put(k), v2 = put(v);
    // Positions before pos0 hold the same keys and values in both caches.
    const auto early = test::random_floats(pos0 * kvd, 73);
    Buffer e = put(early);
    b.kv_store(c1, 1, 0, e.data(), e.data(), pos0);
    b.kv_store(c2, 1, 0, e.data(), e.data(), pos0);
    b.rope(q1.data(), n, qd, heads, hd, rot, pos0, bf.data(), 1.1f);
    b.rope(k1.data(), n, kvd, kv_heads, hd, rot, pos0, bf.data(), 1.1f);
    b.kv_store(c1, 1, pos0, k1.data(), v1.data(), n);
    Backend::RopeStore rs;
    rs.n_heads = heads, rs.n_kv_heads = kv_heads, rs.head_dim = hd, rs.rot_dim = rot, rs.q_stride = qd;
    rs.inv_freq = bf.data(), rs.mscale = 1.1f;
    b.rope_kv_store(rs, q2.data(), k2.data(), v2.data(), n, pos0, c2, 1);
    EXPECT_EQ(get(q2, n * qd), get(q1, n * qd));
    // The caches through attention (their layout is the backend's): one query sees all stored keys.
    AttentionParams p;
    p.n_heads = heads, p.n_kv_heads = kv_heads, p.head_dim = hd, p.q_stride = qd, p.kv_stride = kvd, p.scale = 0.3f;
    p.max_ctx = ctx;
    Buffer o1 = b.alloc(qd), o2 = b.alloc(qd);
    b.attention(p, q1.data() + (n - 1) * qd, 1, pos0 + n - 1, c1, 1, o1.data());
    b.attention(p, q1.data() + (n - 1) * qd, 1, pos0 + n - 1, c2, 1, o2.data());
    const auto a1 = get(o1, heads * hd), a2 = get(o2, heads * hd);
    for (int i = 0; i < heads * hd; ++i) ASSERT_NEAR(a2[i], a1[i], 1e-6f * (1 + std::abs(a1[i]))) << "n " << n << " [" << i << "]";
  }
}

// RoPE, cache store and attention in one call (a GPU does the first two
// inside its decode attention kernel): the same output and the same cache as
// the three operations, for real head widths, one query and several.
TEST_P(BackendOps, RopeStoreAttentionEqualsTheSteps) {
  struct Case {
    int hd, heads, kv_heads, rot, window;
    float softcap;
  };
  const Case cases[] = {{128, 8, 2, 128, 0, 0.0f}, {64, 8, 4, 64, 20, 0.0f}, {256, 4, 2, 256, 0, 30.0f},
                        {128, 7, 1, 128, 0, 0.0f}, {64, 4, 2, 32, 0, 0.0f}};
  const int ctx = 800;  // position 700: the new key in the last of several key ranges
  for (bool fast : {false, true}) {
    const Int8Decode numerics(fast);
    for (const Case& cs : cases)
      for (int64_t n : {1, 3})
        for (int pos0 : {0, 37, 100, 700}) {
          const int64_t qd = int64_t{cs.heads} * cs.hd, kvd = int64_t{cs.kv_heads} * cs.hd;
          std::vector<float> inv(cs.rot / 2);
          for (size_t i = 0; i < inv.size(); ++i) inv[i] = std::pow(10000.0f, -2.0f * float(i) / float(cs.rot));
          Buffer bf = put(inv);
          const auto q = test::random_floats(n * qd, 200 + pos0), k = test::random_floats(n * kvd, 201 + pos0),
                     v = test::random_floats(n * kvd, 202 + pos0);
          KVCache c1 = b.make_kv_cache(1, ctx, kvd, false), c2 = b.make_kv_cache(1, ctx, kvd, false);
          if (pos0 > 0) {
            const auto early = test::random_floats(pos0 * kvd, 203), early_v = test::random_floats(pos0 * kvd, 204);
            Buffer e = put(early), ev = put(early_v);
            b.kv_store(c1, 0, 0, e.data(), ev.data(), pos0);
            b.kv_store(c2, 0, 0, e.data(), ev.data(), pos0);
          }
          Backend::RopeStore rs;
          rs.n_heads = cs.heads, rs.n_kv_heads = cs.kv_heads, rs.head_dim = cs.hd, rs.rot_dim = cs.rot;
          rs.q_stride = qd, rs.inv_freq = bf.data(), rs.mscale = 1.05f;
          AttentionParams p;
          p.n_heads = cs.heads, p.n_kv_heads = cs.kv_heads, p.head_dim = cs.hd, p.q_stride = qd, p.kv_stride = kvd;
          p.scale = 1.0f / std::sqrt(float(cs.hd)), p.window = cs.window, p.softcap = cs.softcap, p.max_ctx = ctx;
          Buffer q1 = put(q), k1 = put(k), v1 = put(v), o1 = b.alloc(n * qd);
          b.rope_kv_store(rs, q1.data(), k1.data(), v1.data(), n, pos0, c1, 0);
          b.attention(p, q1.data(), n, pos0, c1, 0, o1.data());
          Buffer q2 = put(q), k2 = put(k), v2 = put(v), o2 = b.alloc(n * qd);
          b.rope_store_attention(rs, q2.data(), k2.data(), v2.data(), n, pos0, c2, 0, p, o2.data());
          const std::string what = fmt::format("hd {} heads {}/{} rot {} n {} pos {}{}", cs.hd, cs.heads, cs.kv_heads,
                                               cs.rot, n, pos0, fast ? " fast" : " exact");
          const auto a1 = get(o1, n * qd), a2 = get(o2, n * qd);
          for (int64_t i = 0; i < n * qd; ++i) ASSERT_NEAR(a2[i], a1[i], 1e-6f * (1 + std::abs(a1[i]))) << what << " [" << i << "]";
          // The caches hold the same keys and values: a later query sees the same through both.
          const auto q3 = test::random_floats(qd, 205);
          Buffer bq3 = put(q3), z = put(std::vector<float>(kvd, 0.5f)), p1 = b.alloc(qd), p2 = b.alloc(qd);
          b.kv_store(c1, 0, pos0 + n, z.data(), z.data(), 1);
          b.kv_store(c2, 0, pos0 + n, z.data(), z.data(), 1);
          b.attention(p, bq3.data(), 1, pos0 + static_cast<int>(n), c1, 0, p1.data());
          b.attention(p, bq3.data(), 1, pos0 + static_cast<int>(n), c2, 0, p2.data());
          EXPECT_EQ(get(p1, qd), get(p2, qd)) << what << " (cache contents)";
        }
  }
}

TEST_P(BackendOps, GramSumsAndQuadraticForm) {
  const int64_t n = 45, cols = 37, rows = 11;
  const auto x = test::random_floats(n * cols, 40), d = test::random_floats(rows * cols, 41);
  // Two calls accumulate: G = sum over both batches of x^T x.
  std::vector<double> g(cols * cols, 0.0);
  for (int rep = 0; rep < 2; ++rep)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t a = 0; a < cols; ++a)
        for (int64_t c = 0; c < cols; ++c) g[a * cols + c] += double(x[i * cols + a]) * x[i * cols + c];
  double want = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t a = 0; a < cols; ++a)
      for (int64_t c = 0; c < cols; ++c) want += double(d[r * cols + a]) * g[a * cols + c] * d[r * cols + c];
  // Exact numerics hold fp32 accuracy; fast numerics may use TF32 tensor
  // cores (10-bit mantissa), which a sensitivity proxy tolerates.
  const bool fast = kernels::decode_int8_enabled();
  for (const bool exact : {true, false}) {
    kernels::set_decode_int8(!exact);
    const double tol = exact ? 1e-5 : 1e-2;
    Buffer bx = put(x), bg = put(std::vector<float>(cols * cols, 0.0f));
    b.gram_add(bx.data(), n, cols, bg.data());
    b.gram_add(bx.data(), n, cols, bg.data());
    expect_close(get(bg, cols * cols), g, tol, exact ? "gram_add exact" : "gram_add fast");
    Buffer bd = put(d);
    EXPECT_NEAR(b.gram_quadratic(bd.data(), rows, cols, bg.data()), want, tol * want) << (exact ? "exact" : "fast");
  }
  kernels::set_decode_int8(fast);
}

TEST_P(BackendOps, RowsQuadraticEqualsTheGramForm) {
  // sum_t ||d x_t||^2 from the inputs themselves (the profiler's form when
  // there are fewer tokens than input channels), against double arithmetic.
  const int64_t n = 13, cols = 41, rows = 29;
  const auto x = test::random_floats(n * cols, 44), d = test::random_floats(rows * cols, 45);
  double want = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < n; ++t) {
      double dot = 0;
      for (int64_t k = 0; k < cols; ++k) dot += double(d[r * cols + k]) * x[t * cols + k];
      want += dot * dot;
    }
  const bool fast = kernels::decode_int8_enabled();
  for (const bool exact : {true, false}) {
    kernels::set_decode_int8(!exact);
    const double tol = exact ? 1e-5 : 1e-2;
    Buffer bx = put(x), bd = put(d);
    EXPECT_NEAR(b.rows_quadratic(bd.data(), rows, cols, bx.data(), n), want, tol * want) << (exact ? "exact" : "fast");
    EXPECT_EQ(b.rows_quadratic(bd.data(), rows, cols, bx.data(), 0), 0.0);
  }
  kernels::set_decode_int8(fast);
}

TEST_P(BackendOps, LogSoftmaxAndKlAgainstDoubleReference) {
  const int64_t rows = 5, vocab = 1031;
  auto logits = test::random_floats(rows * vocab, 42), ref = test::random_floats(rows * vocab, 43);
  for (auto& v : logits) v *= 8.0f;  // peaked distributions, as a model's
  for (auto& v : ref) v *= 8.0f;
  auto log_softmax_d = [&](const std::vector<float>& x, int64_t r) {
    double m = -INFINITY, s = 0;
    for (int64_t v = 0; v < vocab; ++v) m = std::max(m, double(x[r * vocab + v]));
    for (int64_t v = 0; v < vocab; ++v) s += std::exp(x[r * vocab + v] - m);
    std::vector<double> out(vocab);
    for (int64_t v = 0; v < vocab; ++v) out[v] = x[r * vocab + v] - m - std::log(s);
    return out;
  };
  std::vector<double> want_lp;
  for (int64_t r = 0; r < rows; ++r) {
    auto lp = log_softmax_d(ref, r);
    want_lp.insert(want_lp.end(), lp.begin(), lp.end());
  }
  Buffer bref = put(ref);
  b.log_softmax_rows(bref.data(), rows, vocab);
  const std::vector<float> lp = get(bref, rows * vocab);
  expect_close(lp, want_lp, 1e-6, "log_softmax_rows");

  double want_kl = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const auto lq = log_softmax_d(logits, r);
    double kl = 0;
    for (int64_t v = 0; v < vocab; ++v) kl += std::exp(double(lp[r * vocab + v])) * (lp[r * vocab + v] - lq[v]);
    want_kl += kl;
  }
  Buffer bl = put(logits);
  EXPECT_NEAR(b.kl_sum(bref.data(), false, bl.data(), rows, vocab), want_kl, 1e-9 + 1e-7 * want_kl);
  // bf16 references: the same sum over the bf16-rounded log-probabilities.
  std::vector<uint16_t> lp16(lp.size());
  double want16 = 0;
  for (size_t i = 0; i < lp.size(); ++i) lp16[i] = f32_to_bf16(lp[i]);
  for (int64_t r = 0; r < rows; ++r) {
    const auto lq = log_softmax_d(logits, r);
    double kl = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const double p = bf16_to_f32(lp16[r * vocab + v]);
      kl += std::exp(p) * (p - lq[v]);
    }
    want16 += std::max(kl, 0.0);
  }
  // bf16 words travel two to a float (rows x vocab is odd here: one padding word).
  lp16.push_back(0);
  std::vector<float> words(lp16.size() / 2);
  std::memcpy(words.data(), lp16.data(), words.size() * sizeof(float));
  Buffer b16 = put(words);
  EXPECT_NEAR(b.kl_sum(b16.data(), true, bl.data(), rows, vocab), want16, 1e-9 + 1e-7 * want16);
  EXPECT_GT(want_kl, 1.0);  // the distributions differ: the test measures something
}

// The greedy pick on the backend against the host's argmax: sizes around
// a block's and the grid's strides, ties (the first wins), NaNs skipped,
// every value NaN (-1), only -inf, one value.
TEST_P(BackendOps, ArgmaxToHostAsTheHost) {
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> cases;
  for (int64_t n : {1, 7, 257, 2049, 49153, 128256, 262147}) {
    auto x = test::random_floats(n, 17 + static_cast<uint32_t>(n), 3.0f);
    if (n > 300) {  // a tie for the maximum, its later copy first in the array's blocks order
      const int64_t at = static_cast<int64_t>(std::max_element(x.begin(), x.end()) - x.begin());
      x[n / 3] = x[at];
      x[n - 2] = x[at];
    }
    cases.push_back(x);
    for (int64_t i = 0; i < n; i += 5) x[i] = nan;  // NaNs skipped, the first value among them
    cases.push_back(x);
  }
  cases.push_back(std::vector<float>(1000, nan));
  cases.push_back(std::vector<float>(3000, -inf));
  auto negative = test::random_floats(5000, 9);
  for (float& v : negative) v = -1.0f - std::abs(v);
  cases.push_back(negative);
  for (const auto& x : cases) {
    Buffer bx = put(x);
    int32_t got = -7;
    b.argmax_to_host(bx.data(), static_cast<int64_t>(x.size()), &got);
    EXPECT_EQ(got, argmax(x.data(), static_cast<int64_t>(x.size()))) << x.size() << " values";
  }
  int32_t none = -7;
  b.argmax_to_host(nullptr, 0, &none);
  EXPECT_EQ(none, -1);
}

TEST_P(BackendOps, RowSquareSums) {
  const int64_t rows = 1037, cols = 45;  // rows not a multiple of a block's rows
  const auto d = test::random_floats(rows * cols, 44);
  std::vector<double> got(rows, -1.0);
  Buffer bd = put(d);
  b.row_sq_sums(bd.data(), rows, cols, got.data());
  for (int64_t r = 0; r < rows; ++r) {
    double want = 0;
    for (int64_t j = 0; j < cols; ++j) want += double(d[r * cols + j]) * d[r * cols + j];
    ASSERT_NEAR(got[r], want, 1e-12 * (1 + want)) << "row " << r;
  }
}

// The accuracy path's quantize-dequantize: min/max exactly as the host's
// (up to a last-bit multiply-add), search as good as the host's search.
TEST_P(BackendOps, FakeQuantizeAffineAsTheHost) {
  const int64_t rows = 7;
  for (const auto& [bits, group, bf16] : {std::tuple{2, 32, false}, {3, 64, true}, {4, 128, false}, {8, 64, false}}) {
    const int64_t cols = 3 * group;
    auto w = test::random_floats(rows * cols, 44 + bits);
    w[5] = 0.9f;  // an outlier the search may clip
    for (int64_t j = 0; j < group; ++j) w[cols + j] = 0.25f;  // a constant group
    const TensorFormat fmt = AffineFormat{bits, static_cast<int>(group)};
    auto sq_err = [&](const std::vector<float>& dq) {
      double e = 0;
      for (size_t i = 0; i < w.size(); ++i) e += (double(w[i]) - dq[i]) * (double(w[i]) - dq[i]);
      return e;
    };
    Buffer bw = put(w), out = b.alloc(rows * cols);
    for (QuantMethod method : {QuantMethod::MinMax, QuantMethod::Search}) {
      QuantizeOptions qo;
      qo.method = method;
      qo.bf16_scales = bf16;
      const std::vector<float> host = fake_quantize(fmt, w.data(), rows, cols, qo);
      const std::string what = fmt::format("{}-bit g{} {}", bits, group, method == QuantMethod::MinMax ? "minmax" : "search");
      ASSERT_TRUE(b.fake_quantize(fmt, qo, bw.data(), rows, cols, false, out.data())) << what;
      const std::vector<float> got = get(out, rows * cols);
      if (method == QuantMethod::MinMax) {
        for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], host[i], 1e-6 * (1 + std::abs(host[i]))) << what << " " << i;
      } else {
        EXPECT_LE(sq_err(got), sq_err(host) * 1.002 + 1e-12) << what;
        const std::vector<float> mm = fake_quantize(fmt, w.data(), rows, cols, {.method = QuantMethod::MinMax, .bf16_scales = bf16});
        EXPECT_LE(sq_err(got), sq_err(mm) + 1e-12) << what;
      }
      ASSERT_TRUE(b.fake_quantize(fmt, qo, bw.data(), rows, cols, true, out.data())) << what;
      const std::vector<float> err = get(out, rows * cols);
      for (size_t i = 0; i < err.size(); ++i) ASSERT_NEAR(err[i], w[i] - got[i], 1e-6) << what << " error " << i;
    }
    // The search weighted per input column (the profile's weighted rounding):
    // as good as the host's on the weighted error, and it does weigh (the
    // heavy columns' error below the unweighted search's).
    std::vector<float> imp = test::random_floats(cols, 60 + bits);
    for (auto& v : imp) v = 0.05f + v * v;
    for (int64_t j = 0; j < cols; j += 7) imp[j] *= 40.0f;
    auto weighted_err = [&](const std::vector<float>& dq, bool heavy_only) {
      double e = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; j += heavy_only ? 7 : 1)
          e += imp[j] * (double(w[r * cols + j]) - dq[r * cols + j]) * (double(w[r * cols + j]) - dq[r * cols + j]);
      return e;
    };
    QuantizeOptions wq;
    wq.method = QuantMethod::Search;
    wq.bf16_scales = bf16;
    const std::vector<float> plain = fake_quantize(fmt, w.data(), rows, cols, wq);
    wq.importance = imp.data();
    const std::vector<float> host = fake_quantize(fmt, w.data(), rows, cols, wq);
    const std::string what = fmt::format("{}-bit g{} weighted search", bits, group);
    ASSERT_TRUE(b.fake_quantize(fmt, wq, bw.data(), rows, cols, false, out.data())) << what;
    const std::vector<float> got = get(out, rows * cols);
    EXPECT_LE(weighted_err(got, false), weighted_err(host, false) * 1.002 + 1e-12) << what;
    EXPECT_LT(weighted_err(got, true), weighted_err(plain, true)) << what;
  }
}

TEST(BackendRegistry, CpuFirstAndUnknownNamed) {
  ASSERT_FALSE(available_backends().empty());
  EXPECT_EQ(available_backends().front()->name(), "cpu");
  EXPECT_EQ(&default_backend(), &cpu_backend());
  try {
    backend_named("tpu");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown backend 'tpu'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cpu"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(All, BackendOps, ::testing::ValuesIn(backend_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace optiq

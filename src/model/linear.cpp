#include "model/linear.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "quant/ggml_to_affine.h"

namespace optiq {

Linear Linear::from_f32(std::vector<float> w, int64_t rows, int64_t cols) {
  check(static_cast<int64_t>(w.size()) == rows * cols, "Linear: {} values for a {}x{} matrix", w.size(), rows, cols);
  auto owned = std::make_shared<const std::vector<float>>(std::move(w));
  Linear l = from_f32_view(owned->data(), rows, cols);
  l.owned_f32_ = std::move(owned);
  return l;
}

Linear Linear::from_f32_view(const float* w, int64_t rows, int64_t cols) {
  Linear l;
  l.view_ = {rows, cols, F32Weights{w}};
  return l;
}

Linear Linear::from_half_view(const uint16_t* w, bool bf16, int64_t rows, int64_t cols) {
  Linear l;
  l.view_ = {rows, cols, HalfWeights{w, bf16}};
  return l;
}

Linear Linear::from_affine(AffineMatrix m) {
  auto owned = std::make_shared<const AffineMatrix>(std::move(m));
  Linear l = from_affine_view(owned->view());
  l.owned_affine_ = std::move(owned);
  return l;
}

Linear Linear::from_affine_view(const AffineMatrixView& v) {
  check_view(v);
  Linear l;
  l.view_ = {v.rows, v.cols, v};
  return l;
}

Linear Linear::from_ggml_view(DType dtype, const void* data, int64_t rows, int64_t cols) {
  KQuantView v{dtype, rows, cols, static_cast<const uint8_t*>(data)};
  check_view(v);
  Linear l;
  l.view_ = {rows, cols, v};
  return l;
}

Linear Linear::from_ggml(DType dtype, std::vector<uint8_t> blocks, int64_t rows, int64_t cols) {
  auto owned = std::make_shared<const std::vector<uint8_t>>(std::move(blocks));
  Linear l = from_ggml_view(dtype, owned->data(), rows, cols);
  check(owned->size() == l.kquant().bytes(), "Linear: {} bytes for a {}x{} {} matrix", owned->size(), rows, cols,
        dtype_name(dtype));
  l.owned_blocks_ = std::move(owned);
  return l;
}

Linear Linear::from_quantized(QuantizedMatrix q) {
  if (q.affine) return from_affine(std::move(*q.affine));
  const GgmlFormat* g = q.format.ggml();
  check(g != nullptr && !q.blocks.empty(), "Linear: a {} matrix without its data", tensor_format_short(q.format));
  // `source` carries its values (quant/format_ggml.cpp); an export keeps the
  // source's own matrix instead (ModuleQuantizer).
  if (g->source) return from_f32(dequantize_matrix(q), q.rows, q.cols);
  if (optiq::is_kquant(g->type)) return from_ggml(g->type, std::move(q.blocks), q.rows, q.cols);  // runs on its own kernels
  TensorView t{"", g->type, {q.rows, q.cols}, q.blocks.data(), q.blocks.size()};
  return from_affine(ggml_to_affine(t));
}

std::vector<float> Linear::to_f32() const {
  if (const auto* a = view_.as<AffineMatrixView>()) return dequantize(*a);
  if (const auto* f = view_.as<F32Weights>()) return std::vector<float>(f->data, f->data + rows() * cols());
  std::vector<float> w(rows() * cols());
  for (int64_t r = 0; r < rows(); ++r) row(r, &w[r * cols()]);
  return w;
}

std::string Linear::format() const {
  if (const auto* kq = view_.as<KQuantView>()) return std::string(dtype_name(kq->dtype));
  if (const auto* a = view_.as<AffineMatrixView>()) return affine_format_name(a->fmt);
  if (const auto* h = view_.as<HalfWeights>()) return h->bf16 ? "BF16" : "F16";
  return "F32";
}

namespace {

// The first weight array of a view (its codes or values).
const void* storage_start(const WeightView& v) {
  if (const auto* a = v.as<AffineMatrixView>()) return a->packed;
  if (const auto* k = v.as<KQuantView>()) return k->data;
  if (const auto* h = v.as<HalfWeights>()) return h->data;
  if (const auto* f = v.as<F32Weights>()) return f->data;
  return nullptr;
}

}  // namespace

bool Linear::shares_storage_with(const Linear& other) const {
  const void* p = storage_start(view_);
  return p != nullptr && p == storage_start(other.view_);
}

void Linear::release_pages() const {
  if (!borrows() || empty()) return;
  const size_t n = static_cast<size_t>(rows() * cols());
  if (const auto* a = view_.as<AffineMatrixView>()) {
    const size_t groups = static_cast<size_t>(a->rows * a->groups_per_row());
    release_file_pages(a->packed, static_cast<size_t>(a->rows * a->words_per_row()) * 4);
    release_file_pages(a->scales, groups * 2);
    if (a->biases) release_file_pages(a->biases, groups * 2);
  } else if (const auto* k = view_.as<KQuantView>()) {
    release_file_pages(k->data, k->bytes());
  } else if (const auto* h = view_.as<HalfWeights>()) {
    release_file_pages(h->data, n * 2);
  } else if (const auto* f = view_.as<F32Weights>()) {
    release_file_pages(f->data, n * 4);
  }
}

void Linear::prefetch_rows(int64_t r0, int64_t r1) const {
  if (!borrows() || r1 <= r0) return;
  const int64_t n = r1 - r0;
  if (const auto* a = view_.as<AffineMatrixView>()) {
    const int64_t wpr = a->words_per_row(), gpr = a->groups_per_row();
    prefetch_file_pages(a->packed + r0 * wpr, static_cast<size_t>(n * wpr) * 4);
    prefetch_file_pages(a->scales + r0 * gpr, static_cast<size_t>(n * gpr) * 2);
    if (a->biases) prefetch_file_pages(a->biases + r0 * gpr, static_cast<size_t>(n * gpr) * 2);
  } else if (const auto* k = view_.as<KQuantView>()) {
    prefetch_file_pages(k->row(r0), k->row_bytes() * static_cast<size_t>(n));
  } else if (const auto* h = view_.as<HalfWeights>()) {
    prefetch_file_pages(h->data + r0 * cols(), static_cast<size_t>(n * cols()) * 2);
  } else if (const auto* f = view_.as<F32Weights>()) {
    prefetch_file_pages(f->data + r0 * cols(), static_cast<size_t>(n * cols()) * 4);
  }
}

}  // namespace optiq

#include "model/matrix_source.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/read_once_stream.h"

namespace optiq {

TensorFormat ModelMatrices::format(const ModuleInfo& mod) const {
  return model_.precision.format_of(mod.path);
}

StreamedMatrices::StreamedMatrices(const Model& model, const PrecisionMap& map, const QuantizeModelOptions& opt)
    : model_(model), opt_(opt), quantizer_(model, map, opt) {
  check(!opt.fake, "streamed export: fake-quantized matrices are never exported");
}

StreamedMatrices::~StreamedMatrices() {
  if (held_) stream_->release(*held_);
}

namespace {

// `source`'s matrix over the same bytes read elsewhere (a ReadOnceStream's window).
Linear same_matrix_at(const Linear& source, const uint8_t* bytes) {
  if (const auto* h = source.view().as<HalfWeights>())
    return Linear::from_half_view(reinterpret_cast<const uint16_t*>(bytes), h->bf16, source.rows(), source.cols());
  return Linear::from_f32_view(reinterpret_cast<const float*>(bytes), source.rows(), source.cols());
}

}  // namespace

const Linear& StreamedMatrices::matrix(const ModuleInfo& mod) {
  if (current_ && current_->path == mod.path) return made_;
  made_ = {};  // the previous matrix's memory first
  current_.reset();
  if (held_) stream_->release(*held_);
  held_.reset();
  const Linear& source = module_linear(model_.weights, mod);
  Linear read;  // the source's bytes as the stream read them
  if (stream_)
    if (auto r = range_of_.find(mod.path); r != range_of_.end())
      if (const uint8_t* bytes = stream_->acquire(r->second)) {
        read = same_matrix_at(source, bytes);
        held_ = r->second;
      }
  made_ = quantizer_.quantize(mod, read.empty() ? source : read);
  current_ = mod;
  bytes_made_ += made_.is_affine() || made_.is_kquant() ? made_.bytes() : static_cast<uint64_t>(mod.numel()) * 2;
  made_paths_.insert(mod.path);
  // Its source pages are not read again (a float module written as it is
  // keeps them until written: made_ may be the source itself).
  if (read.empty() && !made_.shares_storage_with(source)) source.release_pages();
  return made_;
}

const Linear& StreamedMatrices::layout(const ModuleInfo& mod) {
  const Linear& source = module_linear(model_.weights, mod);
  if (!format(mod)) {  // float: the source's own storage decides (fp16/bf16 words stay as they are)
    probe_ = source.is_affine() || source.is_kquant() ? Linear::from_f32(std::vector<float>(mod.cols, 0.0f), 1, mod.cols)
                                                      : source;
    return probe_;
  }
  if (format(mod).is_source()) return source;  // kept as it is (ModuleQuantizer)
  // One row quantized as the whole matrix will be: the same storage type
  // (importance weighting and GPTQ change the values, not the storage).
  std::vector<float> row(mod.cols);
  source.row(0, row.data());
  probe_ = Linear::from_quantized(quantize_matrix(format(mod), row.data(), 1, mod.cols, opt_.recipe.options()));
  return probe_;
}

uint64_t StreamedMatrices::stored_bytes(const ModuleInfo& mod) {
  const Linear& l = layout(mod);
  if (!(l.is_affine() || l.is_kquant())) return static_cast<uint64_t>(mod.numel()) * 2;
  return l.bytes() / static_cast<uint64_t>(l.rows()) * static_cast<uint64_t>(mod.rows);  // row-wise storage
}

}  // namespace optiq

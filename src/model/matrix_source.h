// Where an exporter (model/save_mlx.h, model/save_gguf.h) reads each weight
// matrix from. A model quantized in memory hands out its own matrices; a
// streamed export quantizes each one from the (memory-mapped) source just
// before it is written and drops it after, so exporting a model never holds
// more than one quantized matrix, and the source's pages are given back as it
// goes: peak memory is the largest matrix, not the model.
#pragma once
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>

#include "model/model.h"
#include "model/quantize_model.h"

namespace optiq {

class ReadOnceStream;

class MatrixSource {
 public:
  virtual ~MatrixSource() = default;
  // `mod`'s matrix as it is to be written; valid until the next call.
  virtual const Linear& matrix(const ModuleInfo& mod) = 0;
  // A matrix in the storage `mod`'s will have (format, scale type, symmetric
  // or not) with its number of columns but possibly fewer rows: lets a writer
  // lay its file out before any matrix is made. Valid until the next call.
  virtual const Linear& layout(const ModuleInfo& mod) = 0;
  // What the export stores for `mod` in the precision map (nullopt: float).
  virtual TensorFormat format(const ModuleInfo& mod) const = 0;
};

// The matrices of a model as they are in memory (quantized already, or not).
class ModelMatrices : public MatrixSource {
 public:
  explicit ModelMatrices(const Model& model) : model_(model) {}
  const Linear& matrix(const ModuleInfo& mod) override { return module_linear(model_.weights, mod); }
  const Linear& layout(const ModuleInfo& mod) override { return module_linear(model_.weights, mod); }
  TensorFormat format(const ModuleInfo& mod) const override;

 private:
  const Model& model_;
};

// Each matrix quantized per a plan when the writer asks for it (the
// ModuleQuantizer of quantize_model, so the file holds the same bytes as
// quantize_model then a save would write). Matrices must be asked for in the
// order quantizable_modules() lists them for GPTQ's shared factorisations to
// be made once (any order gives the same bytes).
class StreamedMatrices : public MatrixSource {
 public:
  // model, map and opt must outlive this; opt.fake must be false.
  StreamedMatrices(const Model& model, const PrecisionMap& map, const QuantizeModelOptions& opt);
  const Linear& matrix(const ModuleInfo& mod) override;
  const Linear& layout(const ModuleInfo& mod) override;
  TensorFormat format(const ModuleInfo& mod) const override { return quantizer_.format(mod); }
  // Bytes of the matrices made so far as stored (float ones counted as the
  // 16-bit words exports write).
  uint64_t bytes_made() const { return bytes_made_; }
  // Bytes of `mod`'s matrix as stored (counted as bytes_made does), from its
  // layout: for matrices a resumed export did not make again.
  uint64_t stored_bytes(const ModuleInfo& mod);
  bool made(const ModuleInfo& mod) const { return made_paths_.count(mod.path) > 0; }
  // Reads the matrices `range_of` names through `stream` (the range index of
  // each module path) rather than from the source's map; a range the stream
  // passed is read from the map as before. stream must outlive this.
  void read_through(ReadOnceStream* stream, std::unordered_map<std::string, size_t> range_of) {
    stream_ = stream;
    range_of_ = std::move(range_of);
  }
  ~StreamedMatrices() override;

 private:
  const Model& model_;
  const QuantizeModelOptions& opt_;
  ModuleQuantizer quantizer_;
  std::optional<ModuleInfo> current_;  // whose matrix `made_` holds
  Linear made_, probe_;
  uint64_t bytes_made_ = 0;
  std::set<std::string> made_paths_;
  ReadOnceStream* stream_ = nullptr;
  std::unordered_map<std::string, size_t> range_of_;
  std::optional<size_t> held_;  // the range made_ was made from (made_ may borrow it: a float matrix)
};

}  // namespace optiq

// The seam for writing a quantized model in another runtime's format: "mlx"
// (save_mlx.h, a directory mlx_lm.load reads) and "gguf" (save_gguf.h, one
// file for llama.cpp, Ollama, LM Studio). Commands pick an exporter by name
// and never call a writer directly, so adding a format is one class here and
// its test.
#pragma once
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"

namespace optiq {

class MatrixSource;

struct ExportOptions {
  bool bf16 = false;   // float type of unquantized tensors (MLX: must match the scales' type; GGUF: of fp32 ones)
  bool force = false;  // replace an existing output
  // Where the weight matrices come from (model/matrix_source.h: e.g. quantized
  // one at a time as they are written); null: the model's own.
  MatrixSource* matrices = nullptr;
  uint64_t shard_bytes = 5'000'000'000;  // MLX: safetensors shards of at most this size (0: one file)
  bool progress = false;                 // a progress line with ETA while writing
  // How the output was made (model/provenance.h), written into it: MLX
  // config.json "optiq" and safetensors metadata, GGUF "optiq.*" keys.
  // Null: the optiq version alone.
  nlohmann::json provenance{};
  // Non-null: resumable (core/partial_output.h): what the output is made
  // from and how; an interrupted export's work is kept in ".<out>.partial"
  // and a run with the same key continues it (force: discarded).
  nlohmann::json resume_key{};
  // MLX: valid while the provenance's source record is a pending one (its
  // digests zeros) and this computes it (pipeline/export_step.h); GGUF: must
  // be invalid.
  std::shared_future<nlohmann::json> source{};
};

class Exporter {
 public:
  virtual ~Exporter() = default;
  virtual std::string_view name() const = 0;  // "mlx", "gguf"
  // Writes atomically (a temporary name, then a rename); throws optiq::Error.
  virtual void write(const Model& model, const std::string& out, const ExportOptions& opt) const = 0;
};

// Names of the exporters, for help texts and errors.
std::vector<std::string> exporter_names();
// The exporter called `name`; throws "export format '<name>' is unknown (known: mlx, gguf)".
std::unique_ptr<Exporter> make_exporter(std::string_view name);

}  // namespace optiq

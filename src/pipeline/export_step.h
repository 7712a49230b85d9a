// The quantize-and-export step of the pipeline (optiq quantize, auto): a
// model and its plan in, an MLX directory or a GGUF file out. Streamed: each
// matrix is quantized from the (memory-mapped) source when the writer reaches
// it, written, and dropped, and its source pages are given back, so the step
// holds one quantized matrix at a time however large the model
// (model/matrix_source.h). The file is the one quantize_model then a save
// would write, byte for byte. Resumable: interrupted, the next run with the
// same source, plan and options continues where it stopped, to the same bytes.
#pragma once
#include <cstdint>
#include <future>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/read_once_stream.h"
#include "model/exporter.h"
#include "model/model.h"
#include "model/quantize_model.h"

namespace optiq {

struct ExportStepOptions {
  std::string format = "mlx";  // an exporter name (model/exporter.h)
  bool force = false;          // replace an existing output
  uint64_t shard_bytes = 5'000'000'000;  // MLX shards (0: one file)
  bool progress = true;
  nlohmann::json provenance{};  // written into the output (model/provenance.h); null: the version alone
  // Resumable (core/partial_output.h, docs/reliability.md "Crash safety",
  // "Exports resume"): an interrupted export's work stays in ".<out>.partial" and the
  // same command continues it. Needs the provenance (the source's identity);
  // without one the export is not resumable.
  bool resume = true;
  // Valid: the provenance's "source" is model/provenance.h's
  // source_record_pending (digests still zeros) and this computes the real
  // record meanwhile (source_record_async). An MLX export then starts at once
  // and reads the source while it is hashed (the hashes are written into its
  // headers and config.json at the end, and into the resume key as soon as
  // they are known); a GGUF export, or one continuing partial work (whose
  // key names the hashes), waits for them first.
  //
  // An MLX export of a Hugging Face directory given such a future ignores it
  // (it is never waited for: make it std::launch::deferred) and reads the
  // weights once itself, O_DIRECT in file order, hashing them as it goes
  // (core/read_once_stream.h; OPTIQ_SOURCE_STREAM=0 turns this off). Its
  // partial work is keyed by the source files' sizes and modification times
  // (model/provenance.h source_fingerprint), since the digests come last.
  std::shared_future<nlohmann::json> source{};
  std::string tokenizer_path{};  // the --tokenizer the model was loaded with (the source record lists it)
};

struct ExportStepResult {
  uint64_t matrix_bytes = 0;  // weight matrices as stored (float ones as 16-bit words)
  int64_t matrix_params = 0;
  double seconds = 0;
  // How the source was read when it was read once (ExportStepOptions::source):
  // matrices kept and passed, O_DIRECT or not, where the threads waited.
  std::optional<ReadOnceStream::Stats> source_stream;
  double bits_per_weight() const { return matrix_params ? 8.0 * static_cast<double>(matrix_bytes) / matrix_params : 0; }
};

// Records the plan's formats in model.precision (what the export's config
// and metadata state), then quantizes while writing `out`. opt.fake must be
// false. Throws optiq::Error; nothing is left at `out` then.
ExportStepResult run_export_step(Model& model, const PrecisionMap& map, const QuantizeModelOptions& opt,
                                 const std::string& out, const ExportStepOptions& eo);

}  // namespace optiq

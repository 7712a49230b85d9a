// Writes a model in MLX's layout, which mlx_lm.load reads: config.json (the
// Hugging Face config of the model's family, model/hf_export.h, plus "quantization": {"group_size", "bits", and
// one entry per module: {"group_size", "bits"} or false for float}),
// model.safetensors or shards of it (packed "<module>.weight" uint32 words with
// "<module>.scales" and "<module>.biases"; float tensors in fp16/bf16) and
// the tokenizer files; config.json's "optiq" object and the safetensors
// metadata say how it was made (model/provenance.h). The directory is written
// under a temporary name and put in place whole (core/atomic_file.h).
#pragma once
#include <functional>
#include <future>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"

namespace optiq {

class MatrixSource;

struct MlxSaveOptions {
  bool bf16 = false;   // float type of unquantized tensors (must match the scales' type)
  bool force = false;  // replace an existing output directory
  // Where the weight matrices come from (model/matrix_source.h); null: the model's own.
  MatrixSource* matrices = nullptr;
  // Shards of at most this many bytes (model-0000i-of-0000n.safetensors and
  // model.safetensors.index.json, as Hugging Face and mlx-lm write them);
  // 0: one model.safetensors whatever its size.
  uint64_t shard_bytes = kDefaultShardBytes;
  bool progress = false;  // a progress line with ETA while tensors are written
  // model/provenance.h: config.json "optiq" and the safetensors metadata
  // "optiq.*" keys; null: the optiq version alone.
  nlohmann::json provenance{};
  // Non-null: the export is resumable (core/partial_output.h): written in
  // ".<out>.partial/", which an interrupted run leaves for the next run with
  // the same key (what the output is made from and how) to continue from;
  // with `force` any partial work is discarded. Null: a temporary directory.
  nlohmann::json resume_key{};
  // Valid: the provenance's "source" is pending (model/provenance.h
  // source_record_pending) and this computes the real record. Either way the
  // safetensors headers are laid out with zeros for the source's digests and
  // the digests written over them once every tensor is (so a run that
  // continues partial work writes the same bytes as the one it continues);
  // with a resume key holding "source pending", the full key is recorded
  // when the digests are known.
  std::shared_future<nlohmann::json> source{};
  static constexpr uint64_t kDefaultShardBytes = 5'000'000'000;  // mlx-lm's and transformers' default
};

// The order save_mlx reads the model's matrices in: the packed ones, then the
// float ones, each in quantizable_modules order (4-byte tensors thus never
// follow an odd number of 2-byte elements). `packed` says which a module is.
// A reader that must see them in the same order (the read-once source
// stream, pipeline/export_step.cpp) asks here.
std::vector<ModuleInfo> mlx_matrix_order(const ModelConfig& c, const std::function<bool(const ModuleInfo&)>& packed);

// The directory is written under a temporary name and put in place whole
// (replacing an existing one with opt.force in one step).
void save_mlx(const Model& model, const std::string& out_dir, const MlxSaveOptions& opt = {});

}  // namespace optiq

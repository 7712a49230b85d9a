// Writes a model in MLX's layout, which mlx_lm.load reads: config.json (the
// Hugging Face config of the model's family, model/hf_export.h, plus "quantization": {"group_size", "bits", and
// one entry per module: {"group_size", "bits"} or false for float}),
// model.safetensors (packed "<module>.weight" uint32 words with
// "<module>.scales" and "<module>.biases"; float tensors in fp16/bf16) and
// the tokenizer files.
#pragma once
#include <string>

#include "model/model.h"

namespace optiq {

struct MlxSaveOptions {
  bool bf16 = false;   // float type of unquantized tensors (must match the scales' type)
  bool force = false;  // replace an existing output directory
};

// The directory is written under a temporary name and renamed into place.
void save_mlx(const Model& model, const std::string& out_dir, const MlxSaveOptions& opt = {});

}  // namespace optiq

// Writes a model as one GGUF v3 file that llama.cpp (and Ollama, LM Studio)
// loads: the architecture's hyper-parameters and tokenizer
// (model/gguf_metadata.h), every weight matrix in its GGUF block type
// (model/gguf_matrix.h: k-quants as they are, affine groups of 32 as
// Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, floats as F16/BF16), norms and biases in F32,
// tensors named as llama.cpp names them (token_embd, blk.N.attn_q, ...,
// output_norm, output) with q/k rows in llama.cpp's order, general.file_type
// from the most common type, and the plan in "optiq.plan" (JSON: the
// precision map and each matrix's stored type) with how the file was made
// (model/provenance.h: optiq.version, optiq.command, optiq.source, optiq.options). Tensors are produced one at a
// time while the file is written (a temporary name, then a rename).
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "model/model.h"

namespace optiq {

class MatrixSource;

struct GgufSaveOptions {
  bool bf16 = false;   // type of fp32 weight matrices: BF16 instead of F16
  bool force = false;  // replace an existing output file
  // Where the weight matrices come from (model/matrix_source.h); null: the model's own.
  MatrixSource* matrices = nullptr;
  bool progress = false;  // a progress line with ETA while tensors are written
  // model/provenance.h: written as optiq.version, optiq.command, optiq.source
  // and optiq.options (JSON text); null: optiq.version alone.
  nlohmann::json provenance{};
  // Non-null: the export is resumable (core/partial_output.h): the file is
  // written in ".<out>.partial/", which an interrupted run leaves for the next
  // run with the same key to continue after its last complete tensor; with
  // `force` any partial work is discarded. Null: a temporary file.
  nlohmann::json resume_key{};
};

// Throws optiq::Error naming the file or tensor (and what to do) for what
// GGUF or llama.cpp cannot represent; no file is left behind then.
void save_gguf(const Model& model, const std::string& out_path, const GgufSaveOptions& opt = {});

}  // namespace optiq

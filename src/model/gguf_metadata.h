// The metadata of an exported GGUF besides its weight matrices: the
// architecture and the hyper-parameter keys llama.cpp reads for each family
// optiq supports, the small float tensors some families need (rope_freqs,
// Phi-3's rope factors), and the tokenizer (tokenizer.ggml.*, the
// pre-tokenizer's name, the chat template).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "formats/gguf_writer.h"
#include "model/model.h"

namespace optiq {

// llama.cpp's architecture for the model ("llama" for Mistral, as its
// converter writes; "gemma3" for gemma3_text). Throws for configs llama.cpp
// would run differently (e.g. a Gemma 3 attention scale it does not compute).
std::string gguf_architecture(const Model& m);
// What the exported q norm is multiplied by so that llama.cpp's fixed
// attention scale gives the model's own (Gemma 3 with a query_pre_attn_scalar
// other than head_dim: the q norm's output feeds only RoPE, which is linear,
// and the scores); 1 for every other model.
float gguf_q_norm_factor(const Model& m);

// Does llama.cpp expect q/k rows in its interleaved ("norm" RoPE) order?
bool gguf_interleaves_qk(const ModelConfig& c);

// general.name and the <arch>.* hyper-parameters.
void add_gguf_hparams(GgufWriter& w, const Model& m, const std::string& arch);

// F32 tensors besides weights and norms, by GGUF name: rope_freqs.weight
// (Llama 3 rope scaling as llama.cpp's frequency divisors),
// rope_factors_long/short.weight (Phi-3 LongRoPE).
std::vector<std::pair<std::string, std::vector<float>>> gguf_rope_tensors(const Model& m);

// tokenizer.* keys: copied verbatim from a GGUF source, else built from the
// model's tokenizer (and a Hugging Face directory's chat template), with the
// vocabulary padded to the embedding's rows as llama.cpp requires.
void add_gguf_tokenizer(GgufWriter& w, const Model& m);

}  // namespace optiq

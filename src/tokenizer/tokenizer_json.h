// Writes a tokenizer as Hugging Face files (tokenizer.json, tokenizer_config.json,
// special_tokens_map.json) so that exported models load in transformers / mlx-lm,
// including models whose tokenizer came from GGUF metadata or a llama2.c tokenizer.bin.
#pragma once
#include <string>

#include "tokenizer/tokenizer.h"

namespace optiq {

void write_hf_tokenizer(const Tokenizer& tok, const std::string& dir);

}  // namespace optiq

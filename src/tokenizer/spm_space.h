// SentencePiece's word-boundary mark, shared by the tokenizer's loaders,
// its SentencePiece model and the tokenizer.json writer.
#pragma once
#include <string>

namespace optiq {

inline const std::string kSpmSpace = "\xE2\x96\x81";  // U+2581 "▁"

}  // namespace optiq

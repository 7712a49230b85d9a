// Writes a tokenizer as Hugging Face files (tokenizer.json, tokenizer_config.json,
// special_tokens_map.json) so that exported models load in transformers / mlx-lm,
// including models whose tokenizer came from GGUF metadata or a llama2.c tokenizer.bin.
//
//  - Byte-level BPE: model BPE (vocab, merges as [a, b] pairs, ignore_merges),
//    pre_tokenizer Sequence[Split(regex, Isolated) for each optiq pre-tokenizer
//    regex, ByteLevel(use_regex=false)], decoder ByteLevel.
//  - SentencePiece BPE: model BPE with byte_fallback and merges derived from the
//    piece scores (every split of a piece into two pieces is a merge, ranked by
//    the piece's score, as Hugging Face's SentencePiece converter does), normalizer
//    Sequence[Prepend("▁") if add_space_prefix, Replace(" ", "▁")], decoder
//    Sequence[Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)].
//  - Control/unknown tokens become special added tokens, user-defined tokens
//    non-special added tokens; a TemplateProcessing post-processor adds BOS/EOS.
//
// Not representable, so dropped with the same effect as far as possible: merges
// of a byte-level BPE whose pieces are not vocabulary tokens; for duplicate token
// texts only the last id is in the vocab (optiq's lookup also returns the last).
// Throws optiq::Error("<dir>: ...") for a token that is not valid UTF-8 and on I/O errors.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace optiq {

void write_hf_tokenizer(const Tokenizer& tok, const std::string& dir);

// The merges Hugging Face's SentencePiece converter derives from piece scores:
// for each piece (in id order), every split into two pieces that are in the
// vocabulary, ordered by the ids of (left, right); all stably sorted by the
// merged piece's score, highest first. Returned as (left id, right id).
std::vector<std::pair<int32_t, int32_t>> spm_merges_from_scores(const TokenizerSpec& spec);

}  // namespace optiq

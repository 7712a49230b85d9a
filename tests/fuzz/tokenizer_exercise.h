// What the tokenizer harnesses do with a tokenizer once it loaded: encode
// `text` (arbitrary bytes) with and without special tokens, decode the ids
// back, and decode ids at and beyond the ends of the vocabulary.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace optiq::fuzz {

// Returns encode(text, add_bos = true) without special-token parsing.
inline std::vector<int32_t> exercise_tokenizer(const Tokenizer& tok, std::string_view text) {
  const int32_t n = tok.vocab_size();
  std::vector<int32_t> plain;
  for (bool special : {false, true}) {
    std::vector<int32_t> ids = tok.encode(text, /*add_bos=*/true, special);
    for (int32_t id : ids)
      if (id < 0 || id >= n) __builtin_trap();  // encode must only produce ids of the vocabulary
    (void)tok.decode(ids);
    if (!special) plain = std::move(ids);
  }
  // Small fuzzed vocabularies are decoded whole; the edges always.
  const int32_t head = std::min<int32_t>(n, 1024);
  for (int32_t id = -2; id < head; ++id) (void)tok.decode_token(id);
  for (int32_t id = std::max<int32_t>(head, n - 2); id < n + 2; ++id) (void)tok.decode_token(id);
  std::vector<int32_t> edges = {-1, 0, n - 1, n, tok.bos(), tok.eos()};
  (void)tok.decode(edges);
  for (int32_t id : edges) (void)tok.is_eog(id), (void)tok.token_text(id);
  (void)tok.token_id(text);
  return plain;
}

// The text a harness encodes with a tokenizer its input defined: a fixed
// sentence with special-looking pieces, then the input's last bytes.
inline std::string sample_text(const uint8_t* data, size_t size) {
  std::string s = "Once upon a time <s></s><|im_start|> \xe2\x96\x81x \t\n 123 caf\xc3\xa9 ";
  const size_t tail = std::min<size_t>(size, 64);
  s.append(reinterpret_cast<const char*>(data + size - tail), tail);
  return s;
}

}  // namespace optiq::fuzz

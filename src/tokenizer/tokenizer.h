// Tokenizers: SentencePiece-style BPE (score-based merges, "▁" for space, byte
// fallback; Llama 2, Mistral, Gemma, stories260K) and byte-level BPE (GPT-2
// byte->unicode mapping, rank-based merges, per-model pre-tokenizer regexes;
// GPT-2, SmolLM2, Llama 3, Qwen2/3). Both reproduce llama.cpp's tokenizers
// (llm_tokenizer_spm / llm_tokenizer_bpe) id for id.
//
// Special tokens: before pre-tokenization the text is split at occurrences of
// added tokens, longest first, like llama.cpp's tokenizer_st_partition.
// User-defined tokens (type 4) are always matched; control and unknown tokens
// (types 3, 2: "<s>", "<|im_start|>", ...) only when parse_special is true.
//
// A Tokenizer is immutable after construction; encode/decode are thread-safe.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace optiq {

class GgufFile;

struct TokenizerSpec {
  enum class Kind { SentencePiece, ByteLevelBPE } kind = Kind::SentencePiece;
  std::vector<std::string> tokens;   // piece text as stored (SPM with ▁; BPE in GPT-2 byte-unicode form)
  std::vector<float> scores;         // SPM (empty: all 0)
  std::vector<int32_t> token_types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte (empty: all 1)
  std::vector<std::string> merges;   // BPE: "a b", rank = index
  std::string pre;                   // pre-tokenizer name (GGUF tokenizer.ggml.pre: "default","gpt2","llama-bpe","qwen2","smollm",...)
  // Byte-level BPE: explicit pre-tokenizer regexes, applied in sequence (each one
  // splits every piece of the previous into matches and the gaps between them).
  // When non-empty they replace the regexes that `pre` names.
  std::vector<std::string> pre_regexes;
  int32_t bos = -1, eos = -1, unk = -1, pad = -1;
  int32_t eot = -1;            // end-of-turn (tokenizer.ggml.eot_token_id), also end-of-generation
  bool add_bos = false, add_eos = false, add_space_prefix = true;
  bool ignore_merges = false;  // BPE: a pre-token that is itself a token is emitted whole (Llama 3)
};

namespace token_type {
inline constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6;
}

class Tokenizer {
 public:
  // Validates the spec (sizes, ids in range, merges well-formed); throws optiq::Error.
  explicit Tokenizer(TokenizerSpec spec);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Token ids of `text`. A BOS is prepended when add_bos && spec.add_bos && bos >= 0,
  // an EOS appended when add_bos && spec.add_eos (llama.cpp's add_special).
  // parse_special: also match control tokens written in the text (chat templates).
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special = false) const;
  // Bytes of one token: byte tokens -> the raw byte, "▁" -> space (SPM), GPT-2
  // unicode -> bytes (BPE), control/unknown/unused tokens -> "". Out of range -> "".
  std::string decode_token(int32_t id) const;
  // Concatenation of decode_token; for SPM with add_space_prefix the leading space
  // of the first text is removed (like llama.cpp and HF), so decode(encode(s)) == s.
  std::string decode(std::span<const int32_t> ids) const;

  int32_t bos() const;
  int32_t eos() const;
  int32_t vocab_size() const;
  bool is_eog(int32_t id) const;  // eos, eot, and end-of-turn control tokens (<|im_end|>, <end_of_turn>, ...)
  int32_t token_id(std::string_view piece) const;  // -1 when absent
  // True when encode(text, add_bos = true) prepends a BOS.
  bool adds_bos() const;
  // Text of token id as stored (SPM with ▁, BPE in byte-unicode form); "" out of range.
  std::string_view token_text(int32_t id) const;
  // The whole spec back, tokens included (for exporters: it copies the vocabulary).
  TokenizerSpec to_spec() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

TokenizerSpec tokenizer_spec_from_gguf(const GgufFile& f);          // tokenizer.ggml.* keys
TokenizerSpec tokenizer_spec_from_hf(const std::string& model_dir);  // tokenizer.json (+ tokenizer_config.json)
// llama2.c tokenizer.bin: int32 max_token_length, then per token float score,
// int32 len, bytes. bos=1, eos=2, ids 3..258 are <0xNN> byte tokens.
TokenizerSpec tokenizer_spec_from_llama2c(const std::string& tokenizer_bin_path, int32_t vocab_size);

// Regexes llama.cpp uses for a tokenizer.ggml.pre name (unknown names: "default").
std::vector<std::string> pre_tokenizer_regexes(std::string_view pre);

}  // namespace optiq

// The tokenizer's internals, shared by its files: tokenizer.cpp (building,
// special-token partition, the public API), tokenizer_spm.cpp (SentencePiece
// BPE) and tokenizer_bpe.cpp (byte-level BPE with PCRE2 pre-tokenization).
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/error.h"
#include "tokenizer/spm_space.h"
#include "tokenizer/tokenizer.h"

namespace optiq {
namespace tok_detail {


// Length of the UTF-8 sequence introduced by byte c (continuation bytes count 1),
// as llama.cpp's unicode_len_utf8.
inline size_t utf8_len(uint8_t c) {
  static constexpr uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lookup[c >> 4];
}

inline void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Decodes one UTF-8 code point at s[i]; returns false for malformed input.
inline bool next_utf8(std::string_view s, size_t& i, uint32_t& cp) {
  const auto c = static_cast<uint8_t>(s[i]);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return false;
  cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n; ++k) {
    const auto d = static_cast<uint8_t>(s[i + k]);
    if ((d & 0xC0) != 0x80) return false;
    cp = (cp << 6) | (d & 0x3F);
  }
  i += n;
  return true;
}

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256+k.
inline std::array<uint32_t, 256> gpt2_byte_to_cp() {
  std::array<uint32_t, 256> m{};
  uint32_t extra = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    m[b] = printable ? b : 256 + extra++;
  }
  return m;
}

inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (true) {
    const size_t p = s.find(from, i);
    if (p == std::string_view::npos) break;
    out.append(s.substr(i, p - i));
    out.append(to);
    i = p + from.size();
  }
  out.append(s.substr(i));
  return out;
}

inline int parse_byte_token(std::string_view t) {  // "<0xNN>" -> NN, else -1
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

struct Fragment {
  int32_t token;  // >= 0: a special token; -1: raw text [off, off+len)
  size_t off, len;
};

struct PairHash {
  size_t operator()(uint64_t k) const noexcept { return std::hash<uint64_t>{}(k * 0x9E3779B97F4A7C15ull); }
};

struct Regex {
  pcre2_code* code = nullptr;
  Regex() = default;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

// Open-addressing string -> id table over one contiguous blob: a lookup costs
// one probe into the slot array (plus one compare on a hash hit), which matters
// because the merge loops look up every candidate pair.
class PieceMap {
 public:
  // Takes the keys' text into one blob (the tokenizer keeps no other copy of
  // the vocabulary: 262k std::strings cost 8 MB of headers alone).
  void build(const std::vector<std::string>& keys) {
    size_t cap = 16;
    while (cap < keys.size() * 2) cap <<= 1;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    size_t total = 0;
    for (const auto& k : keys) total += k.size();
    check(total < (size_t{1} << 32), "tokenizer: {} bytes of token text is too large", total);
    blob_.clear();
    blob_.reserve(total);
    off_.assign(keys.size() + 1, 0);
    for (size_t i = 0; i < keys.size(); ++i) {
      blob_ += keys[i];
      off_[i + 1] = static_cast<uint32_t>(blob_.size());
    }
    for (size_t i = 0; i < keys.size(); ++i) {
      const std::string_view k = text(static_cast<int32_t>(i));
      if (k.empty()) continue;
      const uint64_t h = hash(k);
      for (size_t j = h & mask_;; j = (j + 1) & mask_) {
        Slot& sl = slots_[j];
        if (sl.id < 0) {
          sl = {tag(h), static_cast<int32_t>(i)};
          break;
        }
        if (sl.tag == tag(h) && text(sl.id) == k) {
          sl.id = static_cast<int32_t>(i);  // duplicate text: the last id wins (llama.cpp)
          break;
        }
      }
    }
  }
  int32_t find(std::string_view k) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hash(k);
    for (size_t j = h & mask_;; j = (j + 1) & mask_) {
      const Slot& sl = slots_[j];
      if (sl.id < 0) return -1;
      if (sl.tag == tag(h) && text(sl.id) == k) return sl.id;
    }
  }
  // Stored text of key i.
  std::string_view text(int32_t i) const { return {blob_.data() + off_[i], off_[i + 1] - off_[i]}; }

 private:
  // 8 bytes a slot: the hash's high half (the low bits pick the slot) and the id.
  struct Slot {
    uint32_t tag = 0;
    int32_t id = -1;
  };
  static uint32_t tag(uint64_t h) { return static_cast<uint32_t>(h >> 32); }
  static uint64_t hash(std::string_view k) {  // FNV-1a with a final mix
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : k) h = (h ^ c) * 1099511628211ull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
  }
  std::vector<Slot> slots_;
  std::string blob_;
  std::vector<uint32_t> off_;  // key i is blob_[off_[i], off_[i+1])
  size_t mask_ = 0;
};

}  // namespace tok_detail

using namespace tok_detail;

struct Tokenizer::Impl {
  TokenizerSpec spec;
  int32_t n_vocab = 0;
  PieceMap token_to_id;                                       // last id wins for duplicate texts
  // decode_token results, flat: piece i is piece_bytes[piece_off[i] .. piece_off[i+1])
  // (a 262k vocabulary as 262k std::strings cost 8 MB of headers alone).
  std::string piece_bytes;
  std::vector<uint32_t> piece_off;
  std::string_view piece(int32_t id) const {
    return std::string_view(piece_bytes).substr(piece_off[id], piece_off[id + 1] - piece_off[id]);
  }
  std::vector<int32_t> special_sorted;                        // control/user-defined/unknown, longest first
  std::unordered_set<int32_t> eog;
  int32_t byte_token[256];

  // Special-token trie (byte edges) for finding all occurrences in one pass.
  std::unordered_map<uint64_t, int32_t, PairHash> trie_edges;  // (node << 8 | byte) -> node
  std::vector<int32_t> trie_terminal;                          // node -> special token id or -1
  std::vector<int32_t> special_rank;                           // token id -> rank in special_sorted (or -1)

  // Byte-level BPE.
  std::vector<std::unique_ptr<Regex>> regexes;
  std::array<std::string, 256> byte_to_str;  // GPT-2 unicode char (UTF-8) of each byte
  std::array<int32_t, 256> byte_sym{};       // symbol id of each byte's char
  std::vector<std::string> extra_syms;       // symbols that are not vocab tokens (id n_vocab + k)
  std::unordered_map<std::string, int32_t> extra_sym_id;
  struct Merge {
    int32_t rank, result;
  };
  std::unordered_map<uint64_t, Merge, PairHash> merges;  // (left sym << 32 | right sym)

  int32_t lookup(std::string_view s) const {
    return token_to_id.find(s);
  }
  int32_t type_of(int32_t id) const {
    return spec.token_types.empty() ? token_type::kNormal : spec.token_types[id];
  }
  int32_t intern(const std::string& s) {
    if (int32_t id = lookup(s); id >= 0) return id;
    auto it = extra_sym_id.find(s);
    if (it != extra_sym_id.end()) return it->second;
    const int32_t id = n_vocab + static_cast<int32_t>(extra_syms.size());
    extra_syms.push_back(s);
    extra_sym_id.emplace(s, id);
    return id;
  }
  std::string_view sym_text(int32_t sym) const {
    return sym < n_vocab ? token_to_id.text(sym) : std::string_view(extra_syms[sym - n_vocab]);
  }

  void build();
  void build_bpe();
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;
  void encode_spm(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe_word(std::string_view word, std::vector<int32_t>& out) const;
  void encode_bpe(std::string_view text, std::vector<int32_t>& out, pcre2_match_data* md,
                  pcre2_match_context* mctx) const;
};

}  // namespace optiq

// Tokenizer implementation: special-token partition, SentencePiece-style BPE,
// byte-level BPE with PCRE2 pre-tokenization. The merge procedures follow
// llama.cpp's llm_tokenizer_spm / llm_tokenizer_bpe so that ids agree exactly:
//  - SPM: split into UTF-8 characters; repeatedly merge the adjacent pair whose
//    concatenation is a vocab piece with the highest score (ties: leftmost);
//    pieces that are not in the vocab become <0xNN> byte tokens.
//  - BPE: per pre-token, split into bytes (as GPT-2 unicode characters); repeatedly
//    merge the adjacent pair with the lowest merge rank (ties: leftmost).
#include "tokenizer/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"

namespace optiq {

namespace {

// Length of the UTF-8 sequence introduced by byte c (continuation bytes count 1),
// as llama.cpp's unicode_len_utf8.
inline size_t utf8_len(uint8_t c) {
  static constexpr uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lookup[c >> 4];
}

void append_utf8(std::string& out, uint32_t cp) {
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
bool next_utf8(std::string_view s, size_t& i, uint32_t& cp) {
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
std::array<uint32_t, 256> gpt2_byte_to_cp() {
  std::array<uint32_t, 256> m{};
  uint32_t extra = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    m[b] = printable ? b : 256 + extra++;
  }
  return m;
}

const std::string kSpmSpace = "\xE2\x96\x81";  // U+2581 "▁"

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
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

int parse_byte_token(std::string_view t) {  // "<0xNN>" -> NN, else -1
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

}  // namespace

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

void Tokenizer::Impl::build() {
  const auto& t = spec.tokens;
  check(!t.empty(), "tokenizer: empty vocabulary");
  check(t.size() < (1u << 30), "tokenizer: vocabulary of {} tokens is too large", t.size());
  n_vocab = static_cast<int32_t>(t.size());
  check(spec.scores.empty() || spec.scores.size() == t.size(), "tokenizer: {} scores for {} tokens",
        spec.scores.size(), t.size());
  check(spec.token_types.empty() || spec.token_types.size() == t.size(), "tokenizer: {} token types for {} tokens",
        spec.token_types.size(), t.size());
  for (auto [name, id] : {std::pair{"bos", &spec.bos}, {"eos", &spec.eos}, {"unk", &spec.unk},
                          {"pad", &spec.pad}, {"eot", &spec.eot}}) {
    check(*id >= -1 && *id < n_vocab, "tokenizer: {} token id {} out of range (vocabulary {})", name, *id, n_vocab);
  }
  token_to_id.build(t);

  // Byte fallback tokens (SPM): "<0xNN>", else the single byte as a piece.
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    int32_t id = lookup(buf);
    if (id < 0) id = lookup(std::string(1, static_cast<char>(b)));
    byte_token[b] = id;
  }

  // Special tokens, longest first (ties by id, for determinism).
  for (int32_t i = 0; i < n_vocab; ++i) {
    const int32_t ty = type_of(i);
    if ((ty == token_type::kControl || ty == token_type::kUserDefined || ty == token_type::kUnknown) &&
        !t[i].empty())
      special_sorted.push_back(i);
  }
  std::stable_sort(special_sorted.begin(), special_sorted.end(),
                   [&](int32_t a, int32_t b) { return t[a].size() > t[b].size(); });
  special_rank.assign(t.size(), -1);
  trie_terminal.push_back(-1);
  for (size_t r = 0; r < special_sorted.size(); ++r) {
    const int32_t id = special_sorted[r];
    special_rank[id] = static_cast<int32_t>(r);
    int32_t node = 0;
    for (unsigned char c : t[id]) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | c;
      auto it = trie_edges.find(key);
      if (it == trie_edges.end()) {
        const auto nn = static_cast<int32_t>(trie_terminal.size());
        trie_terminal.push_back(-1);
        it = trie_edges.emplace(key, nn).first;
      }
      node = it->second;
    }
    // Duplicate texts: llama.cpp would match the first in its order; keep the first.
    if (trie_terminal[node] < 0) trie_terminal[node] = id;
  }

  // End of generation.
  if (spec.eos >= 0) eog.insert(spec.eos);
  if (spec.eot >= 0) eog.insert(spec.eot);
  static const char* kEog[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                               "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<｜end▁of▁sentence｜>"};
  for (const char* s : kEog) {
    const int32_t id = lookup(s);
    if (id >= 0 && type_of(id) == token_type::kControl) eog.insert(id);
  }

  if (spec.kind == TokenizerSpec::Kind::ByteLevelBPE) build_bpe();

  // Decoded pieces.
  piece_off.assign(t.size() + 1, 0);
  piece_bytes.clear();
  std::array<int, 0x200> cp_to_byte;
  cp_to_byte.fill(-1);
  const auto b2c = gpt2_byte_to_cp();
  for (int b = 0; b < 256; ++b) cp_to_byte[b2c[b]] = b;
  std::string p;
  for (int32_t i = 0; i < n_vocab; ++i) {
    const int32_t ty = type_of(i);
    p.clear();
    if (ty == token_type::kControl || ty == token_type::kUnknown || ty == token_type::kUnused) {
      // no text
    } else if (ty == token_type::kByte) {
      const int b = parse_byte_token(t[i]);
      p = b >= 0 ? std::string(1, static_cast<char>(b)) : t[i];
    } else if (spec.kind == TokenizerSpec::Kind::SentencePiece) {
      p = replace_all(t[i], kSpmSpace, " ");
    } else if (ty == token_type::kUserDefined) {
      p = t[i];
    } else {
      size_t k = 0;
      const std::string_view s = t[i];
      while (k < s.size()) {
        const size_t start = k;
        uint32_t cp = 0;
        if (next_utf8(s, k, cp) && cp < cp_to_byte.size() && cp_to_byte[cp] >= 0) {
          p += static_cast<char>(cp_to_byte[cp]);
        } else {
          if (k == start) ++k;
          p.append(s.substr(start, k - start));
        }
      }
    }
    piece_bytes += p;
    check(piece_bytes.size() < (uint64_t{1} << 32), "tokenizer: decoded pieces exceed 4 GB");
    piece_off[i + 1] = static_cast<uint32_t>(piece_bytes.size());
  }
  piece_bytes.shrink_to_fit();
}

std::vector<std::string> pre_tokenizer_regexes(std::string_view pre) {
  static const std::string kGpt2 =
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
  static const std::string kLlama3 =
      "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  static const std::string kQwen2 =
      "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  auto in = [&](std::initializer_list<std::string_view> names) {
    return std::find(names.begin(), names.end(), pre) != names.end();
  };
  if (in({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "dbrx",
          "smaug-bpe", "glm4", "chatglm-bpe"}))
    return {kLlama3};
  if (in({"qwen2", "deepseek-r1-qwen", "kormo", "megrez", "stablelm2", "hunyuan", "grok-2"})) return {kQwen2};
  if (in({"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"}))
    return {"\\p{N}", kGpt2};
  if (in({"gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
          "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "trillion", "granite-docling",
          "exaone4"}))
    return {kGpt2};
  if (in({"falcon"})) return {"[\\p{P}\\$\\+<=>\\^~\\|`]+", kGpt2, "[0-9][0-9][0-9]"};
  if (in({"poro-chat", "bloom", "gpt3-finnish"})) return {" ?[^(\\s|.,!?…。，、।۔،)]+"};
  if (in({"viking"})) return {" ?[^(\\s|.,!?…。，、।۔،)]+", "\\p{N}"};
  return {"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2, "\\p{N}+", "[0-9][0-9][0-9]"};  // "default"
}

void Tokenizer::Impl::build_bpe() {
  if (spec.pre == "llama3" || spec.pre == "llama-v3" || spec.pre == "llama-bpe" || spec.pre == "tekken")
    spec.ignore_merges = true;
  const auto exprs = spec.pre_regexes.empty() ? pre_tokenizer_regexes(spec.pre) : spec.pre_regexes;
  for (const auto& e : exprs) {
    int err = 0;
    PCRE2_SIZE off = 0;
    auto r = std::make_unique<Regex>();
    r->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(e.data()), e.size(),
                            PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!r->code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("tokenizer: pre-tokenizer regex '{}' does not compile at offset {}: {}", e, off,
           reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
    regexes.push_back(std::move(r));
  }

  const auto b2c = gpt2_byte_to_cp();
  for (int b = 0; b < 256; ++b) {
    append_utf8(byte_to_str[b], b2c[b]);
    byte_sym[b] = intern(byte_to_str[b]);
  }
  merges.reserve(spec.merges.size() * 2);
  for (size_t r = 0; r < spec.merges.size(); ++r) {
    const std::string& m = spec.merges[r];
    const size_t sp = m.find(' ', 1);
    check(sp != std::string::npos && sp + 1 < m.size(), "tokenizer: merge {} '{}' is not two pieces split by a space",
          r, m);
    const std::string a = m.substr(0, sp), b = m.substr(sp + 1);
    const int32_t la = intern(a), lb = intern(b), res = intern(a + b);
    const uint64_t key = (static_cast<uint64_t>(la) << 32) | static_cast<uint32_t>(lb);
    merges.emplace(key, Merge{static_cast<int32_t>(r), res});  // first (lowest rank) wins
  }
}

// Splits text at special tokens like llama.cpp's tokenizer_st_partition: for
// each special token, longest first, every raw fragment is split at the
// leftmost non-overlapping occurrences. Equivalent one-pass form: collect all
// occurrences with the trie, then accept them in (token rank, position) order
// when they do not overlap an accepted one.
std::vector<Fragment> Tokenizer::Impl::partition(std::string_view text, bool parse_special) const {
  std::vector<Fragment> out;
  if (special_sorted.empty() || text.empty()) {
    if (!text.empty()) out.push_back({-1, 0, text.size()});
    return out;
  }
  struct Occ {
    int32_t rank;
    size_t pos;
  };
  std::vector<Occ> occ;
  for (size_t i = 0; i < text.size(); ++i) {
    int32_t node = 0;
    for (size_t j = i; j < text.size(); ++j) {
      auto it = trie_edges.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[j]));
      if (it == trie_edges.end()) break;
      node = it->second;
      const int32_t id = trie_terminal[node];
      if (id < 0) continue;
      const int32_t ty = type_of(id);
      if (!parse_special && (ty == token_type::kControl || ty == token_type::kUnknown)) continue;
      occ.push_back({special_rank[id], i});
    }
  }
  if (occ.empty()) {
    out.push_back({-1, 0, text.size()});
    return out;
  }
  std::sort(occ.begin(), occ.end(), [](const Occ& a, const Occ& b) {
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
  });
  std::vector<uint8_t> covered(text.size(), 0);
  std::vector<std::pair<size_t, int32_t>> accepted;  // (pos, id)
  for (const Occ& o : occ) {
    const int32_t id = special_sorted[o.rank];
    const size_t len = token_to_id.text(id).size();
    bool free = true;
    for (size_t k = o.pos; k < o.pos + len; ++k) {
      if (covered[k]) {
        free = false;
        break;
      }
    }
    if (!free) continue;
    std::memset(covered.data() + o.pos, 1, len);
    accepted.emplace_back(o.pos, id);
  }
  std::sort(accepted.begin(), accepted.end());
  size_t cur = 0;
  for (auto [pos, id] : accepted) {
    if (pos > cur) out.push_back({-1, cur, pos - cur});
    out.push_back({id, pos, token_to_id.text(id).size()});
    cur = pos + token_to_id.text(id).size();
  }
  if (cur < text.size()) out.push_back({-1, cur, text.size() - cur});
  return out;
}

// ---- SentencePiece-style BPE ----

void Tokenizer::Impl::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  struct Sym {
    int32_t prev, next;
    uint32_t start, n;
  };
  struct Bigram {
    float score;
    int32_t left, right;
    uint32_t size;
  };
  struct Cmp {
    bool operator()(const Bigram& l, const Bigram& r) const {
      return l.score < r.score || (l.score == r.score && l.left > r.left);
    }
  };
  std::vector<Sym> syms;
  syms.reserve(text.size());
  for (size_t off = 0; off < text.size();) {
    size_t n = std::min(utf8_len(static_cast<uint8_t>(text[off])), text.size() - off);
    // Malformed UTF-8 (a lead byte without its continuation bytes): one byte per
    // symbol. llama.cpp would swallow the next bytes (often an escaped space) into
    // byte tokens and lose them; for valid UTF-8 both agree.
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<uint8_t>(text[off + k]) & 0xC0) != 0x80) {
        n = 1;
        break;
      }
    }
    const auto idx = static_cast<int32_t>(syms.size());
    syms.push_back({idx - 1, off + n == text.size() ? -1 : idx + 1, static_cast<uint32_t>(off),
                    static_cast<uint32_t>(n)});
    off += n;
  }
  std::vector<Bigram> heap_storage;
  heap_storage.reserve(syms.size());
  std::priority_queue<Bigram, std::vector<Bigram>, Cmp> queue(Cmp{}, std::move(heap_storage));
  auto try_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const uint32_t size = syms[l].n + syms[r].n;
    const int32_t id = lookup(text.substr(syms[l].start, size));
    if (id < 0) return;
    queue.push({spec.scores.empty() ? 0.0f : spec.scores[id], l, r, size});
  };
  for (int32_t i = 1; i < static_cast<int32_t>(syms.size()); ++i) try_add(i - 1, i);
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Sym& l = syms[b.left];
    Sym& r = syms[b.right];
    if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  for (int32_t i = 0; i != -1; i = syms[i].next) {
    const Sym& s = syms[i];
    const std::string_view piece = text.substr(s.start, s.n);
    const int32_t id = lookup(piece);
    if (id >= 0) {
      out.push_back(id);
      continue;
    }
    for (unsigned char c : piece) {
      const int32_t bt = byte_token[c] >= 0 ? byte_token[c] : spec.unk;
      if (bt >= 0) out.push_back(bt);
    }
  }
}

// ---- Byte-level BPE ----

void Tokenizer::Impl::encode_bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  if (spec.ignore_merges) {
    std::string enc;
    for (unsigned char c : word) enc += byte_to_str[c];
    if (const int32_t id = lookup(enc); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  struct Sym {
    int32_t prev, next, sym;
  };
  struct Bigram {
    int32_t rank, left, right, lsym, rsym, result;
  };
  struct Cmp {
    bool operator()(const Bigram& l, const Bigram& r) const {
      return l.rank > r.rank || (l.rank == r.rank && l.left > r.left);
    }
  };
  const auto n = static_cast<int32_t>(word.size());
  std::vector<Sym> syms(n);
  for (int32_t i = 0; i < n; ++i) syms[i] = {i - 1, i + 1 == n ? -1 : i + 1, byte_sym[static_cast<uint8_t>(word[i])]};
  std::priority_queue<Bigram, std::vector<Bigram>, Cmp> queue;
  auto try_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const uint64_t key = (static_cast<uint64_t>(syms[l].sym) << 32) | static_cast<uint32_t>(syms[r].sym);
    auto it = merges.find(key);
    if (it == merges.end()) return;
    queue.push({it->second.rank, l, r, syms[l].sym, syms[r].sym, it->second.result});
  };
  for (int32_t i = 1; i < n; ++i) try_add(i - 1, i);
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Sym& l = syms[b.left];
    Sym& r = syms[b.right];
    if (l.sym < 0 || r.sym < 0 || l.sym != b.lsym || r.sym != b.rsym || l.next != b.right) continue;
    l.sym = b.result;
    r.sym = -1;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  for (int32_t i = 0; i != -1 && n > 0; i = syms[i].next) {
    const int32_t s = syms[i].sym;
    if (s < n_vocab) {
      out.push_back(s);
      continue;
    }
    // Not a token: each byte of its (byte-encoded) text, as one-byte pieces (llama.cpp).
    for (char c : sym_text(s)) {
      if (const int32_t id = lookup(std::string_view(&c, 1)); id >= 0) out.push_back(id);
    }
  }
}

void Tokenizer::Impl::encode_bpe(std::string_view text, std::vector<int32_t>& out, pcre2_match_data* md,
                                 pcre2_match_context* mctx) const {
  // Pre-tokenize: each regex splits every current piece into matches and gaps.
  std::vector<std::pair<size_t, size_t>> cur{{0, text.size()}}, next;
  for (const auto& re : regexes) {
    next.clear();
    for (auto [off, len] : cur) {
      const auto* subj = reinterpret_cast<PCRE2_SPTR>(text.data() + off);
      size_t pos = 0, last = 0;
      while (pos <= len) {
        const int rc = pcre2_match(re->code, subj, len, pos, 0, md, mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
          PCRE2_UCHAR msg[256];
          pcre2_get_error_message(rc, msg, sizeof msg);
          fail("tokenizer: pre-tokenizer regex match failed: {}", reinterpret_cast<const char*>(msg));
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
        const size_t s = ov[0], e = ov[1];
        if (e == s) {  // empty match: step over one character
          pos = s + 1;
          while (pos < len && (static_cast<uint8_t>(text[off + pos]) & 0xC0) == 0x80) ++pos;
          continue;
        }
        if (s > last) next.emplace_back(off + last, s - last);
        next.emplace_back(off + s, e - s);
        last = pos = e;
      }
      if (last < len) next.emplace_back(off + last, len - last);
    }
    std::swap(cur, next);
  }
  // Merge each pre-token, caching repeated words.
  std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;  // word -> [begin, end) in out
  for (auto [off, len] : cur) {
    const std::string_view w = text.substr(off, len);
    if (len <= 64) {
      auto it = cache.find(w);
      if (it != cache.end()) {
        const auto [b, e] = it->second;
        for (uint32_t k = b; k < e; ++k) out.push_back(out[k]);
        continue;
      }
      const auto b = static_cast<uint32_t>(out.size());
      encode_bpe_word(w, out);
      cache.emplace(w, std::pair{b, static_cast<uint32_t>(out.size())});
    } else {
      encode_bpe_word(w, out);
    }
  }
}

// ---- public API ----

Tokenizer::Tokenizer(TokenizerSpec spec) : impl_(std::make_unique<Impl>()) {
  impl_->spec = std::move(spec);
  impl_->build();
  // The map's blob now holds every token's text: drop the per-token strings.
  std::vector<std::string>().swap(impl_->spec.tokens);
}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_bos && m.spec.add_bos && m.spec.bos >= 0) out.push_back(m.spec.bos);
  const auto frags = m.partition(text, parse_special);
  if (m.spec.kind == TokenizerSpec::Kind::SentencePiece) {
    bool prev_special = true;  // a space prefix goes before the first text and after special tokens
    std::string buf;
    for (const Fragment& f : frags) {
      if (f.token >= 0) {
        out.push_back(f.token);
        prev_special = true;
        continue;
      }
      buf.clear();
      if (m.spec.add_space_prefix && prev_special) buf += ' ';
      buf.append(text.substr(f.off, f.len));
      m.encode_spm(replace_all(buf, " ", kSpmSpace), out);
      prev_special = false;
    }
  } else {
    pcre2_match_data* md = pcre2_match_data_create(4, nullptr);
    pcre2_match_context* mctx = pcre2_match_context_create(nullptr);
    pcre2_jit_stack* js = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    if (!md || !mctx || !js) {
      pcre2_match_data_free(md);
      pcre2_match_context_free(mctx);
      pcre2_jit_stack_free(js);
      fail("tokenizer: out of memory for the regex matcher");
    }
    pcre2_jit_stack_assign(mctx, nullptr, js);
    try {
      for (const Fragment& f : frags) {
        if (f.token >= 0) {
          out.push_back(f.token);
        } else {
          m.encode_bpe(text.substr(f.off, f.len), out, md, mctx);
        }
      }
    } catch (...) {
      pcre2_match_data_free(md);
      pcre2_match_context_free(mctx);
      pcre2_jit_stack_free(js);
      throw;
    }
    pcre2_match_data_free(md);
    pcre2_match_context_free(mctx);
    pcre2_jit_stack_free(js);
  }
  if (add_bos && m.spec.add_eos && m.spec.eos >= 0) out.push_back(m.spec.eos);
  return out;
}

std::string Tokenizer::decode_token(int32_t id) const {
  if (id < 0 || id >= impl_->n_vocab) return {};
  return std::string(impl_->piece(id));
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  bool strip = impl_->spec.kind == TokenizerSpec::Kind::SentencePiece && impl_->spec.add_space_prefix;
  for (int32_t id : ids) {
    if (id < 0 || id >= impl_->n_vocab) continue;
    const std::string_view p = impl_->piece(id);
    if (p.empty()) continue;
    if (strip && p[0] == ' ') {
      out.append(p.substr(1));
    } else {
      out += p;
    }
    strip = false;
  }
  return out;
}

int32_t Tokenizer::bos() const { return impl_->spec.bos; }
int32_t Tokenizer::eos() const { return impl_->spec.eos; }
int32_t Tokenizer::vocab_size() const { return impl_->n_vocab; }
bool Tokenizer::is_eog(int32_t id) const { return impl_->eog.count(id) != 0; }
int32_t Tokenizer::token_id(std::string_view piece) const { return impl_->lookup(piece); }
bool Tokenizer::adds_bos() const { return impl_->spec.add_bos && impl_->spec.bos >= 0; }
std::string_view Tokenizer::token_text(int32_t id) const {
  return id >= 0 && id < impl_->n_vocab ? impl_->token_to_id.text(id) : std::string_view();
}
TokenizerSpec Tokenizer::to_spec() const {
  TokenizerSpec s = impl_->spec;
  s.tokens.reserve(impl_->n_vocab);
  for (int32_t i = 0; i < impl_->n_vocab; ++i) s.tokens.emplace_back(impl_->token_to_id.text(i));
  return s;
}

}  // namespace optiq

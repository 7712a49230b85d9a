// Tokenizer implementation: special-token partition, SentencePiece-style BPE,
// byte-level BPE with PCRE2 pre-tokenization. The merge procedures follow
// llama.cpp's llm_tokenizer_spm / llm_tokenizer_bpe so that ids agree exactly:
//  - SPM: split into UTF-8 characters; repeatedly merge the adjacent pair whose
//    concatenation is a vocab piece with the highest score (ties: leftmost);
//    pieces that are not in the vocab become <0xNN> byte tokens.
//  - BPE: per pre-token, split into bytes (as GPT-2 unicode characters); repeatedly
//    merge the adjacent pair with the lowest merge rank (ties: leftmost).
#include "tokenizer/tokenizer_impl.h"

#include <algorithm>
#include <cstdio>
#include <queue>

namespace optiq {

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

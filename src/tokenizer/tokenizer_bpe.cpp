// Byte-level BPE (llama.cpp's llm_tokenizer_bpe): PCRE2 pre-tokenization by
// the family's regexes, then per pre-token merges by lowest rank, leftmost first.
#include "tokenizer/tokenizer_impl.h"

#include <algorithm>
#include <cstdio>
#include <queue>

namespace optiq {

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

}  // namespace optiq

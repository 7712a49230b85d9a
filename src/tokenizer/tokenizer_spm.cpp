// SentencePiece-style BPE (llama.cpp's llm_tokenizer_spm): merge the adjacent
// pair with the highest vocab score, leftmost first; unknown pieces become bytes.
#include "tokenizer/tokenizer_impl.h"

#include <algorithm>
#include <cstdio>
#include <queue>

namespace optiq {

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

}  // namespace optiq

// Encode/decode of arbitrary bytes (after a first byte that picks the
// tokenizer) with real tokenizers, loaded once:
// stories260K (SentencePiece, byte fallback), SmolLM2 (byte-level BPE) and
// Gemma 3 (SentencePiece, 262k pieces) from the model cache, when present.
// Checks beyond "no crash": ids stay in the vocabulary, and for valid UTF-8
// without SentencePiece's space mark, made of bytes the vocabulary can
// encode, decode(encode(text)) gives the text back.
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_exercise.h"

using namespace optiq;

namespace {

struct Loaded {
  std::string name;
  std::unique_ptr<Tokenizer> tok;
  // Bytes that survive encode/decode alone. Not all do, by design: SmolLM2's
  // byte-level vocabulary has no token for some control bytes (0x14), and
  // llama.cpp's BPE drops a byte it has no token for, as optiq does.
  std::array<bool, 256> round_trips{};
};

std::vector<Loaded> load_all() {
  std::vector<Loaded> out;
  const std::string files[] = {fuzz::stories_dir() + "/stories260K.gguf",
                               fuzz::cache_models_dir() + "/smollm2-135m-instruct-q4_1.gguf",
                               fuzz::cache_models_dir() + "/gemma-3-270m-q4_k_m.gguf"};
  for (const auto& f : files) {
    std::error_code ec;
    if (!std::filesystem::exists(f, ec)) continue;
    GgufFile g(f);
    Loaded l{f, std::make_unique<Tokenizer>(tokenizer_spec_from_gguf(g)), {}};
    for (int b = 0; b < 256; ++b) {
      const std::string s(1, static_cast<char>(b));
      l.round_trips[b] = l.tok->decode(l.tok->encode(s, /*add_bos=*/false)) == s;
    }
    out.push_back(std::move(l));
  }
  if (out.empty()) {
    std::fprintf(stderr, "fuzz_encode: no tokenizer found (%s, %s)\n", fuzz::stories_dir().c_str(),
                 fuzz::cache_models_dir().c_str());
    std::abort();
  }
  return out;
}

// Strictly valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : c & (0x7f >> n);
    for (size_t k = 1; k < n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 2) return false;
      cp = cp << 6 | (d & 0x3f);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<Loaded> toks = load_all();
  // The first byte picks the tokenizer: one encode pass per input instead of
  // three keeps the rate up (Gemma's and SmolLM2's are slow under ASan).
  if (size == 0) return 0;
  const Loaded& t = toks[data[0] % toks.size()];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<int32_t> ids = fuzz::exercise_tokenizer(*t.tok, text);
  // "\u2581" is SentencePiece's space: it decodes as " ", by design.
  if (!valid_utf8(text) || text.find("\xe2\x96\x81") != std::string_view::npos) return 0;
  for (char c : text)
    if (!t.round_trips[static_cast<uint8_t>(c)]) return 0;
  if (!ids.empty() && t.tok->adds_bos() && ids.front() == t.tok->bos()) ids.erase(ids.begin());
  if (t.tok->decode(ids) != text) {
    std::fprintf(stderr, "fuzz_encode: %s: decode(encode(text)) != text for %zu bytes of valid UTF-8\n",
                 t.name.c_str(), text.size());
    std::abort();
  }
  return 0;
}

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <chrono>
#include <cstring>
#include <random>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace optiq {
namespace {

std::string stories_dir() { return test::shared_dir() + "/models/stories260K"; }

const Tokenizer& stories_bin() {
  static Tokenizer t(tokenizer_spec_from_llama2c(stories_dir() + "/tok512.bin", 512));
  return t;
}

void write_file(const std::string& p, std::string_view data) {
  std::ofstream out(p, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

// Random text mixing ASCII words, whitespace runs, multi-byte UTF-8 and (when
// `raw_bytes`) arbitrary bytes including invalid UTF-8.
std::string random_text(std::mt19937& rng, size_t n, bool raw_bytes) {
  static const char* pieces[] = {"the", " ", "  ", "\n", "\t", "Once", "upon", ",", ".", "123", "é", "ß", "→",
                                 "日本語", "😀", "'s", "<s>", "</s>", "\r\n", "a", "Lily", "x"};
  std::string s;
  std::uniform_int_distribution<int> pick(0, static_cast<int>(std::size(pieces)) + (raw_bytes ? 3 : -1));
  std::uniform_int_distribution<int> byte(0, 255);
  while (s.size() < n) {
    const int k = pick(rng);
    if (k < static_cast<int>(std::size(pieces)))
      s += pieces[k];
    else
      s += static_cast<char>(byte(rng));
  }
  return s;
}

TEST(Tokenizer, StoriesOnceUponATime) {
  const Tokenizer& t = stories_bin();
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.bos(), 1);
  EXPECT_EQ(t.eos(), 2);
  const auto ids = t.encode("Once upon a time", true);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(t.decode(ids), "Once upon a time");
  // Every piece is a vocabulary piece; "▁Once"-style pieces decode with a space.
  std::string joined;
  for (size_t i = 1; i < ids.size(); ++i) joined += t.decode_token(ids[i]);
  EXPECT_EQ(joined, " Once upon a time");
  EXPECT_TRUE(t.is_eog(2));
  EXPECT_FALSE(t.is_eog(ids[1]));
  // Known llama2.c result (its encode with bos=1): greedy highest-score merges.
  const auto ids2 = t.encode("Once upon a time", false);
  EXPECT_EQ(std::vector<int32_t>(ids.begin() + 1, ids.end()), ids2);
}

TEST(Tokenizer, StoriesByteFallbackAndEdgeCases) {
  const Tokenizer& t = stories_bin();
  EXPECT_TRUE(t.encode("", false).empty());
  EXPECT_EQ(t.encode("", true), std::vector<int32_t>{1});
  // A character outside the 512-piece vocabulary falls back to <0xNN> tokens (ids 3..258).
  const auto ids = t.encode("日", false);
  ASSERT_FALSE(ids.empty());
  size_t bytes = 0;
  for (int32_t id : ids)
    if (id >= 3 && id <= 258) ++bytes;
  EXPECT_EQ(bytes, 3u);
  EXPECT_EQ(t.decode(ids), "日");
  EXPECT_EQ(t.decode_token(3 + 0x41), "A");
  EXPECT_EQ(t.decode_token(1), "");
  EXPECT_EQ(t.decode_token(-5), "");
  EXPECT_EQ(t.decode_token(100000), "");
  // A literal "▁" in the input is read as a space (as llama.cpp and SentencePiece do).
  EXPECT_EQ(t.encode("a" "\xE2\x96\x81" "b", false), t.encode("a b", false));
}

TEST(Tokenizer, StoriesRoundTripRandom) {
  const Tokenizer& t = stories_bin();
  std::mt19937 rng(7);
  for (int iter = 0; iter < 200; ++iter) {
    const std::string s = random_text(rng, 1 + iter % 97, /*raw_bytes=*/true);
    const auto ids = t.encode(s, iter % 2 == 0);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < 512);
    ASSERT_EQ(t.decode(ids), s) << "iteration " << iter;
  }
}

TEST(Tokenizer, StoriesGgufMatchesBin) {
  GgufFile g(stories_dir() + "/stories260K.gguf");
  const TokenizerSpec gs = tokenizer_spec_from_gguf(g);
  const Tokenizer tg(gs);
  const Tokenizer& tb = stories_bin();
  ASSERT_EQ(tg.vocab_size(), tb.vocab_size());
  EXPECT_EQ(gs.kind, TokenizerSpec::Kind::SentencePiece);
  EXPECT_EQ(tg.bos(), tb.bos());
  EXPECT_EQ(tg.eos(), tb.eos());
  const TokenizerSpec bs = tb.to_spec();
  for (int32_t i = 0; i < tb.vocab_size(); ++i) {
    ASSERT_EQ(gs.tokens[i], bs.tokens[i]) << "token " << i;
    ASSERT_EQ(gs.tokens[i], tb.token_text(i)) << "token " << i;
    ASSERT_EQ(gs.scores[i], bs.scores[i]) << "token " << i;
    if (!gs.token_types.empty()) {
      ASSERT_EQ(gs.token_types[i], bs.token_types[i]) << "token " << i;
    }
  }
  std::mt19937 rng(11);
  for (int iter = 0; iter < 100; ++iter) {
    const std::string s = random_text(rng, 1 + iter * 3, true);
    ASSERT_EQ(tg.encode(s, true), tb.encode(s, true)) << "iteration " << iter;
  }
  const std::string story = test::read_file(test::shared_dir() + "/data/tinystories/tinystories-valid-head.txt").substr(0, 20000);
  EXPECT_EQ(tg.encode(story, true), tb.encode(story, true));
}

// A tiny byte-level BPE vocabulary built by hand: exercises the byte mapping,
// merge ranks, pre-tokenizer regexes and special tokens.
TokenizerSpec tiny_bpe() {
  TokenizerSpec s;
  s.kind = TokenizerSpec::Kind::ByteLevelBPE;
  // Build the byte->unicode table the same way as GPT-2.
  std::vector<uint32_t> cps(256);
  uint32_t extra = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    cps[b] = printable ? b : 256 + extra++;
  }
  auto utf8 = [](uint32_t cp) {
    std::string o;
    if (cp < 0x80) {
      o += char(cp);
    } else {
      o += char(0xC0 | (cp >> 6));
      o += char(0x80 | (cp & 0x3F));
    }
    return o;
  };
  for (int b = 0; b < 256; ++b) s.tokens.push_back(utf8(cps[b]));
  const std::string G = utf8(cps[' ']);  // "Ġ"
  s.merges = {"h e", G + " w", "l l", "he ll", "hell o", G + "w o", G + "wo r", G + "wor l", G + "worl d"};
  for (const auto& m : s.merges) {
    const size_t sp = m.find(' ');
    s.tokens.push_back(m.substr(0, sp) + m.substr(sp + 1));
  }
  s.tokens.push_back("<|im_start|>");
  s.tokens.push_back("<|im_end|>");
  s.token_types.assign(s.tokens.size(), token_type::kNormal);
  s.token_types[s.tokens.size() - 2] = token_type::kControl;
  s.token_types[s.tokens.size() - 1] = token_type::kControl;
  s.eos = static_cast<int32_t>(s.tokens.size() - 1);
  s.pre = "smollm";
  return s;
}

TEST(Tokenizer, ByteLevelBpeBasics) {
  const Tokenizer t(tiny_bpe());
  const int32_t hello = t.token_id("hello");
  const int32_t world = t.token_id("\xC4\xA0world");
  ASSERT_GE(hello, 0);
  ASSERT_GE(world, 0);
  EXPECT_EQ(t.encode("hello world", false), (std::vector<int32_t>{hello, world}));
  EXPECT_EQ(t.decode(t.encode("hello world", false)), "hello world");
  // smollm: digits are split one by one.
  EXPECT_EQ(t.encode("123", false), (std::vector<int32_t>{'1', '2', '3'}));
  // Control tokens only with parse_special.
  const int32_t im_start = t.token_id("<|im_start|>");
  auto ids = t.encode("<|im_start|>hello", false, true);
  EXPECT_EQ(ids, (std::vector<int32_t>{im_start, hello}));
  ids = t.encode("<|im_start|>hello", false, false);
  EXPECT_EQ(ids.size(), 13u);  // "<" "|" "i" "m" "_" "s" "t" "a" "r" "t" "|" ">" "hello"
  EXPECT_EQ(t.decode(ids), "<|im_start|>hello");
  EXPECT_TRUE(t.is_eog(t.token_id("<|im_end|>")));
  EXPECT_EQ(t.decode_token(im_start), "");

  std::mt19937 rng(3);
  for (int iter = 0; iter < 200; ++iter) {
    const std::string s = random_text(rng, 1 + iter % 101, true);
    ASSERT_EQ(t.decode(t.encode(s, false)), s) << "iteration " << iter;
  }
}

TEST(Tokenizer, PreTokenizerNames) {
  for (const char* pre : {"default", "gpt2", "llama-bpe", "qwen2", "smollm", "falcon", "unknown-name"}) {
    TokenizerSpec s = tiny_bpe();
    s.pre = pre;
    const Tokenizer t(std::move(s));
    const std::string text = "It's 2024 — naïve café\n\n  x  \ty 12345!!";
    EXPECT_EQ(t.decode(t.encode(text, false)), text) << pre;
  }
}

TEST(Tokenizer, BadSpecsThrow) {
  TokenizerSpec s = tiny_bpe();
  s.merges.push_back("nospace");
  EXPECT_THROW(Tokenizer{s}, Error);
  s = tiny_bpe();
  s.bos = 100000;
  EXPECT_THROW(Tokenizer{s}, Error);
  s = tiny_bpe();
  s.scores = {1.0f};
  EXPECT_THROW(Tokenizer{s}, Error);
  s = tiny_bpe();
  s.pre_regexes = {"(unclosed"};
  EXPECT_THROW(Tokenizer{s}, Error);
  EXPECT_THROW(Tokenizer{TokenizerSpec{}}, Error);
}

TEST(Tokenizer, CorruptLlama2cFilesThrow) {
  const std::string good = test::read_file(stories_dir() + "/tok512.bin");
  ASSERT_GT(good.size(), 100u);
  const std::string dir = test::temp_dir();
  const std::string p = dir + "/tok.bin";
  // Truncations at many points.
  for (size_t cut : {size_t(0), size_t(2), size_t(4), size_t(7), size_t(13), good.size() / 2, good.size() - 1}) {
    write_file(p, good.substr(0, cut));
    EXPECT_THROW(tokenizer_spec_from_llama2c(p, 512), Error) << "cut " << cut;
  }
  // Random byte corruption: must either load or throw optiq::Error, never crash.
  std::mt19937 rng(5);
  for (int iter = 0; iter < 200; ++iter) {
    std::string bad = good;
    for (int k = 0; k < 4; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    write_file(p, bad);
    try {
      const Tokenizer t(tokenizer_spec_from_llama2c(p, 512));
      (void)t.encode("Once upon a time there was a dog", true);
    } catch (const Error&) {
    }
  }
  // Huge length field.
  std::string bad = good;
  const int32_t huge = 0x7fffffff;
  std::memcpy(bad.data() + 8, &huge, 4);
  write_file(p, bad);
  EXPECT_THROW(tokenizer_spec_from_llama2c(p, 512), Error);
  EXPECT_THROW(tokenizer_spec_from_llama2c(dir + "/missing.bin", 512), Error);
}

// Tokens that are not UTF-8 (docs/reliability.md, "limits"). tokenizer.json
// is JSON, so a raw 0xFF in it is a one-line JSON error naming the file. GGUF
// and tokenizer.bin vocabularies are bytes, read as llama.cpp reads them: a
// non-UTF-8 piece loads and encodes/decodes as its bytes (writing it to
// tokenizer.json is refused: TokenizerJson.EscapesAndErrors).
TEST(Tokenizer, NonUtf8Tokens) {
  const std::string dir = test::temp_dir();
  write_file(dir + "/tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"\xff\": 1}, \"merges\": []}}");
  try {
    (void)tokenizer_spec_from_hf(dir);
    ADD_FAILURE() << "accepted a tokenizer.json that is not UTF-8";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind(dir + "/tokenizer.json: not valid JSON: ", 0), 0u) << m;
    EXPECT_NE(m.find("UTF-8"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }

  GgufWriter w;
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "\xe2\x96\x81" "a", "\xff\xfe", "\xff", "\xfe"});
  w.add_float_array("tokenizer.ggml.scores", {0, 0, 0, -1, -1, -2, -2});
  w.add_int_array("tokenizer.ggml.token_type", {2, 3, 3, 1, 1, 1, 1});
  w.write(dir + "/bytes.gguf");
  const GgufFile g(dir + "/bytes.gguf");
  const Tokenizer t(tokenizer_spec_from_gguf(g));
  const std::string text = "a\xff\xfe";
  const std::vector<int32_t> ids = t.encode(text, /*add_bos=*/false);
  EXPECT_EQ(ids, (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(t.decode(ids), text);
}

TEST(Tokenizer, HfTokenizerJson) {
  const std::string dir = test::temp_dir();
  // A small GPT-2-style tokenizer.json with a Split + ByteLevel pre-tokenizer.
  const std::string json = R"({
    "added_tokens": [{"id": 8, "content": "<|endoftext|>", "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4, "1": 5, "2": 6, "c": 7},
              "merges": ["a b", "Ġ ab"]}
  })";
  write_file(dir + "/tokenizer.json", json);
  write_file(dir + "/tokenizer_config.json", R"({"eos_token": "<|endoftext|>", "add_bos_token": false})");
  const TokenizerSpec s = tokenizer_spec_from_hf(dir);
  EXPECT_EQ(s.kind, TokenizerSpec::Kind::ByteLevelBPE);
  EXPECT_EQ(s.eos, 8);
  const Tokenizer t(s);
  EXPECT_EQ(t.encode("ab ab12", false), (std::vector<int32_t>{2, 4, 5, 6}));
  EXPECT_EQ(t.encode("ab<|endoftext|>", false, true), (std::vector<int32_t>{2, 8}));

  // Corrupt versions: optiq::Error, never a crash.
  std::mt19937 rng(9);
  for (int iter = 0; iter < 300; ++iter) {
    std::string bad = json;
    if (iter % 3 == 0) {
      bad = bad.substr(0, rng() % bad.size());
    } else {
      const std::string chars = "{}[]\",:0-9aZ \x01\xff";
      for (int k = 0; k < 3; ++k) {
        const size_t pos = rng() % bad.size();
        bad[pos] = chars[rng() % chars.size()];
      }
    }
    write_file(dir + "/tokenizer.json", bad);
    try {
      const Tokenizer tb(tokenizer_spec_from_hf(dir));
      (void)tb.encode("ab ab12 c", true, true);
    } catch (const Error&) {
    }
  }
  for (const char* bad : {"", "[]", "{}", R"({"model": 3})", R"({"model": {"type": "Unigram"}})",
                          R"({"model": {"type": "BPE", "vocab": {"a": -1}}})",
                          R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [1]}})",
                          R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["ab"]}})"}) {
    write_file(dir + "/tokenizer.json", bad);
    EXPECT_THROW(Tokenizer(tokenizer_spec_from_hf(dir)), Error) << bad;
  }
  EXPECT_THROW(tokenizer_spec_from_hf(dir + "/nope"), Error);
}

TEST(Tokenizer, WikiTextSpeed) {
  const std::string wiki = test::read_file(test::shared_dir() + "/data/wikitext-2-raw/wiki.test.raw");
  ASSERT_GT(wiki.size(), 1000000u);
  const Tokenizer& t = stories_bin();
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = t.encode(wiki, true);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(t.decode(ids), wiki);
  std::printf("stories260K SPM: %zu bytes -> %zu tokens in %.3f s\n", wiki.size(), ids.size(), sec);
  EXPECT_LT(sec, 10.0);
}

}  // namespace
}  // namespace optiq

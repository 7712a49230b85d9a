// write_hf_tokenizer: tokenizers written as Hugging Face files and read back with
// tokenizer_spec_from_hf must tokenize like the original.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/gguf.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_json.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A few KB of each corpus, cut at line ends.
std::string sample_text() {
  auto head = [](const std::string& s, size_t n) {
    const size_t e = s.rfind('\n', std::min(n, s.size()));
    return s.substr(0, e == std::string::npos ? std::min(n, s.size()) : e + 1);
  };
  return head(slurp(test::shared_dir() + "/data/wikitext-2-raw/wiki.test.raw"), 12000) +
         head(slurp(test::shared_dir() + "/data/tinystories/tinystories-valid-head.txt"), 6000);
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    size_t e = s.find('\n', b);
    if (e == std::string::npos) e = s.size();
    out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

// Random text with special-token texts, whitespace runs and multi-byte UTF-8.
std::string random_text(uint32_t seed, size_t n, const std::vector<std::string>& extra) {
  std::vector<std::string> pieces = {"the", " ", "  ", "\n", "\t", "Once", ",", ".", "123", "é", "ß",
                                     "→", "日本語", "😀", "'s", "\r\n", "a", "Lily", "x", "\"", "\\"};
  pieces.insert(pieces.end(), extra.begin(), extra.end());
  std::mt19937 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, pieces.size() - 1);
  std::string s;
  while (s.size() < n) s += pieces[pick(rng)];
  return s;
}

// Writes `tok`, reads it back and checks ids on text (whole and per line, with and
// without BOS, with and without special-token parsing) and the written metadata.
// Returns the directory written.
std::string check_roundtrip(const Tokenizer& tok, const std::string& name) {
  const std::string dir = test::temp_dir() + "/" + name;
  write_hf_tokenizer(tok, dir);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
    EXPECT_TRUE(fs::exists(fs::path(dir) / f)) << f;
  for (const auto& e : fs::directory_iterator(dir))  // no temporary files left behind
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  const Tokenizer back(tokenizer_spec_from_hf(dir));
  EXPECT_EQ(back.vocab_size(), tok.vocab_size());
  EXPECT_EQ(back.to_spec().kind, tok.to_spec().kind);
  EXPECT_EQ(back.bos(), tok.bos());
  EXPECT_EQ(back.eos(), tok.eos());
  EXPECT_EQ(back.to_spec().add_bos, tok.to_spec().add_bos && tok.bos() >= 0);
  EXPECT_EQ(back.to_spec().add_space_prefix, tok.to_spec().add_space_prefix);

  const std::string text = sample_text();
  EXPECT_GT(text.size(), 10000u);
  EXPECT_EQ(back.encode(text, true), tok.encode(text, true));
  EXPECT_EQ(back.encode(text, false), tok.encode(text, false));
  size_t bad = 0, n = 0;
  for (const auto& l : lines_of(text)) {
    ++n;
    if (back.encode(l, true) != tok.encode(l, true)) {
      if (++bad <= 3) ADD_FAILURE() << name << ": line differs: " << l;
    }
  }
  EXPECT_EQ(bad, 0u) << "of " << n << " lines";

  std::vector<std::string> specials;
  for (int32_t id : {tok.bos(), tok.eos(), tok.to_spec().unk})
    if (id >= 0) specials.push_back(tok.to_spec().tokens[id]);
  for (uint32_t seed = 1; seed <= 3; ++seed) {
    const std::string r = random_text(seed, 3000, specials);
    EXPECT_EQ(back.encode(r, true, false), tok.encode(r, true, false)) << "seed " << seed;
    EXPECT_EQ(back.encode(r, true, true), tok.encode(r, true, true)) << "seed " << seed;
    EXPECT_EQ(back.decode(back.encode(r, false)), tok.decode(tok.encode(r, false))) << "seed " << seed;
  }

  // The config files are JSON with the special tokens.
  const auto cfg = nlohmann::json::parse(slurp(dir + "/tokenizer_config.json"));
  EXPECT_EQ(cfg.at("tokenizer_class"), "PreTrainedTokenizerFast");
  EXPECT_EQ(cfg.at("add_bos_token").get<bool>(), tok.to_spec().add_bos && tok.bos() >= 0);
  if (tok.bos() >= 0) {
    EXPECT_EQ(cfg.at("bos_token"), tok.to_spec().tokens[tok.bos()]);
  }
  if (tok.eos() >= 0) {
    EXPECT_EQ(cfg.at("eos_token"), tok.to_spec().tokens[tok.eos()]);
  }
  const auto map = nlohmann::json::parse(slurp(dir + "/special_tokens_map.json"));
  if (tok.eos() >= 0) {
    EXPECT_EQ(map.at("eos_token").at("content"), tok.to_spec().tokens[tok.eos()]);
  }

  // Writing again over existing files works (rename replaces them).
  write_hf_tokenizer(tok, dir);
  EXPECT_EQ(Tokenizer(tokenizer_spec_from_hf(dir)).encode(text, true), tok.encode(text, true));
  return dir;
}

TEST(TokenizerJson, Stories260KGguf) {
  GgufFile g(test::shared_dir() + "/models/stories260K/stories260K.gguf");
  const Tokenizer tok(tokenizer_spec_from_gguf(g));
  const std::string dir = check_roundtrip(tok, "stories-gguf");
  const auto j = nlohmann::json::parse(slurp(dir + "/tokenizer.json"));
  EXPECT_TRUE(j.at("model").at("byte_fallback").get<bool>());
  EXPECT_TRUE(j.at("pre_tokenizer").is_null());
  EXPECT_EQ(j.at("model").at("unk_token"), "<unk>");
}

TEST(TokenizerJson, Stories260KLlama2c) {
  const Tokenizer tok(
      tokenizer_spec_from_llama2c(test::shared_dir() + "/models/stories260K/tok512.bin", 512));
  check_roundtrip(tok, "stories-bin");
}

TEST(TokenizerJson, SmolLM2Gguf) {
  const std::string path = test::cache_dir() + "/models/smollm2-135m-instruct-q4_1.gguf";
  if (!test::file_exists(path)) GTEST_SKIP() << path << " missing (scripts/fetch_models.py)";
  GgufFile g(path);
  const Tokenizer tok(tokenizer_spec_from_gguf(g));
  const std::string dir = check_roundtrip(tok, "smollm2");
  const auto j = nlohmann::json::parse(slurp(dir + "/tokenizer.json"));
  EXPECT_FALSE(j.at("model").at("byte_fallback").get<bool>());
  EXPECT_EQ(j.at("model").at("merges").size(), tok.to_spec().merges.size());
  EXPECT_EQ(j.at("decoder").at("type"), "ByteLevel");
  // Chat control tokens are special added tokens.
  bool found = false;
  for (const auto& a : j.at("added_tokens"))
    if (a.at("content") == "<|im_start|>") found = a.at("special").get<bool>();
  EXPECT_TRUE(found);
}

TEST(TokenizerJson, Gemma3Gguf) {
  const std::string path = test::cache_dir() + "/models/gemma-3-270m-q4_k_m.gguf";
  if (!test::file_exists(path)) GTEST_SKIP() << path << " missing (scripts/fetch_models.py)";
  GgufFile g(path);
  const Tokenizer tok(tokenizer_spec_from_gguf(g));
  check_roundtrip(tok, "gemma3");
}

// Merges of a SentencePiece vocab: every split into two pieces, ranked by the
// merged piece's score (stable: ties keep id order), splits ordered by ids.
TEST(TokenizerJson, SpmMergesFromScores) {
  TokenizerSpec s;
  s.kind = TokenizerSpec::Kind::SentencePiece;
  s.tokens = {"<unk>", "a", "b", "c", "ab", "bc", "abc", "é", "éa", "▁", "▁a"};
  s.scores = {0, -1, -1, -1, -5, -3, -4, -1, -5, -1, -2};
  const auto m = spm_merges_from_scores(s);
  std::vector<std::pair<std::string, std::string>> got;
  for (auto [l, r] : m) got.emplace_back(s.tokens[l], s.tokens[r]);
  const std::vector<std::pair<std::string, std::string>> want = {
      {"▁", "a"}, {"b", "c"}, {"a", "bc"}, {"ab", "c"}, {"a", "b"}, {"é", "a"}};
  EXPECT_EQ(got, want);
}

// Tokens with characters JSON must escape survive the round trip.
TEST(TokenizerJson, EscapesAndErrors) {
  TokenizerSpec s;
  s.kind = TokenizerSpec::Kind::SentencePiece;
  s.tokens = {"<unk>", "<s>", "</s>", "\"", "\\", "\t", "\x01", "a", "\"a", "a\\", "▁"};
  s.scores = {0, 0, 0, -1, -1, -1, -1, -1, -2, -3, -1};
  s.token_types = {2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
  s.unk = 0, s.bos = 1, s.eos = 2, s.add_bos = true;
  const Tokenizer tok(s);
  const std::string dir = test::temp_dir() + "/escapes";
  write_hf_tokenizer(tok, dir);
  const Tokenizer back(tokenizer_spec_from_hf(dir));
  EXPECT_EQ(back.to_spec().tokens, s.tokens);
  for (const std::string t : {"\"a\\a\t\x01", "a\\\"", "\"\"\"a"}) EXPECT_EQ(back.encode(t, true), tok.encode(t, true)) << t;

  // A token that is not UTF-8 cannot be written: the error names the directory.
  s.tokens[7] = "\xC3";
  const Tokenizer bad(s);
  const std::string bad_dir = test::temp_dir() + "/bad-utf8";
  try {
    write_hf_tokenizer(bad, bad_dir);
    FAIL() << "no error for invalid UTF-8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad_dir), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("UTF-8"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(bad_dir + "/tokenizer.json"));

  // A directory that cannot be created (a file is in the way).
  const std::string file = test::temp_dir() + "/a-file";
  std::ofstream(file) << "x";
  EXPECT_THROW(write_hf_tokenizer(tok, file + "/sub"), Error);
}

}  // namespace
}  // namespace optiq

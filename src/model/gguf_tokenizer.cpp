// tokenizer.* keys of an exported GGUF. A GGUF source's keys are copied as
// they are (the most faithful route: llama.cpp wrote them). Otherwise they are
// built from the TokenizerSpec: SentencePiece -> model "llama" (tokens,
// scores, types), byte-level BPE -> model "gpt2" (tokens, types, merges) with
// the llama.cpp pre-tokenizer name whose regexes equal tokenizer.json's.
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/gguf.h"
#include "model/gguf_metadata.h"

namespace optiq {

namespace fs = std::filesystem;

namespace {

// Hugging Face's ByteLevel regex: llama.cpp's "gpt2" one plus a final "|\s+",
// which only matches whitespace that the split's gaps keep whole anyway.
const char* kHfByteLevel = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
// Llama 3's tokenizer.json Split regex (case-insensitive contractions), which
// llama.cpp spells out letter by letter.
const char* kHfLlama3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

// The llama.cpp pre-tokenizer name of a byte-level BPE spec.
std::string bpe_pre_name(const TokenizerSpec& s, const std::string& source) {
  if (s.pre_regexes.empty()) return s.pre;  // from a GGUF: already llama.cpp's name
  std::vector<std::string> mine = s.pre_regexes;
  for (auto& r : mine) {
    if (r == kHfByteLevel) r = pre_tokenizer_regexes("gpt2")[0];
    if (r == kHfLlama3) r = pre_tokenizer_regexes("llama-bpe")[0];
  }
  for (const char* name : {"gpt-2", "llama-bpe", "qwen2", "smollm", "default"})
    if (pre_tokenizer_regexes(name) == mine) return name;
  fail("{}: the tokenizer's pre-tokenizer ({} regexes, first '{}') matches none llama.cpp knows by name (gpt-2, "
       "llama-bpe, qwen2, smollm, default): convert it with llama.cpp's convert_hf_to_gguf.py instead",
       source, s.pre_regexes.size(), s.pre_regexes.front());
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A Hugging Face directory's chat template: tokenizer_config.json's
// "chat_template" (a string, or a list whose "default" entry is used), else
// chat_template.jinja.
std::string hf_chat_template(const fs::path& dir) {
  const fs::path cfg = dir / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    try {
      const nlohmann::json j = nlohmann::json::parse(read_file(cfg));
      if (j.contains("chat_template")) {
        const auto& t = j["chat_template"];
        if (t.is_string()) return t.get<std::string>();
        if (t.is_array())
          for (const auto& e : t)
            if (e.is_object() && e.value("name", std::string()) == "default") return e.value("template", std::string());
      }
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON: {}", cfg.string(), e.what());
    }
  }
  if (fs::exists(dir / "chat_template.jinja")) return read_file(dir / "chat_template.jinja");
  return {};
}

void add_from_spec(GgufWriter& w, const Model& m) {
  TokenizerSpec s = m.tokenizer->to_spec();
  const size_t vocab = static_cast<size_t>(m.config.vocab_size), n = s.tokens.size();
  check(n <= vocab, "{}: the tokenizer has {} tokens but the embedding only {} rows", m.path, n, vocab);
  const bool spm = s.kind == TokenizerSpec::Kind::SentencePiece;
  s.token_types.resize(n, token_type::kNormal);
  s.scores.resize(n, 0.0f);
  // llama.cpp takes the vocabulary size from the token list: pad it to the
  // embedding's rows with unused tokens, as its converter does.
  for (size_t i = n; i < vocab; ++i) {
    s.tokens.push_back("[PAD" + std::to_string(i) + "]");
    s.token_types.push_back(token_type::kUnused);
    s.scores.push_back(spm ? -1e30f : 0.0f);
  }
  w.add_string("tokenizer.ggml.model", spm ? "llama" : "gpt2");
  w.add_string("tokenizer.ggml.pre", spm ? "default" : bpe_pre_name(s, m.path));
  w.add_string_array("tokenizer.ggml.tokens", std::move(s.tokens));
  if (spm) w.add_float_array("tokenizer.ggml.scores", s.scores);
  w.add_int_array("tokenizer.ggml.token_type", {s.token_types.begin(), s.token_types.end()}, GgufWriter::Type::I32);
  if (!spm) w.add_string_array("tokenizer.ggml.merges", std::move(s.merges));
  auto id = [&](const char* key, int32_t v) {
    if (v >= 0) w.add_u32(key, static_cast<uint32_t>(v));
  };
  id("tokenizer.ggml.bos_token_id", s.bos);
  id("tokenizer.ggml.eos_token_id", s.eos);
  id("tokenizer.ggml.unknown_token_id", s.unk);
  id("tokenizer.ggml.padding_token_id", s.pad);
  id("tokenizer.ggml.eot_token_id", s.eot);
  w.add_bool("tokenizer.ggml.add_bos_token", s.add_bos);
  w.add_bool("tokenizer.ggml.add_eos_token", s.add_eos);
  if (spm) w.add_bool("tokenizer.ggml.add_space_prefix", s.add_space_prefix);
  if (m.format == SourceFormat::HfDir)
    if (std::string t = hf_chat_template(m.path); !t.empty()) w.add_string("tokenizer.chat_template", std::move(t));
}

}  // namespace

void add_gguf_tokenizer(GgufWriter& w, const Model& m) {
  if (m.format == SourceFormat::Gguf) {
    // The loader released the vocabulary's arrays; the file itself has them.
    const GgufFile src(m.path);
    w.copy_metadata(src, [](std::string_view k) { return k.starts_with("tokenizer."); });
    check(w.has("tokenizer.ggml.tokens"), "{}: no tokenizer.ggml.tokens to copy", m.path);
    return;
  }
  check(m.tokenizer != nullptr, "{}: the model has no tokenizer to export", m.path);
  add_from_spec(w, m);
}

}  // namespace optiq

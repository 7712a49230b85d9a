// TokenizerSpec loaders: GGUF (tokenizer.ggml.*), Hugging Face tokenizer.json,
// llama2.c tokenizer.bin.
#include <cstring>
#include <fstream>
#include <functional>
#include <unordered_map>
#include <limits>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "tokenizer/spm_space.h"
#include "tokenizer/tokenizer.h"

namespace optiq {

namespace {

std::string spaces_to_spm(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == ' ')
      out += kSpmSpace;
    else
      out += c;
  }
  return out;
}

bool is_byte_token(std::string_view t) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  return t.size() == 6 && t.substr(0, 3) == "<0x" && hex(t[3]) && hex(t[4]) && t[5] == '>';
}

}  // namespace

// ---- llama2.c ----

TokenizerSpec tokenizer_spec_from_llama2c(const std::string& path, int32_t vocab_size) {
  MappedFile f(path);
  const uint8_t* p = f.data();
  const size_t size = f.size();
  size_t off = 0;
  auto read_i32 = [&](const char* what, size_t index) {
    check(off + 4 <= size, "{}: truncated at byte {} (reading {} of token {})", path, off, what, index);
    int32_t v;
    std::memcpy(&v, p + off, 4);
    off += 4;
    return v;
  };
  const int32_t max_len = read_i32("max_token_length", 0);
  check(max_len > 0 && max_len <= (1 << 20), "{}: bad max_token_length {}: not a llama2.c tokenizer.bin", path,
        max_len);
  check(vocab_size <= (1 << 24), "{}: vocab_size {} is too large", path, vocab_size);
  TokenizerSpec s;
  s.kind = TokenizerSpec::Kind::SentencePiece;
  for (size_t i = 0; vocab_size > 0 ? i < static_cast<size_t>(vocab_size) : off < size; ++i) {
    float score;
    check(off + 4 <= size, "{}: truncated at byte {} (reading score of token {} of {})", path, off, i, vocab_size);
    std::memcpy(&score, p + off, 4);
    off += 4;
    const int32_t len = read_i32("length", i);
    check(len >= 0 && len <= max_len, "{}: token {} has length {} (max_token_length {})", path, i, len, max_len);
    check(off + static_cast<size_t>(len) <= size, "{}: truncated in token {} (needs {} bytes at {})", path, i, len,
          off);
    std::string text(reinterpret_cast<const char*>(p + off), static_cast<size_t>(len));
    off += len;
    int32_t type = token_type::kNormal;
    if (i == 0 && text == "<unk>") {
      type = token_type::kUnknown;
    } else if (i == 1 || i == 2) {
      // llama2.c's export writes BOS/EOS as "\n<s>\n" / "\n</s>\n".
      if (text.size() >= 2 && text.front() == '\n' && text.back() == '\n') text = text.substr(1, text.size() - 2);
      type = token_type::kControl;
    } else if (is_byte_token(text)) {
      type = token_type::kByte;
    }
    if (type == token_type::kNormal) text = spaces_to_spm(text);
    s.tokens.push_back(std::move(text));
    s.scores.push_back(score);
    s.token_types.push_back(type);
  }
  check(s.tokens.size() >= 3, "{}: only {} tokens", path, s.tokens.size());
  s.unk = s.token_types[0] == token_type::kUnknown ? 0 : -1;
  s.bos = 1;
  s.eos = 2;
  s.add_bos = true;
  s.add_space_prefix = true;
  return s;
}

// ---- GGUF ----

TokenizerSpec tokenizer_spec_from_gguf(const GgufFile& f) {
  const std::string& path = f.path();
  check(f.has("tokenizer.ggml.model"), "{}: no tokenizer in this GGUF (tokenizer.ggml.model missing)", path);
  const std::string model = f.get_string("tokenizer.ggml.model");
  TokenizerSpec s;
  if (model == "llama") {
    s.kind = TokenizerSpec::Kind::SentencePiece;
  } else if (model == "gpt2") {
    s.kind = TokenizerSpec::Kind::ByteLevelBPE;
  } else {
    fail("{}: tokenizer model '{}' is not supported (only 'llama' SentencePiece and 'gpt2' byte-level BPE)", path,
         model);
  }
  s.tokens = f.get_string_array("tokenizer.ggml.tokens");
  check(!s.tokens.empty(), "{}: tokenizer.ggml.tokens is empty", path);
  const size_t n = s.tokens.size();
  if (f.has("tokenizer.ggml.scores")) {
    s.scores = f.get_float_array("tokenizer.ggml.scores");
    check(s.scores.size() == n, "{}: tokenizer.ggml.scores has {} entries for {} tokens", path, s.scores.size(), n);
  }
  if (f.has("tokenizer.ggml.token_type")) {
    const auto types = f.get_int_array("tokenizer.ggml.token_type");
    check(types.size() == n, "{}: tokenizer.ggml.token_type has {} entries for {} tokens", path, types.size(), n);
    s.token_types.reserve(n);
    for (int64_t t : types) s.token_types.push_back(t >= 1 && t <= 6 ? static_cast<int32_t>(t) : 0);
  }
  s.pre = f.has("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "default";

  if (s.kind == TokenizerSpec::Kind::SentencePiece) {
    s.bos = 1, s.eos = 2, s.unk = 0;
    s.add_bos = true;
    s.add_space_prefix = true;
  } else {
    check(f.has("tokenizer.ggml.merges"), "{}: byte-level BPE tokenizer without tokenizer.ggml.merges", path);
    s.merges = f.get_string_array("tokenizer.ggml.merges");
    s.bos = 11, s.eos = 11, s.unk = -1;
    s.add_bos = false;
    s.add_space_prefix = false;
    const std::string& pre = s.pre;
    if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3" || pre == "falcon-h1" ||
        pre == "pixtral" || pre == "midm-2.0" || pre == "lfm2" || pre == "tekken") {
      s.ignore_merges = true;
      s.add_bos = true;
    }
    if (pre == "chameleon") s.add_bos = true;
    if (pre == "glm4" || pre == "chatglm-bpe") s.bos = -1;
  }
  auto id_key = [&](const char* key, int32_t& id) {
    if (f.has(key)) {
      const int64_t v = f.get_int(key);
      if (v >= 0 && static_cast<uint64_t>(v) < n) id = static_cast<int32_t>(v);  // llama.cpp ignores bad ids
    }
    if (id >= static_cast<int64_t>(n)) id = -1;
  };
  id_key("tokenizer.ggml.bos_token_id", s.bos);
  id_key("tokenizer.ggml.eos_token_id", s.eos);
  id_key("tokenizer.ggml.unknown_token_id", s.unk);
  id_key("tokenizer.ggml.padding_token_id", s.pad);
  id_key("tokenizer.ggml.eot_token_id", s.eot);
  s.add_bos = f.get_bool_or("tokenizer.ggml.add_bos_token", s.add_bos);
  s.add_eos = f.get_bool_or("tokenizer.ggml.add_eos_token", s.add_eos);
  if (s.kind == TokenizerSpec::Kind::SentencePiece)
    s.add_space_prefix = f.get_bool_or("tokenizer.ggml.add_space_prefix", s.add_space_prefix);
  return s;
}

// ---- Hugging Face tokenizer.json ----

namespace {

using nlohmann::json;

json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  check(in.good(), "{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
}

// "<s>" or {"content": "<s>", ...}
std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

std::string regex_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\^$.|?*+()[]{}-/", c) && c != 0) out += '\\';
    out += c;
  }
  return out;
}

const char* kHfGpt2Regex = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// Collects the regexes of a byte-level pre-tokenizer; returns false when it has
// a part optiq does not implement (with the part's name in `unsupported`).
void collect_pre(const json& pt, const std::string& path, std::vector<std::string>& out, bool& prefix_space,
                 bool& byte_level, int depth = 0) {
  if (pt.is_null()) return;
  check(depth < 16, "{}: pre_tokenizer nested too deeply", path);
  check(pt.is_object() && pt.contains("type") && pt["type"].is_string(), "{}: pre_tokenizer without a type", path);
  const std::string type = pt["type"].get<std::string>();
  if (type == "Sequence") {
    check(pt.contains("pretokenizers") && pt["pretokenizers"].is_array(), "{}: Sequence without pretokenizers",
          path);
    for (const auto& p : pt["pretokenizers"]) collect_pre(p, path, out, prefix_space, byte_level, depth + 1);
  } else if (type == "ByteLevel") {
    byte_level = true;
    if (pt.value("use_regex", true)) out.push_back(kHfGpt2Regex);
    if (pt.value("add_prefix_space", false)) prefix_space = true;
  } else if (type == "Split") {
    check(pt.value("behavior", std::string()) == "Isolated" && !pt.value("invert", false),
          "{}: Split pre-tokenizer with behavior '{}' is not supported (only Isolated)", path,
          pt.value("behavior", std::string()));
    const json& pat = pt.contains("pattern") ? pt["pattern"] : json();
    if (pat.is_object() && pat.contains("Regex") && pat["Regex"].is_string()) {
      out.push_back(pat["Regex"].get<std::string>());
    } else if (pat.is_object() && pat.contains("String") && pat["String"].is_string()) {
      out.push_back(regex_escape(pat["String"].get<std::string>()));
    } else {
      fail("{}: Split pre-tokenizer without a Regex or String pattern", path);
    }
  } else if (type == "Digits") {
    out.push_back(pt.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+");
  } else {
    fail("{}: pre-tokenizer '{}' is not supported", path, type);
  }
}

bool json_mentions(const json& j, const std::string& type, int depth = 0) {
  if (depth > 32) return false;
  if (j.is_object()) {
    if (j.contains("type") && j["type"] == type) return true;
    for (const auto& [k, v] : j.items())
      if (json_mentions(v, type, depth + 1)) return true;
  } else if (j.is_array()) {
    for (const auto& v : j)
      if (json_mentions(v, type, depth + 1)) return true;
  }
  return false;
}

// A normalizer (or Sequence) that replaces " " with "▁" / prepends "▁".
void scan_spm_normalizer(const json& n, bool& replace_space, bool& prepend, int depth = 0) {
  if (!n.is_object() || depth > 16) return;
  const std::string type = n.value("type", std::string());
  if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
    for (const auto& x : n["normalizers"]) scan_spm_normalizer(x, replace_space, prepend, depth + 1);
  } else if (type == "Replace") {
    const json& pat = n.contains("pattern") ? n["pattern"] : json();
    if (pat.is_object() && pat.value("String", std::string()) == " " && n.value("content", std::string()) == kSpmSpace)
      replace_space = true;
  } else if (type == "Prepend") {
    if (n.value("prepend", std::string()) == kSpmSpace) prepend = true;
  }
}

}  // namespace

TokenizerSpec tokenizer_spec_from_hf(const std::string& model_dir) {
  const std::string path = model_dir + "/tokenizer.json";
  const json j = read_json(path);
  try {
    check(j.is_object() && j.contains("model") && j["model"].is_object(), "{}: no \"model\" object", path);
    const json& model = j["model"];
    const std::string mtype = model.value("type", std::string("BPE"));
    check(mtype == "BPE", "{}: tokenizer model type '{}' is not supported (only BPE)", path, mtype);
    check(model.contains("vocab") && model["vocab"].is_object(), "{}: model.vocab is not an object", path);

    // id -> text, from the vocab and the added tokens.
    std::map<int64_t, std::string> by_id;
    for (const auto& [text, idv] : model["vocab"].items()) {
      check(idv.is_number_integer(), "{}: vocab entry '{}' has a non-integer id", path, text);
      const int64_t id = idv.get<int64_t>();
      check(id >= 0 && id < (1 << 24), "{}: vocab entry '{}' has id {} out of range", path, text, id);
      by_id[id] = text;
    }
    std::map<int64_t, bool> added;  // id -> special
    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      for (const auto& a : j["added_tokens"]) {
        check(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                  a["content"].is_string(),
              "{}: malformed added_tokens entry", path);
        const int64_t id = a["id"].get<int64_t>();
        check(id >= 0 && id < (1 << 24), "{}: added token id {} out of range", path, id);
        by_id[id] = a["content"].get<std::string>();
        added[id] = a.value("special", false);
      }
    }
    check(!by_id.empty(), "{}: empty vocabulary", path);

    TokenizerSpec s;
    const size_t n = static_cast<size_t>(by_id.rbegin()->first) + 1;
    check(n <= by_id.size() + 4096, "{}: token ids are not dense: highest id {} for {} tokens", path, n - 1,
          by_id.size());
    s.tokens.resize(n);
    s.token_types.assign(n, token_type::kNormal);
    for (size_t i = 0; i < n; ++i) {
      auto it = by_id.find(static_cast<int64_t>(i));
      if (it == by_id.end()) {
        s.tokens[i] = fmt::format("[PAD{}]", i);
        s.token_types[i] = token_type::kUnused;
      } else {
        s.tokens[i] = it->second;
      }
    }
    for (auto [id, special] : added) s.token_types[id] = special ? token_type::kControl : token_type::kUserDefined;

    if (model.contains("merges") && model["merges"].is_array()) {
      for (const auto& m : model["merges"]) {
        if (m.is_string()) {
          s.merges.push_back(m.get<std::string>());
        } else {
          check(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), "{}: malformed merge", path);
          s.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
        }
      }
    }
    s.ignore_merges = model.value("ignore_merges", false);

    // Kind: a normalizer/pre-tokenizer that turns spaces into "▁", or byte_fallback,
    // means SentencePiece-style; ByteLevel means GPT-2 style.
    bool replace_space = false, prepend = false;
    if (j.contains("normalizer")) scan_spm_normalizer(j["normalizer"], replace_space, prepend);
    const bool metaspace = j.contains("pre_tokenizer") && json_mentions(j["pre_tokenizer"], "Metaspace");
    const bool byte_level = (j.contains("pre_tokenizer") && json_mentions(j["pre_tokenizer"], "ByteLevel")) ||
                            (j.contains("decoder") && json_mentions(j["decoder"], "ByteLevel"));
    const bool spm = !byte_level && (replace_space || metaspace || model.value("byte_fallback", false));

    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      const std::string unk = model["unk_token"].get<std::string>();
      for (size_t i = 0; i < n; ++i)
        if (s.tokens[i] == unk) {
          s.unk = static_cast<int32_t>(i);
          s.token_types[i] = token_type::kUnknown;
        }
    }

    if (spm) {
      s.kind = TokenizerSpec::Kind::SentencePiece;
      // Scores from merge ranks: the piece made by merge r scores -r, so the
      // score-ordered SentencePiece merge follows the rank order.
      std::unordered_map<std::string, int32_t> id_of;
      for (size_t i = 0; i < n; ++i) id_of.emplace(s.tokens[i], static_cast<int32_t>(i));
      s.scores.assign(n, -1e30f);
      for (size_t r = 0; r < s.merges.size(); ++r) {
        const std::string& m = s.merges[r];
        const size_t sp = m.find(' ', 1);
        check(sp != std::string::npos, "{}: merge {} '{}' has no space", path, r, m);
        auto it = id_of.find(m.substr(0, sp) + m.substr(sp + 1));
        if (it != id_of.end() && s.scores[it->second] == -1e30f) s.scores[it->second] = -static_cast<float>(r);
      }
      for (size_t i = 0; i < n; ++i)
        if (s.token_types[i] == token_type::kNormal && is_byte_token(s.tokens[i])) s.token_types[i] = token_type::kByte;
      s.merges.clear();
      s.add_space_prefix = prepend;
      if (metaspace) {
        // Metaspace(prepend_scheme "first"/"always", or legacy add_prefix_space).
        std::function<void(const json&, int)> scan = [&](const json& p, int depth) {
          if (depth > 16) return;
          if (p.is_object() && p.value("type", std::string()) == "Metaspace") {
            const std::string scheme = p.value("prepend_scheme", std::string());
            if (scheme == "first" || scheme == "always" || p.value("add_prefix_space", false)) s.add_space_prefix = true;
          } else if (p.is_object() && p.contains("pretokenizers")) {
            for (const auto& x : p["pretokenizers"]) scan(x, depth + 1);
          }
        };
        scan(j["pre_tokenizer"], 0);
      }
      s.pre = "default";
    } else {
      s.kind = TokenizerSpec::Kind::ByteLevelBPE;
      check(!s.merges.empty(), "{}: byte-level BPE without merges", path);
      bool prefix_space = false, bl = false;
      if (j.contains("pre_tokenizer")) collect_pre(j["pre_tokenizer"], path, s.pre_regexes, prefix_space, bl);
      if (s.pre_regexes.empty()) s.pre_regexes.push_back(kHfGpt2Regex);
      s.pre = "hf";
      s.add_space_prefix = false;  // ByteLevel add_prefix_space is not implemented (GPT-2/Llama 3/Qwen use false)
      check(!prefix_space, "{}: ByteLevel add_prefix_space=true is not supported", path);
    }

    // BOS/EOS: tokenizer_config.json, else the post-processor template.
    auto find_id = [&](const std::string& text) -> int32_t {
      if (text.empty()) return -1;
      for (size_t i = 0; i < n; ++i)
        if (s.tokens[i] == text) return static_cast<int32_t>(i);
      return -1;
    };
    const std::string cfg_path = model_dir + "/tokenizer_config.json";
    bool have_add_bos = false;
    if (std::ifstream(cfg_path).good()) {
      const json c = read_json(cfg_path);
      if (c.is_object()) {
        if (c.contains("bos_token")) s.bos = find_id(token_content(c["bos_token"]));
        if (c.contains("eos_token")) s.eos = find_id(token_content(c["eos_token"]));
        if (c.contains("pad_token")) s.pad = find_id(token_content(c["pad_token"]));
        if (c.contains("unk_token") && s.unk < 0) s.unk = find_id(token_content(c["unk_token"]));
        if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) {
          s.add_bos = c["add_bos_token"].get<bool>();
          have_add_bos = true;
        }
        if (c.contains("add_eos_token") && c["add_eos_token"].is_boolean()) s.add_eos = c["add_eos_token"].get<bool>();
      }
    }
    if (!have_add_bos && j.contains("post_processor") && j["post_processor"].is_object()) {
      const json& pp = j["post_processor"];
      std::function<void(const json&, int)> scan = [&](const json& p, int depth) {
        if (!p.is_object() || depth > 16) return;
        if (p.value("type", std::string()) == "TemplateProcessing" && p.contains("single") && p["single"].is_array() &&
            !p["single"].empty()) {
          const json& first = p["single"][0];
          if (first.is_object() && first.contains("SpecialToken")) {
            const int32_t id = find_id(first["SpecialToken"].value("id", std::string()));
            if (id >= 0) {
              s.add_bos = true;
              s.bos = id;
            }
          }
        } else if (p.contains("processors") && p["processors"].is_array()) {
          for (const auto& x : p["processors"]) scan(x, depth + 1);
        }
      };
      scan(pp, 0);
    }
    return s;
  } catch (const json::exception& e) {
    fail("{}: unexpected structure: {}", path, e.what());
  }
}

}  // namespace optiq

// Hugging Face tokenizer files from an optiq Tokenizer. The JSON is written by
// hand (ids in order, one entry per line for the big arrays) because the vocab
// can have 256k entries and nlohmann's ordered_json inserts in linear time.
#include "tokenizer/tokenizer_json.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <unistd.h>
#include <unordered_map>

#include "core/atomic_file.h"
#include "core/error.h"
#include "tokenizer/spm_space.h"

namespace optiq {

namespace {

namespace fs = std::filesystem;

// True when s is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF).
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t n;
    uint32_t cp, min;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c >> 5) == 6) {
      n = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c >> 4) == 14) {
      n = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c >> 3) == 30) {
      n = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const auto d = static_cast<uint8_t>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n;
  }
  return true;
}

// Appends s as a JSON string literal (s must be valid UTF-8; it is kept as UTF-8).
void put_str(std::string& out, std::string_view s) {
  out += '"';
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

std::string str(std::string_view s) {
  std::string out;
  put_str(out, s);
  return out;
}

const char* boolstr(bool b) { return b ? "true" : "false"; }

// Writes `content` to dir/name through a temporary file in dir and a rename
// (core/atomic_file.h: a full disk is a one-line error naming the file).
void write_atomic(const fs::path& dir, const std::string& name, const std::string& content) {
  write_file_atomic((dir / name).string(), content);
}

int32_t type_of(const TokenizerSpec& s, size_t i) {
  return s.token_types.empty() ? token_type::kNormal : s.token_types[i];
}

// Text -> id with the last id winning for duplicate texts (optiq's and Python's dict rule).
std::unordered_map<std::string_view, int32_t> vocab_index(const TokenizerSpec& s) {
  std::unordered_map<std::string_view, int32_t> m;
  m.reserve(s.tokens.size() * 2);
  for (size_t i = 0; i < s.tokens.size(); ++i) m[s.tokens[i]] = static_cast<int32_t>(i);
  return m;
}

// Post-processor adding BOS/EOS (TemplateProcessing), or null.
std::string template_processor(const TokenizerSpec& s, bool byte_level) {
  const bool bos = s.add_bos && s.bos >= 0 && !s.tokens[s.bos].empty();
  const bool eos = s.add_eos && s.eos >= 0 && !s.tokens[s.eos].empty();
  const std::string byte_pp =
      R"({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})";
  if (!bos && !eos) return byte_level ? byte_pp : "null";
  auto special = [](const std::string& t, int type_id) {
    return fmt::format(R"({{"SpecialToken": {{"id": {}, "type_id": {}}}}})", str(t), type_id);
  };
  auto seq = [](const char* id, int type_id) {
    return fmt::format(R"({{"Sequence": {{"id": "{}", "type_id": {}}}}})", id, type_id);
  };
  std::vector<std::string> single, pair;
  if (bos) single.push_back(special(s.tokens[s.bos], 0));
  single.push_back(seq("A", 0));
  if (eos) single.push_back(special(s.tokens[s.eos], 0));
  pair = single;
  if (bos) pair.push_back(special(s.tokens[s.bos], 1));
  pair.push_back(seq("B", 1));
  if (eos) pair.push_back(special(s.tokens[s.eos], 1));
  auto join = [](const std::vector<std::string>& v) {
    std::string o;
    for (size_t i = 0; i < v.size(); ++i) o += (i ? ", " : "") + v[i];
    return o;
  };
  std::string specials;
  auto add_special = [&](int32_t id) {
    if (!specials.empty()) specials += ", ";
    specials += fmt::format(R"({}: {{"id": {}, "ids": [{}], "tokens": [{}]}})", str(s.tokens[id]),
                            str(s.tokens[id]), id, str(s.tokens[id]));
  };
  if (bos) add_special(s.bos);
  if (eos && !(bos && s.tokens[s.eos] == s.tokens[s.bos])) add_special(s.eos);
  const std::string tp = fmt::format(
      R"({{"type": "TemplateProcessing", "single": [{}], "pair": [{}], "special_tokens": {{{}}}}})", join(single),
      join(pair), specials);
  if (!byte_level) return tp;
  return fmt::format(R"({{"type": "Sequence", "processors": [{}, {}]}})", byte_pp, tp);
}

}  // namespace

std::vector<std::pair<int32_t, int32_t>> spm_merges_from_scores(const TokenizerSpec& s) {
  const auto index = vocab_index(s);
  struct M {
    int32_t l, r;
    float score;
  };
  std::vector<M> merges;
  std::vector<M> local;
  for (size_t i = 0; i < s.tokens.size(); ++i) {
    const std::string& t = s.tokens[i];
    if (index.at(t) != static_cast<int32_t>(i)) continue;  // a duplicate text: only its last id is in the vocab
    const float score = s.scores.empty() ? 0.0f : s.scores[i];
    local.clear();
    for (size_t k = 1; k < t.size(); ++k) {
      if ((static_cast<uint8_t>(t[k]) & 0xC0) == 0x80) continue;  // split only at character boundaries
      const auto l = index.find(std::string_view(t).substr(0, k));
      if (l == index.end()) continue;
      const auto r = index.find(std::string_view(t).substr(k));
      if (r == index.end()) continue;
      local.push_back({l->second, r->second, score});
    }
    std::sort(local.begin(), local.end(), [](const M& a, const M& b) { return a.l != b.l ? a.l < b.l : a.r < b.r; });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const M& a, const M& b) { return a.score > b.score; });
  std::vector<std::pair<int32_t, int32_t>> out;
  out.reserve(merges.size());
  for (const M& m : merges) out.emplace_back(m.l, m.r);
  return out;
}

void write_hf_tokenizer(const Tokenizer& tok, const std::string& dir) {
  const TokenizerSpec s = tok.to_spec();
  const bool spm = s.kind == TokenizerSpec::Kind::SentencePiece;
  const size_t n = s.tokens.size();
  for (size_t i = 0; i < n; ++i)
    check(valid_utf8(s.tokens[i]), "{}: token {} is not valid UTF-8: it cannot be written to tokenizer.json", dir,
          i);
  std::error_code ec;
  fs::create_directories(dir, ec);
  check(!ec && fs::is_directory(dir), "{}: cannot create the directory: {}", dir, ec.message());

  const auto index = vocab_index(s);
  auto is_special_type = [](int32_t ty) { return ty == token_type::kControl || ty == token_type::kUnknown; };

  // ---- tokenizer.json ----
  std::string j;
  j.reserve(n * 32 + s.merges.size() * 24 + 4096);
  j += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [";
  std::vector<int32_t> added;
  for (size_t i = 0; i < n; ++i) {
    const int32_t ty = type_of(s, i);
    if ((is_special_type(ty) || ty == token_type::kUserDefined) && !s.tokens[i].empty() &&
        index.at(s.tokens[i]) == static_cast<int32_t>(i))
      added.push_back(static_cast<int32_t>(i));
  }
  auto added_token_obj = [&](int32_t id, bool with_id) {
    return fmt::format(
        R"({{{}"content": {}, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": {}}})",
        with_id ? fmt::format(R"("id": {}, )", id) : std::string(), str(s.tokens[id]),
        boolstr(is_special_type(type_of(s, id))));
  };
  for (size_t k = 0; k < added.size(); ++k) j += (k ? ",\n    " : "\n    ") + added_token_obj(added[k], true);
  j += added.empty() ? "],\n" : "\n  ],\n";

  if (spm) {
    j += "  \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [";
    if (s.add_space_prefix) j += "{\"type\": \"Prepend\", \"prepend\": " + str(kSpmSpace) + "}, ";
    j += "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": " + str(kSpmSpace) + "}]},\n";
    j += "  \"pre_tokenizer\": null,\n";
    j += "  \"post_processor\": " + template_processor(s, false) + ",\n";
    j += "  \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": " +
         str(kSpmSpace) + "}, \"content\": \" \"}, {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}";
    if (s.add_space_prefix) j += ", {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}";
    j += "]},\n";
  } else {
    const auto regexes = s.pre_regexes.empty() ? pre_tokenizer_regexes(s.pre) : s.pre_regexes;
    j += "  \"normalizer\": null,\n  \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [";
    for (const auto& r : regexes) {
      check(valid_utf8(r), "{}: pre-tokenizer regex is not valid UTF-8", dir);
      j += "\n    {\"type\": \"Split\", \"pattern\": {\"Regex\": " + str(r) +
           "}, \"behavior\": \"Isolated\", \"invert\": false},";
    }
    j += "\n    {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": false}\n"
         "  ]},\n";
    j += "  \"post_processor\": " + template_processor(s, true) + ",\n";
    j += "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, "
         "\"use_regex\": true},\n";
  }

  const std::string unk = s.unk >= 0 ? str(s.tokens[s.unk]) : "null";
  j += fmt::format(
      "  \"model\": {{\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": {},\n"
      "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": {},\n"
      "    \"byte_fallback\": {},\n    \"ignore_merges\": {},\n    \"vocab\": {{",
      spm ? unk : "null", boolstr(spm && s.unk >= 0), boolstr(spm), boolstr(!spm && s.ignore_merges));
  bool first = true;
  for (size_t i = 0; i < n; ++i) {
    if (index.at(s.tokens[i]) != static_cast<int32_t>(i)) continue;
    j += first ? "\n      " : ",\n      ";
    first = false;
    put_str(j, s.tokens[i]);
    j += ": " + std::to_string(i);
  }
  j += "\n    },\n    \"merges\": [";
  first = true;
  auto put_merge = [&](std::string_view a, std::string_view b) {
    j += first ? "\n      [" : ",\n      [";
    first = false;
    put_str(j, a);
    j += ", ";
    put_str(j, b);
    j += ']';
  };
  if (spm) {
    for (auto [l, r] : spm_merges_from_scores(s)) put_merge(s.tokens[l], s.tokens[r]);
  } else {
    for (const std::string& m : s.merges) {
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos || sp + 1 >= m.size()) continue;  // rejected by Tokenizer already
      const std::string_view a = std::string_view(m).substr(0, sp), b = std::string_view(m).substr(sp + 1);
      // Hugging Face BPE requires both parts and the result to be tokens.
      if (!index.count(a) || !index.count(b) || !index.count(std::string(a) + std::string(b))) continue;
      put_merge(a, b);
    }
  }
  j += first ? "]\n  }\n}\n" : "\n    ]\n  }\n}\n";

  // ---- tokenizer_config.json, special_tokens_map.json ----
  auto tok_or_null = [&](int32_t id) { return id >= 0 ? str(s.tokens[id]) : std::string("null"); };
  std::string c = "{\n";
  c += fmt::format("  \"add_bos_token\": {},\n  \"add_eos_token\": {},\n", boolstr(s.add_bos && s.bos >= 0),
                   boolstr(s.add_eos && s.eos >= 0));
  c += "  \"added_tokens_decoder\": {";
  for (size_t k = 0; k < added.size(); ++k)
    c += fmt::format("{}\n    \"{}\": {}", k ? "," : "", added[k], added_token_obj(added[k], false));
  c += added.empty() ? "},\n" : "\n  },\n";
  c += "  \"bos_token\": " + tok_or_null(s.bos) + ",\n";
  c += "  \"eos_token\": " + tok_or_null(s.eos) + ",\n";
  c += "  \"unk_token\": " + tok_or_null(s.unk) + ",\n";
  if (s.pad >= 0) c += "  \"pad_token\": " + tok_or_null(s.pad) + ",\n";
  c += "  \"clean_up_tokenization_spaces\": false,\n";
  // Unknown context length: transformers' VERY_LARGE_INTEGER (int(1e30)).
  c += "  \"model_max_length\": 1000000000000000019884624838656,\n";
  c += "  \"tokenizer_class\": \"PreTrainedTokenizerFast\"\n}\n";

  std::string m = "{";
  bool mfirst = true;
  for (auto [name, id] : {std::pair{"bos_token", s.bos}, {"eos_token", s.eos}, {"unk_token", s.unk},
                          {"pad_token", s.pad}}) {
    if (id < 0) continue;
    m += fmt::format(
        "{}\n  \"{}\": {{\"content\": {}, \"lstrip\": false, \"normalized\": false, \"rstrip\": false, "
        "\"single_word\": false}}",
        mfirst ? "" : ",", name, str(s.tokens[id]));
    mfirst = false;
  }
  m += mfirst ? "}\n" : "\n}\n";

  const fs::path d(dir);
  write_atomic(d, "tokenizer.json", j);
  write_atomic(d, "tokenizer_config.json", c);
  write_atomic(d, "special_tokens_map.json", m);
}

}  // namespace optiq

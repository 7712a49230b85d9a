// Helper for tests/reference/test_tokenizer_ref.py: tokenizes a text file with
// optiq and writes the ids as little-endian int32.
//
//   tokenize_dump MODEL TEXTFILE [--out IDS.bin] [--bos] [--special] [--lines]
//   tokenize_dump --llama2c TOKENIZER.bin --vocab N TEXTFILE ...
//   tokenize_dump --hf MODEL_DIR TEXTFILE ...
//
// MODEL is a .gguf file. --lines tokenizes each line (without its '\n')
// separately and writes, per line, int32 count followed by the ids.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "core/error.h"
#include "formats/gguf.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  using namespace optiq;
  try {
    std::vector<std::string> pos;
    std::string out_path, llama2c, hf, tokenizer_bin;
    int32_t vocab = 0;
    bool bos = false, special = false, lines = false;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto next = [&]() -> std::string {
        check(i + 1 < argc, "tokenize_dump: {} needs a value", a);
        return argv[++i];
      };
      if (a == "--out") out_path = next();
      else if (a == "--llama2c" || a == "--tokenizer") llama2c = next();
      else if (a == "--vocab") vocab = std::stoi(next());
      else if (a == "--hf") hf = next();
      else if (a == "--bos") bos = true;
      else if (a == "--special") special = true;
      else if (a == "--lines") lines = true;
      else pos.push_back(a);
    }
    TokenizerSpec spec;
    std::string text_path;
    if (!llama2c.empty()) {
      check(pos.size() >= 1, "usage: tokenize_dump --llama2c TOKENIZER.bin --vocab N TEXTFILE");
      spec = tokenizer_spec_from_llama2c(llama2c, vocab);
      text_path = pos.back();
    } else if (!hf.empty()) {
      check(pos.size() >= 1, "usage: tokenize_dump --hf MODEL_DIR TEXTFILE");
      spec = tokenizer_spec_from_hf(hf);
      text_path = pos.back();
    } else {
      check(pos.size() == 2, "usage: tokenize_dump MODEL.gguf TEXTFILE [--out IDS.bin] [--bos] [--special] [--lines]");
      GgufFile g(pos[0]);
      spec = tokenizer_spec_from_gguf(g);
      text_path = pos[1];
    }
    const auto t0 = std::chrono::steady_clock::now();
    const Tokenizer tok(std::move(spec));
    const auto t1 = std::chrono::steady_clock::now();
    std::ifstream in(text_path, std::ios::binary);
    check(in.good(), "{}: cannot open", text_path);
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    std::vector<int32_t> out;
    if (lines) {
      size_t start = 0;
      while (start <= text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        const auto ids = tok.encode(std::string_view(text).substr(start, end - start), bos, special);
        out.push_back(static_cast<int32_t>(ids.size()));
        out.insert(out.end(), ids.begin(), ids.end());
        start = end + 1;
      }
    } else {
      out = tok.encode(text, bos, special);
    }
    const auto t2 = std::chrono::steady_clock::now();
    std::fprintf(stderr, "tokenize_dump: load %.3f s, encode %zu bytes -> %zu ints in %.3f s\n",
                 std::chrono::duration<double>(t1 - t0).count(), text.size(), out.size(),
                 std::chrono::duration<double>(t2 - t1).count());
    if (out_path.empty()) {
      std::fwrite(out.data(), sizeof(int32_t), out.size(), stdout);
    } else {
      const std::string tmp = out_path + ".tmp";
      std::ofstream o(tmp, std::ios::binary);
      o.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(int32_t)));
      o.close();
      check(o.good(), "{}: write failed", tmp);
      check(std::rename(tmp.c_str(), out_path.c_str()) == 0, "{}: rename failed", out_path);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}

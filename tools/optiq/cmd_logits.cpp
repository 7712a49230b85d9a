// optiq logits: full logits for given token ids as a .npy (for cross-checks
// against other implementations).
#include <cstdio>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "commands.h"
#include "core/error.h"
#include "model/transformer.h"

namespace optiq::cli {

namespace {

struct LogitsArgs {
  ModelArgs model{ModelArgs::Use::Measure};
  std::string ids_path;
  std::string out;
  int batch = 0;
};

std::vector<int32_t> read_ids(const std::string& path) {
  std::istringstream in(read_text_file(path));
  std::vector<int32_t> ids;
  long long v;
  while (in >> v) ids.push_back(static_cast<int32_t>(v));
  check(in.eof(), "{}: expected whitespace-separated token ids", path);
  check(!ids.empty(), "{}: no token ids", path);
  return ids;
}

// NumPy .npy v1.0, float32 C-order [rows, cols]; written to a temp file, then renamed.
void write_npy(const std::string& path, const std::vector<float>& data, int64_t rows, int64_t cols) {
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", rows, cols);
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    check(static_cast<bool>(f), "{}: cannot write", path);
    f.write("\x93NUMPY\x01\x00", 8);
    const uint16_t len = static_cast<uint16_t>(header.size());
    f.write(reinterpret_cast<const char*>(&len), 2);
    f << header;
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
    check(static_cast<bool>(f), "{}: write failed", path);
  }
  check(std::rename(tmp.c_str(), path.c_str()) == 0, "{}: cannot rename {} into place", path, tmp);
}

void run_logits(const LogitsArgs& a) {
  Model m = a.model.load();
  std::vector<int32_t> ids = read_ids(a.ids_path);
  Transformer tf(m, static_cast<int>(ids.size()));
  const int64_t n = static_cast<int64_t>(ids.size()), vocab = m.config.vocab_size;
  std::vector<float> logits(n * vocab);
  const int64_t batch = a.batch > 0 ? a.batch : n;
  for (int64_t i = 0; i < n; i += batch) {
    const int64_t len = std::min(batch, n - i);
    tf.forward(std::span<const int32_t>(ids.data() + i, len), logits.data() + i * vocab, 0);
  }
  write_npy(a.out, logits, n, vocab);
  fmt::print(stderr, "wrote {} x {} logits to {}\n", n, vocab, a.out);
}

}  // namespace

Runner register_logits(CLI::App& app) {
  auto* cmd = app.add_subcommand("logits", "Write the logits of given token ids to a .npy (for cross-checks)");
  auto a = std::make_shared<LogitsArgs>();
  a->model.add_to(*cmd);
  cmd->add_option("--ids", a->ids_path, "file of whitespace-separated token ids")->required()->check(CLI::ExistingFile);
  cmd->add_option("--out", a->out, "output .npy (float32, [tokens, vocab])")->required();
  cmd->add_option("--batch", a->batch, "tokens per forward call (default: all at once; 1 = token by token)");
  return [a] { run_logits(*a); };
}

}  // namespace optiq::cli

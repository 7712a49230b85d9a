// optiq bench: prefill and decode speed and peak memory of a model.
#include <algorithm>
#include <chrono>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "core/parallel.h"
#include "eval/speed.h"
#include "model/transformer.h"

namespace optiq::cli {

namespace {

struct BenchArgs {
  ModelArgs model;
  int prompt_tokens = 512;
  int gen_tokens = 128;
  int reps = 3;
  bool json = false;
};

size_t path_bytes(const std::string& p) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(p, ec)) return fs::file_size(p, ec);
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(p, ec))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

void run_bench(const BenchArgs& a) {
  check(a.prompt_tokens > 0 && a.gen_tokens > 0 && a.reps > 0, "--prompt-tokens, --gen-tokens and --reps must be positive");
  Model m = a.model.load();
  const double rss_loaded = peak_rss_mb();
  const SpeedResult sp =
      measure_speed(m, {.prompt_tokens = a.prompt_tokens, .gen_tokens = a.gen_tokens, .reps = a.reps});
  const double size_mb = path_bytes(m.path) / 1e6;
  const double weights_mb = [&] {
    size_t n = 0;
    for (const auto& mod : quantizable_modules(m.config)) n += module_linear(m.weights, mod).bytes();
    return n / 1e6;
  }();
  const double kv_mb = sp.kv_cache_bytes / 1e6;
  if (a.json) {
    nlohmann::json j = {{"model", m.path},           {"threads", num_threads()}, {"device", default_backend().name()}, {"prompt_tokens", a.prompt_tokens},
                        {"gen_tokens", a.gen_tokens}, {"reps", a.reps},            {"prefill_tok_s", sp.prefill_tok_s},
                        {"decode_tok_s", sp.decode_tok_s}, {"peak_rss_mb", peak_rss_mb()}, {"rss_after_load_mb", rss_loaded},
                        {"file_mb", size_mb},         {"weight_matrices_mb", weights_mb}, {"kv_cache_mb", kv_mb}};
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("model        {}\n", m.path);
  fmt::print("device       {}\n", default_backend().name());
  fmt::print("threads      {}\n", num_threads());
  fmt::print("prefill      {:.1f} tok/s ({} tokens, median of {})\n", sp.prefill_tok_s, a.prompt_tokens, a.reps);
  fmt::print("decode       {:.1f} tok/s ({} tokens from an empty cache, median of {})\n", sp.decode_tok_s, a.gen_tokens,
             a.reps);
  if (!default_backend().host_memory()) fmt::print("             (weights and KV cache also in device memory)\n");
  fmt::print("memory       peak RSS {:.1f} MB (file {:.1f} MB, weight matrices {:.1f} MB, KV cache {:.1f} MB)\n",
             peak_rss_mb(), size_mb, weights_mb, kv_mb);
}

}  // namespace

Runner register_bench(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Prefill and decode tokens/s and peak memory");
  auto a = std::make_shared<BenchArgs>();
  a->model.add_to(*cmd);
  cmd->add_option("-p,--prompt-tokens", a->prompt_tokens, "prefill length")->capture_default_str();
  cmd->add_option("-n,--gen-tokens", a->gen_tokens, "decoded tokens")->capture_default_str();
  cmd->add_option("-r,--reps", a->reps, "repetitions (the median is reported)")->capture_default_str();
  cmd->add_flag("--json", a->json, "print one JSON object");
  return [a] { run_bench(*a); };
}

}  // namespace optiq::cli

// optiq generate: stream a continuation of a prompt.
#include <chrono>
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "model/sampler.h"
#include "model/transformer.h"

namespace optiq::cli {

namespace {

struct GenerateArgs {
  ModelArgs model;
  std::string prompt;
  int n = 128;
  SamplerOptions sampler;
  int ctx = 0;
  bool json = false;
  bool no_bos = false;
};

void run_generate(const GenerateArgs& a) {
  Model m = a.model.load();
  Transformer tf(m, a.ctx);
  std::vector<int32_t> prompt = m.tokenizer->encode(a.prompt, !a.no_bos);
  check(!prompt.empty(), "the prompt is empty and the model has no BOS token");
  check(static_cast<int>(prompt.size()) < tf.max_ctx(), "the prompt has {} tokens, more than the context of {}",
        prompt.size(), tf.max_ctx());
  Sampler sampler(a.sampler);
  if (!a.json) {
    fmt::print("{}", a.prompt);
    std::fflush(stdout);
  }
  auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits = tf.forward_last(prompt);
  auto t1 = std::chrono::steady_clock::now();
  std::vector<int32_t> out;
  std::string text;
  // Greedy steps pick on the backend (a GPU copies out one index, not the logits).
  const bool greedy = a.sampler.temperature <= 0.0f;
  int32_t tok = sampler.sample(logits);
  for (int i = 0; i < a.n && tf.pos() < tf.max_ctx(); ++i) {
    if (m.tokenizer->is_eog(tok)) break;
    out.push_back(tok);
    std::string piece = m.tokenizer->decode_token(tok);
    text += piece;
    if (!a.json) {
      fmt::print("{}", piece);
      std::fflush(stdout);
    }
    if (i + 1 >= a.n || tf.pos() >= tf.max_ctx()) break;
    if (greedy) {
      tok = tf.forward_greedy(tok);
      check(tok >= 0, "every logit of step {} is NaN (broken weights or inputs)", i + 1);
    } else {
      tf.forward(std::span<const int32_t>(&tok, 1), logits.data(), 0);  // the same buffer each step
      tok = sampler.sample(logits);
    }
  }
  auto t2 = std::chrono::steady_clock::now();
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  const double decode_tps = out.size() > 1 ? (out.size() - 1) / decode_s : 0.0;
  if (a.json) {
    nlohmann::json j = {{"prompt", a.prompt},          {"text", text},
                        {"prompt_tokens", prompt.size()}, {"generated_tokens", out.size()},
                        {"tokens", out},               {"prefill_tok_s", prompt.size() / prefill_s},
                        {"decode_tok_s", decode_tps}};
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("\n");
    fmt::print(stderr, "[{} prompt tokens at {:.1f} tok/s, {} generated at {:.1f} tok/s]\n", prompt.size(),
               prompt.size() / prefill_s, out.size(), decode_tps);
  }
}

}  // namespace

Runner register_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt (streams to stdout)");
  auto a = std::make_shared<GenerateArgs>();
  a->model.add_to(*cmd);
  cmd->add_option("-p,--prompt", a->prompt, "prompt text")->required();
  cmd->add_option("-n,--n-predict", a->n, "tokens to generate")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--temp", a->sampler.temperature, "temperature; 0 = greedy")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", a->sampler.top_k, "sample from the k most likely tokens (0 = all)")->capture_default_str();
  cmd->add_option("--top-p", a->sampler.top_p, "nucleus sampling threshold")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", a->sampler.seed, "random seed")->capture_default_str();
  cmd->add_option("--ctx", a->ctx, "context size (default: model's, at most 4096)");
  cmd->add_flag("--no-bos", a->no_bos, "do not put BOS before the prompt");
  cmd->add_flag("--json", a->json, "print one JSON object instead of streaming");
  return [a] { run_generate(*a); };
}

}  // namespace optiq::cli

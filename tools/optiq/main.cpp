// optiq: profile, plan, quantize and run LLMs with per-tensor precision.
#include <cstdio>
#include <exception>
#include <vector>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/progress.h"
#include "core/version.h"

int main(int argc, char** argv) {
  CLI::App app{"optiq: mixed-precision quantization for LLMs.\n"
               "MODEL is a Hugging Face directory, a .gguf file, or a llama2.c .bin (with --tokenizer)."};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("optiq ") + optiq::kOptiqVersion);
  int threads = 0;
  bool quiet = false;
  app.add_option("-t,--threads", threads, "worker threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.add_flag("-q,--quiet", quiet, "no progress output on stderr");
  app.fallthrough();

  std::vector<optiq::cli::Runner> runners = {
      optiq::cli::register_info(app),
      optiq::cli::register_generate(app),
      optiq::cli::register_eval(app),
      optiq::cli::register_quantize(app),
      optiq::cli::register_bench(app),
      optiq::cli::register_logits(app),
      optiq::cli::register_profile(app),
      optiq::cli::register_plan(app),
      optiq::cli::register_auto(app),
      optiq::cli::register_compare(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every bad command line exits 2.
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    optiq::set_num_threads(threads);
    optiq::set_progress_enabled(!quiet);
    auto subs = app.get_subcommands([](CLI::App*) { return true; });
    for (size_t i = 0; i < subs.size(); ++i)
      if (subs[i]->parsed()) runners.at(i)();
  } catch (const optiq::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "optiq: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "optiq: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "optiq: error: %s\n", e.what());
    return 1;
  }
  return 0;
}

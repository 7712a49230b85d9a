// Each optiq subcommand registers its options and handler on the CLI11 app.
#pragma once
#include <functional>
#include <future>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "model/model.h"

namespace optiq::cli {

// Options every model-reading command shares.
// Numerics default per command: measuring commands (eval, logits, profile,
// plan, auto, compare, quantize) default to "exact" so that a perplexity or
// KL number depends on the weights only, never on which CPU ran it (the int8
// kernels exist only where VNNI does); running commands (generate, bench)
// default to "fast".
struct ModelArgs {
  enum class Use { Run, Measure };
  explicit ModelArgs(Use use = Use::Run) : numerics(use == Use::Run ? "fast" : "exact") {}
  std::string path;
  std::string tokenizer;
  std::string numerics;
  std::string device = "auto";
  void add_to(CLI::App& cmd, const std::string& what = "model: HF directory, .gguf file, or llama2.c .bin");
  // Applies --numerics and --device (the default backend) and loads MODEL.
  Model load(bool weights = true) const;
};

// The backend --device names: auto = cuda when a GPU is visible, else cpu.
Backend& backend_for_device(const std::string& device);

// Each register_* adds a subcommand and returns the function that runs it
// (called after parsing, once global options such as --threads are applied).
using Runner = std::function<void()>;
Runner register_info(CLI::App& app);
Runner register_generate(CLI::App& app);
Runner register_eval(CLI::App& app);
Runner register_logits(CLI::App& app);
Runner register_quantize(CLI::App& app);
Runner register_bench(CLI::App& app);
Runner register_profile(CLI::App& app);
Runner register_plan(CLI::App& app);
Runner register_auto(CLI::App& app);
Runner register_compare(CLI::App& app);

// What an output records about how it was made (model/provenance.h): optiq's
// version, the command, MODEL's files with their SHA-256 (hashed now: every
// byte of the model is read once), and the options that shape the output.
nlohmann::json command_provenance(const CLI::App& cmd, const ModelArgs& model);
// The same with the source's digests still zeros (source_record_pending), and
// `source` set to the real record, hashed meanwhile on a thread of its own
// (pipeline/export_step.h ExportStepOptions::source); for a Hugging Face
// directory, hashed only when asked for (an MLX export hashes it as it reads
// it, and never asks).
nlohmann::json command_provenance_pending(const CLI::App& cmd, const ModelArgs& model,
                                          std::shared_future<nlohmann::json>& source);
// The options of `cmd` as given, and the defaults --help shows for the others,
// by their long name; input files (--calib, --plan, --profile, --tokenizer)
// as {"file": name, "sha256": ...}. Left out: what does not change the output
// (-o/--out, --force, --json, --cache, evaluation-only options) and the
// global -t/--threads and -q, which never change it.
nlohmann::json recorded_options(const CLI::App& cmd);

// Reads a whole text file (throws "<path>: cannot read").
std::string read_text_file(const std::string& path);

}  // namespace optiq::cli

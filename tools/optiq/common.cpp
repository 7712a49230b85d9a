#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "kernels/matmul.h"
#include "model/provenance.h"

namespace optiq::cli {

void ModelArgs::add_to(CLI::App& cmd, const std::string& what) {
  cmd.add_option("MODEL", path, what)->required();
  cmd.add_option("--tokenizer", tokenizer, "tokenizer.bin for a llama2.c checkpoint");
  cmd.add_option("--numerics", numerics,
                 "fast: products with packed weights take 8-bit activation blocks (decode on AVX2/AVX-512, "
                 "prefill on AVX-512 VNNI CPUs), the rest fp32; exact: fp32 activations everywhere, the same "
                 "arithmetic on every CPU (sums may differ in their last bits between instruction sets); llamacpp: round like llama.cpp's CPU backend (8-bit activation blocks for "
                 "quantized weights, fp16 KV cache), for cross-checks. Default: fast for generate/bench, "
                 "exact for commands that measure")
      ->capture_default_str()
      ->check(CLI::IsMember({"fast", "exact", "llamacpp"}));
  cmd.add_option("--device", device,
                 "where the model runs: cuda (an NVIDIA GPU, when this build has the CUDA backend), cpu, or auto "
                 "(cuda when a GPU is visible, else cpu)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
}

Backend& backend_for_device(const std::string& device) {
  if (device == "cpu") return cpu_backend();
  Backend* gpu = cuda_backend();
  if (device == "auto") return gpu ? *gpu : cpu_backend();
  check(device == "cuda", "--device {}: not a device (auto, cpu, cuda)", device);
  if (!gpu) {
#ifdef OPTIQ_HAVE_CUDA
    fail("--device cuda: no GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use --device cpu");
#else
    fail("--device cuda: this optiq was built without the CUDA backend (no nvcc at build time); use --device cpu");
#endif
  }
  return *gpu;
}

Model ModelArgs::load(bool weights) const {
  LoadOptions opt;
  opt.tokenizer_path = tokenizer;
  opt.load_weights = weights;
  opt.llamacpp_numerics = numerics == "llamacpp";
  // Process-wide: products with packed weights in int8 (decode: kernels/matmul.h;
  // prefill: kernels/int8_gemm.h) unless --numerics exact.
  set_int8_decode(numerics != "exact");
  set_default_backend(backend_for_device(device));
  return load_model(path, opt);
}

nlohmann::json recorded_options(const CLI::App& cmd) {
  static const std::set<std::string> skip = {"MODEL", "--help", "--out", "--out-dir", "--force", "--json", "--cache",
                                             "--text", "--eval-ctx", "--chunks"};
  static const std::set<std::string> files = {"--calib", "--plan", "--profile", "--tokenizer"};
  nlohmann::json o = nlohmann::json::object();
  for (const CLI::Option* opt : cmd.get_options()) {
    const std::string name = opt->get_name();
    if (skip.count(name)) continue;
    std::vector<std::string> values = opt->results();
    if (opt->count() == 0) {
      if (opt->get_default_str().empty()) continue;
      values = {opt->get_default_str()};
    }
    nlohmann::json v = nlohmann::json::array();
    for (const auto& s : values) v.push_back(files.count(name) ? input_file_record(s) : nlohmann::json(s));
    o[name] = v.size() == 1 ? v[0] : v;
  }
  return o;
}

nlohmann::json command_provenance(const CLI::App& cmd, const ModelArgs& model) {
  return provenance(cmd.get_name(), source_record(model.path, model.tokenizer), recorded_options(cmd));
}

nlohmann::json command_provenance_pending(const CLI::App& cmd, const ModelArgs& model,
                                          std::shared_future<nlohmann::json>& source) {
  // A Hugging Face directory exported to MLX is hashed by the export as it
  // reads it (pipeline/export_step.h): deferred, so that nothing reads it twice.
  std::error_code ec;
  if (std::filesystem::is_directory(model.path, ec))
    source = std::async(std::launch::deferred, [p = model.path, t = model.tokenizer] { return source_record(p, t); }).share();
  else
    source = source_record_async(model.path, model.tokenizer);
  return provenance(cmd.get_name(), source_record_pending(model.path, model.tokenizer), recorded_options(cmd));
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read text file", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace optiq::cli

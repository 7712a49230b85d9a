#include <fstream>
#include <sstream>

#include "commands.h"
#include "core/error.h"
#include "kernels/matmul.h"

namespace optiq::cli {

void ModelArgs::add_to(CLI::App& cmd, const std::string& what) {
  cmd.add_option("MODEL", path, what)->required();
  cmd.add_option("--tokenizer", tokenizer, "tokenizer.bin for a llama2.c checkpoint");
  cmd.add_option("--numerics", numerics,
                 "fast: fp32, except that decode products with packed weights use int8 activation blocks "
                 "(default); exact: fp32 activations everywhere; llamacpp: round like llama.cpp's CPU backend "
                 "(8-bit activation blocks for quantized weights, fp16 KV cache), for cross-checks")
      ->capture_default_str()
      ->check(CLI::IsMember({"fast", "exact", "llamacpp"}));
}

Model ModelArgs::load(bool weights) const {
  LoadOptions opt;
  opt.tokenizer_path = tokenizer;
  opt.load_weights = weights;
  opt.llamacpp_numerics = numerics == "llamacpp";
  // Process-wide: decode products (n < 4) with packed affine weights in int8
  // (kernels/matmul.h) unless --numerics exact.
  set_int8_decode(numerics != "exact");
  return load_model(path, opt);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read text file", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace optiq::cli

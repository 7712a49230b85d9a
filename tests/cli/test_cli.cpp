// The optiq binary as a user meets it: exit codes and one-line errors on bad
// input, and the happy paths on stories260K.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "test_util.h"

namespace optiq {
namespace {

using test::RunResult;
RunResult run(const std::string& args, bool merge_stderr = true) { return test::run_optiq(args, merge_stderr); }

std::string stories_dir() { return test::shared_dir() + "/models/stories260K"; }

void write_prefix(const std::string& src, const std::string& dst, size_t n) {
  std::ifstream in(src, std::ios::binary);
  std::vector<char> buf(n);
  in.read(buf.data(), static_cast<std::streamsize>(n));
  std::ofstream(dst, std::ios::binary).write(buf.data(), in.gcount());
}

// An error is one line that names the file, and a non-zero exit (never a crash).
void expect_clean_error(const RunResult& r, const std::string& needle) {
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("optiq: error: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(needle), std::string::npos) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
}

TEST(Cli, HelpAndUsageErrors) {
  EXPECT_EQ(run("--help").code, 0);
  EXPECT_NE(run("eval --help").out.find("--ref"), std::string::npos);
  EXPECT_EQ(run("").code, 2);
  EXPECT_EQ(run("frobnicate").code, 2);
  EXPECT_EQ(run("eval").code, 2);  // MODEL and --text are required
  EXPECT_EQ(run("quantize x -o y --bits 7").code, 2);
}

// Measuring commands default to exact numerics (results independent of the
// CPU's int8 kernels); running commands to fast.
TEST(Cli, NumericsDefaultPerCommand) {
  for (const char* cmd : {"eval", "logits", "profile", "plan", "auto", "compare", "quantize"})
    EXPECT_NE(run(std::string(cmd) + " --help").out.find("{fast,exact,llamacpp}=exact"), std::string::npos) << cmd;
  for (const char* cmd : {"generate", "bench"})
    EXPECT_NE(run(std::string(cmd) + " --help").out.find("{fast,exact,llamacpp}=fast"), std::string::npos) << cmd;
}

TEST(Cli, InfoOnStories) {
  RunResult r = run("info " + stories_dir() + "/stories260K.gguf --json", false);
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["config"]["n_layers"], 5);
  // 512x64 embedding and output + 5 x (2 norms + q,k,v,o + 3 MLP matrices) + final norm.
  EXPECT_EQ(j["parameters"].get<int64_t>(), 2 * 32768 + 5 * (128 + 4096 + 2048 * 2 + 4096 + 3 * 11008) + 64);
}

TEST(Cli, GenerateGreedy) {
  RunResult r = run("generate " + stories_dir() + "/stories260K.bin --tokenizer " + stories_dir() +
                    "/tok512.bin -p 'Once upon a time' -n 20 --temp 0 --json", false);
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["text"].get<std::string>().rfind(", there was a little girl named Lily.", 0), 0u) << j["text"];
}

TEST(Cli, BadInputsGiveOneLineErrors) {
  const std::string dir = test::temp_dir();
  const std::string gguf = stories_dir() + "/stories260K.gguf";
  expect_clean_error(run("info /nonexistent.gguf"), "/nonexistent.gguf");

  write_prefix(gguf, dir + "/trunc.gguf", 3000);
  expect_clean_error(run("info " + dir + "/trunc.gguf"), "trunc.gguf");
  write_prefix(gguf, dir + "/trunc2.gguf", 500000);
  expect_clean_error(run("eval " + dir + "/trunc2.gguf --text " + gguf), "trunc2.gguf");

  std::ofstream(dir + "/magic.gguf") << "GGUX and more bytes here";
  expect_clean_error(run("info " + dir + "/magic.gguf"), "magic.gguf");

  // Unknown architecture: a valid GGUF whose general.architecture is unsupported.
  {
    GgufFile src(gguf);
    GgufWriter w;
    w.copy_metadata(src, [](std::string_view k) { return k != "general.architecture"; });
    w.add_string("general.architecture", "mamba");
    for (const auto& t : src.tensors()) w.add_tensor_view(t.name, t.dtype, t.shape, t.data, t.nbytes);
    w.write(dir + "/mamba.gguf");
  }
  expect_clean_error(run("info " + dir + "/mamba.gguf"), "mamba");

  // Inconsistent shapes: a tensor with the wrong shape for the config.
  {
    GgufFile src(gguf);
    GgufWriter w;
    w.copy_metadata(src);
    for (const auto& t : src.tensors()) {
      auto shape = t.shape;
      if (t.name == "blk.0.attn_q.weight") shape = {32, 128};
      w.add_tensor_view(t.name, t.dtype, shape, t.data, t.nbytes);
    }
    w.write(dir + "/shape.gguf");
  }
  expect_clean_error(run("generate " + dir + "/shape.gguf -p hi -n 2"), "blk.0.attn_q.weight");

  expect_clean_error(run("eval " + gguf + " --text " + dir + "/magic.gguf --ctx 64"), "fewer than one window");
  expect_clean_error(run("generate " + stories_dir() + "/stories260K.bin -p hi"), "--tokenizer");
}

}  // namespace
}  // namespace optiq

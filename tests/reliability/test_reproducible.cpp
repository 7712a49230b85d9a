// Reproducibility (issue 15 item 4; docs/reliability.md "Reproducibility"):
// the same inputs and options give byte-identical outputs (profile, plan, MLX
// directory, GGUF) across runs and thread counts, and every output records
// the optiq version, the source files' SHA-256 and the options, and nothing
// that depends on the run (no time, no output path, no thread count).
#include <gtest/gtest.h>

#include <filesystem>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/sha256.h"
#include "core/version.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/provenance.h"
#include "reliability_util.h"
#include "test_util.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;
using namespace test;
using nlohmann::json;

void ok(const Args& args) {
  const std::string err = temp_dir() + "/err";
  const int rc = run_child(args, {.err_log = err});
  ASSERT_EQ(rc, 0) << args[0] << " " << args[2] << ": " << read_file(err);
}

// Every command whose files can differ: profile (exact and fast measurements),
// plan from it, auto (measured selection, GGUF export), quantize with
// activation weighting to GGUF and with GPTQ to MLX.
void make_everything(const std::string& threads, const std::string& d) {
  const std::string m = stories_gguf(), c = calib_excerpt();
  ok(with({"-t", threads, "profile", m, "--calib", c, "--method", "both", "--candidates", "2,4,8x32,64", "--cache",
           d + "/p.json"},
          kCalib));
  ok({"-t", threads, "plan", m, "--profile", d + "/p.json", "--bpw", "6", "-o", d + "/plan.json"});
  ok(with({"-t", threads, "auto", m, "--calib", c, "--format", "gguf", "--candidates", "q4_0,q4_k,q8_0", "--bpw", "7",
           "-o", d + "/auto.gguf"},
          kCalib));
  ok(with({"-t", threads, "quantize", m, "--format", "gguf", "--calib", c, "-o", d + "/q.gguf"}, kCalib));
  ok(with({"-t", threads, "quantize", m, "--method", "gptq", "--calib", c, "-o", d + "/gptq"}, kCalib));
}

TEST(Reproducible, SameBytesAcrossRunsAndThreadCounts) {
  const std::string first = temp_dir();
  make_everything("1", first);
  const std::vector<std::string> files = files_under(first);
  EXPECT_EQ(files, (std::vector<std::string>{"auto.gguf", "auto.gguf.plan.json", "auto.gguf.profile.json",
                                             "auto.gguf.profile.json.windows", "gptq/config.json",
                                             "gptq/model.safetensors", "gptq/special_tokens_map.json",
                                             "gptq/tokenizer.json", "gptq/tokenizer_config.json", "p.json",
                                             "p.json.windows", "plan.json", "q.gguf"}));
  for (const std::string threads : {"3", "1"}) {  // another thread count, then the same one again
    SCOPED_TRACE("-t " + threads);
    const std::string d = temp_dir();
    make_everything(threads, d);
    EXPECT_EQ(files_under(d), files);
    for (const auto& f : files) EXPECT_EQ(same(d + "/" + f, first + "/" + f), "");
  }
}

// Sets an environment variable for a scope (the optiq children inherit it).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { old_ ? (void)setenv(name_, old_->c_str(), 1) : (void)unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// Another CPU (OPTIQ_ISA forces the kernels of a smaller instruction set; one
// this CPU lacks falls back to the best it has): exports made without
// calibration are the same bytes, and measurements (fp32 sums in another
// order) agree to 0.1%. Calibrated exports can differ where two roundings tie
// within that noise (docs/reliability.md, "Across CPUs").
TEST(Reproducible, ExportsAndMeasurementsAcrossInstructionSets) {
  const std::string m = stories_gguf(), c = calib_excerpt();
  std::vector<std::string> dirs;
  for (const std::string isa : {"avx512", "avx2", "scalar"}) {
    SCOPED_TRACE("OPTIQ_ISA=" + isa);
    const ScopedEnv env("OPTIQ_ISA", isa);
    const std::string d = temp_dir();
    ok({"quantize", m, "--format", "gguf", "--bits", "4", "-o", d + "/q.gguf"});
    ok({"quantize", m, "--bits", "3", "-o", d + "/mlx"});
    ok(with({"profile", m, "--calib", c, "--method", "both", "--candidates", "3,8x32", "--cache", d + "/p.json"},
            kCalib));
    dirs.push_back(d);
  }
  const json ref = json::parse(read_file(dirs[0] + "/p.json"));
  for (size_t i = 1; i < dirs.size(); ++i) {
    EXPECT_EQ(same(dirs[i] + "/q.gguf", dirs[0] + "/q.gguf"), "");
    EXPECT_EQ(same(dirs[i] + "/mlx", dirs[0] + "/mlx"), "");
    const json p = json::parse(read_file(dirs[i] + "/p.json"));
    int compared = 0;
    for (const auto& [module, entry] : ref["modules"].items())
      for (const auto& [format, v] : entry["formats"].items())
        for (const char* k : {"kl", "proxy"}) {
          const double a = v[k].get<double>(), b = p["modules"][module]["formats"][format][k].get<double>();
          EXPECT_NEAR(b, a, 1e-3 * std::abs(a) + 1e-12) << module << " " << format << " " << k;
          ++compared;
        }
    EXPECT_GT(compared, 50);
  }
}

// The "optiq" block: version, command, the source's files with their SHA-256.
void expect_provenance(const json& p, const std::string& command) {
  ASSERT_TRUE(p.is_object()) << p.dump();
  EXPECT_EQ(p["version"], kOptiqVersion);
  EXPECT_EQ(p["command"], command);
  EXPECT_EQ(p["source"]["name"], "stories260K.gguf");
  ASSERT_EQ(p["source"]["files"].size(), 1u) << p.dump();
  const json& f = p["source"]["files"][0];
  EXPECT_EQ(f["name"], "stories260K.gguf");
  EXPECT_EQ(f["bytes"].get<uint64_t>(), fs::file_size(stories_gguf()));
  EXPECT_EQ(f["sha256"], sha256_file(stories_gguf()));
  ASSERT_TRUE(p["options"].is_object());
  for (const char* never : {"--out", "-o", "--force", "--json", "--cache", "--threads", "-t", "MODEL"})
    EXPECT_FALSE(p["options"].contains(never)) << never << " in " << p["options"].dump();
}

json read_json(const std::string& path) { return json::parse(read_file(path)); }

TEST(Reproducible, OutputsRecordVersionSourceHashAndOptions) {
  const std::string d = temp_dir(), m = stories_gguf(), c = calib_excerpt();
  ok({"quantize", m, "--format", "gguf", "--bits", "8", "-o", d + "/q.gguf"});
  ok(with({"quantize", m, "--group-size", "32", "--calib", c, "-o", d + "/mlx"}, kCalib));
  ok(with({"profile", m, "--calib", c, "--candidates", "4,8x64", "--cache", d + "/p.json"}, kCalib));
  ok({"plan", m, "--profile", d + "/p.json", "--bpw", "8", "-o", d + "/plan.json"});

  const GgufFile g(d + "/q.gguf");
  const json gp = {{"version", g.get_string("optiq.version")},
                   {"command", g.get_string("optiq.command")},
                   {"source", json::parse(g.get_string("optiq.source"))},
                   {"options", json::parse(g.get_string("optiq.options"))}};
  expect_provenance(gp, "quantize");
  EXPECT_EQ(gp["options"]["--bits"], "8");
  EXPECT_EQ(gp["options"]["--format"], "gguf");

  const json mp = read_json(d + "/mlx/config.json")["optiq"];
  expect_provenance(mp, "quantize");
  EXPECT_EQ(mp["options"]["--group-size"], "32");
  EXPECT_EQ(mp["options"]["--calib"], json({{"file", "calib.txt"}, {"sha256", sha256_file(c)}}));
  const SafetensorsFile st(d + "/mlx/model.safetensors");
  EXPECT_EQ(st.metadata().at("format"), "mlx");
  EXPECT_EQ(st.metadata().at("optiq.version"), kOptiqVersion);
  EXPECT_EQ(st.metadata().at("optiq.command"), "quantize");
  EXPECT_EQ(json::parse(st.metadata().at("optiq.source")), mp["source"]);
  EXPECT_EQ(json::parse(st.metadata().at("optiq.options")), mp["options"]);

  const json profile = read_json(d + "/p.json");
  expect_provenance(profile["optiq"], "profile");
  EXPECT_EQ(profile["optiq"]["options"]["--candidates"], "4,8x64");
  EXPECT_EQ(profile["measured_with"]["optiq"], kOptiqVersion);
  EXPECT_TRUE(profile["measured_with"].contains("backend"));

  const json plan = read_json(d + "/plan.json");
  expect_provenance(plan["optiq"], "plan");  // the source as the profile recorded it
  EXPECT_EQ(plan["optiq"]["options"]["--bpw"], "8");
  EXPECT_EQ(plan["optiq"]["options"]["--profile"]["sha256"], sha256_file(d + "/p.json"));

  // No output path in any output (they would differ between two directories).
  for (const auto& f : files_under(d)) EXPECT_EQ(read_file(d + "/" + f).find(d), std::string::npos) << f;
  EXPECT_EQ(test::run_optiq("--version").out, std::string("optiq ") + kOptiqVersion + "\n");
}

TEST(Reproducible, SourceFilesOfAHuggingFaceDirectory) {
  const std::string d = temp_dir();
  for (const char* f : {"config.json", "tokenizer.json", "model-00001-of-00002.safetensors",
                        "model-00002-of-00002.safetensors", "consolidated.safetensors", "README.md"})
    std::ofstream(d + "/" + f) << f;
  std::ofstream(d + "/model.safetensors.index.json")
      << R"({"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
                            "c": "model-00001-of-00002.safetensors"}})";
  std::vector<std::string> names;
  for (const auto& f : model_source_files(d)) names.push_back(fs::path(f).filename().string());
  // The weights the loader reads (not consolidated.safetensors), config and tokenizer; not the README.
  EXPECT_EQ(names, (std::vector<std::string>{"config.json", "model.safetensors.index.json",
                                             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                             "tokenizer.json"}));
  const json r = source_record(d);
  ASSERT_EQ(r["files"].size(), 5u);
  EXPECT_EQ(r["files"][0]["sha256"], sha256_file(d + "/config.json"));
  EXPECT_EQ(r["files"][0]["bytes"], 11);
  EXPECT_EQ(r["name"], fs::path(d).filename().string());
}

}  // namespace
}  // namespace optiq

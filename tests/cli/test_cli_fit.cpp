// `--fit M --ctx C --runtime R` on `optiq plan` and `optiq auto` (stories260K):
// the printed "memory" line per runtime, the plan file's "memory" object, the
// defaults (plan optiq-cpu; auto llamacpp for GGUF, mlx otherwise) and the
// one-line errors (unknown runtime, --runtime without --fit, a runtime that
// cannot read the output).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace optiq {
namespace {

using test::RunResult;

using test::stories;

// One profile for every plan here.
const std::string& profile() {
  static const std::string path = [] {
    const std::string p = test::temp_dir() + "/stories.profile.json";
    const RunResult r =
        test::run_optiq("profile " + stories() + " --calib " + test::calib_excerpt() + test::kTinyCalib + " --cache " + p);
    EXPECT_EQ(r.code, 0) << r.out;
    return p;
  }();
  return path;
}

std::string first_line_with(const std::string& text, const std::string& prefix) {
  const size_t at = text.find(prefix);
  return at == std::string::npos ? "" : text.substr(at, text.find('\n', at) - at);
}

nlohmann::json plan_memory(const std::string& plan_file) {
  const nlohmann::json j = nlohmann::json::parse(test::read_file(plan_file));
  return j.contains("memory") ? j["memory"] : nlohmann::json();
}

TEST(CliFit, PlanPrintsWhatRunsWhere) {
  const std::string dir = test::temp_dir();
  struct Case {
    std::string runtime, says;
  };
  for (const Case& c : {Case{"", "on optiq (CPU, ctx 512): weights "},
                        Case{"optiq-cuda", "of GPU memory on optiq (CUDA, ctx 512): weights "},
                        Case{"llamacpp", "on llama.cpp (CPU, ctx 512): weights "},
                        Case{"llamacpp-gpu", "of GPU memory on llama.cpp (every layer on the GPU, ctx 512): "},
                        Case{"mlx", "on mlx-lm (ctx 512): weights "}}) {
    SCOPED_TRACE(c.runtime);
    const std::string out = dir + "/plan-" + c.runtime + ".json";
    const RunResult r = test::run_optiq("plan " + stories() + " --profile " + profile() +
                                        " --fit 1GB --ctx 512 -o " + out +
                                        (c.runtime.empty() ? "" : " --runtime " + c.runtime));
    ASSERT_EQ(r.code, 0) << r.out;
    const std::string line = first_line_with(r.out, "memory        fits 1.000 GB ");
    EXPECT_NE(line.find(c.says), std::string::npos) << r.out;
    EXPECT_NE(line.find("+ KV cache "), std::string::npos) << line;
    EXPECT_NE(line.find("+ compute "), std::string::npos) << line;
    const nlohmann::json m = plan_memory(out);
    ASSERT_TRUE(m.is_object()) << test::read_file(out);
    EXPECT_EQ(m["runtime"], c.runtime.empty() ? "optiq-cpu" : c.runtime);
    EXPECT_EQ(m["ctx"], 512);
    EXPECT_EQ(m["fit_bytes"], 1'000'000'000);
    EXPECT_EQ(m["total_bytes"].get<int64_t>(), m["weights_bytes"].get<int64_t>() + m["kv_cache_bytes"].get<int64_t>() +
                                                   m["compute_bytes"].get<int64_t>() +
                                                   m["runtime_bytes"].get<int64_t>());
  }
  // llama.cpp's cache type and flash attention.
  const std::string out = dir + "/q.json";
  RunResult r = test::run_optiq("plan " + stories() + " --profile " + profile() +
                                " --fit 1GB --ctx 512 --runtime llamacpp --kv-cache f32 --flash-attn off -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("KV cache f32"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(no flash attention)"), std::string::npos) << r.out;
  EXPECT_EQ(plan_memory(out)["flash_attention"], false);
  // --json carries the same object.
  r = test::run_optiq("plan " + stories() + " --profile " + profile() + " --fit 1GB --ctx 512 --json -o " + out,
                      /*merge_stderr=*/false);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["memory"]["runtime"], "optiq-cpu");
  // Other budgets record no memory.
  ASSERT_EQ(test::run_optiq("plan " + stories() + " --profile " + profile() + " --bpw 8 -o " + out).code, 0);
  EXPECT_TRUE(plan_memory(out).is_null());
}

TEST(CliFit, BadInputGivesOneLineErrors) {
  const std::string base = "plan " + stories() + " --profile " + profile() + " -o " + test::temp_dir() + "/p.json";
  RunResult r = test::run_optiq(base + " --fit 1GB --ctx 512 --runtime vllm");
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.out,
            "optiq: error: --runtime 'vllm': unknown runtime; expected one of optiq-cpu, optiq-cuda, llamacpp, "
            "llamacpp-gpu, mlx\n");
  r = test::run_optiq(base + " --bpw 8 --runtime llamacpp");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("--runtime llamacpp: only shapes a --fit budget"), std::string::npos) << r.out;
  r = test::run_optiq(base + " --bpw 8 --kv-cache q8_0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("--kv-cache q8_0: only shapes a --fit budget"), std::string::npos) << r.out;
  r = test::run_optiq(base + " --fit 1GB --ctx 512 --runtime optiq-cpu --kv-cache f16");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("optiq-cpu stores its KV cache as f32"), std::string::npos) << r.out;
  r = test::run_optiq(base + " --fit 10MB --ctx 512 --runtime mlx");  // less than the runtime alone
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("alone exceed the memory"), std::string::npos) << r.out;
  // The default is in --help.
  r = test::run_optiq("plan --help");
  EXPECT_NE(r.out.find("(default: optiq-cpu)"), std::string::npos) << r.out;
  r = test::run_optiq("auto --help");
  EXPECT_NE(r.out.find("llamacpp with --format gguf or --target gguf, else mlx"), std::string::npos) << r.out;
}

TEST(CliFit, AutoDefaultsFromTheOutput) {
  const std::string dir = test::temp_dir();
  const std::string base =
      "auto " + stories() + " --calib " + test::calib_excerpt() + test::kTinyCalib + " --candidates 4,8x32 --fit 1GB --ctx 256";
  RunResult r = test::run_optiq(base + " --format gguf -o " + dir + "/a.gguf");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("on llama.cpp (CPU, ctx 256)"), std::string::npos) << r.out;
  EXPECT_EQ(plan_memory(dir + "/a.gguf.plan.json")["runtime"], "llamacpp");
  r = test::run_optiq(base + " -o " + dir + "/m");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("on mlx-lm (ctx 256)"), std::string::npos) << r.out;
  EXPECT_EQ(plan_memory(dir + "/m.plan.json")["runtime"], "mlx");
  // A runtime that cannot read the output.
  r = test::run_optiq(base + " --runtime llamacpp -o " + dir + "/x");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("llama.cpp runs GGUF files; add --format gguf"), std::string::npos) << r.out;
  r = test::run_optiq(base + " --runtime mlx --format gguf -o " + dir + "/x.gguf");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("mlx-lm does not run GGUF files"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace optiq

// Every documented option of `quantize`, `profile` and `auto` on stories260K
// and on a tiny random model of each family (llama, mistral, qwen2, qwen3,
// phi3, gemma3; written once per build tree by tests/reference/
// write_tiny_families.py, skipped without Python). A crash (death by signal,
// exit status >= 128) fails with the command line that crashed. Also: the
// importance statistics of Phi-3's fused matrices, and `optiq info`'s summary,
// natural tensor order, --tensors and --json.
#include <map>
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "core/sha256.h"
#include "model/model.h"
#include "pipeline/export_step.h"
#include "model/calibration_stats.h"
#include "model/quantize_model.h"
#include "model/transformer.h"
#include "profile/calibration.h"
#include "test_util.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;
using test::RunResult;

std::string stories_gguf() { return test::shared_dir() + "/models/stories260K/stories260K.gguf"; }
std::string stories_bin() {
  return test::shared_dir() + "/models/stories260K/stories260K.bin --tokenizer " + test::shared_dir() +
         "/models/stories260K/tok512.bin";
}
// The first bytes of the shared calibration and evaluation texts: tokenizing
// the whole 4 MB of c4 would cost more than every command here.
std::string head_copy(const std::string& src, const std::string& name, size_t bytes) {
  static const std::string dir = test::temp_dir();
  const std::string dst = dir + "/" + name;
  if (!test::file_exists(dst)) {
    std::ifstream in(src, std::ios::binary);
    std::string buf(bytes, '\0');
    in.read(buf.data(), static_cast<std::streamsize>(bytes));
    buf.resize(static_cast<size_t>(in.gcount()));
    std::ofstream(dst, std::ios::binary) << buf;
  }
  return dst;
}
std::string calib_txt() { return head_copy(test::shared_dir() + "/data/c4/c4-validation-2k.txt", "calib.txt", 20000); }
std::string eval_txt() {
  return head_copy(test::shared_dir() + "/data/tinystories/tinystories-valid-head.txt", "eval.txt", 8000);
}
// Calibration: test::kTinyCalib (every option path runs, in milliseconds).

// Runs `optiq -q ARGS`; a crash fails the test naming the command line.
RunResult run_checked(const std::string& args) {
  RunResult r = test::run_optiq(args, /*merge_stderr=*/true);
  if (r.code >= 128)
    ADD_FAILURE() << "optiq crashed (exit status " << r.code << ", signal " << r.code - 128 << "): optiq -q " << args
                  << "\n" << r.out;
  return r;
}

// Runs and expects success; returns stdout+stderr.
std::string ok(const std::string& args) {
  RunResult r = run_checked(args);
  EXPECT_EQ(r.code, 0) << "optiq -q " << args << "\n" << r.out;
  return r.out;
}

RunResult run_stdout(const std::string& args) {
  RunResult r = test::run_optiq(args, /*merge_stderr=*/false);
  if (r.code >= 128) ADD_FAILURE() << "optiq crashed (exit status " << r.code << "): optiq -q " << args;
  return r;
}

nlohmann::json ok_json(const std::string& args) {
  RunResult r = run_stdout(args);
  EXPECT_EQ(r.code, 0) << "optiq -q " << args << "\n" << r.out;
  if (r.code != 0) return nullptr;
  try {
    return nlohmann::json::parse(r.out);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "optiq -q " << args << ": not JSON: " << e.what() << "\n" << r.out;
    return nullptr;
  }
}

// An exported directory exists and loads (`optiq info OUT --json`).
void expect_loads(const std::string& dir, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(test::file_exists(dir + "/model.safetensors")) << dir << " (" << what << ")";
  ASSERT_TRUE(test::file_exists(dir + "/config.json")) << dir << " (" << what << ")";
  nlohmann::json j = ok_json("info " + dir + " --json");
  if (j.is_null()) return;
  EXPECT_GT(j["parameters"].get<int64_t>(), 0) << what;
  EXPECT_FALSE(j["precision"].empty()) << what << ": no quantization map";
}

// `quantize SRC -o OUT ARGS`, then OUT must load.
void quantize_ok(const std::string& src, const std::string& out, const std::string& args) {
  const std::string cmd = "quantize " + src + " -o " + out + " " + args;
  RunResult r = run_checked(cmd);
  ASSERT_EQ(r.code, 0) << "optiq -q " << cmd << "\n" << r.out;
  expect_loads(out, cmd);
}

// --- tiny family models ---------------------------------------------------------------------

const std::vector<std::string> kFamilies = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3"};

// The directory holding one tiny model per family, written once per build
// tree (atomically: concurrent test processes may race), or "" without Python.
const std::string& families_dir() {
  static const std::string dir = [] {
    const std::string script = std::string(OPTIQ_SOURCE_DIR) + "/tests/reference/write_tiny_families.py";
    const std::string final_dir = std::string(OPTIQ_BINARY_DIR) + "/tiny-families";
    std::error_code ec;
    const bool fresh = fs::exists(final_dir + "/stamp", ec) &&
                       fs::last_write_time(final_dir + "/stamp", ec) >= fs::last_write_time(script, ec);
    if (fresh) return final_dir;
    const char* home = std::getenv("HOME");
    std::string py = std::string(home ? home : "/root") + "/.cache/optiq/venv/bin/python";
    if (!fs::exists(py, ec)) py = "python3";
    const std::string tmp = final_dir + ".tmp." + std::to_string(getpid());
    const std::string cmd = py + " " + script + " " + tmp + " >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      fs::remove_all(tmp, ec);
      return std::string();
    }
    std::ofstream(tmp + "/stamp") << "ok\n";
    fs::remove_all(final_dir, ec);
    fs::rename(tmp, final_dir, ec);
    if (ec) fs::remove_all(tmp, ec);  // another process won the race: its copy is as good
    return fs::exists(final_dir + "/stamp", ec) ? final_dir : std::string();
  }();
  return dir;
}

std::string family_model(const std::string& family) {
  const std::string& d = families_dir();
  return d.empty() ? std::string() : d + "/" + family;
}

#define SKIP_WITHOUT_FAMILIES(path)                                                             \
  if ((path).empty()) GTEST_SKIP() << "tiny family models not written (Python with numpy, "     \
                                      "safetensors and tokenizers missing?)"

// --- quantize ---------------------------------------------------------------------------------

TEST(CliQuantize, CalibrationDoesNotCrash) {
  // The reported crash: --calib with any model segfaulted in ImportanceCollector::observe.
  const std::string dir = test::temp_dir();
  quantize_ok(stories_gguf(), dir + "/q", "--bits 4 --group-size 32 --calib " + calib_txt() + test::kTinyCalib);
  const std::string smol = test::cache_dir() + "/models/smollm2-135m-instruct-q4_1.gguf";
  if (test::file_exists(smol))
    quantize_ok(smol, dir + "/smol",
                "--bits 4 --group-size 32 --method minmax --calib " + calib_txt() + " --calib-samples 1 --calib-seq 16");
}

TEST(CliQuantize, BitsAndGroupSizes) {
  const std::string dir = test::temp_dir();
  for (int bits : {2, 3, 4, 5, 6, 8}) quantize_ok(stories_gguf(), dir + "/b" + std::to_string(bits), "--bits " + std::to_string(bits) + " --group-size 32");
  quantize_ok(stories_gguf(), dir + "/g64", "--group-size 64");
  // No stories matrix has a multiple of 128 inputs: everything stays float, and still loads.
  ok("quantize " + stories_gguf() + " -o " + dir + "/g128 --group-size 128");
  ok("info " + dir + "/g128");
  quantize_ok(stories_gguf(), dir + "/default", "");  // --bits 4 --group-size 64
  // The map records the format: stories' 64-wide matrices take q3g32.
  nlohmann::json j = ok_json("info " + dir + "/b3 --json");
  if (!j.is_null()) {
    EXPECT_EQ(j["precision"]["model.layers.0.self_attn.q_proj"], "affine-q3-g32") << j["precision"].dump();
  }
  EXPECT_EQ(run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --group-size 48").code, 2);
}

TEST(CliQuantize, MethodsDtypesAndJson) {
  const std::string dir = test::temp_dir();
  for (const char* method : {"search", "minmax"})
    for (const char* dtype : {"auto", "f16", "bf16"})
      quantize_ok(stories_gguf(), dir + "/" + method + "_" + dtype,
                  std::string("--method ") + method + " --dtype " + dtype);
  nlohmann::json j = ok_json("quantize " + stories_gguf() + " -o " + dir + "/j --bits 8 --json");
  if (!j.is_null()) {
    EXPECT_EQ(j["out"], dir + "/j");
    EXPECT_GT(j["bits_per_weight"].get<double>(), 8.0);
  }
  EXPECT_EQ(run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --method rtn").code, 2);
  EXPECT_EQ(run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --dtype f32").code, 2);
}

// A Hugging Face directory is read once (O_DIRECT, hashed as it is read:
// core/read_once_stream.h): every matrix from the stream, and the output's
// provenance holds the weights' sha256sum.
TEST(CliQuantize, HfSourceIsReadOnceAndHashed) {
  const std::string dir = test::temp_dir();
  {
    Model m = load_model(stories_gguf());
    PrecisionMap floats = PrecisionMap::uniform(m.config, {8, 32});
    for (auto& [path, f] : floats.formats) f = std::nullopt;
    run_export_step(m, floats, {.progress = false}, dir + "/hf", {.progress = false});
  }
  const nlohmann::json j = ok_json("quantize " + dir + "/hf -o " + dir + "/q --bits 4 --method minmax --json");
  ASSERT_FALSE(j.is_null());
  EXPECT_EQ(j["source_stream"]["matrices_read_once"].get<int64_t>(),
            static_cast<int64_t>(quantizable_modules(load_model(stories_gguf()).config).size()));
  EXPECT_EQ(j["source_stream"]["matrices_passed"].get<int64_t>(), 0);
  // A GGUF source is read from its map.
  const nlohmann::json g = ok_json("quantize " + stories_gguf() + " -o " + dir + "/g --bits 4 --json");
  ASSERT_FALSE(g.is_null());
  EXPECT_TRUE(g["source_stream"].is_null());
  const auto config = nlohmann::json::parse(test::read_file(dir + "/q/config.json"));
  bool weights = false;
  for (const auto& f : config["optiq"]["source"]["files"]) {
    EXPECT_EQ(f["sha256"], sha256_file(dir + "/hf/" + f["name"].get<std::string>())) << f["name"];
    weights |= f["name"] == "model.safetensors";
  }
  EXPECT_TRUE(weights);
}

TEST(CliQuantize, Gptq) {
  const std::string dir = test::temp_dir();
  quantize_ok(stories_gguf(), dir + "/mlx", "--bits 3 --group-size 32 --method gptq --calib " + calib_txt() + test::kTinyCalib);
  quantize_ok(stories_gguf(), dir + "/nao",
              "--bits 4 --group-size 32 --method gptq --no-act-order --damp 0.05 --calib " + calib_txt() + test::kTinyCalib);
  ok("quantize " + stories_gguf() + " -o " + dir + "/q.gguf --format gguf --bits 4 --method gptq --calib " +
     calib_txt() + test::kTinyCalib);
  ok("info " + dir + "/q.gguf");
  RunResult r = run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --method gptq");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--calib"), std::string::npos) << r.out;
  EXPECT_EQ(run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --method gptq --damp -1 --calib " + calib_txt() +
                test::kTinyCalib).code, 1);
}

// GPTQ's sequential mode (and its asymmetric target): MLX and GGUF exports that load and run; only with GPTQ.
TEST(CliQuantize, GptqSequential) {
  const std::string dir = test::temp_dir();
  quantize_ok(stories_gguf(), dir + "/mlx",
              "--bits 3 --group-size 32 --method gptq --sequential --calib " + calib_txt() + test::kTinyCalib);
  ok("quantize " + stories_gguf() + " -o " + dir + "/q.gguf --format gguf --bits 4 --method gptq --sequential --calib " +
     calib_txt() + test::kTinyCalib);
  ok("eval " + dir + "/q.gguf --text " + calib_txt() + " --chunks 2 --ctx 64");
  quantize_ok(stories_gguf(), dir + "/asym",
              "--bits 3 --group-size 32 --method gptq --sequential --asymmetric --calib " + calib_txt() + test::kTinyCalib);
  const RunResult r = run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --sequential --calib " + calib_txt() + test::kTinyCalib);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--method gptq"), std::string::npos) << r.out;
  const RunResult a = run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --method gptq --asymmetric --calib " +
                          calib_txt() + test::kTinyCalib);
  EXPECT_EQ(a.code, 1) << a.out;
  EXPECT_NE(a.out.find("--sequential"), std::string::npos) << a.out;
}

// AWQ scales are folded into the norms and v/up rows: the outputs stay plain
// MLX / GGUF models that load and run.
TEST(CliQuantize, Awq) {
  const std::string dir = test::temp_dir();
  quantize_ok(stories_gguf(), dir + "/mlx", "--bits 3 --group-size 32 --method awq --awq-grid 4 --calib " + calib_txt() +
                                                test::kTinyCalib);
  ok("quantize " + stories_gguf() + " -o " + dir + "/q.gguf --format gguf --bits 4 --method awq --calib " + calib_txt() +
     test::kTinyCalib);
  ok("eval " + dir + "/q.gguf --text " + calib_txt() + " --chunks 2 --ctx 64");
  RunResult r = run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --method awq");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--calib"), std::string::npos) << r.out;
  EXPECT_EQ(run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --method awq --awq-grid 0 --calib " + calib_txt() +
                test::kTinyCalib).code, 2);  // a usage error
}

// GPTQ's profiled proxy is held out (fitted on half of the windows, measured
// on the other): on test::kTinyCalib's 2 x 32 tokens, GPTQ fitted on 32 tokens of
// 64-wide inputs loses everywhere; these many tokens let it win somewhere.
const std::string kGptqCalib = " --calib-samples 8 --calib-seq 128";

// profile --methods weighted,gptq: the plan names the weighted search or GPTQ
// per tensor (here GPTQ wins for every matrix with inputs, the lm_head too:
// GPTQ from the final norm's outputs; the plan of --methods weighted names
// the weighted search); quantize --plan needs the calibration text for either.
TEST(CliQuantize, PlanNamesWeightedRoundingPerTensor) {
  const std::string dir = test::temp_dir();
  ok("auto " + stories_gguf() + " --calib " + calib_txt() + kGptqCalib +
     " --methods weighted,gptq --candidates 2,3,4,8x32 --bpw 7 -o " + dir + "/auto");
  expect_loads(dir + "/auto", "auto --methods weighted,gptq");
  std::ifstream in(dir + "/auto.plan.json");
  const nlohmann::json plan = nlohmann::json::parse(in);
  std::map<std::string, int> methods;
  for (const auto& [name, v] : plan["tensors"].items())
    if (v.is_object() && v.contains("method")) ++methods[v["method"].get<std::string>()];
  EXPECT_GT(methods["gptq"], 0) << plan.dump(1);
  EXPECT_EQ(plan["tensors"]["lm_head"].value("method", ""), "gptq") << plan.dump(1);
  ok("auto " + stories_gguf() + " --calib " + calib_txt() + test::kTinyCalib +
     " --methods weighted --candidates 2,3,4,8x32 --bpw 7 -o " + dir + "/w");
  RunResult r = run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --plan " + dir + "/w.plan.json");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("\"method\": \"weighted\""), std::string::npos) << r.out;
  quantize_ok(stories_gguf(), dir + "/q", "--plan " + dir + "/w.plan.json --calib " + calib_txt() + test::kTinyCalib);
}

// profile --methods search,gptq: the plan names GPTQ for the tensors where it
// won, auto exports them that way, and quantize --plan reproduces it (with
// the calibration text it needs).
TEST(CliQuantize, PlanNamesGptqPerTensor) {
  const std::string dir = test::temp_dir();
  ok("auto " + stories_gguf() + " --calib " + calib_txt() + kGptqCalib +
     " --methods search,gptq --candidates 2,3,4,8x32 --bpw 7 -o " + dir + "/auto");
  expect_loads(dir + "/auto", "auto --methods search,gptq");
  std::ifstream in(dir + "/auto.plan.json");
  const nlohmann::json plan = nlohmann::json::parse(in);
  int gptq = 0;
  for (const auto& [name, v] : plan["tensors"].items()) gptq += v.is_object() && v.value("method", "") == "gptq";
  EXPECT_GT(gptq, 0) << plan.dump(1);
  quantize_ok(stories_gguf(), dir + "/q", "--plan " + dir + "/auto.plan.json --calib " + calib_txt() + test::kTinyCalib);
  RunResult r = run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --plan " + dir + "/auto.plan.json");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--calib"), std::string::npos) << r.out;
  r = run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --plan " + dir + "/auto.plan.json --method awq --calib " +
          calib_txt() + test::kTinyCalib);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--method awq"), std::string::npos) << r.out;
  // A method optiq does not apply per tensor is a clear error.
  std::ofstream(dir + "/bad.json") << R"({"tensors": {"model.layers.0.self_attn.q_proj": {"bits": 4, "group_size": 32, "method": "awq"}}})";
  r = run_checked("quantize " + stories_gguf() + " -o " + dir + "/y --plan " + dir + "/bad.json");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("method 'awq'"), std::string::npos) << r.out;
}

TEST(CliQuantize, CalibrationSources) {
  const std::string dir = test::temp_dir();
  const std::string jsonl = dir + "/calib.jsonl";
  {
    std::ofstream f(jsonl);
    for (int i = 0; i < 8; ++i)
      f << nlohmann::json({{"text", "Once upon a time there was a little dog named Max. He liked to run."}}).dump()
        << "\n";
  }
  quantize_ok(stories_gguf(), dir + "/txt", "--calib " + calib_txt() + test::kTinyCalib + " --seed 3");
  quantize_ok(stories_gguf(), dir + "/jsonl", "--calib " + jsonl + test::kTinyCalib);
  quantize_ok(stories_gguf(), dir + "/self", "--calib self" + test::kTinyCalib);
  quantize_ok(stories_bin(), dir + "/bin", "--bits 8 --group-size 32 --method minmax --calib " + calib_txt() + test::kTinyCalib);
  quantize_ok(stories_gguf(), dir + "/defaults", "--calib " + calib_txt() + " --calib-samples 1");  // default --calib-seq
  RunResult r = run_checked("quantize " + stories_gguf() + " -o " + dir + "/missing --calib " + dir + "/nope.txt");
  EXPECT_EQ(r.code, 1) << r.out;
}

TEST(CliQuantize, PlanAndForce) {
  const std::string dir = test::temp_dir();
  const std::string plan = dir + "/plan.json";
  std::ofstream(plan) << R"({"format": "optiq-plan", "version": 1, "default": {"bits": 4, "group_size": 32},
    "tensors": {"model.layers.0.self_attn.v_proj": {"bits": 8, "group_size": 32},
                "model.layers.1.mlp.down_proj": "float", "lm_head.weight": {"bits": 6, "group_size": 64}}})";
  const std::string out = dir + "/planned";
  quantize_ok(stories_gguf(), out, "--plan " + plan);
  nlohmann::json j = ok_json("info " + out + " --json");
  if (!j.is_null()) {
    EXPECT_EQ(j["precision"]["model.layers.0.self_attn.v_proj"], "affine-q8-g32");
    EXPECT_EQ(j["precision"]["model.layers.1.mlp.down_proj"], "float");
    EXPECT_EQ(j["precision"]["model.layers.0.self_attn.q_proj"], "affine-q4-g32");
  }
  // The output exists now: an error without --force, replaced with it.
  RunResult r = run_checked("quantize " + stories_gguf() + " -o " + out + " --bits 8");
  EXPECT_EQ(r.code, 1) << r.out;
  quantize_ok(stories_gguf(), out, "--bits 8 --force --plan " + plan + " --calib " + calib_txt() + test::kTinyCalib);
  EXPECT_EQ(run_checked("quantize " + stories_gguf() + " -o " + dir + "/x --plan " + dir + "/nope.json").code, 2);
}

// --- profile ----------------------------------------------------------------------------------

TEST(CliProfile, MethodsCandidatesCacheJson) {
  const std::string dir = test::temp_dir();
  const std::string base = "profile " + stories_gguf() + " --calib " + calib_txt() + test::kTinyCalib;
  for (const char* method : {"fast", "exact", "both"}) {
    const std::string cache = dir + "/" + method + ".json";
    const std::string out = ok(base + " --method " + method + " --candidates 4,8x32,64 --cache " + cache);
    EXPECT_TRUE(test::file_exists(cache)) << method;
    EXPECT_NE(out.find("KL"), std::string::npos) << out;
    if (std::string(method) == "both") {
      EXPECT_NE(out.find("Spearman"), std::string::npos) << out;
    }
  }
  // A finished cache is reused: nothing measured the second time.
  nlohmann::json j = ok_json(base + " --method exact --candidates 4,8x32,64 --cache " + dir + "/exact.json --json");
  if (!j.is_null()) {
    EXPECT_EQ(j["exact_measured"].get<int>(), 0) << j.dump().substr(0, 400);
    EXPECT_EQ(j["cache"], dir + "/exact.json");
  }
  // A list of formats, a seed, self-generated calibration text.
  j = ok_json("profile " + stories_gguf() + " --calib self" + test::kTinyCalib + " --seed 7 --candidates q4g64,q8g32 --cache " +
              dir + "/list.json --json");
  if (!j.is_null()) {
    EXPECT_TRUE(j.contains("modules") || j.contains("tensors")) << j.dump().substr(0, 400);
  }
  ok("profile " + stories_bin() + " --calib " + calib_txt() + test::kTinyCalib + " --seed 1 --candidates 3x64 --cache " + dir +
     "/bin.json");
  for (const char* anchors : {"every", "2"})
    ok(base + " --candidates 4x64 --anchors " + anchors + " --cache " + dir + "/anchors" + anchors + ".json");
  EXPECT_EQ(run_checked(base + " --anchors 0 --cache " + dir + "/x.json").code, 1);
  EXPECT_EQ(run_checked(base + " --method slow --cache " + dir + "/x.json").code, 2);
  EXPECT_EQ(run_checked("profile " + stories_gguf() + " --cache " + dir + "/x.json").code, 2);  // --calib is required
}

TEST(CliProfile, DefaultCacheNextToWorkingDirectory) {
  // Without --cache the profile goes to <model name>.profile.json in the working directory.
  const std::string dir = test::temp_dir();
  const std::string cmd = "cd " + dir + " && " + OPTIQ_BINARY_DIR + "/optiq -q profile " + stories_gguf() +
                          " --calib " + calib_txt() + test::kTinyCalib + " --candidates 4x64 >/dev/null 2>&1";
  const int status = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << cmd << " (status " << status << ")";
  EXPECT_TRUE(test::file_exists(dir + "/stories260K.profile.json"));
}

// --- auto -------------------------------------------------------------------------------------

void auto_ok(const std::string& src, const std::string& out, const std::string& args) {
  const std::string cmd = "auto " + src + " --calib " + calib_txt() + test::kTinyCalib + " --candidates 3,4,8x32,64 -o " + out +
                          " " + args;
  RunResult r = run_checked(cmd);
  ASSERT_EQ(r.code, 0) << "optiq -q " << cmd << "\n" << r.out;
  EXPECT_TRUE(test::file_exists(out + ".plan.json")) << cmd;
  expect_loads(out, cmd);
}

TEST(CliAuto, Budgets) {
  const std::string dir = test::temp_dir();
  const std::string cache = " --cache " + dir + "/shared.profile.json";  // one profile for all budgets
  auto_ok(stories_gguf(), dir + "/bpw", "--bpw 6.5" + cache);
  EXPECT_TRUE(test::file_exists(dir + "/shared.profile.json"));
  auto_ok(stories_gguf(), dir + "/size", "--size 300KB" + cache);
  auto_ok(stories_gguf(), dir + "/reduction", "--reduction 60%" + cache);
  auto_ok(stories_gguf(), dir + "/fit", "--fit 68.2MB --ctx 128 --runtime optiq-cpu" + cache);
  // Default cache beside OUT.
  auto_ok(stories_gguf(), dir + "/own", "--bpw 6");
  EXPECT_TRUE(test::file_exists(dir + "/own.profile.json"));
  // OUT exists: an error without --force.
  RunResult r = run_checked("auto " + stories_gguf() + " --calib " + calib_txt() + test::kTinyCalib + " --bpw 6 -o " + dir + "/own");
  EXPECT_EQ(r.code, 1) << r.out;
  auto_ok(stories_gguf(), dir + "/own", "--bpw 6 --force");
  EXPECT_EQ(run_checked("auto " + stories_gguf() + " --calib " + calib_txt() + test::kTinyCalib + " -o " + dir + "/none").code, 1)
      << "no budget";
}

TEST(CliAuto, TextChunksJson) {
  const std::string dir = test::temp_dir();
  const std::string out = dir + "/o";
  const std::string cmd = "auto " + stories_gguf() + " --calib " + calib_txt() + test::kTinyCalib +
                          " --candidates 4,8x32,64 --bpw 7 -o " + out + " --text " + eval_txt() +
                          " --chunks 2 --eval-ctx 64";
  const std::string text = ok(cmd);
  EXPECT_NE(text.find("perplexity"), std::string::npos) << text;
  EXPECT_NE(text.find("KL(ref||q)"), std::string::npos) << text;
  nlohmann::json j = ok_json(cmd + " --force --json");
  if (!j.is_null()) {
    EXPECT_GT(j["ppl"].get<double>(), 1.0);
    EXPECT_GE(j["kld"].get<double>(), 0.0);
    EXPECT_EQ(j["tokens"].get<int>(), 2 * (64 - 32 - 1));
  }
  expect_loads(out, cmd);
  // Evaluating on the calibration file warns.
  const std::string w = ok("auto " + stories_gguf() + " --calib " + calib_txt() + test::kTinyCalib +
                           " --candidates 4x64 --reduction 50% -o " + dir + "/w --text " + calib_txt() + " --chunks 1 --eval-ctx 32");
  EXPECT_NE(w.find("warning"), std::string::npos) << w;
}

// --- families ---------------------------------------------------------------------------------

class CliFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(CliFamily, QuantizeProfileAuto) {
  const std::string src = family_model(GetParam());
  SKIP_WITHOUT_FAMILIES(src);
  const std::string dir = test::temp_dir();
  const std::string calib = " --calib " + calib_txt() + test::kTinyCalib;
  quantize_ok(src, dir + "/q4", "--bits 4 --group-size 32" + calib);
  quantize_ok(src, dir + "/q3", "--bits 3 --group-size 64 --method minmax --dtype bf16");
  quantize_ok(src, dir + "/q8", "--bits 8 --group-size 128 --dtype f16 --calib self" + test::kTinyCalib);
  quantize_ok(src, dir + "/q8", "--bits 2 --group-size 32 --force --calib " + calib_txt() + test::kTinyCalib);
  for (const char* method : {"fast", "exact", "both"})
    ok("profile " + src + calib + " --method " + method + " --candidates 4,8x64 --cache " + dir + "/" + method +
       ".json");
  auto_ok(src, dir + "/auto", "--bpw 6 --cache " + dir + "/fast.json --text " + eval_txt() + " --chunks 1 --eval-ctx 32");
  auto_ok(src, dir + "/auto_size", "--reduction 50% --cache " + dir + "/fast.json");
  // A quantized export runs.
  ok("generate " + dir + "/q4 -p 'Once upon' -n 4 --temp 0");
}

INSTANTIATE_TEST_SUITE_P(Tiny, CliFamily, ::testing::ValuesIn(kFamilies),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

// Phi-3's fused qkv_proj and gate_up_proj multiply the attention and MLP
// inputs: their importance is the mean squared activation there (not the head
// input, which has the same width).
class SiteRecorder : public ActivationObserver {
 public:
  std::vector<double> attn, mlp;
  int64_t n_attn = 0, n_mlp = 0;
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (layer != 1 || (site != Site::AttnIn && site != Site::MlpIn)) return;
    auto& s = site == Site::AttnIn ? attn : mlp;
    (site == Site::AttnIn ? n_attn : n_mlp) += n;
    if (s.empty()) s.assign(cols, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < cols; ++j) s[j] += static_cast<double>(x[i * cols + j]) * x[i * cols + j];
  }
};

TEST(Importance, Phi3FusedMatricesUseTheirInputs) {
  const std::string src = family_model("phi3");
  SKIP_WITHOUT_FAMILIES(src);
  Model m = load_model(src);
  bool fused = false;
  for (const auto& mod : quantizable_modules(m.config)) fused = fused || mod.kind == ModuleKind::QkvProj;
  ASSERT_TRUE(fused) << m.config.family << ": no fused qkv_proj";
  CalibrationOptions co;
  co.source = calib_txt();
  co.samples = 2;
  co.seq = 16;
  co.progress = false;
  const auto windows = calibration_windows(m, co);
  const ImportanceMap imp = collect_importance(m, windows, /*progress=*/false);

  SiteRecorder rec;
  Transformer tf(m, 16);
  tf.set_observer(&rec);
  std::vector<float> logits(m.config.vocab_size);
  for (const auto& w : windows) {
    tf.reset();
    tf.forward(w, logits.data(), static_cast<int64_t>(w.size()) - 1);
  }
  auto expect_mean = [&](const std::string& path, const std::vector<double>& sum, int64_t n) {
    auto it = imp.find(path);
    ASSERT_NE(it, imp.end()) << path << " has no importance";
    ASSERT_EQ(it->second.size(), sum.size()) << path;
    for (size_t j = 0; j < sum.size(); ++j)
      ASSERT_NEAR(it->second[j], sum[j] / n, 1e-5 * (1.0 + sum[j] / n)) << path << " channel " << j;
  };
  expect_mean("model.layers.1.self_attn.qkv_proj", rec.attn, rec.n_attn);
  expect_mean("model.layers.1.mlp.gate_up_proj", rec.mlp, rec.n_mlp);
  EXPECT_TRUE(imp.count("model.layers.1.self_attn.o_proj"));
  EXPECT_TRUE(imp.count("model.layers.1.mlp.down_proj"));
  EXPECT_TRUE(imp.count("lm_head"));
}

TEST(Importance, EveryLayerModuleOfStories) {
  // The collector sees the LayerIn site too; it must map exactly the modules' inputs.
  Model m = load_model(stories_gguf());
  CalibrationOptions co;
  co.source = calib_txt();
  co.samples = 2;
  co.seq = 16;
  co.progress = false;
  const ImportanceMap imp = collect_importance(m, calibration_windows(m, co), false);
  for (const auto& mod : quantizable_modules(m.config)) {
    if (mod.kind == ModuleKind::Embed && !m.config.tied_embeddings) continue;
    auto it = imp.find(mod.path);
    ASSERT_NE(it, imp.end()) << mod.path;
    EXPECT_EQ(static_cast<int64_t>(it->second.size()), mod.cols) << mod.path;
  }
}

// --- info -------------------------------------------------------------------------------------

// stories260K with 12 layers (blk.N repeats blk.N%5), tensors stored in
// lexicographic order (blk.10 before blk.2) to test the natural sort.
std::string write_deep_stories(const std::string& dir) {
  GgufFile src(stories_gguf());
  GgufWriter w;
  w.copy_metadata(src, [](std::string_view k) { return k != "llama.block_count"; });
  w.add_u32("llama.block_count", 12);
  std::vector<std::pair<std::string, size_t>> names;
  const auto& ts = src.tensors();
  for (size_t i = 0; i < ts.size(); ++i) {
    const std::string& n = ts[i].name;
    if (n.rfind("blk.", 0) != 0) {
      names.push_back({n, i});
      continue;
    }
    const size_t dot = n.find('.', 4);
    const int layer = std::stoi(n.substr(4, dot - 4));
    for (int l = layer; l < 12; l += 5) names.push_back({"blk." + std::to_string(l) + n.substr(dot), i});
  }
  std::sort(names.begin(), names.end());
  for (const auto& [name, i] : names) w.add_tensor_view(name, ts[i].dtype, ts[i].shape, ts[i].data, ts[i].nbytes);
  const std::string path = dir + "/deep.gguf";
  w.write(path);
  return path;
}

TEST(CliInfo, SummaryFirstTensorsOnRequest) {
  const std::string out = ok("info " + stories_gguf());
  EXPECT_NE(out.find("kind"), std::string::npos) << out;
  for (const char* kind : {"embedding", "attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "norms"})
    EXPECT_NE(out.find(kind), std::string::npos) << kind << "\n" << out;
  EXPECT_EQ(out.find("blk.0.attn_q.weight"), std::string::npos) << "per-tensor table without --tensors\n" << out;
  EXPECT_NE(out.find("bits/weight"), std::string::npos) << out;
  const std::string full = ok("info " + stories_gguf() + " --tensors");
  EXPECT_NE(full.find("blk.0.attn_q.weight"), std::string::npos) << full;
  EXPECT_LT(full.find("attn_q "), full.find("blk.0.attn_q.weight")) << "summary first\n" << full;
}

TEST(CliInfo, NaturalOrderAndJson) {
  const std::string dir = test::temp_dir();
  const std::string deep = write_deep_stories(dir);
  const std::string full = ok("info " + deep + " --tensors");
  const size_t p2 = full.find("blk.2.attn_q.weight"), p10 = full.find("blk.10.attn_q.weight"),
               p9 = full.find("blk.9.ffn_down.weight");
  ASSERT_NE(p2, std::string::npos) << full;
  ASSERT_NE(p10, std::string::npos) << full;
  EXPECT_LT(p2, p10) << full;
  EXPECT_LT(p9, p10) << full;

  nlohmann::json j = ok_json("info " + deep + " --json");
  ASSERT_FALSE(j.is_null());
  ASSERT_TRUE(j.contains("summary")) << j.dump().substr(0, 300);
  std::vector<std::string> names;
  for (const auto& t : j["tensors"]) names.push_back(t["name"]);
  auto pos = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) - names.begin(); };
  EXPECT_LT(pos("blk.2.attn_q.weight"), pos("blk.10.attn_q.weight"));
  EXPECT_LT(pos("blk.3.ffn_up.weight"), pos("blk.11.attn_k.weight"));
  int64_t params = 0, count_q = 0;
  size_t bytes = 0;
  for (const auto& r : j["summary"]) {
    params += r["parameters"].get<int64_t>();
    bytes += r["bytes"].get<size_t>();
    if (r["kind"] == "attn_q") count_q += r["count"].get<int64_t>();
    EXPECT_NEAR(r["bits_per_weight"].get<double>(), 8.0 * r["bytes"].get<double>() / r["parameters"].get<double>(), 1e-9);
  }
  EXPECT_EQ(count_q, 12);
  EXPECT_EQ(params, j["parameters"].get<int64_t>());  // an unquantized model: storage = parameters
  EXPECT_EQ(bytes, j["bytes"].get<size_t>());
}

TEST(CliInfo, SummaryOfQuantizedExport) {
  // Packed weight + scales + biases count as one matrix of its format, at its logical size.
  const std::string dir = test::temp_dir();
  quantize_ok(stories_gguf(), dir + "/q", "--bits 4 --group-size 32");
  nlohmann::json j = ok_json("info " + dir + "/q --json");
  ASSERT_FALSE(j.is_null());
  bool found = false;
  for (const auto& r : j["summary"])
    if (r["kind"] == "attn_q") {
      found = true;
      EXPECT_EQ(r["type"], "q4g32");
      EXPECT_EQ(r["count"].get<int>(), 5);
      EXPECT_EQ(r["parameters"].get<int64_t>(), 5 * 64 * 64);
      EXPECT_NEAR(r["bits_per_weight"].get<double>(), 4.0 + 32.0 / 32, 1e-9);  // fp16 scale + bias per 32
    }
  EXPECT_TRUE(found) << j["summary"].dump();
  const std::string out = ok("info " + dir + "/q");
  EXPECT_NE(out.find("q4g32"), std::string::npos) << out;
  EXPECT_EQ(out.find("self_attn.q_proj.scales"), std::string::npos) << out;
}

}  // namespace
}  // namespace optiq

namespace optiq {
namespace {

// Issue 9: running a GGUF costs at most its file + KV cache + ~50 MB. Gemma 3
// 270M is the hard case: a 262k vocabulary, and Q5_0/Q8_0 matrices next to
// Q4_K/Q6_K ones (its converted tensors' pages must leave RSS for good).
TEST(CliBench, GgufPeakRssWithinFilePlusKvCache) {
#ifdef OPTIQ_SANITIZED
  GTEST_SKIP() << "a memory bound: the sanitizer's shadow memory and quarantine are not the program's";
#endif
  int ran = 0;
  for (const char* name : {"smollm2-135m-instruct-q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"}) {
    const std::string path = test::cache_dir() + "/models/" + name;
    if (!test::file_exists(path)) continue;
    ++ran;
    nlohmann::json j = ok_json("bench " + path + " -p 300 -n 4 -r 1 --json");
    if (j.is_null()) continue;
    const double budget = j["file_mb"].get<double>() + j["kv_cache_mb"].get<double>() + 50.0;
    EXPECT_LE(j["peak_rss_mb"].get<double>(), budget) << name << ": " << j.dump();
  }
  if (ran == 0) GTEST_SKIP() << "no downloaded GGUF models (scripts/setup.sh fetches them)";
}

}  // namespace
}  // namespace optiq

namespace optiq {
namespace {

// --device: cpu always runs; cuda runs where a GPU is visible and is a one-line
// error (exit 1) otherwise; anything else is a command-line error (exit 2).
TEST(CliDevice, CpuCudaAndUnknown) {
  const std::string gen = "generate " + stories_gguf() + " -p 'Once upon a time' -n 8 --temp 0 ";
  const auto cpu = test::run_optiq(gen + "--device cpu", false);
  EXPECT_EQ(cpu.code, 0) << cpu.out;
  EXPECT_NE(cpu.out.find("there was"), std::string::npos) << cpu.out;
  const auto bench = test::run_optiq("bench " + stories_gguf() + " -p 16 -n 4 -r 1 --json --device cpu", false);
  ASSERT_EQ(bench.code, 0) << bench.out;
  EXPECT_EQ(nlohmann::json::parse(bench.out)["device"], "cpu");
  const auto cuda = test::run_optiq(gen + "--device cuda");
  if (cuda_backend() != nullptr) {
    EXPECT_EQ(cuda.code, 0) << cuda.out;
    EXPECT_NE(cuda.out.find("there was"), std::string::npos) << cuda.out;
  } else {
    EXPECT_EQ(cuda.code, 1) << cuda.out;
    EXPECT_NE(cuda.out.find("--device cuda: "), std::string::npos) << cuda.out;
    EXPECT_NE(cuda.out.find("--device cpu"), std::string::npos) << "says what to do: " << cuda.out;
  }
  const auto bad = test::run_optiq(gen + "--device tpu");
  EXPECT_EQ(bad.code, 2) << bad.out;
}

}  // namespace
}  // namespace optiq

// GGUF export from the command line: `quantize --format gguf`, `auto --format
// gguf`, `--target gguf` choosing GGUF candidates, and the errors for an
// unknown format or a plan GGUF cannot hold (stories260K).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "model/model.h"
#include "plan/budget.h"
#include "test_util.h"

namespace optiq {
namespace {

using test::stories;

TEST(CliGguf, QuantizeWritesAGgufThatLoads) {
  const std::string out = test::temp_dir() + "/s.gguf";
  test::RunResult r = test::run_optiq("quantize " + stories() + " --format gguf --bits 8 -o " + out + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["out"], out);
  const GgufFile g(out);
  EXPECT_EQ(g.find_tensor("blk.0.attn_q.weight")->dtype, DType::Q8_0);
  EXPECT_EQ(g.find_tensor("blk.0.ffn_down.weight")->dtype, DType::F16);  // 172 inputs: float
  EXPECT_NO_THROW(load_model(out));
  EXPECT_EQ(test::run_optiq("quantize " + stories() + " --format gguf -o " + out).code, 1);  // exists
  // --bits 4: Q4_K, which 64-wide rows cannot hold: llama.cpp's fallback Q5_0.
  EXPECT_EQ(test::run_optiq("quantize " + stories() + " --format gguf -o " + out + " --force").code, 0);
  EXPECT_EQ(GgufFile(out).find_tensor("blk.0.attn_q.weight")->dtype, DType::Q5_0);
  // Affine groups of 32 at 4 bits: Q4_1, losslessly.
  EXPECT_EQ(test::run_optiq("quantize " + stories() + " --format gguf --group-size 32 -o " + out + " --force").code, 0);
  EXPECT_EQ(GgufFile(out).find_tensor("blk.0.attn_q.weight")->dtype, DType::Q4_1);
}

TEST(CliGguf, UnknownFormatListsTheValidOnes) {
  test::RunResult r = test::run_optiq("quantize " + stories() + " --format onnx -o x");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("mlx"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("gguf"), std::string::npos) << r.out;
  EXPECT_EQ(test::run_optiq("profile " + stories() + " --calib x --target onnx").code, 2);
}

TEST(CliGguf, GroupsGgufCannotHoldAreAnErrorNamingTheTensor) {
  const std::string out = test::temp_dir() + "/g64.gguf";
  test::RunResult r = test::run_optiq("quantize " + stories() + " --format gguf --group-size 64 -o " + out);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("optiq: error: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("token_embd.weight"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--target gguf"), std::string::npos) << r.out;
  EXPECT_FALSE(test::file_exists(out));
}

// --target gguf picks llama.cpp's block types; auto --format gguf implies it.
TEST(CliGguf, TargetAndAuto) {
  const std::string dir = test::temp_dir();
  test::RunResult r = test::run_optiq("profile " + stories() + " --calib " + test::calib_excerpt() + test::kTinyCalib + " --target gguf --cache " + dir +
                          "/p.json");
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream in(dir + "/p.json");
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_NE(ss.str().find("gguf-q4_k"), std::string::npos);
  EXPECT_NE(ss.str().find("gguf-iq4_nl"), std::string::npos);
  EXPECT_EQ(ss.str().find("affine-q4-g64"), std::string::npos);

  r = test::run_optiq("auto " + stories() + " --calib " + test::calib_excerpt() + test::kTinyCalib + " --bpw 7 --format gguf -o " + dir + "/a.gguf");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(test::file_exists(dir + "/a.gguf.plan.json"));
  const GgufFile g(dir + "/a.gguf");
  EXPECT_TRUE(g.has("optiq.plan"));
  for (const auto& t : g.tensors())
    EXPECT_TRUE(t.dtype != DType::U32) << t.name;
  EXPECT_NO_THROW(load_model(dir + "/a.gguf"));
}

// GGUF plans keep llama.cpp's predicted decode time within --max-slowdown of
// its own file of the size (default 5% for GGUF candidates), and say so.
TEST(CliGguf, PlanBoundsLlamaCppDecodeSpeed) {
  const std::string dir = test::temp_dir();
  test::RunResult r = test::run_optiq("profile " + stories() + " --calib " + test::calib_excerpt() + test::kTinyCalib +
                          " --target gguf --cache " + dir + "/p.json");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string plan = "plan " + stories() + " --profile " + dir + "/p.json --bpw 8 --select predicted ";
  r = test::run_optiq(plan + "-o " + dir + "/a.json --json");
  ASSERT_EQ(r.code, 0) << r.out;
  nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j.contains("decode_speed")) << r.out;
  EXPECT_DOUBLE_EQ(j["decode_speed"]["bound_vs_reference"].get<double>(), 1.05);
  EXPECT_LE(j["decode_speed"]["predicted_vs_reference"].get<double>(), 1.05 + 1e-9);
  std::ifstream in(dir + "/a.json");
  const nlohmann::json file = nlohmann::json::parse(in);
  EXPECT_EQ(file["decode_speed"]["reference"].get<std::string>().rfind("llama.cpp ", 0), 0u) << file.dump();

  r = test::run_optiq(plan + "-o " + dir + "/b.json --max-slowdown 0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("decode        predicted"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bound 1.00x"), std::string::npos) << r.out;

  r = test::run_optiq(plan + "-o " + dir + "/c.json --json --max-slowdown off");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(nlohmann::json::parse(r.out).contains("decode_speed")) << r.out;

  r = test::run_optiq(plan + "-o " + dir + "/d.json --max-slowdown fast");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--max-slowdown fast"), std::string::npos) << r.out;
  EXPECT_FALSE(test::file_exists(dir + "/d.json"));
  r = test::run_optiq(plan + "-o " + dir + "/d.json --speed-table " + dir + "/p.json");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("ns_per_weight"), std::string::npos) << r.out;
}

// The candidate `source` on a GGUF source: what the plan keeps is the source's
// own blocks in the output, byte for byte, in its type, and the plan says so.
TEST(CliGguf, SourceCandidateCopiesTheSourceBlocks) {
  const std::string dir = test::temp_dir();
  {  // A mixed source: Q8_0, Q4_0, Q5_1, Q4_1, Q5_0 (and F16 on the 172-wide rows).
    std::ofstream plan(dir + "/mix.json");
    plan << R"({"default": {"gguf": "Q8_0"}, "tensors": {
      "model.layers.0.self_attn.q_proj": {"gguf": "Q4_0"},
      "model.layers.0.self_attn.k_proj": {"gguf": "Q5_1"},
      "model.layers.1.mlp.up_proj": {"gguf": "Q4_1"},
      "model.layers.2.self_attn.v_proj": {"gguf": "Q5_0"}}})";
  }
  const std::string src = dir + "/src.gguf";
  test::RunResult r = test::run_optiq("quantize " + stories() + " --format gguf --plan " + dir + "/mix.json -o " + src);
  ASSERT_EQ(r.code, 0) << r.out;
  // At the size of the source's own mix, keeping every tensor is the only
  // plan without damage (float costs more, q4_0 has error).
  const Model m = load_model(src, {.load_weights = false});
  const int64_t bytes = plan_bytes(m.config, PrecisionMap::uniform(m.config, parse_tensor_format("source")));
  const std::string out = dir + "/out.gguf";
  r = test::run_optiq("auto " + src + " --calib " + test::calib_excerpt() + test::kTinyCalib + " --candidates q4_0,source --size " +
          std::to_string(bytes) + "B --select predicted --max-slowdown off --format gguf -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  const GgufFile a(src), b(out);
  int kept = 0;
  for (const auto& t : a.tensors()) {
    if (t.shape.size() != 2 || !source_type_keepable(t.dtype)) continue;
    const TensorView* o = b.find_tensor(t.name);
    ASSERT_NE(o, nullptr) << t.name;
    EXPECT_EQ(o->dtype, t.dtype) << t.name;
    ASSERT_EQ(o->nbytes, t.nbytes) << t.name;
    EXPECT_EQ(std::memcmp(o->data, t.data, t.nbytes), 0) << t.name << ": not the source's bytes";
    ++kept;
  }
  EXPECT_GE(kept, 20);
  std::ifstream in(out + ".plan.json");
  const nlohmann::json plan = nlohmann::json::parse(in);
  EXPECT_EQ(plan["tensors"]["model.layers.0.self_attn.q_proj"], (nlohmann::json{{"gguf", "Q4_0"}, {"source", true}}))
      << plan.dump();
  EXPECT_EQ(plan["tensors"]["model.layers.1.mlp.up_proj"], (nlohmann::json{{"gguf", "Q4_1"}, {"source", true}}));
  const auto recorded = nlohmann::json::parse(b.get_string("optiq.plan"));
  EXPECT_EQ(recorded["tensors"]["model.layers.0.self_attn.k_proj"]["source"], true) << recorded.dump();
  EXPECT_NO_THROW(load_model(out));
}

// `source` where nothing can be kept: one line naming the model and what to do.
TEST(CliGguf, SourceCandidateBadUseIsAnError) {
  const std::string dir = test::temp_dir();
  auto one_line_error = [](const test::RunResult& r, const std::string& what) {
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_EQ(r.out.rfind("optiq: error: ", 0), 0u) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_NE(r.out.find(what), std::string::npos) << r.out;
  };
  const std::string profile = " --calib " + test::calib_excerpt() + test::kTinyCalib + " --candidates q8_0,source --cache ";
  // A GGUF of F32 matrices: no block type to keep.
  test::RunResult r = test::run_optiq("profile " + stories() + profile + dir + "/a.json");
  one_line_error(r, "no weight matrix of this GGUF is stored in a block type optiq can keep (they are F32");
  EXPECT_NE(r.out.find("drop 'source' from --candidates"), std::string::npos) << r.out;
  EXPECT_FALSE(test::file_exists(dir + "/a.json"));
  // Not a GGUF at all.
  ASSERT_EQ(test::run_optiq("quantize " + stories() + " --bits 8 --group-size 32 -o " + dir + "/mlx").code, 0);
  r = test::run_optiq("profile " + dir + "/mlx" + profile + dir + "/b.json");
  one_line_error(r, "the candidate 'source' keeps a tensor in the GGUF type its source file stores it in, but this "
                    "model is a Hugging Face directory, not a GGUF file");
  // A plan that keeps source blocks, applied to a model that has none.
  {
    std::ofstream plan(dir + "/keep.json");
    plan << R"({"default": {"gguf": "Q8_0"}, "tensors": {"model.layers.0.self_attn.q_proj": {"gguf": "Q8_0", "source": true}}})";
  }
  r = test::run_optiq("quantize " + stories() + " --format gguf --plan " + dir + "/keep.json -o " + dir + "/x.gguf");
  one_line_error(r, "model.layers.0.self_attn.q_proj: the plan keeps the tensor in its GGUF source's type, but this "
                    "model stores it as F32");
  EXPECT_FALSE(test::file_exists(dir + "/x.gguf"));
}

}  // namespace
}  // namespace optiq

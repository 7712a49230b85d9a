// Streamed exports (pipeline/export_step.h: each matrix quantized when the
// writer reaches it, in blocks of rows) write the same bytes as quantizing the
// whole model in memory and then saving it, in MLX and GGUF, with importance weighting and
// GPTQ; MLX shards load back to the same logits as one file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <future>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/sha256.h"
#include "model/provenance.h"
#include "model/exporter.h"
#include "model/calibration_stats.h"
#include "model/quantize_model.h"
#include "model/transformer.h"
#include "pipeline/export_step.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;

Model stories_model() { return load_model(test::shared_dir() + "/models/stories260K/stories260K.gguf"); }

// A plan mixing affine formats and floats, as planned models are.
PrecisionMap mixed_plan(const ModelConfig& c) {
  PrecisionMap map = PrecisionMap::uniform(c, {4, 32});
  int i = 0;
  for (const auto& mod : quantizable_modules(c)) {
    TensorFormat& f = map.formats[mod.path];
    if (i % 3 == 1 && format_fits(TensorFormat(AffineFormat{8, 64}), mod.cols)) f = TensorFormat(AffineFormat{8, 64});
    if (i % 5 == 2) f = std::nullopt;  // float
    ++i;
  }
  return map;
}

std::vector<std::vector<int32_t>> windows(const Model& m) {
  return {test::random_ids(48, m.config.vocab_size, 1), test::random_ids(48, m.config.vocab_size, 2)};
}

TEST(StreamedExport, MlxEqualsQuantizingInMemory) {
  for (const bool gptq : {false, true}) {
    Model ref = stories_model();
    const PrecisionMap map = mixed_plan(ref.config);
    const ImportanceMap importance = collect_importance(ref, windows(ref), false);
    const GramMap grams = gptq ? collect_grams(ref, windows(ref), false) : GramMap{};
    QuantizeModelOptions opt{.importance = &importance, .grams = gptq ? &grams : nullptr, .progress = false};
    const std::string dir = test::temp_dir();
    {
      Model m = stories_model();
      quantize_model(m, map, opt);
      make_exporter("mlx")->write(m, dir + "/memory", {});
    }
    Model m = stories_model();
    // Rounded in blocks of a few rows (the in-memory copy was rounded whole): the same bytes.
    QuantizeModelOptions blocks = opt;
    blocks.row_block_bytes = 4096;
    const ExportStepResult r = run_export_step(m, map, blocks, dir + "/streamed", {.progress = false});
    EXPECT_EQ(test::read_file(dir + "/streamed/model.safetensors"), test::read_file(dir + "/memory/model.safetensors")) << "gptq " << gptq;
    EXPECT_EQ(test::read_file(dir + "/streamed/config.json"), test::read_file(dir + "/memory/config.json"));
    EXPECT_GT(r.bits_per_weight(), 4.0);
    EXPECT_LT(r.bits_per_weight(), 16.0);
  }
}

TEST(StreamedExport, GgufEqualsQuantizingInMemory) {
  ModelConfig c = test::tiny("llama");
  c.dim = 256, c.hidden_dim = 512, c.head_dim = 64, c.n_heads = 4, c.n_kv_heads = 2;
  c.validate("wide llama");
  PrecisionMap map = PrecisionMap::uniform(c, parse_tensor_format("q4_k"));
  int i = 0;
  for (auto& [path, f] : map.formats) {
    const char* names[] = {"q4_k", "q6_k", "q8_0", "q3_k", "iq4_xs"};
    f = parse_tensor_format(names[i++ % 5]);
  }
  QuantizeModelOptions opt{.recipe = {.bf16_scales = false}, .progress = false};
  const std::string dir = test::temp_dir();
  auto model = [&] {
    Model m = test::random_model(c, 7, /*half=*/true);
    m.path = "wide";
    m.format = SourceFormat::Llama2c;  // not a file the exporter would re-read
    m.tokenizer = test::tiny_tokenizer(c.vocab_size);
    return m;
  };
  {
    Model m = model();
    quantize_model(m, map, opt);
    make_exporter("gguf")->write(m, dir + "/memory.gguf", {});
  }
  Model m = model();
  QuantizeModelOptions blocks = opt;
  blocks.row_block_bytes = 2048;  // two rows at a time
  run_export_step(m, map, blocks, dir + "/streamed.gguf", {.format = "gguf", .progress = false});
  const std::string a = test::read_file(dir + "/streamed.gguf"), b = test::read_file(dir + "/memory.gguf");
  EXPECT_GT(a.size(), 100000u);
  EXPECT_TRUE(a == b) << "the streamed GGUF differs from the in-memory one";
}

TEST(StreamedExport, MlxShardsLoadToTheSameLogits) {
  const std::string dir = test::temp_dir();
  Model m = stories_model();
  const PrecisionMap map = mixed_plan(m.config);
  run_export_step(m, map, {.progress = false}, dir + "/one", {.shard_bytes = 0, .progress = false});
  Model m2 = stories_model();
  run_export_step(m2, map, {.progress = false}, dir + "/shards", {.shard_bytes = 100000, .progress = false});
  EXPECT_TRUE(fs::exists(dir + "/shards/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir + "/shards/model-00001-of-00003.safetensors") ||
              fs::exists(dir + "/shards/model-00001-of-00004.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/shards/model.safetensors"));
  Model one = load_model(dir + "/one"), shards = load_model(dir + "/shards");
  EXPECT_EQ(one.precision.formats, shards.precision.formats);
  const auto ids = test::random_ids(20, one.config.vocab_size, 3);
  Transformer a(one), b(shards);
  EXPECT_EQ(a.forward_last(ids), b.forward_last(ids));
}

// An HF directory exported to MLX is read once (core/read_once_stream.h:
// O_DIRECT in file order, hashed as it is read): the same files as reading
// the matrices from the source's map, and the shards' digests are sha256sum's.
TEST(StreamedExport, HfSourceReadOnceEqualsMappedAndHashesEveryShard) {
  const std::string dir = test::temp_dir();
  {
    Model m = stories_model();
    PrecisionMap floats = PrecisionMap::uniform(m.config, {4, 32});
    for (auto& [path, f] : floats.formats) f = std::nullopt;
    run_export_step(m, floats, {.progress = false}, dir + "/hf", {.shard_bytes = 200000, .progress = false});
  }
  ASSERT_TRUE(fs::exists(dir + "/hf/model.safetensors.index.json"));
  const std::string src = dir + "/hf";
  auto export_to = [&](const std::string& out, const char* stream) {
    ::setenv("OPTIQ_SOURCE_STREAM", stream, 1);
    Model m = load_model(src);
    const nlohmann::json prov = provenance("quantize", source_record_pending(src), nlohmann::json::object());
    // As the CLI gives it for a directory: hashed only if asked.
    const auto source = std::async(std::launch::deferred, [&] { return source_record(src); }).share();
    const ExportStepResult r = run_export_step(m, mixed_plan(m.config), {.progress = false}, out,
                                               {.progress = false, .provenance = prov, .source = source});
    ::unsetenv("OPTIQ_SOURCE_STREAM");
    return r;
  };
  const ExportStepResult once = export_to(dir + "/read-once", "1");
  const ExportStepResult mapped = export_to(dir + "/mapped", "0");
  const int64_t n = static_cast<int64_t>(quantizable_modules(stories_model().config).size());
  ASSERT_TRUE(once.source_stream.has_value());
  EXPECT_EQ(once.source_stream->kept, n);  // floats too
  EXPECT_EQ(once.source_stream->passed, 0);
  EXPECT_FALSE(mapped.source_stream.has_value());
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir + "/mapped")) {
    ++files;
    EXPECT_TRUE(test::read_file(e.path().string()) ==
                test::read_file(dir + "/read-once/" + e.path().filename().string()))
        << e.path().filename();
  }
  EXPECT_GE(files, 3);
  const auto config = nlohmann::json::parse(test::read_file(dir + "/read-once/config.json"));
  int shards = 0;
  for (const auto& f : config.at("optiq").at("source").at("files")) {
    EXPECT_EQ(f.at("sha256"), sha256_file(src + "/" + f.at("name").get<std::string>())) << f.at("name");
    shards += f.at("name").get<std::string>().rfind("model-", 0) == 0;
  }
  EXPECT_GE(shards, 3);
}

TEST(StreamedExport, AnErrorLeavesNoOutput) {
  const std::string dir = test::temp_dir();
  Model m = stories_model();
  // Groups of 32 do not divide down_proj's 172 inputs: refused (a plan file can say so).
  PrecisionMap map = PrecisionMap::uniform(m.config, {4, 32});
  map.formats["model.layers.1.mlp.down_proj"] = TensorFormat(AffineFormat{4, 32});
  EXPECT_THROW(run_export_step(m, map, {.progress = false}, dir + "/out", {.progress = false}), Error);
  EXPECT_FALSE(fs::exists(dir + "/out"));
  for (const auto& e : fs::directory_iterator(dir)) ADD_FAILURE() << "left behind: " << e.path();
}

}  // namespace
}  // namespace optiq

namespace optiq {
namespace {

// A model large next to the memory releases each layer's mapped pages after
// using them (forced here): the logits do not change, pass after pass.
TEST(ReleaseWeights, LogitsUnchanged) {
  Model m = load_model(test::shared_dir() + "/models/stories260K/stories260K.gguf");
  const auto ids = test::random_ids(24, m.config.vocab_size, 5);
  std::vector<float> plain;
  {
    Transformer t(m);
    plain = t.forward_last(ids);
  }
  setenv("OPTIQ_RELEASE_WEIGHTS", "1", 1);
  Transformer t(m);
  const std::vector<float> first = t.forward_last(ids);
  t.reset();
  const std::vector<float> second = t.forward_last(ids);
  unsetenv("OPTIQ_RELEASE_WEIGHTS");
  EXPECT_EQ(first, plain);
  EXPECT_EQ(second, plain);
}

}  // namespace
}  // namespace optiq

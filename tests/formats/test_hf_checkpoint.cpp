// Hugging Face model directories: single-file and sharded checkpoints, and
// the ways a directory can be incomplete or inconsistent.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "formats/hf_checkpoint.h"
#include "formats/safetensors.h"
#include "test_util.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::vector<uint8_t> float_bytes(size_t n, uint32_t seed) {
  auto v = test::random_floats(n, seed);
  std::vector<uint8_t> b(n * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

const char* kConfig = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 6})";

// A sharded directory: embed + layer 0 in shard 1, layer 1 + norm in shard 2.
struct ShardedDir {
  std::string dir = test::temp_dir();
  std::vector<uint8_t> embed = float_bytes(7 * 6, 1), l0 = float_bytes(6 * 6, 2), l1 = float_bytes(5 * 6, 3),
                       norm = float_bytes(6, 4);
  std::string index = R"({"metadata": {"total_size": 476}, "weight_map": {
      "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
      "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",
      "model.layers.1.self_attn.q_proj.weight": "model-00002-of-00002.safetensors",
      "model.norm.weight": "model-00002-of-00002.safetensors"}})";
  ShardedDir() {
    write_text(dir + "/config.json", kConfig);
    write_text(dir + "/tokenizer.json", "{}");
    SafetensorsWriter a, b;
    a.add("model.embed_tokens.weight", DType::F32, {7, 6}, embed);
    a.add("model.layers.0.self_attn.q_proj.weight", DType::F32, {6, 6}, l0);
    a.set_metadata("format", "pt");
    a.write(dir + "/model-00001-of-00002.safetensors");
    b.add("model.layers.1.self_attn.q_proj.weight", DType::F32, {5, 6}, l1);
    b.add("model.norm.weight", DType::F32, {6}, norm);
    b.write(dir + "/model-00002-of-00002.safetensors");
    write_text(dir + "/model.safetensors.index.json", index);
  }
};

void expect_error(const std::string& dir, const std::string& needle) {
  try {
    HfCheckpoint c(dir);
    ADD_FAILURE() << "accepted " << dir;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind(dir, 0), 0u) << msg;  // names the directory or a file in it
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(HfCheckpoint, Sharded) {
  ShardedDir d;
  HfCheckpoint c(d.dir);
  EXPECT_EQ(c.dir(), d.dir);
  EXPECT_EQ(c.config().at("hidden_size"), 6);
  EXPECT_EQ(c.files().size(), 2u);
  ASSERT_EQ(c.tensors().size(), 4u);
  for (size_t i = 1; i < c.tensors().size(); ++i) EXPECT_LT(c.tensors()[i - 1].name, c.tensors()[i].name);
  auto expect = [&](const char* name, std::vector<int64_t> shape, const std::vector<uint8_t>& bytes, const char* shard) {
    const TensorView* t = c.find_tensor(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->shape, shape);
    ASSERT_EQ(t->nbytes, bytes.size());
    EXPECT_EQ(std::memcmp(t->data, bytes.data(), bytes.size()), 0) << name;
    ASSERT_NE(c.file_of(name), nullptr);
    EXPECT_EQ(fs::path(c.file_of(name)->path()).filename(), shard);
  };
  expect("model.embed_tokens.weight", {7, 6}, d.embed, "model-00001-of-00002.safetensors");
  expect("model.layers.0.self_attn.q_proj.weight", {6, 6}, d.l0, "model-00001-of-00002.safetensors");
  expect("model.layers.1.self_attn.q_proj.weight", {5, 6}, d.l1, "model-00002-of-00002.safetensors");
  expect("model.norm.weight", {6}, d.norm, "model-00002-of-00002.safetensors");
  EXPECT_EQ(c.find_tensor("lm_head.weight"), nullptr);
  EXPECT_EQ(c.file_of("lm_head.weight"), nullptr);
  EXPECT_TRUE(c.has_file("tokenizer.json"));
  EXPECT_TRUE(c.has_file("config.json"));
  EXPECT_FALSE(c.has_file("tokenizer.model"));
  EXPECT_FALSE(c.has_file(""));
}

TEST(HfCheckpoint, SingleFile) {
  const std::string dir = test::temp_dir();
  write_text(dir + "/config.json", kConfig);
  auto w = float_bytes(3 * 5, 9);
  SafetensorsWriter sw;
  sw.add("lm_head.weight", DType::F32, {3, 5}, w);
  sw.write(dir + "/model.safetensors");
  HfCheckpoint c(dir);
  ASSERT_EQ(c.tensors().size(), 1u);
  EXPECT_EQ(c.tensors()[0].name, "lm_head.weight");
  EXPECT_EQ(std::memcmp(c.tensors()[0].data, w.data(), w.size()), 0);
  EXPECT_FALSE(c.has_file("tokenizer.json"));
}

TEST(HfCheckpoint, MissingShard) {
  ShardedDir d;
  fs::remove(d.dir + "/model-00002-of-00002.safetensors");
  expect_error(d.dir, "model-00002-of-00002.safetensors: shard listed in model.safetensors.index.json is missing");
}

TEST(HfCheckpoint, TensorNotInItsShard) {
  ShardedDir d;
  std::string idx = d.index;
  idx.replace(idx.find("\"model.norm.weight\": \"model-00002"), std::strlen("\"model.norm.weight\": \"model-00002"),
              "\"model.norm.weight\": \"model-00001");
  write_text(d.dir + "/model.safetensors.index.json", idx);
  expect_error(d.dir, "tensor model.norm.weight is mapped to model-00001-of-00002.safetensors");
}

TEST(HfCheckpoint, TensorInTwoShards) {
  ShardedDir d;
  SafetensorsWriter b;
  b.add("model.layers.1.self_attn.q_proj.weight", DType::F32, {5, 6}, d.l1);
  b.add("model.norm.weight", DType::F32, {6}, d.norm);
  b.add("model.embed_tokens.weight", DType::F32, {7, 6}, d.embed);
  b.write(d.dir + "/model-00002-of-00002.safetensors");
  expect_error(d.dir, "tensor model.embed_tokens.weight is in both");
}

TEST(HfCheckpoint, BadIndexes) {
  ShardedDir d;
  const std::string ip = d.dir + "/model.safetensors.index.json";
  write_text(ip, "{\"weight_map\": ");
  expect_error(d.dir, "model.safetensors.index.json: not valid JSON");
  write_text(ip, "[]");
  expect_error(d.dir, "not a JSON object");
  write_text(ip, R"({"metadata": {}})");
  expect_error(d.dir, "weight_map is missing");
  write_text(ip, R"({"weight_map": {}})");
  expect_error(d.dir, "weight_map is empty");
  write_text(ip, R"({"weight_map": {"a": 3}})");
  expect_error(d.dir, "is not a file name");
  write_text(ip, R"({"weight_map": {"a": "../model-00001-of-00002.safetensors"}})");
  expect_error(d.dir, "not a file in the directory");
  write_text(ip, R"({"weight_map": {"a": "/etc/passwd"}})");
  expect_error(d.dir, "not a file in the directory");
  write_text(ip, R"({"weight_map": {"a": "../../etc/passwd"}})");
  expect_error(d.dir, "names \"../../etc/passwd\", which is not a file in the directory");
  write_text(ip, R"({"weight_map": {"a": ".."}})");
  expect_error(d.dir, "not a file in the directory");
  write_text(ip, R"({"weight_map": {"a": "sub\\..\\x"}})");
  expect_error(d.dir, "not a file in the directory");
  // A damaged shard is reported with the shard's path.
  write_text(ip, d.index);
  write_text(d.dir + "/model-00002-of-00002.safetensors", "garbage");
  expect_error(d.dir, "model-00002-of-00002.safetensors: file is 7 bytes");
}

// Shards that are symlinks: allowed to point anywhere (Hugging Face's hub
// cache links snapshots/<rev>/*.safetensors to ../../blobs/<hash>), but the
// target must be a regular file: a link to a device or a FIFO would stream
// without end, and a dangling link is a missing shard.
TEST(HfCheckpoint, SymlinkedShards) {
  ShardedDir d;
  const std::string shard2 = d.dir + "/model-00002-of-00002.safetensors";
  const std::string blobs = test::temp_dir();
  fs::rename(shard2, blobs + "/blob");
  fs::create_symlink(blobs + "/blob", shard2);
  HfCheckpoint c(d.dir);
  EXPECT_NE(c.find_tensor("model.norm.weight"), nullptr);

  fs::remove(shard2);
  fs::create_symlink("/dev/zero", shard2);
  expect_error(d.dir, "model-00002-of-00002.safetensors: shard listed in model.safetensors.index.json is not a "
               "regular file");
  fs::remove(shard2);
  fs::create_symlink(blobs + "/gone", shard2);
  expect_error(d.dir, "model-00002-of-00002.safetensors: shard listed in model.safetensors.index.json is missing");

  // The same for a single model.safetensors.
  const std::string dir = test::temp_dir();
  write_text(dir + "/config.json", kConfig);
  fs::create_symlink("/dev/zero", dir + "/model.safetensors");
  expect_error(dir, "model.safetensors: not a regular file");
}

TEST(HfCheckpoint, MissingPieces) {
  const std::string dir = test::temp_dir();
  expect_error(dir, "config.json is missing");
  write_text(dir + "/config.json", "{\"a\": }");
  expect_error(dir, "config.json: not valid JSON");
  write_text(dir + "/config.json", "[1]");
  expect_error(dir, "config.json: not a JSON object");
  write_text(dir + "/config.json", kConfig);
  expect_error(dir, "no model.safetensors or model.safetensors.index.json");
  expect_error(dir + "/nonexistent", "not a directory");
}

}  // namespace
}  // namespace optiq

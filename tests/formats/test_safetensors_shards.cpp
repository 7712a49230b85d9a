// The streaming safetensors writer: tensors made by their fill functions in
// the order added, cut into Hugging Face style shards with an index, each
// shard read back by the reader; a failing fill leaves no file behind.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "formats/safetensors.h"
#include "formats/safetensors_shards.h"
#include "test_util.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;

// n float32 values k*1000 + i, made when the writer asks.
SafetensorsShardWriter::Fill floats(int k, int64_t n) {
  return [k, n](uint8_t* dst) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(k * 1000 + i) + 0.5f;
      std::memcpy(dst + i * 4, &v, 4);
    }
  };
}

void expect_values(const TensorView& t, int k) {
  const float* v = static_cast<const float*>(t.data);
  for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(v[i], static_cast<float>(k * 1000 + i) + 0.5f) << t.name << " " << i;
}

std::vector<std::string> dir_files(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(SafetensorsShards, CutsBetweenTensorsAndIndexesThem) {
  SafetensorsShardWriter w;
  // 400 + 400 + 1200 (larger than a shard: alone) + 40 + 400 bytes, shards of 1000.
  const int64_t sizes[] = {100, 100, 300, 10, 100};
  for (int k = 0; k < 5; ++k) w.add("t" + std::to_string(k), DType::F32, {sizes[k]}, floats(k, sizes[k]));
  w.set_metadata("format", "mlx");
  const std::string dir = test::temp_dir();
  const auto files = w.write(dir, 1000);
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0], "model-00001-of-00003.safetensors");
  EXPECT_EQ(files[2], "model-00003-of-00003.safetensors");
  EXPECT_EQ(dir_files(dir), (std::vector<std::string>{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                                      "model-00003-of-00003.safetensors", "model.safetensors.index.json"}));
  std::ifstream in(dir + "/model.safetensors.index.json");
  const auto index = nlohmann::json::parse(in);
  EXPECT_EQ(index["metadata"]["total_size"], 4 * (100 + 100 + 300 + 10 + 100));
  const std::map<std::string, std::string> want = {{"t0", files[0]}, {"t1", files[0]}, {"t2", files[1]},
                                                   {"t3", files[2]}, {"t4", files[2]}};
  EXPECT_EQ(index["weight_map"].get<decltype(want)>(), want);
  for (const auto& [name, file] : want) {
    SafetensorsFile f(dir + "/" + file);
    const TensorView* t = f.find_tensor(name);
    ASSERT_NE(t, nullptr) << name;
    expect_values(*t, name[1] - '0');
    EXPECT_EQ(f.metadata().at("format"), "mlx");
  }
}

TEST(SafetensorsShards, OneFileWhenItFits) {
  SafetensorsShardWriter w;
  w.add("b", DType::F32, {3, 5}, floats(1, 15));
  w.add("a", DType::F32, {7}, floats(2, 7));
  const std::string dir = test::temp_dir();
  EXPECT_EQ(w.write(dir, 0), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(dir_files(dir), std::vector<std::string>{"model.safetensors"});
  SafetensorsFile f(dir + "/model.safetensors");
  ASSERT_EQ(f.tensors().size(), 2u);
  expect_values(*f.find_tensor("b"), 1);
  expect_values(*f.find_tensor("a"), 2);
  EXPECT_EQ(f.find_tensor("b")->shape, (std::vector<int64_t>{3, 5}));
}

// Metadata known only at the end (the source's digests, hashed while the
// export runs): laid out first, written over in place once every tensor is;
// tensors given as views are written from where they lie.
TEST(SafetensorsShards, FinalMetadataIsWrittenOverTheLaidOutOne) {
  for (uint64_t shard : {uint64_t{0}, uint64_t{1000}}) {
    SafetensorsShardWriter w;
    std::vector<float> lying(300);
    for (int64_t i = 0; i < 300; ++i) lying[i] = static_cast<float>(2 * 1000 + i) + 0.5f;
    w.add("t0", DType::F32, {100}, floats(0, 100));
    w.add("t1", DType::F32, {100}, floats(1, 100));
    w.add("t2", DType::F32, {300}, [&] { return reinterpret_cast<const uint8_t*>(lying.data()); }, floats(9, 300));
    w.set_metadata("optiq.source", std::string(64, '0'));
    const std::string digest = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    w.set_final_metadata([&] { return std::map<std::string, std::string>{{"optiq.source", digest}}; });
    const std::string dir = test::temp_dir();
    for (const auto& file : w.write(dir, shard)) {
      SafetensorsFile f(dir + "/" + file);
      EXPECT_EQ(f.metadata().at("optiq.source"), digest) << file;
      for (const auto& t : f.tensors()) expect_values(t, t.name[1] - '0');
    }
  }
  SafetensorsShardWriter w;
  w.add("t0", DType::F32, {10}, floats(0, 10));
  w.set_metadata("k", "short");
  w.set_final_metadata([] { return std::map<std::string, std::string>{{"k", "longer than that"}}; });
  EXPECT_THROW(w.write(test::temp_dir(), 0), Error);
}

TEST(SafetensorsShards, AFailingFillLeavesNoFile) {
  SafetensorsShardWriter w;
  w.add("ok", DType::F32, {4}, floats(0, 4));
  w.add("bad", DType::F32, {4}, [](uint8_t*) { throw std::runtime_error("no more"); });
  const std::string dir = test::temp_dir();
  EXPECT_THROW(w.write(dir, 0), std::runtime_error);
  EXPECT_TRUE(dir_files(dir).empty()) << "a temporary or partial file was left";
}

TEST(SafetensorsShards, RefusesBadEntries) {
  SafetensorsShardWriter w;
  w.add("x", DType::F32, {2}, floats(0, 2));
  EXPECT_THROW(w.add("x", DType::F32, {2}, floats(0, 2)), Error);
  EXPECT_THROW(w.add("", DType::F32, {2}, floats(0, 2)), Error);
  EXPECT_THROW(w.add("q", DType::Q4_K, {256}, floats(0, 2)), Error);  // no safetensors dtype
  EXPECT_THROW(w.add("y", DType::F32, {-1}, floats(0, 2)), Error);
}

TEST(AtomicFile, CommitsOrLeavesNothing) {
  const std::string dir = test::temp_dir();
  const std::string path = dir + "/out.bin";
  {
    AtomicFile f(path);
    f.write("abc");
    f.pad_to(8);
    EXPECT_EQ(f.pos(), 8u);
    EXPECT_FALSE(fs::exists(path)) << "visible before commit";
  }  // destroyed uncommitted
  EXPECT_TRUE(dir_files(dir).empty());
  {
    AtomicFile f(path);
    std::string big(3 << 20, 'x');  // past the buffer: written straight through
    f.write("head");
    f.write(big);
    f.commit();
  }
  EXPECT_EQ(fs::file_size(path), 4u + (3u << 20));
  EXPECT_EQ(dir_files(dir), std::vector<std::string>{"out.bin"});
  EXPECT_THROW(AtomicFile(dir + "/no/such/dir/x"), Error);
}

}  // namespace
}  // namespace optiq

// llama2.c version-0 checkpoints: the shared stories260K model, synthetic
// tied/untied checkpoints whose every float says where it came from, and
// damaged headers and sizes.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "formats/llama2c.h"
#include "test_util.h"

namespace optiq {
namespace {

void write_file(const std::string& path, const std::vector<int32_t>& header, const std::vector<float>& data,
                size_t extra_bytes = 0) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(header.size() * 4));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * 4));
  for (size_t i = 0; i < extra_bytes; ++i) out.put('\x5a');
}

void expect_refused(const std::string& path, const std::string& needle) {
  try {
    Llama2cCheckpoint c(path);
    ADD_FAILURE() << "accepted " << path;
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(Llama2c, Stories260K) {
  const std::string path = test::shared_dir() + "/models/stories260K/stories260K.bin";
  if (!test::file_exists(path)) GTEST_SKIP() << path << " not found";
  Llama2cCheckpoint c(path);
  const auto& h = c.header();
  EXPECT_EQ(h.dim, 64);
  EXPECT_EQ(h.hidden_dim, 172);
  EXPECT_EQ(h.n_layers, 5);
  EXPECT_EQ(h.n_heads, 8);
  EXPECT_EQ(h.n_kv_heads, 4);
  EXPECT_EQ(h.vocab_size, 512);
  EXPECT_EQ(h.seq_len, 512);
  EXPECT_TRUE(h.shared_classifier);
  EXPECT_EQ(c.tensors().size(), 1u + 5 * 9 + 1);
  EXPECT_EQ(c.find_tensor("lm_head.weight"), nullptr);
  const TensorView* e = c.find_tensor("model.embed_tokens.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(c.find_tensor("model.layers.4.self_attn.k_proj.weight")->shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(c.find_tensor("model.layers.4.mlp.down_proj.weight")->shape, (std::vector<int64_t>{64, 172}));
  // The embedding starts right after the header.
  std::ifstream in(path, std::ios::binary);
  in.seekg(28);
  float first[4];
  in.read(reinterpret_cast<char*>(first), sizeof first);
  EXPECT_EQ(std::memcmp(e->data, first, sizeof first), 0);
  // RMSNorm weights of a trained model are all around 1, never garbage.
  const float* norm = static_cast<const float*>(c.find_tensor("model.norm.weight")->data);
  for (int i = 0; i < 64; ++i) EXPECT_TRUE(norm[i] > -10.0f && norm[i] < 10.0f && norm[i] != 0.0f) << i;
}

struct Synthetic {
  int dim = 8, hidden = 12, layers = 2, heads = 2, kv_heads = 1, vocab = 10, seq = 4;
  bool tied = true;
  std::vector<int32_t> header() const { return {dim, hidden, layers, heads, kv_heads, tied ? vocab : -vocab, seq}; }
  size_t n_floats() const {
    size_t kv = static_cast<size_t>(dim / heads * kv_heads);
    size_t n = static_cast<size_t>(vocab) * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim) +
               dim + 2 * seq * (dim / heads / 2);
    return tied ? n : n + static_cast<size_t>(vocab) * dim;
  }
  // Float k holds k + 0.5: never zero, and says where it is.
  std::vector<float> data() const {
    std::vector<float> v(n_floats());
    for (size_t k = 0; k < v.size(); ++k) v[k] = static_cast<float>(k) + 0.5f;
    return v;
  }
};

float first(const Llama2cCheckpoint& c, const std::string& name) {
  const TensorView* t = c.find_tensor(name);
  if (!t) ADD_FAILURE() << name << " missing";
  return t ? static_cast<const float*>(t->data)[0] : -1.0f;
}

TEST(Llama2c, SyntheticLayout) {
  for (bool tied : {true, false}) {
    Synthetic s;
    s.tied = tied;
    const std::string path = test::temp_dir() + "/s.bin";
    write_file(path, s.header(), s.data());
    Llama2cCheckpoint c(path);
    EXPECT_EQ(c.header().vocab_size, 10);
    EXPECT_EQ(c.header().shared_classifier, tied);
    EXPECT_EQ(c.tensors().size(), 1u + 2 * 9 + 1 + (tied ? 0 : 1));
    const int D = 8, H = 12, L = 2, KV = 4, V = 10;
    float o = 0.5f;  // running offset + 0.5
    EXPECT_EQ(first(c, "model.embed_tokens.weight"), o);
    o += V * D;
    for (int i = 0; i < L; ++i) EXPECT_EQ(first(c, "model.layers." + std::to_string(i) + ".input_layernorm.weight"), o + i * D);
    o += L * D;
    for (int i = 0; i < L; ++i) EXPECT_EQ(first(c, "model.layers." + std::to_string(i) + ".self_attn.q_proj.weight"), o + i * D * D);
    o += L * D * D;
    for (int i = 0; i < L; ++i) EXPECT_EQ(first(c, "model.layers." + std::to_string(i) + ".self_attn.k_proj.weight"), o + i * KV * D);
    o += L * KV * D;
    for (int i = 0; i < L; ++i) EXPECT_EQ(first(c, "model.layers." + std::to_string(i) + ".self_attn.v_proj.weight"), o + i * KV * D);
    o += L * KV * D;
    for (int i = 0; i < L; ++i) EXPECT_EQ(first(c, "model.layers." + std::to_string(i) + ".self_attn.o_proj.weight"), o + i * D * D);
    o += L * D * D;
    for (int i = 0; i < L; ++i) EXPECT_EQ(first(c, "model.layers." + std::to_string(i) + ".post_attention_layernorm.weight"), o + i * D);
    o += L * D;
    for (int i = 0; i < L; ++i) EXPECT_EQ(first(c, "model.layers." + std::to_string(i) + ".mlp.gate_proj.weight"), o + i * H * D);
    o += L * H * D;
    for (int i = 0; i < L; ++i) EXPECT_EQ(first(c, "model.layers." + std::to_string(i) + ".mlp.down_proj.weight"), o + i * D * H);
    o += L * D * H;
    for (int i = 0; i < L; ++i) EXPECT_EQ(first(c, "model.layers." + std::to_string(i) + ".mlp.up_proj.weight"), o + i * H * D);
    o += L * H * D;
    EXPECT_EQ(first(c, "model.norm.weight"), o);
    o += D + 2 * 4 * (D / 2 / 2);
    if (!tied) {
      EXPECT_EQ(first(c, "lm_head.weight"), o);
      const TensorView* t = c.find_tensor("lm_head.weight");
      EXPECT_EQ(static_cast<const float*>(t->data)[V * D - 1], o + V * D - 1);  // last float of the file
    } else {
      EXPECT_EQ(c.find_tensor("lm_head.weight"), nullptr);
    }
    const auto* k = c.find_tensor("model.layers.1.self_attn.k_proj.weight");
    EXPECT_EQ(k->shape, (std::vector<int64_t>{4, 8}));
    EXPECT_EQ(k->nbytes, 4u * 8 * 4);
    EXPECT_EQ(c.find_tensor("model.layers.0.mlp.down_proj.weight")->shape, (std::vector<int64_t>{8, 12}));
  }
}

TEST(Llama2c, WrongSizes) {
  Synthetic s;
  const std::string dir = test::temp_dir();
  auto data = s.data();
  write_file(dir + "/plus1.bin", s.header(), data, 1);
  expect_refused(dir + "/plus1.bin", "trailing data");
  write_file(dir + "/plus4.bin", s.header(), data, 4);
  expect_refused(dir + "/plus4.bin", "trailing data");
  for (size_t cut : {size_t{1}, size_t{2}, data.size() / 2, data.size()}) {
    write_file(dir + "/short.bin", s.header(), std::vector<float>(data.begin(), data.end() - static_cast<long>(cut)));
    expect_refused(dir + "/short.bin", "truncated");
  }
  // Untied header on a tied file: the classifier is missing.
  auto h = s.header();
  h[5] = -h[5];
  write_file(dir + "/untied.bin", h, data);
  expect_refused(dir + "/untied.bin", "untied classifier");
  // Files shorter than the header.
  for (int n : {0, 1, 27}) {
    std::ofstream(dir + "/tiny.bin", std::ios::binary).write("abcdefghijklmnopqrstuvwxyz01", n);
    expect_refused(dir + "/tiny.bin", "too small");
  }
}

TEST(Llama2c, BadHeaders) {
  Synthetic s;
  const std::string dir = test::temp_dir();
  const auto data = s.data();
  auto with = [&](int field, int32_t value, const std::string& needle) {
    auto h = s.header();
    h[field] = value;
    write_file(dir + "/h.bin", h, data);
    expect_refused(dir + "/h.bin", needle);
  };
  with(0, 0, "dim = 0 must be positive");
  with(0, -8, "dim = -8 must be positive");
  with(1, 0, "hidden_dim = 0");
  with(2, -1, "n_layers = -1");
  with(3, 0, "n_heads = 0");
  with(4, 0, "n_kv_heads = 0");
  with(5, 0, "vocab_size = 0");
  with(5, INT32_MIN, "vocab_size");
  with(6, 0, "seq_len = 0");
  with(3, 3, "not a multiple of n_heads");
  with(4, 2, "");  // 2 kv heads of 4: fine header, wrong size
  with(4, 3, "does not divide");
  with(4, 4, "does not divide");  // more kv heads than heads
  with(3, 4, "bytes");            // 4 heads of 2, 1 kv head: valid header, wrong size
  with(3, 8, "odd");              // head size 1
  with(0, 2147483646, "");        // huge: absurd or size mismatch, never a crash
  with(1, 2147483647, "");
  with(2, 2147483647, "");
  with(5, -2147483647, "");
  // The newer export formats.
  std::vector<int32_t> v1 = {0x616b3432, 1, 8, 12, 2, 2, 1};
  write_file(dir + "/v1.bin", v1, data);
  expect_refused(dir + "/v1.bin", "version 1");
}

}  // namespace
}  // namespace optiq

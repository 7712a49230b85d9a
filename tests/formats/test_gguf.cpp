// GgufFile / GgufWriter: round trip of every value and tensor type, typed
// getters, and the real stories260K file from ../shared.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "quant/ggml_dequant.h"
#include "test_util.h"

namespace optiq {
namespace {

using VT = GgufValue::Type;

using test::random_bytes;

struct Spec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

const std::vector<Spec>& specs() {
  static const std::vector<Spec> s = {
      {"f32_1d", DType::F32, {37}},           {"f16", DType::F16, {7, 13}},
      {"bf16", DType::BF16, {5, 11}},         {"q8_0", DType::Q8_0, {3, 96}},
      {"q8_0_3d", DType::Q8_0, {2, 3, 64}},   {"q4_0", DType::Q4_0, {2, 64}},
      {"q4_1", DType::Q4_1, {3, 32}},         {"q5_0", DType::Q5_0, {1, 32}},
      {"q5_1", DType::Q5_1, {2, 32}},         {"q2_k", DType::Q2_K, {1, 256}},
      {"q3_k", DType::Q3_K, {2, 256}},        {"q4_k", DType::Q4_K, {1, 512}},
      {"q5_k", DType::Q5_K, {1, 256}},        {"q6_k", DType::Q6_K, {3, 256}},
      {"blk.0.last", DType::F32, {3, 32}},  // 384 bytes: the file ends exactly at its end
  };
  return s;
}

void fill_writer(GgufWriter& w) {
  w.add_string("general.architecture", "llama");
  w.add_string("general.name", "optiq \"test\"\nmodel");
  w.add_int("t.u8", 200, VT::U8);
  w.add_int("t.i8", -100, VT::I8);
  w.add_int("t.u16", 65000, VT::U16);
  w.add_int("t.i16", -32000, VT::I16);
  w.add_u32("t.u32", 4000000000u);
  w.add_i32("t.i32", -2000000000);
  w.add_int("t.u64", int64_t{1} << 62, VT::U64);
  w.add_int("t.i64", -(int64_t{1} << 62), VT::I64);
  w.add_float("t.f32", 0.1);
  w.add_float("t.f64", 1.0 / 3.0, VT::F64);
  w.add_bool("t.bool", true);
  w.add_string_array("t.strs", {"a", "", "ccc", std::string("nul\0in", 6)});
  w.add_float_array("t.floats", {0.5f, -1.25f, 3e-8f});
  w.add_int_array("t.ints", {1, -2, 3});
  w.add_int_array("t.u64s", {5, 6}, VT::U64);
  w.add("t.nested", GgufValue::make_array_array({GgufValue::make_int_array(VT::I16, {1, 2}),
                                                 GgufValue::make_int_array(VT::I16, {-3})}));
  w.add_string_array("t.empty", {});
  for (size_t k = 0; k < specs().size(); ++k) {
    const Spec& s = specs()[k];
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    w.add_tensor(s.name, s.dtype, s.shape, random_bytes(dtype_bytes(s.dtype, n), 100 + static_cast<uint32_t>(k)));
  }
}

std::string write_test_file(const std::string& dir) {
  GgufWriter w;
  fill_writer(w);
  std::string path = dir + "/test.gguf";
  w.write(path);
  return path;
}

TEST(Gguf, RoundTripMetadata) {
  std::string path = write_test_file(test::temp_dir());
  GgufFile g(path);
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.path(), path);
  EXPECT_EQ(g.metadata().size(), 19u);
  EXPECT_EQ(g.metadata()[0].first, "general.architecture");  // file order
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_string("general.name"), "optiq \"test\"\nmodel");
  EXPECT_EQ(g.get_int("t.u8"), 200);
  EXPECT_EQ(g.get_int("t.i8"), -100);
  EXPECT_EQ(g.get_int("t.u16"), 65000);
  EXPECT_EQ(g.get_int("t.i16"), -32000);
  EXPECT_EQ(g.get_int("t.u32"), 4000000000LL);
  EXPECT_EQ(g.get_int("t.i32"), -2000000000LL);
  EXPECT_EQ(g.get_int("t.u64"), int64_t{1} << 62);
  EXPECT_EQ(g.get_int("t.i64"), -(int64_t{1} << 62));
  EXPECT_EQ(g.find_meta("t.u8")->type, VT::U8);
  EXPECT_EQ(g.find_meta("t.u64")->type, VT::U64);
  EXPECT_FLOAT_EQ(static_cast<float>(g.get_float("t.f32")), 0.1f);
  EXPECT_DOUBLE_EQ(g.get_float("t.f64"), 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(g.get_float("t.u16"), 65000.0);  // ints are accepted as floats
  EXPECT_TRUE(g.get_bool_or("t.bool", false));
  EXPECT_TRUE(g.get_bool_or("missing", true));
  EXPECT_EQ(g.get_int_or("missing", 7), 7);
  EXPECT_DOUBLE_EQ(g.get_float_or("missing", 2.5), 2.5);
  EXPECT_EQ(g.get_string_array("t.strs"), (std::vector<std::string>{"a", "", "ccc", std::string("nul\0in", 6)}));
  EXPECT_EQ(g.string_array_ref("t.strs").size(), 4u);
  EXPECT_EQ(g.get_float_array("t.floats"), (std::vector<float>{0.5f, -1.25f, 3e-8f}));
  EXPECT_EQ(g.get_int_array("t.ints"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(g.get_float_array("t.ints"), (std::vector<float>{1, -2, 3}));
  EXPECT_EQ(g.find_meta("t.ints")->elem_type, VT::I32);
  EXPECT_EQ(g.find_meta("t.u64s")->elem_type, VT::U64);
  const GgufValue* nested = g.find_meta("t.nested");
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->size(), 2u);
  EXPECT_EQ(nested->arrays[1].ints, (std::vector<int64_t>{-3}));
  EXPECT_EQ(nested->element(0).elem_type, VT::I16);
  EXPECT_EQ(g.get_string_array("t.empty").size(), 0u);
  EXPECT_TRUE(g.has("t.bool"));
  EXPECT_FALSE(g.has("t.nope"));
  EXPECT_EQ(g.find_meta("t.nope"), nullptr);

  EXPECT_EQ(g.metadata_to_string(*g.find_meta("t.ints")), "[1, -2, 3]");
  EXPECT_EQ(g.metadata_to_string(*g.find_meta("t.strs"), 2), "[\"a\", \"\", ... (4 string total)]");
  EXPECT_EQ(g.metadata_to_string(*g.find_meta("t.bool")), "true");
  EXPECT_EQ(g.metadata_to_string(*g.find_meta("t.f32")), "0.1");
  EXPECT_EQ(g.metadata_to_string(*g.find_meta("general.name")), "\"optiq \\\"test\\\"\\nmodel\"");
}

TEST(Gguf, GetterErrorsNameFileKeyAndTypes) {
  std::string path = write_test_file(test::temp_dir());
  GgufFile g(path);
  auto message = [&](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([&] { g.get_string("nope"); }), path + ": metadata nope missing");
  EXPECT_EQ(message([&] { g.get_int("general.name"); }), path + ": metadata general.name has type string, expected an integer");
  EXPECT_EQ(message([&] { g.get_string("t.u32"); }), path + ": metadata t.u32 has type u32, expected string");
  EXPECT_EQ(message([&] { g.get_float("t.strs"); }), path + ": metadata t.strs has type array of string, expected a number");
  EXPECT_EQ(message([&] { g.get_string_array("t.ints"); }),
            path + ": metadata t.ints has type array of i32, expected array of string");
  EXPECT_EQ(message([&] { g.get_bool_or("t.u8", false); }), path + ": metadata t.u8 has type u8, expected bool");
  EXPECT_EQ(message([&] { g.get_int_array("t.floats"); }),
            path + ": metadata t.floats has type array of f32, expected array of integers");
  EXPECT_THROW(g.get_int_or("general.name", 0), Error);  // present but wrong type is still an error
}

TEST(Gguf, RoundTripTensors) {
  std::string path = write_test_file(test::temp_dir());
  GgufFile g(path);
  ASSERT_EQ(g.tensors().size(), specs().size());
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(g.data_offset() % 32, 0u);
  for (size_t k = 0; k < specs().size(); ++k) {
    const Spec& s = specs()[k];
    const TensorView& t = g.tensors()[k];
    SCOPED_TRACE(s.name);
    EXPECT_EQ(t.name, s.name);
    EXPECT_EQ(t.dtype, s.dtype);
    EXPECT_EQ(t.shape, s.shape);
    std::vector<uint8_t> want = random_bytes(dtype_bytes(s.dtype, t.numel()), 100 + static_cast<uint32_t>(k));
    ASSERT_EQ(t.nbytes, want.size());
    EXPECT_EQ(std::memcmp(t.data, want.data(), want.size()), 0);
    size_t off = static_cast<const uint8_t*>(t.data) - g.file().data();
    EXPECT_EQ(off % 32, 0u);
    EXPECT_EQ(off, g.data_offset() + g.tensor_offset(k));
    EXPECT_EQ(g.find_tensor(s.name), &t);
    EXPECT_EQ(dequantize(t).size(), static_cast<size_t>(t.numel()));
  }
  EXPECT_EQ(g.find_tensor("nope"), nullptr);
  // The last tensor's bytes end the file.
  EXPECT_EQ(std::filesystem::file_size(path), g.data_offset() + g.tensor_offset(specs().size() - 1) + 384);
}

TEST(Gguf, WriterHonoursAlignmentAndReplacesKeys) {
  std::string dir = test::temp_dir();
  GgufWriter w;
  w.add_u32("general.alignment", 64);
  w.add_string("k", "old");
  w.add_string("k", "new");
  std::vector<float> a = test::random_floats(5, 1), b = test::random_floats(3, 2);
  w.add_tensor_view("a", DType::F32, {5}, a.data(), a.size() * 4);
  w.add_tensor_lazy("b", DType::F32, {3}, 12, [&](uint8_t* dst) { std::memcpy(dst, b.data(), 12); });
  w.write(dir + "/x.gguf");
  GgufFile g(dir + "/x.gguf");
  EXPECT_EQ(g.alignment(), 64u);
  EXPECT_EQ(g.metadata().size(), 2u);
  EXPECT_EQ(g.get_string("k"), "new");
  EXPECT_EQ(g.tensor_offset(1), 64u);
  EXPECT_EQ(std::memcmp(g.find_tensor("b")->data, b.data(), 12), 0);
  EXPECT_EQ(std::memcmp(g.find_tensor("a")->data, a.data(), 20), 0);
  // no temp files left behind
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator()), 1);
}

TEST(Gguf, WriterRejectsBadTensors) {
  GgufWriter w;
  EXPECT_THROW(w.add_tensor("x", DType::Q8_0, {3, 33}, std::vector<uint8_t>(34 * 3)), Error);  // row not whole blocks
  EXPECT_THROW(w.add_tensor("x", DType::F32, {3}, std::vector<uint8_t>(11)), Error);           // wrong byte count
  EXPECT_THROW(w.add_tensor("x", DType::F32, {}, std::vector<uint8_t>(4)), Error);
  EXPECT_THROW(w.add_tensor("x", DType::F32, {1, 1, 1, 1, 1}, std::vector<uint8_t>(4)), Error);
  EXPECT_THROW(w.add_tensor("x", DType::U32, {1}, std::vector<uint8_t>(4)), Error);
  w.add_tensor("x", DType::F32, {1}, std::vector<uint8_t>(4, 1));
  EXPECT_THROW(w.add_tensor("x", DType::F32, {1}, std::vector<uint8_t>(4, 1)), Error);  // duplicate
  EXPECT_THROW(w.write("/nonexistent-dir/x.gguf"), Error);
}

TEST(Gguf, CopyMetadata) {
  std::string dir = test::temp_dir();
  GgufFile src(write_test_file(dir));
  GgufWriter w;
  w.copy_metadata(src, [](std::string_view k) { return k.starts_with("t.") && k != "t.bool"; });
  w.write(dir + "/copy.gguf");
  GgufFile g(dir + "/copy.gguf");
  EXPECT_EQ(g.metadata().size(), 16u);
  EXPECT_FALSE(g.has("t.bool"));
  EXPECT_EQ(g.get_int("t.u64"), int64_t{1} << 62);
  EXPECT_EQ(g.find_meta("t.nested")->arrays.size(), 2u);
  EXPECT_EQ(g.tensors().size(), 0u);
}

TEST(Gguf, GgmlTypeIds) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0,
                  DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    auto back = dtype_from_ggml_type(ggml_type_from_dtype(t));
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(*back, t);
    EXPECT_EQ(ggml_type_name(ggml_type_from_dtype(t)), dtype_name(t));
  }
  EXPECT_EQ(ggml_type_from_dtype(DType::BF16), 30u);
  EXPECT_EQ(ggml_type_from_dtype(DType::Q6_K), 14u);
  EXPECT_FALSE(dtype_from_ggml_type(16).has_value());
  EXPECT_EQ(ggml_type_name(16), "IQ2_XXS");
  EXPECT_EQ(ggml_type_name(1000), "");
}

TEST(Gguf, Stories260K) {
  std::string path = test::shared_dir() + "/models/stories260K/stories260K.gguf";
  if (!test::file_exists(path)) GTEST_SKIP() << path << " missing";
  GgufFile g(path);
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_int("llama.block_count"), 5);
  EXPECT_EQ(g.get_int("llama.embedding_length"), 64);
  EXPECT_EQ(g.get_int("llama.feed_forward_length"), 172);
  EXPECT_EQ(g.get_int("llama.attention.head_count"), 8);
  EXPECT_EQ(g.get_int("llama.attention.head_count_kv"), 4);
  EXPECT_NEAR(g.get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-12);
  EXPECT_EQ(g.get_string("tokenizer.ggml.model"), "llama");
  auto tokens = g.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 512u);
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(g.get_float_array("tokenizer.ggml.scores").size(), 512u);
  EXPECT_EQ(g.get_int_array("tokenizer.ggml.token_type").size(), 512u);
  EXPECT_EQ(g.tensors().size(), 48u);
  const TensorView* emb = g.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dtype, DType::F32);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(emb->nbytes, 512u * 64 * 4);
  const TensorView* down = g.find_tensor("blk.4.ffn_down.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->shape, (std::vector<int64_t>{64, 172}));
  std::vector<float> v = dequantize(*emb);
  ASSERT_EQ(v.size(), 512u * 64);
  EXPECT_EQ(std::memcmp(v.data(), emb->data, emb->nbytes), 0);
  // the same weights as the llama2.c checkpoint: token_embedding_table follows the 7-int header
  std::string bin = test::shared_dir() + "/models/stories260K/stories260K.bin";
  if (test::file_exists(bin)) {
    MappedFile m(bin);
    ASSERT_GE(m.size(), 28 + emb->nbytes);
    EXPECT_EQ(std::memcmp(m.data() + 28, emb->data, emb->nbytes), 0);
  }
}

}  // namespace
}  // namespace optiq

// Damaged and hostile GGUF files: every one must give a one-line
// optiq::Error("<path>: ..."), never a crash (CI runs this under ASan+UBSan).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "quant/ggml_dequant.h"
#include "test_util.h"

namespace optiq {
namespace {

using Bytes = std::vector<uint8_t>;

using test::random_bytes;

class GgufCorrupt : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir();
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    w.add_u32("llama.block_count", 5);
    w.add_float("llama.eps", 1e-5);
    w.add_string_array("tokenizer.ggml.tokens", {"<unk>", "a", "bc"});
    w.add_int_array("tok.types", {1, 2, 3});
    w.add("nested", GgufValue::make_array_array({GgufValue::make_int_array(GgufValue::Type::U8, {1})}));
    w.add_tensor("tq8", DType::Q8_0, {3, 96}, random_bytes(dtype_bytes(DType::Q8_0, 288), 1));
    w.add_tensor("tq4k", DType::Q4_K, {2, 256}, random_bytes(dtype_bytes(DType::Q4_K, 512), 2));
    w.add_tensor("tf16", DType::F16, {5, 7}, random_bytes(70, 3));
    w.add_tensor("tf32", DType::F32, {2, 16}, random_bytes(128, 4));  // last, 128 bytes: no tail padding
    w.write(dir_ + "/good.gguf");
    std::ifstream f(dir_ + "/good.gguf", std::ios::binary);
    good_.assign(std::istreambuf_iterator<char>(f), {});
    GgufFile g(dir_ + "/good.gguf");
    header_end_ = g.data_offset();
    ASSERT_EQ(good_.size(), header_end_ + g.tensor_offset(3) + 128);
  }

  std::string write(const Bytes& b, const std::string& name = "bad.gguf") {
    std::string p = dir_ + "/" + name;
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    return p;
  }

  // Parses b; returns the error message ("" if it parsed). Checks the message
  // format. If the file parses, every tensor must dequantize safely.
  std::string parse(const Bytes& b) {
    std::string p = write(b);
    try {
      GgufFile g(p);
      for (const auto& t : g.tensors()) (void)dequantize(t);
      for (const auto& kv : g.metadata()) (void)g.metadata_to_string(kv.second);
      return "";
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_EQ(m.rfind(p + ": ", 0), 0u) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos) << m;
      return m;
    }
  }

  size_t find(const std::string& s) const {
    auto it = std::search(good_.begin(), good_.end(), s.begin(), s.end());
    EXPECT_NE(it, good_.end()) << s;
    return static_cast<size_t>(it - good_.begin());
  }
  // Offset of the tensor info fields that follow tensor `name`'s name.
  size_t tensor_info(const std::string& name) const { return find(name) + name.size(); }

  template <typename T>
  Bytes patched(size_t off, T v) const {
    Bytes b = good_;
    std::memcpy(b.data() + off, &v, sizeof(T));
    return b;
  }

  std::string dir_;
  Bytes good_;
  size_t header_end_ = 0;
};

TEST_F(GgufCorrupt, GoodFileParses) { EXPECT_EQ(parse(good_), ""); }

TEST_F(GgufCorrupt, EveryTruncationThrows) {
  // Every offset in the header region, then every 7th in the data.
  for (size_t n = 0; n < good_.size(); n += n < header_end_ + 64 ? 1 : 7) {
    Bytes b(good_.begin(), good_.begin() + static_cast<std::ptrdiff_t>(n));
    std::string m = parse(b);
    EXPECT_NE(m, "") << "truncated at " << n;
  }
}

TEST_F(GgufCorrupt, Magic) {
  EXPECT_NE(parse(patched<char>(0, 'X')).find("not a GGUF file"), std::string::npos);
  EXPECT_NE(parse(Bytes{}).find("not a GGUF file"), std::string::npos);
}

TEST_F(GgufCorrupt, Version) {
  EXPECT_NE(parse(patched<uint32_t>(4, 1)).find("version 1 is not supported"), std::string::npos);
  EXPECT_NE(parse(patched<uint32_t>(4, 4)).find("unsupported GGUF version 4"), std::string::npos);
  EXPECT_NE(parse(patched<uint32_t>(4, 0x03000000)).find("big-endian"), std::string::npos);
  EXPECT_EQ(parse(patched<uint32_t>(4, 2)), "");  // v2 has the same layout
}

TEST_F(GgufCorrupt, HugeCounts) {
  EXPECT_NE(parse(patched<uint64_t>(8, uint64_t{1} << 62)).find("tensor count"), std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(16, ~uint64_t{0})).find("metadata count"), std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(8, 5)), "");   // one tensor too many
  EXPECT_NE(parse(patched<uint64_t>(16, 7)), "");  // one key too many
}

TEST_F(GgufCorrupt, HugeStringLength) {
  EXPECT_NE(parse(patched<uint64_t>(24, uint64_t{1} << 40)).find("length"), std::string::npos);  // first key
  EXPECT_NE(parse(patched<uint64_t>(24, ~uint64_t{0})), "");
  size_t v = find("general.architecture") + 20 + 4;  // value string length
  EXPECT_NE(parse(patched<uint64_t>(v, good_.size())), "");
}

// The sizes the issue names (docs/reliability.md, "limits"): each one line,
// naming the file and the count, before anything is allocated.
TEST_F(GgufCorrupt, AbsurdSizesNamedInTheIssue) {
  const uint64_t trillion = 1'000'000'000'000;
  EXPECT_NE(parse(patched<uint64_t>(16, trillion)).find("metadata count is 1000000000000, which cannot fit"),
            std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(8, trillion)).find("tensor count is 1000000000000, which cannot fit"),
            std::string::npos);
  const uint64_t four_gb = uint64_t{1} << 32;
  EXPECT_NE(parse(patched<uint64_t>(24, four_gb)).find("metadata key #0 has length 4294967296 at offset 24, beyond"),
            std::string::npos);
  const size_t v = find("general.architecture") + 20 + 4;  // the value's string length
  EXPECT_NE(parse(patched<uint64_t>(v, four_gb)).find("metadata general.architecture has length 4294967296"),
            std::string::npos);
  const size_t et = find("tokenizer.ggml.tokens") + 21 + 4 + 4 + 8;  // first token's length
  EXPECT_NE(parse(patched<uint64_t>(et, four_gb)).find("has length 4294967296"), std::string::npos);
  // Dimensions whose product overflows int64 (each one alone is valid).
  const size_t ti = tensor_info("tq8");
  Bytes b = patched<uint64_t>(ti + 4, uint64_t{96} << 32);
  const uint64_t rows = uint64_t{1} << 33;
  std::memcpy(b.data() + ti + 12, &rows, 8);
  EXPECT_NE(parse(b).find("tensor tq8 has too many elements (dimensions overflow)"), std::string::npos);
}

TEST_F(GgufCorrupt, BadValueTypes) {
  size_t t = find("general.architecture") + 20;
  EXPECT_NE(parse(patched<uint32_t>(t, 13)).find("unknown value type 13"), std::string::npos);
  EXPECT_NE(parse(patched<uint32_t>(t, 0xffffffff)).find("unknown value type"), std::string::npos);
  size_t et = find("tokenizer.ggml.tokens") + 21 + 4;  // array element type
  EXPECT_NE(parse(patched<uint32_t>(et, 99)).find("unknown value type 99"), std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(et + 4, uint64_t{1} << 61)).find("cannot fit"), std::string::npos);
  // reinterpret the string array as an array of arrays / u64s: must fail or parse, never crash
  for (uint32_t ty = 0; ty <= 12; ++ty) (void)parse(patched<uint32_t>(et, ty));
  size_t nt = find("nested") + 6 + 4 + 4 + 8;  // inner array's element type
  for (uint32_t ty = 0; ty <= 13; ++ty) (void)parse(patched<uint32_t>(nt, ty));
}

TEST_F(GgufCorrupt, DeeplyNestedArraysAreRejected) {
  GgufValue v = GgufValue::make_int_array(GgufValue::Type::U8, {1});
  for (int i = 0; i < 20; ++i) v = GgufValue::make_array_array({v});
  GgufWriter w;
  w.add("deep", v);
  w.write(dir_ + "/deep.gguf");
  EXPECT_THROW(GgufFile(dir_ + "/deep.gguf"), Error);
}

TEST_F(GgufCorrupt, TensorInfo) {
  size_t ti = tensor_info("tq8");  // n_dims u32, ne[2] u64, type u32, offset u64
  EXPECT_NE(parse(patched<uint32_t>(ti, 0)).find("0 dimensions"), std::string::npos);
  EXPECT_NE(parse(patched<uint32_t>(ti, 5)).find("5 dimensions"), std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(ti + 4, 0)).find("invalid dimension"), std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(ti + 4, ~uint64_t{0})).find("invalid dimension"), std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(ti + 4, 95)).find("row length 95, not a multiple"), std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(ti + 4, 96 * 1000)), "");
  {
    const uint64_t big = uint64_t{1} << 37;
    Bytes b = patched<uint64_t>(ti + 4, big);
    std::memcpy(b.data() + ti + 12, &big, 8);
    EXPECT_NE(parse(b).find("overflow"), std::string::npos);
  }
  EXPECT_NE(parse(patched<uint64_t>(ti + 4, uint64_t{1} << 40)).find("more bytes than the file"), std::string::npos);
  EXPECT_NE(parse(patched<uint32_t>(ti + 20, 16)).find("ggml type 16 (IQ2_XXS), which optiq does not support"),
            std::string::npos);
  EXPECT_NE(parse(patched<uint32_t>(ti + 20, 4000)).find("ggml type 4000 (unknown)"), std::string::npos);
  EXPECT_NE(parse(patched<uint32_t>(ti + 20, 26)).find("(I32)"), std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(ti + 24, 3)).find("not a multiple of the alignment"), std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(ti + 24, uint64_t{1} << 20)).find("beyond the end"), std::string::npos);
  EXPECT_NE(parse(patched<uint64_t>(ti + 24, ~uint64_t{31})).find("beyond the end"), std::string::npos);
  size_t last = tensor_info("tf32");
  GgufFile g(write(good_, "good2.gguf"));
  EXPECT_NE(parse(patched<uint64_t>(last + 24, g.tensor_offset(3) + 32)).find("beyond the end"), std::string::npos);
}

TEST_F(GgufCorrupt, DuplicateNames) {
  Bytes b = good_;
  size_t a = find("tq4k");
  std::memcpy(b.data() + a, "tf16", 4);
  EXPECT_NE(parse(b).find("duplicate tensor name tf16"), std::string::npos);
  b = good_;
  std::memcpy(b.data() + find("llama.eps"), "llama.blo", 9);  // not a duplicate: different length
  EXPECT_EQ(parse(b), "");
  b = good_;
  size_t k = find("nested");
  std::memcpy(b.data() + k - 8, "\x03\0\0\0\0\0\0\0", 8);  // key length 3 -> key "nes", then garbage
  EXPECT_NE(parse(b), "");
}

TEST_F(GgufCorrupt, BadAlignment) {
  for (uint32_t a : {0u, 3u, 48u}) {
    GgufWriter w;
    w.add_int("general.alignment", a, GgufValue::Type::U32);
    std::string p = dir_ + "/align.gguf";
    EXPECT_THROW(w.write(p), Error);
  }
  // A file (not from our writer) whose alignment is not a power of two.
  GgufWriter w;
  w.add_u32("general.alignment", 16);
  w.write(dir_ + "/a16.gguf");
  std::ifstream f(dir_ + "/a16.gguf", std::ios::binary);
  Bytes b(std::istreambuf_iterator<char>(f), {});
  auto it = std::search(b.begin(), b.end(), std::begin("general.alignment"), std::end("general.alignment") - 1);
  ASSERT_NE(it, b.end());
  uint32_t bad = 24;
  std::memcpy(&*(it + 17 + 4), &bad, 4);
  EXPECT_NE(parse(b).find("general.alignment must be a positive power of two"), std::string::npos);
}

TEST_F(GgufCorrupt, RandomByteFlipsNeverCrash) {
  std::mt19937 rng(42);
  int errors = 0;
  for (int iter = 0; iter < 600; ++iter) {
    Bytes b = good_;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      size_t off = rng() % header_end_;
      b[off] = static_cast<uint8_t>(rng());
    }
    if (!parse(b).empty()) ++errors;
  }
  EXPECT_GT(errors, 20);
}

}  // namespace
}  // namespace optiq

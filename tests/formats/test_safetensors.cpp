// safetensors reader/writer: round trips of random data in every supported
// dtype with odd shapes, then damaged and hostile files, each of which must be
// refused with a one-line optiq::Error naming the file.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "formats/safetensors.h"
#include "test_util.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// A raw safetensors file: header length, header text as given, data.
std::vector<uint8_t> raw_file(const std::string& header, const std::vector<uint8_t>& data, uint64_t len_override = 0,
                              bool use_override = false) {
  std::vector<uint8_t> b(8 + header.size() + data.size());
  uint64_t n = use_override ? len_override : header.size();
  for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(n >> (8 * i));
  if (!header.empty()) std::memcpy(b.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(b.data() + 8 + header.size(), data.data(), data.size());
  return b;
}

using test::random_bytes;

template <typename T>
std::vector<uint8_t> as_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Expects opening `bytes` (written to a file) to throw optiq::Error whose
// message is one line starting with the path and containing `needle`.
void expect_bytes_refused(const std::vector<uint8_t>& bytes, const std::string& needle = "") {
  static int counter = 0;
  static const std::string dir = test::temp_dir();
  std::string path = dir + "/bad" + std::to_string(counter++) + ".safetensors";
  write_bytes(path, bytes);
  try {
    SafetensorsFile f(path);
    ADD_FAILURE() << "accepted a bad file: " << std::string(bytes.begin() + std::min<size_t>(8, bytes.size()),
                                                            bytes.end());
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    if (!needle.empty()) {
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  }
}

struct Sample {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

std::vector<Sample> samples() {
  std::vector<Sample> s;
  auto f32 = test::random_floats(3 * 5 * 7, 1);
  s.push_back({"model.layers.0.weight", DType::F32, {3, 5, 7}, as_bytes(f32)});
  std::vector<uint16_t> f16, bf16;
  for (float x : test::random_floats(13, 2)) f16.push_back(f32_to_f16(x));
  for (float x : test::random_floats(13 * 3, 3)) bf16.push_back(f32_to_bf16(x));
  s.push_back({"half", DType::F16, {13}, as_bytes(f16)});
  s.push_back({"brain.half", DType::BF16, {13, 3}, as_bytes(bf16)});
  s.push_back({"packed", DType::U32, {5, 1}, random_bytes(20, 4)});
  s.push_back({"ints", DType::I32, {2, 3}, random_bytes(24, 5)});
  s.push_back({"longs", DType::I64, {7}, random_bytes(56, 6)});
  s.push_back({"bytes_odd", DType::U8, {11}, random_bytes(11, 7)});
  s.push_back({"scalar", DType::F32, {}, as_bytes(test::random_floats(1, 8))});
  s.push_back({"empty", DType::F16, {0, 4}, {}});
  s.push_back({"unicode.\xc3\xa9t\xc3\xa9", DType::U8, {1, 1, 3}, random_bytes(3, 9)});
  return s;
}

std::string write_samples(const std::string& path, const std::vector<Sample>& s) {
  SafetensorsWriter w;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i % 2 == 0)
      w.add(s[i].name, s[i].dtype, s[i].shape, s[i].bytes);
    else
      w.add_owned(s[i].name, s[i].dtype, s[i].shape, s[i].bytes);
  }
  w.set_metadata("format", "pt");
  w.set_metadata("optiq.note", "line \"quoted\"");
  w.write(path);
  return path;
}

TEST(Safetensors, RoundTripAllDtypes) {
  const auto s = samples();
  const std::string path = write_samples(test::temp_dir() + "/a.safetensors", s);
  SafetensorsFile f(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.header_size() % 8, 0u);
  ASSERT_EQ(f.tensors().size(), s.size());
  for (size_t i = 1; i < f.tensors().size(); ++i) EXPECT_LT(f.tensors()[i - 1].name, f.tensors()[i].name);
  for (const auto& x : s) {
    const TensorView* t = f.find_tensor(x.name);
    ASSERT_NE(t, nullptr) << x.name;
    EXPECT_EQ(t->name, x.name);
    EXPECT_EQ(t->dtype, x.dtype) << x.name;
    EXPECT_EQ(t->shape, x.shape) << x.name;
    ASSERT_EQ(t->nbytes, x.bytes.size()) << x.name;
    EXPECT_EQ(t->nbytes, dtype_bytes(t->dtype, t->numel()));
    if (t->nbytes) {
      EXPECT_EQ(std::memcmp(t->data, x.bytes.data(), t->nbytes), 0) << x.name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % block_layout(t->dtype).block_bytes, 0u) << x.name;
    }
  }
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
  EXPECT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("optiq.note"), "line \"quoted\"");

  // Re-writing what was read (borrowed views) gives the same file.
  SafetensorsWriter w;
  for (const auto& t : f.tensors()) w.add_view(t);
  for (const auto& [k, v] : f.metadata()) w.set_metadata(k, v);
  const std::string path2 = test::temp_dir() + "/b.safetensors";
  w.write(path2);
  EXPECT_EQ(read_bytes(path), read_bytes(path2));
}

TEST(Safetensors, EmptyFileAndOverwrite) {
  const std::string dir = test::temp_dir();
  const std::string path = dir + "/e.safetensors";
  SafetensorsWriter().write(path);
  {
    SafetensorsFile f(path);
    EXPECT_TRUE(f.tensors().empty());
    EXPECT_TRUE(f.metadata().empty());
  }
  write_samples(path, samples());  // replaces the file
  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), samples().size());
  // No temporary files left behind.
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    ++n;
    EXPECT_EQ(e.path().filename(), "e.safetensors");
  }
  EXPECT_EQ(n, 1);
}

TEST(Safetensors, ReadsMisalignedFilesFromOtherWriters) {
  // Header of odd length: the F32 data starts at an odd address in the map.
  auto vals = test::random_floats(6, 11);
  std::string header = R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("w":{"dtype":"F32","shape":[2,3],"data_offsets":[1,25]},"__metadata__":{"k":"v"}})";
  if (header.size() % 2 == 0) header += " ";
  std::vector<uint8_t> data = {0x7f};
  auto vb = as_bytes(vals);
  data.insert(data.end(), vb.begin(), vb.end());
  const std::string path = test::temp_dir() + "/m.safetensors";
  write_bytes(path, raw_file(header, data));
  SafetensorsFile f(path);
  const TensorView* w = f.find_tensor("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w->data) % 4, 0u);
  const float* p = static_cast<const float*>(w->data);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(p[i], vals[i]);
  EXPECT_EQ(*static_cast<const uint8_t*>(f.find_tensor("b")->data), 0x7f);
  EXPECT_EQ(f.metadata().at("k"), "v");
}

TEST(Safetensors, UnsupportedDtypeIsClear) {
  std::string header = R"({"x":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})";
  expect_bytes_refused(raw_file(header, random_bytes(16, 1)), "tensor x has dtype F64, which optiq does not support");
  header = R"({"y":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})";
  expect_bytes_refused(raw_file(header, random_bytes(2, 1)), "tensor y has dtype I8, which optiq does not support");
  header = R"({"z":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})";
  expect_bytes_refused(raw_file(header, random_bytes(8, 1)), "unknown dtype");
}

TEST(Safetensors, TruncatedAtEveryOffset) {
  const std::string path = write_samples(test::temp_dir() + "/t.safetensors", samples());
  const auto full = read_bytes(path);
  for (size_t n = 0; n < full.size(); ++n) expect_bytes_refused(std::vector<uint8_t>(full.begin(), full.begin() + n));
}

TEST(Safetensors, BadHeaders) {
  const auto d16 = random_bytes(16, 3);
  auto one = [&](const std::string& header, const std::string& needle = "") {
    expect_bytes_refused(raw_file(header, d16), needle);
  };
  one("{not json}", "not valid JSON");
  one("{\"a\":", "not valid JSON");
  one("[1, 2, 3, 4, 5, 6]", "does not start with");
  one(" {}", "does not start with");
  one("{}\x01", "not valid JSON");
  one(R"({"a": 1})", "not a JSON object");
  one(R"({"a": {"shape":[4],"data_offsets":[0,16]}})", "no dtype");
  one(R"({"a": {"dtype":4,"shape":[4],"data_offsets":[0,16]}})", "no dtype");
  one(R"({"a": {"dtype":"f32","shape":[4],"data_offsets":[0,16]}})", "unknown dtype");
  one(R"({"a": {"dtype":"F32","data_offsets":[0,16]}})", "no shape");
  one(R"({"a": {"dtype":"F32","shape":4,"data_offsets":[0,16]}})", "no shape");
  one(R"({"a": {"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", "non-negative");
  one(R"({"a": {"dtype":"F32","shape":[4.0],"data_offsets":[0,16]}})", "non-negative");
  one(R"({"a": {"dtype":"F32","shape":["4"],"data_offsets":[0,16]}})", "non-negative");
  one(R"({"a": {"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,16]}})", "absurd shape");
  one(R"({"a": {"dtype":"F32","shape":[99999999999999999999999],"data_offsets":[0,16]}})", "non-negative");
  one(R"({"a": {"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", "absurd shape");
  one(R"({"a": {"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]}})", "absurd shape");
  one(R"({"a": {"dtype":"F32","shape":[4]}})", "data_offsets");
  one(R"({"a": {"dtype":"F32","shape":[4],"data_offsets":[0]}})", "data_offsets");
  one(R"({"a": {"dtype":"F32","shape":[4],"data_offsets":[0,16,32]}})", "data_offsets");
  one(R"({"a": {"dtype":"F32","shape":[4],"data_offsets":[-1,15]}})", "data_offsets");
  one(R"({"a": {"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", "end before they begin");
  one(R"({"a": {"dtype":"F32","shape":[4],"data_offsets":[4,20]}})", "past the end");
  one(R"({"a": {"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551615]}})", "past the end");
  one(R"({"a": {"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", "span 16 bytes");
  one(R"({"a": {"dtype":"F16","shape":[4],"data_offsets":[0,16]}})", "span 16 bytes");
  one(R"({"a": {"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      "overlap");
  one(R"({"a": {"dtype":"U8","shape":[16],"data_offsets":[0,16]},"b":{"dtype":"U8","shape":[1],"data_offsets":[15,16]}})",
      "overlap");
  one(R"({"a": {"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
      "appears twice");
  one(R"({"__metadata__": {"k": 1}})", "not a string");
  one(R"({"__metadata__": [1]})", "__metadata__ is not");
  one("{\"\xff\xfe\": {\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "not valid JSON");
  one("{\"a\nb\": {\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", "not valid JSON");
  one("{\"a\\nb\": {\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", "tensor a\\x0ab has dtype F64");

  // Deep nesting: refused without recursing through it.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  one(R"({"a": {"dtype":"F32","shape":[)" + deep + R"(],"data_offsets":[0,16]}})", "not a non-negative integer: a JSON array");
  one(R"({"a": {"dtype":"F32","shape":[4],"data_offsets":[0,16]},"__metadata__":{"k":)" + deep + "}}", "not a string");
  one(R"({"a": )" + deep + "}", "not a JSON object");

  // Zero-size tensors may share an offset; that is not an overlap.
  std::string ok = R"({"a": {"dtype":"F32","shape":[0],"data_offsets":[8,8]},)"
                   R"("b": {"dtype":"F32","shape":[4],"data_offsets":[0,16]}, "c": {"dtype":"U8","shape":[0,3],"data_offsets":[8,8]}})";
  const std::string path = test::temp_dir() + "/ok.safetensors";
  write_bytes(path, raw_file(ok, d16));
  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), 3u);
}

TEST(Safetensors, AbsurdHeaderLengths) {
  const std::string h = R"({"a": {"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  const auto d16 = random_bytes(16, 4);
  for (uint64_t len : {uint64_t{0}, uint64_t{1}, uint64_t{h.size() + 17}, uint64_t{1} << 40, ~uint64_t{0},
                       uint64_t{1} << 63, uint64_t{h.size() + 16 + 1}})
    expect_bytes_refused(raw_file(h, d16, len, true));
  expect_bytes_refused({}, "too small");
  expect_bytes_refused({1, 2, 3}, "too small");
  // Header length that swallows the data: the JSON ends early but the length
  // covers trailing bytes that are not whitespace.
  expect_bytes_refused(raw_file(h, d16, h.size() + 16, true), "not valid JSON");
}

TEST(Safetensors, RandomCorruptionNeverCrashes) {
  const std::string path = write_samples(test::temp_dir() + "/r.safetensors", samples());
  const auto full = read_bytes(path);
  const std::string dir = test::temp_dir();
  std::mt19937 rng(1234);
  int refused = 0, accepted = 0;
  for (int iter = 0; iter < 400; ++iter) {
    auto b = full;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      // Mostly the header (where damage matters), sometimes the length.
      size_t pos = (rng() % 8 == 0) ? rng() % 8 : 8 + rng() % (b.size() - 8);
      b[pos] = static_cast<uint8_t>(rng());
    }
    // A new name each time: rewriting one file in place makes ext4 flush it.
    const std::string p = dir + "/c" + std::to_string(iter) + ".safetensors";
    write_bytes(p, b);
    try {
      SafetensorsFile f(p);
      ++accepted;
      for (const auto& t : f.tensors()) {
        EXPECT_EQ(t.nbytes, dtype_bytes(t.dtype, t.numel()));
        if (t.nbytes) {
          volatile uint8_t sink = static_cast<const uint8_t*>(t.data)[t.nbytes - 1];  // in bounds under ASan
          (void)sink;
        }
      }
    } catch (const Error& e) {
      ++refused;
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_EQ(refused + accepted, 400);
}

TEST(Safetensors, WriterRefusesBadInput) {
  SafetensorsWriter w;
  std::vector<uint8_t> b12 = random_bytes(12, 5);
  EXPECT_THROW(w.add("a", DType::F32, {4}, b12), Error);          // 12 bytes for 4 floats
  EXPECT_THROW(w.add("a", DType::F32, {-3, -1}, b12), Error);     // negative dims
  EXPECT_THROW(w.add("a", DType::Q4_0, {32}, b12), Error);        // not a safetensors dtype
  EXPECT_THROW(w.add("", DType::U8, {12}, b12), Error);           // empty name
  EXPECT_THROW(w.add("__metadata__", DType::U8, {12}, b12), Error);
  w.add("a", DType::F32, {3}, b12);
  EXPECT_THROW(w.add_owned("a", DType::U8, {12}, b12), Error);  // duplicate
  EXPECT_EQ(w.size(), 1u);
  const std::string dir = test::temp_dir();
  try {
    w.write(dir + "/no/such/dir/x.safetensors");
    ADD_FAILURE() << "wrote into a missing directory";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(dir + "/no/such/dir/x.safetensors: ", 0), 0u) << e.what();
  }
  // Invalid UTF-8 in a name cannot go into JSON: refused at write, no file left.
  SafetensorsWriter w2;
  w2.add("bad\xff", DType::U8, {12}, b12);
  EXPECT_THROW(w2.write(dir + "/y.safetensors"), Error);
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(Safetensors, DtypeNames) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::U32, DType::I32, DType::I64, DType::U8}) {
    auto n = safetensors_dtype_name(t);
    EXPECT_EQ(dtype_from_safetensors(n), t);
  }
  EXPECT_FALSE(dtype_from_safetensors("F64").has_value());
  EXPECT_THROW(safetensors_dtype_name(DType::Q8_0), Error);
}

}  // namespace
}  // namespace optiq

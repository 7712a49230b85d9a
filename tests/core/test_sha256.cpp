// SHA-256 against FIPS 180-4's examples, and the SHA-NI path against the
// portable one on every length around the block and padding edges.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <string>

#include "core/error.h"
#include "core/sha256.h"
#include "test_util.h"

namespace optiq {
namespace {

std::string hex(std::string_view s, bool portable) {
  Sha256 h(portable);
  h.update(s);
  return h.hex_digest();
}

TEST(Sha256, KnownDigests) {
  for (bool portable : {true, false}) {
    EXPECT_EQ(hex("", portable), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(hex("abc", portable), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", portable),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    Sha256 h(portable);
    const std::string a(1000, 'a');
    for (int i = 0; i < 1000; ++i) h.update(a);  // a million 'a', in pieces
    EXPECT_EQ(h.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  }
}

TEST(Sha256, HardwareEqualsPortable) {
  if (!sha256_hardware()) GTEST_SKIP() << "no SHA extensions on this CPU: only the portable path runs";
  std::mt19937 rng(7);
  std::string data(5000, '\0');
  for (auto& c : data) c = static_cast<char>(rng());
  for (size_t n = 0; n < 300; ++n) ASSERT_EQ(hex(data.substr(0, n), false), hex(data.substr(0, n), true)) << n;
  for (size_t n : {511, 512, 513, 4095, 4096, 5000}) ASSERT_EQ(hex(data.substr(0, n), false), hex(data.substr(0, n), true));
  // Uneven pieces.
  Sha256 a(false), b(true);
  for (size_t at = 0, k = 1; at < data.size(); at += k, k = k * 3 % 97 + 1) {
    const size_t n = std::min(k, data.size() - at);
    a.update(data.data() + at, n);
    b.update(data.data() + at, n);
  }
  EXPECT_EQ(a.hex_digest(), b.hex_digest());
}

TEST(Sha256, Files) {
  const std::string path = test::temp_dir() + "/abc.txt";
  std::ofstream(path) << "abc";
  EXPECT_EQ(sha256_file(path), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  try {
    sha256_file(path + ".missing");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("abc.txt.missing: cannot read"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace optiq

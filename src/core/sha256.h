// SHA-256 (FIPS 180-4), for recording which source files an output was made
// from (model/provenance.h): the digest `sha256sum` prints and the Hugging Face
// hub lists for every LFS file, so a recorded hash can be checked against
// either. Uses the CPU's SHA extensions (x86 SHA-NI) when present, else
// portable code; both give the same digest (tests/core/test_sha256.cpp).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace optiq {

class Sha256 {
 public:
  // portable_only: never the SHA-NI path (for tests comparing the two).
  explicit Sha256(bool portable_only = false);
  void update(const void* data, size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  // The digest of everything updated so far; the object is finished after it.
  std::array<uint8_t, 32> digest();
  std::string hex_digest();  // 64 lowercase hex digits
  // The digest so far, leaving this object to take more bytes.
  std::string hex_digest_copy() const {
    Sha256 c = *this;
    return c.hex_digest();
  }

 private:
  void blocks(const uint8_t* p, size_t nblocks);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
  bool ni_ = false;
};

// Whether this CPU has the SHA extensions the fast path uses.
bool sha256_hardware();

// The hex SHA-256 of a file's bytes, read sequentially; throws
// optiq::Error "<path>: cannot read: <reason>".
std::string sha256_file(const std::string& path);

}  // namespace optiq

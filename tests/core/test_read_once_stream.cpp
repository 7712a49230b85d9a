// ReadOnceStream: every kept range holds the file's bytes, every digest is
// sha256sum's, and no order of asking (the files' own, reversed, skipping)
// and no window size (roomy, tight, smaller than a range) hangs it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/read_once_stream.h"
#include "core/sha256.h"
#include "test_util.h"

namespace optiq {
namespace {

struct Files {
  std::vector<std::string> paths;
  std::vector<std::vector<uint8_t>> bytes;
};

// Sizes around the 4 kB alignment and the 8 MB pieces, random contents.
Files make_files(const std::string& tag) {
  Files f;
  std::mt19937_64 rng(42);
  const std::vector<size_t> sizes = {(size_t{10} << 20) + 123, 5, (size_t{17} << 20) + 4095, 4096};
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<uint8_t> b(sizes[i]);
    for (auto& x : b) x = static_cast<uint8_t>(rng());
    const std::string p = test::temp_dir() + "/ros-" + tag + "-" + std::to_string(i) + ".bin";
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    f.paths.push_back(p);
    f.bytes.push_back(std::move(b));
  }
  return f;
}

// Non-overlapping ranges at odd offsets and lengths (some a few bytes, some
// several pieces), with gaps between them, in file order.
std::vector<ReadOnceStream::Range> make_ranges(const Files& f) {
  std::vector<ReadOnceStream::Range> r;
  std::mt19937_64 rng(7);
  for (size_t i = 0; i < f.bytes.size(); ++i) {
    const uint64_t size = f.bytes[i].size();
    uint64_t at = 3;
    while (at < size) {
      const uint64_t len = std::min<uint64_t>(size - at, 1 + rng() % (uint64_t{5} << 20));
      r.push_back({i, at, len});
      at += len + rng() % 10000;
    }
  }
  return r;
}

void expect_digests(ReadOnceStream& s, const Files& f) {
  const auto d = s.digests();
  ASSERT_EQ(d.size(), f.paths.size());
  for (size_t i = 0; i < d.size(); ++i) EXPECT_EQ(d[i], sha256_file(f.paths[i])) << f.paths[i];
}

// Asks for `order`'s ranges one after another; each kept one must hold the file's bytes.
ReadOnceStream::Stats consume(ReadOnceStream& s, const Files& f, const std::vector<ReadOnceStream::Range>& ranges,
                              const std::vector<size_t>& order) {
  int64_t kept = 0;
  for (size_t i : order) {
    const uint8_t* p = s.acquire(i);
    if (p) {
      ++kept;
      const auto& r = ranges[i];
      EXPECT_EQ(std::memcmp(p, f.bytes[r.file].data() + r.offset, r.bytes), 0) << "range " << i;
      s.release(i);
    }
  }
  const auto st = s.stats();
  EXPECT_LE(kept, st.kept);  // the stream may have read ranges that were given up later
  return st;
}

std::vector<size_t> iota(size_t n) {
  std::vector<size_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

TEST(ReadOnceStream, FileOrderKeepsEveryRangeAndHashesEveryByte) {
  const Files f = make_files("order");
  const auto ranges = make_ranges(f);
  for (const char* direct : {"1", "0"}) {
    ::setenv("OPTIQ_DIRECT_IO", direct, 1);
    ReadOnceStream s(f.paths, ranges, uint64_t{12} << 20);
    const auto st = consume(s, f, ranges, iota(ranges.size()));
    EXPECT_EQ(st.kept, static_cast<int64_t>(ranges.size())) << "OPTIQ_DIRECT_IO=" << direct;
    EXPECT_EQ(st.passed, 0);
    expect_digests(s, f);
    if (std::string(direct) == "0") {
      EXPECT_FALSE(s.stats().direct);
    }
  }
  ::unsetenv("OPTIQ_DIRECT_IO");
}

TEST(ReadOnceStream, ReversedOrderWithATightWindowPassesRangesButNeverHangs) {
  const Files f = make_files("reverse");
  const auto ranges = make_ranges(f);
  std::vector<size_t> order = iota(ranges.size());
  std::reverse(order.begin(), order.end());
  // Expected order = file order, asked in reverse: asking for the last gives
  // up all before it; the window holds two ranges at most.
  ReadOnceStream s(f.paths, ranges, uint64_t{10} << 20);
  const auto st = consume(s, f, ranges, order);
  EXPECT_GT(st.passed + st.kept, 0);
  expect_digests(s, f);
  // Expected order reversed too: asked as announced, against the files' order.
  std::vector<ReadOnceStream::Range> rev(ranges.rbegin(), ranges.rend());
  ReadOnceStream t(f.paths, rev, uint64_t{10} << 20);
  const auto st2 = consume(t, f, rev, iota(rev.size()));
  EXPECT_GT(st2.passed, 0);  // the window cannot hold what comes before the first range asked for
  expect_digests(t, f);
}

TEST(ReadOnceStream, SkippedRangesAreGivenUpAndLongRangesPassed) {
  const Files f = make_files("skip");
  auto ranges = make_ranges(f);
  ranges.push_back({2, 0, 0});  // empty, overlapping others: passed, never hangs
  std::vector<size_t> every_third;
  for (size_t i = 0; i < ranges.size(); i += 3) every_third.push_back(i);
  ReadOnceStream s(f.paths, ranges, uint64_t{6} << 20);  // some ranges are longer than this
  consume(s, f, ranges, every_third);
  expect_digests(s, f);
}

TEST(ReadOnceStream, DigestsGiveUpWhatWasNeverAskedFor) {
  // A resumed export asks for the first ranges only (the rest were written
  // already): the window fills with ranges nobody asks for, and digests()
  // must still finish.
  const Files f = make_files("unasked");
  const auto ranges = make_ranges(f);
  ReadOnceStream s(f.paths, ranges, uint64_t{6} << 20);
  consume(s, f, ranges, {0});
  expect_digests(s, f);
}

TEST(ReadOnceStream, NoWindowPassesEverythingAndStoppingEarlyReturns) {
  const Files f = make_files("nowin");
  const auto ranges = make_ranges(f);
  {
    ReadOnceStream s(f.paths, ranges, 0);
    EXPECT_EQ(s.acquire(1), nullptr);
    expect_digests(s, f);
  }
  { ReadOnceStream s(f.paths, ranges, uint64_t{6} << 20); }  // destroyed before anything is asked: no hang
  {
    ReadOnceStream s(f.paths, ranges, uint64_t{6} << 20);
    (void)s.acquire(0);  // held, never released
  }
}

TEST(ReadOnceStream, MissingFileIsAnErrorNamingIt) {
  const std::string missing = test::temp_dir() + "/ros-no-such-file.bin";
  try {
    ReadOnceStream s({missing}, {}, 1 << 20);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace optiq

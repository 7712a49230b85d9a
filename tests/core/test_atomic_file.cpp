// core/atomic_file.h: a target holds its old bytes or its new ones, never
// part of them; what a killed writer left is cleaned up by the next one; a
// full disk is a one-line error naming the file.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "test_util.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

// The pid of a process that has exited (and been reaped).
pid_t dead_pid() {
  const pid_t p = fork();
  if (p == 0) _exit(0);
  waitpid(p, nullptr, 0);
  return p;
}

// FileAppender: 8 MB buffers written with O_DIRECT where the file system
// takes it (else, or with OPTIQ_DIRECT_IO=0, plainly), the tail through the
// page cache at each flush and again with what follows: the file holds
// exactly the bytes appended, from a start at 0 or after an unaligned prefix,
// with writes of any size and flushes anywhere.
TEST(FileAppender, WritesExactlyTheBytesAppended) {
  for (const bool direct : {true, false}) {
    if (direct) ::unsetenv("OPTIQ_DIRECT_IO");
    else ::setenv("OPTIQ_DIRECT_IO", "0", 1);
    for (const uint64_t start : {uint64_t{0}, uint64_t{5000}}) {
      SCOPED_TRACE(std::string(direct ? "direct" : "plain") + ", start " + std::to_string(start));
      const std::string path = test::temp_dir() + "/f.bin";
      std::mt19937 rng(static_cast<uint32_t>(start + direct));
      std::vector<uint8_t> want(start);
      for (auto& b : want) b = static_cast<uint8_t>(rng());
      {
        std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(want.data()), want.size());
      }
      const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
      ASSERT_GE(fd, 0);
      {
        FileAppender out(fd, path, start);
        const size_t sizes[] = {1, 4095, 4097, 3 << 20, 9 << 20, 17, FileAppender::kBuffer, 123457, 20 << 20, 5};
        for (size_t n : sizes) {
          std::vector<uint8_t> chunk(n);
          for (auto& b : chunk) b = static_cast<uint8_t>(rng());
          ASSERT_EQ(out.write(chunk.data(), n), 0);
          want.insert(want.end(), chunk.begin(), chunk.end());
          if (rng() % 3 == 0) {
            ASSERT_EQ(out.flush(), 0);
          }
        }
        ASSERT_EQ(out.flush(), 0);
        if (!direct) {
          EXPECT_FALSE(out.direct());
        }
      }
      ::close(fd);
      std::ifstream in(path, std::ios::binary);
      std::vector<uint8_t> got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      ASSERT_EQ(got.size(), want.size());
      EXPECT_TRUE(got == want);
    }
  }
  ::unsetenv("OPTIQ_DIRECT_IO");
}

TEST(AtomicFile, CommitOrNothing) {
  const std::string dir = test::temp_dir(), path = dir + "/a.bin";
  write_file_atomic(path, "old");
  {
    AtomicFile f(path);
    f.write("new, but never committed");
  }
  EXPECT_EQ(test::read_file(path), "old");
  EXPECT_EQ(entries(dir), std::vector<std::string>{"a.bin"});
  {
    AtomicFile f(path);
    f.write("new");
    EXPECT_EQ(test::read_file(path), "old");  // until commit
    f.commit();
  }
  EXPECT_EQ(test::read_file(path), "new");
  EXPECT_EQ(entries(dir), std::vector<std::string>{"a.bin"});
}

TEST(AtomicFile, StaleTemporariesOfDeadWritersAreRemoved) {
  const std::string dir = test::temp_dir(), path = dir + "/x.gguf";
  const std::string dead = std::to_string(dead_pid()), me = std::to_string(getpid());
  for (const std::string& n : std::vector<std::string>{".x.gguf.tmp-" + dead + "-0", ".x.gguf.tmp-" + me + "-7", ".x.gguf.tmp-1-0",
                                                       ".y.gguf.tmp-" + dead + "-0", ".x.gguf.tmp-abc",
                                                       "x.gguf.tmp-" + dead})
    std::ofstream(dir + "/" + n) << "partial";
  fs::create_directory(dir + "/.x.gguf.tmp-" + dead);  // a killed MLX export's directory
  std::ofstream(dir + "/.x.gguf.tmp-" + dead + "/model.safetensors") << "partial";

  EXPECT_EQ(remove_stale_temporaries(path), 2);
  // Kept: this process's own, a live process's (pid 1), another target's, and names optiq never makes.
  std::vector<std::string> kept = {".x.gguf.tmp-" + me + "-7", ".x.gguf.tmp-1-0", ".x.gguf.tmp-abc",
                                   ".y.gguf.tmp-" + dead + "-0", "x.gguf.tmp-" + dead};
  std::sort(kept.begin(), kept.end());
  EXPECT_EQ(entries(dir), kept);
  // Writing the target cleans up the same way.
  std::ofstream(dir + "/.x.gguf.tmp-" + dead + "-3") << "partial";
  write_file_atomic(path, "whole");
  EXPECT_FALSE(fs::exists(dir + "/.x.gguf.tmp-" + dead + "-3"));
  EXPECT_EQ(test::read_file(path), "whole");
}

TEST(AtomicFile, CommitDirectoryReplacesWhole) {
  const std::string dir = test::temp_dir(), out = dir + "/model";
  auto make = [&](const std::string& content) {
    const std::string tmp = temporary_name(out);
    fs::create_directory(tmp);
    std::ofstream(tmp + "/config.json") << content;
    return tmp;
  };
  commit_directory(make("one"), out);
  EXPECT_EQ(test::read_file(out + "/config.json"), "one");
  commit_directory(make("two"), out);  // an existing directory is swapped out, then removed
  EXPECT_EQ(test::read_file(out + "/config.json"), "two");
  EXPECT_EQ(entries(dir), std::vector<std::string>{"model"});
}

TEST(AtomicFile, WriteFailureNamesTheFileAndTheReason) {
  EXPECT_NE(write_failure_reason(ENOSPC).find("the disk is full"), std::string::npos);
  EXPECT_NE(write_failure_reason(EDQUOT).find("quota"), std::string::npos);
  EXPECT_NE(write_failure_reason(EFBIG).find("File too large"), std::string::npos);

  // A file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes write() fail with
  // EFBIG, as a full disk makes it fail with ENOSPC: the same path. In a child,
  // so that the limit stays there.
  const std::string dir = test::temp_dir(), path = dir + "/big.bin";
  write_file_atomic(path, "old");
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    signal(SIGXFSZ, SIG_IGN);
    rlimit lim{1 << 16, 1 << 16};
    setrlimit(RLIMIT_FSIZE, &lim);
    std::string msg = "no error";
    try {
      AtomicFile f(path);
      const std::string block(1 << 20, 'x');
      for (int i = 0; i < 4; ++i) f.write(block);
      f.commit();
    } catch (const Error& e) {
      msg = e.what();
    }
    (void)!write(fds[1], msg.data(), msg.size());
    _exit(0);
  }
  close(fds[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(msg, path + ": write failed: " + write_failure_reason(EFBIG));
  EXPECT_EQ(test::read_file(path), "old");
  EXPECT_EQ(entries(dir), std::vector<std::string>{"big.bin"});  // the temporary is gone
}

}  // namespace
}  // namespace optiq

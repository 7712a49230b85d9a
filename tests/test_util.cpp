#include "test_util.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

namespace optiq::test {

std::string shared_dir() { return OPTIQ_SHARED_DIR; }

std::string cache_dir() {
  if (const char* c = std::getenv("OPTIQ_CACHE")) return c;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/tmp") + "/.cache/optiq";
}

namespace {
struct TempDirs {
  std::vector<std::string> dirs;
  ~TempDirs() {
    for (auto& d : dirs) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  }
};
TempDirs g_temp_dirs;
}  // namespace

std::string temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "optiq-test-XXXXXX").string();
  char* p = mkdtemp(tmpl.data());
  if (!p) std::abort();
  g_temp_dirs.dirs.push_back(tmpl);
  return tmpl;
}

bool file_exists(const std::string& path) { return std::filesystem::exists(path); }

std::vector<float> random_floats(size_t n, uint32_t seed, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = dist(rng);
    if (x == 0.0f) x = stddev * 1e-3f;
  }
  return v;
}

}  // namespace optiq::test

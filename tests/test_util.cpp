#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace optiq::test {

// The environment may point elsewhere (a copy of the tree on another machine).
std::string shared_dir() {
  const char* e = std::getenv("OPTIQ_SHARED_DIR");
  return e && *e ? e : OPTIQ_SHARED_DIR;
}

std::string stories() { return shared_dir() + "/models/stories260K/stories260K.gguf"; }

namespace {
std::string binary_dir() {
  const char* e = std::getenv("OPTIQ_BINARY_DIR");
  return e && *e ? e : OPTIQ_BINARY_DIR;
}
}  // namespace

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

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string calib_excerpt() {
  static const std::string path = [] {
    const std::string dst = temp_dir() + "/calib.txt";
    std::ofstream(dst, std::ios::binary) << read_file(shared_dir() + "/data/c4/c4-validation-2k.txt").substr(0, 20000);
    return dst;
  }();
  return path;
}

RunResult run_optiq(const std::string& args, bool merge_stderr) {
  const std::string cmd =
      binary_dir() + "/optiq -q " + args + (merge_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {127, "popen failed"};
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

std::string optiq_binary() { return binary_dir() + "/optiq"; }

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

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng() % 255 + 1);
  return v;
}

std::vector<float> correlated_inputs(int64_t n, int64_t cols, uint32_t seed) {
  const auto z = random_floats(static_cast<size_t>(n * cols), seed);
  const auto mix = random_floats(static_cast<size_t>(cols * 4), seed + 1);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < cols; ++j) {
      float v = z[t * cols + j];
      for (int m = 1; m <= 3; ++m) v += 0.5f * mix[j * 4 + m] * z[t * cols + (j + m * 7) % cols];
      const float scale = (j % 17 == 3) ? 30.0f : 1.0f + static_cast<float>(j % 5);
      x[t * cols + j] = v * scale;
    }
  return x;
}

std::vector<float> gram(const std::vector<float>& x, int64_t n, int64_t cols) {
  std::vector<float> h(static_cast<size_t>(cols * cols), 0.0f);
  for (int64_t a = 0; a < cols; ++a)
    for (int64_t c = 0; c < cols; ++c) {
      double s = 0;
      for (int64_t t = 0; t < n; ++t) s += double(x[t * cols + a]) * x[t * cols + c];
      h[a * cols + c] = static_cast<float>(s);
    }
  return h;
}

double output_error(const std::vector<float>& w, const std::vector<float>& wq, const std::vector<float>& h,
                    int64_t rows, int64_t cols) {
  double e = 0;
  std::vector<double> d(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) d[j] = double(w[r * cols + j]) - wq[r * cols + j];
    for (int64_t a = 0; a < cols; ++a)
      for (int64_t c = 0; c < cols; ++c) e += d[a] * h[a * cols + c] * d[c];
  }
  return e;
}

}  // namespace optiq::test

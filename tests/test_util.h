// Helpers shared by the GoogleTest suites: where the shared data and the model
// cache live, and reproducible random data.
#pragma once
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace optiq::test {

// ../shared (stories260K, wikitext, c4, tinystories).
std::string shared_dir();
// The stories260K model as an F32 GGUF (../shared/models/stories260K/stories260K.gguf).
std::string stories();
// $OPTIQ_CACHE or ~/.cache/optiq (downloaded models: see scripts/fetch_models.py).
std::string cache_dir();
// A fresh, empty temporary directory, removed at process exit.
std::string temp_dir();
bool file_exists(const std::string& path);
// A file's bytes ("" when it cannot be read).
std::string read_file(const std::string& path);
// The first 20 kB of the C4 calibration text, as a file in a temporary
// directory (tokenizing it all would cost more than the commands tested).
std::string calib_excerpt();

// Runs build/optiq -q ARGS; out holds stdout (and stderr when merge_stderr).
struct RunResult {
  int code;
  std::string out;
};
RunResult run_optiq(const std::string& args, bool merge_stderr = true);
// The CLI tests' calibration: 2 samples of 32 tokens (what stories260K needs to profile in a second).
inline const std::string kTinyCalib = " --calib-samples 2 --calib-seq 32";
// The optiq binary run_optiq runs ($OPTIQ_BINARY_DIR/optiq, else the build's).
std::string optiq_binary();

// Normal(0, stddev) floats from a fixed seed: never zeros.
std::vector<float> random_floats(size_t n, uint32_t seed, float stddev = 1.0f);
// Bytes 1..255 from a fixed seed (never zero: a parser that ignores a field cannot pass by luck).
std::vector<uint8_t> random_bytes(size_t n, uint32_t seed);

// GPTQ's test data (tests/model/test_gptq.cpp, tests/gpu): n tokens of
// `cols` inputs, a random mix of channels (correlated), each channel scaled
// by up to 30x (a few salient inputs), as activations are.
std::vector<float> correlated_inputs(int64_t n, int64_t cols, uint32_t seed);
// x^T x (cols x cols) of n rows.
std::vector<float> gram(const std::vector<float>& x, int64_t n, int64_t cols);
// sum_r d_r H d_r^T for d = w - w^: the output error under H.
double output_error(const std::vector<float>& w, const std::vector<float>& wq, const std::vector<float>& h,
                    int64_t rows, int64_t cols);

}  // namespace optiq::test

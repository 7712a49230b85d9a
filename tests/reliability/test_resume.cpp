// Resumable exports (issue 14 item 4; docs/reliability.md "Crash safety",
// "Exports resume"): optiq quantize killed with SIGKILL while it writes keeps its
// work in ".<out>.partial/", and the same command run again continues it
// ("resuming: N of M ... already written") to the bytes of an uninterrupted
// run; MLX shards (a tiny model with 1 MB shards), one-file MLX and GGUF. A
// changed option or --force starts over, a corrupted or truncated piece is
// written again, and nothing partial is left after a complete run. The kill
// delays are random; OPTIQ_CRASH_SEED=N replays a failure's.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/partial_output.h"
#include "model/exporter.h"
#include "model/model.h"
#include "reliability_util.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;
using namespace test;

// A Llama-shaped model of 2.4M parameters as a Hugging Face directory (fp16):
// 8-bit, it is 2.5 MB, three shards of 1 MB.
const std::string& sharded_model() {
  static const std::string dir = [] {
    ModelConfig c = tiny("llama");
    c.dim = 256, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64, c.hidden_dim = 512, c.n_layers = 4;
    c.validate("llama");
    Model m = random_model(c, 7, /*half=*/true);
    m.tokenizer = tiny_tokenizer(c.vocab_size);
    const std::string d = temp_dir() + "/hf";
    make_exporter("mlx")->write(m, d, {});
    return d;
  }();
  return dir;
}

struct Case {
  std::string name, out;  // the output's file name
  Args args;              // without -o
};

std::vector<Case> cases() {
  return {
      {"mlx-shards", "out", {"quantize", sharded_model(), "--bits", "8", "--method", "minmax", "--shard-size", "1MB"}},
      {"mlx-one-file", "out", {"quantize", stories_gguf(), "--shard-size", "0"}},
      {"gguf", "out.gguf", {"quantize", stories_gguf(), "--format", "gguf"}},
  };
}

Args with_out(Args a, const std::string& out) {
  a.push_back("-o");
  a.push_back(out);
  return a;
}

std::string partial_of(const std::string& out) { return PartialOutput::dir_for(out); }

nlohmann::json manifest(const std::string& out) {
  std::ifstream in(partial_of(out) + "/optiq-partial.json");
  if (!in) return nullptr;
  return nlohmann::json::parse(in, nullptr, false);
}

// Pieces the manifest records: complete files, and tensors of a file written in place.
int recorded_pieces(const nlohmann::json& m) {
  if (!m.is_object() || !m.contains("files")) return 0;
  int n = 0;
  for (const auto& [name, f] : m["files"].items())
    n += f.value("complete", false) ? 1 : std::max<int>(0, f.value("pieces", 0) - 1);
  return n;
}

// Runs to the end; its stderr.
std::string run_logged(const Args& args, int* code = nullptr) {
  const std::string log = temp_dir() + "/err.log";
  const int c = run_child(args, {.err_log = log});
  if (code) *code = c;
  else EXPECT_EQ(c, 0) << read_file(log);
  return read_file(log);
}

// Reused pieces a rerun reported ("resuming: N of M ..."); 0 when it did not resume.
int resumed_pieces(const std::string& err) {
  const auto at = err.find("resuming: ");
  return at == std::string::npos ? 0 : std::atoi(err.c_str() + at + 10);
}

// Kills `args` once `ready()` (polled); false when the run ended first.
bool kill_when(const Args& args, const std::function<bool()>& ready) {
  const pid_t pid = spawn_optiq(args);
  for (int i = 0; i < 200000; ++i) {
    if (ready()) {
      kill(pid, SIGKILL);
      return wait_child(pid) == 128 + SIGKILL;
    }
    if (waitpid(pid, nullptr, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  kill(pid, SIGKILL);
  wait_child(pid);
  return false;
}

// Kills `args` once the manifest records at least `pieces` pieces.
bool kill_when_recorded(const Args& args, const std::string& out, int pieces) {
  return kill_when(args, [&] { return recorded_pieces(manifest(out)) >= pieces; });
}

TEST(Resume, QuantizeKilledContinuesToTheSameBytes) {
  const uint64_t seed = crash_seed();
  SCOPED_TRACE("OPTIQ_CRASH_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const Case& k : cases()) {
    SCOPED_TRACE(k.name);
    const std::string dir = temp_dir(), out = dir + "/" + k.out, ref = temp_dir() + "/" + k.out;
    const auto t0 = std::chrono::steady_clock::now();
    run_logged(with_out(k.args, ref));
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int resumed = 0, killed = 0;
    for (int i = 0; i < 10; ++i) {
      const double delay = std::uniform_real_distribution<double>(0.2 * t, 1.1 * t)(rng);
      SCOPED_TRACE("iteration " + std::to_string(i) + ", killed after " + std::to_string(delay) + " s");
      const pid_t pid = spawn_optiq(with_out(k.args, out));
      std::this_thread::sleep_for(std::chrono::duration<double>(delay));
      kill(pid, SIGKILL);
      killed += wait_child(pid) == 128 + SIGKILL;
      EXPECT_EQ(absent_or_same(out, ref), "");
      if (!fs::exists(out)) {  // else it finished before the kill
        const std::string err = run_logged(with_out(k.args, out));  // the same command: continues
        resumed += resumed_pieces(err) > 0;
      }
      EXPECT_EQ(same(out, ref), "");
      EXPECT_FALSE(fs::exists(partial_of(out))) << "a complete run leaves no partial work";
      fs::remove_all(out);
    }
    EXPECT_GT(killed, 0);
    // Random delays may all miss the write: one kill at a recorded piece for sure.
    if (resumed == 0) {
      ASSERT_TRUE(kill_when_recorded(with_out(k.args, out), out, 1)) << "the run ended before a piece was recorded";
      const std::string err = run_logged(with_out(k.args, out));
      EXPECT_GT(resumed_pieces(err), 0) << err;
      EXPECT_EQ(same(out, ref), "");
      resumed += resumed_pieces(err) > 0;
    }
    EXPECT_GT(resumed, 0);
    EXPECT_FALSE(fs::exists(partial_of(out)));
    EXPECT_EQ(temporaries_in(dir), std::vector<std::string>{});
  }
}

TEST(Resume, ChangedOptionOrForceStartsOver) {
  for (const Case& k : cases()) {
    SCOPED_TRACE(k.name);
    const std::string dir = temp_dir(), out = dir + "/" + k.out, ref = temp_dir() + "/" + k.out;
    // Another option that changes the bytes: the group size.
    Args other = k.args;
    other.insert(other.end(), {"--group-size", "32"});
    run_logged(with_out(other, ref));
    ASSERT_TRUE(kill_when_recorded(with_out(k.args, out), out, 1));
    std::string err = run_logged(with_out(other, out));
    EXPECT_NE(err.find("starting over"), std::string::npos) << err;
    EXPECT_EQ(resumed_pieces(err), 0) << err;
    EXPECT_EQ(same(out, ref), "");
    EXPECT_FALSE(fs::exists(partial_of(out)));
    // --force discards the partial work of the same command.
    fs::remove_all(out);
    ASSERT_TRUE(kill_when_recorded(with_out(other, out), out, 1));
    Args forced = with_out(other, out);
    forced.push_back("--force");
    err = run_logged(forced);
    EXPECT_NE(err.find("discarding the partial work"), std::string::npos) << err;
    EXPECT_EQ(resumed_pieces(err), 0) << err;
    EXPECT_EQ(same(out, ref), "");
    EXPECT_FALSE(fs::exists(partial_of(out)));
  }
}

TEST(Resume, CorruptedOrTruncatedPieceIsWrittenAgain) {
  for (const Case& k : cases()) {
    for (const bool truncate : {false, true}) {
      SCOPED_TRACE(k.name + (truncate ? ", truncated" : ", corrupted"));
      const std::string dir = temp_dir(), out = dir + "/" + k.out, ref = temp_dir() + "/" + k.out;
      run_logged(with_out(k.args, ref));
      ASSERT_TRUE(kill_when_recorded(with_out(k.args, out), out, 1));
      // The first recorded piece's file: a byte in the middle flipped, or cut short.
      const nlohmann::json m = manifest(out);
      std::string piece;
      uint64_t bytes = 0;
      for (const auto& [name, f] : m["files"].items())
        if (f.value("complete", false) || f.value("pieces", 0) > 1) {
          piece = partial_of(out) + "/" + name;
          bytes = f["bytes"].get<uint64_t>();
          break;
        }
      ASSERT_FALSE(piece.empty()) << m.dump();
      if (truncate) {
        fs::resize_file(piece, bytes - 1);
      } else {
        std::fstream f(piece, std::ios::in | std::ios::out | std::ios::binary);
        f.seekg(static_cast<std::streamoff>(bytes / 2));
        const char c = static_cast<char>(f.get() ^ 0x5a);
        f.seekp(static_cast<std::streamoff>(bytes / 2));
        f.put(c);
      }
      const std::string err = run_logged(with_out(k.args, out));
      EXPECT_NE(err.find("does not match its record"), std::string::npos) << err;
      EXPECT_EQ(same(out, ref), "");
      EXPECT_FALSE(fs::exists(partial_of(out)));
    }
  }
}

// optiq auto killed in measured selection, then in the export: each rerun
// continues that stage (plans measured already, tensors written already), and
// the outputs are an uninterrupted run's.
TEST(Resume, AutoContinuesMeasuredSelectionAndExport) {
  const std::string ref = temp_dir(), run = temp_dir();
  auto args = [&](const std::string& d) {
    return Args{"auto", stories_gguf(), "--calib", calib_excerpt(), "--calib-samples", "4", "--calib-seq", "64",
                "--bpw", "6", "-o", d + "/model"};
  };
  run_logged(args(ref));
  const std::string plan_ckpt = run + "/model.plan.json.partial";
  ASSERT_TRUE(kill_when(args(run), [&] { return fs::exists(plan_ckpt); })) << "measured selection ended first";
  // The rerun takes the plans measured already; killed again in the export.
  const std::string log = temp_dir() + "/err.log";
  const pid_t pid = spawn_optiq(args(run), {.err_log = log});
  bool killed = false;
  for (int i = 0; i < 200000 && !killed; ++i) {
    if (recorded_pieces(manifest(run + "/model")) >= 1) {
      kill(pid, SIGKILL);
      killed = true;
      break;
    }
    if (waitpid(pid, nullptr, WNOHANG) == pid) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (killed) wait_child(pid);
  const std::string err1 = read_file(log);
  EXPECT_NE(err1.find("plans measured already"), std::string::npos) << err1;
  ASSERT_TRUE(killed) << "the export ended before a piece was recorded";
  EXPECT_TRUE(fs::exists(plan_ckpt)) << "kept until the export is done";
  const std::string err2 = run_logged(args(run));
  // No plan measured again (all were), the export continued.
  const auto plans = err2.find("resuming: "), tensors = err2.find("tensors already written");
  ASSERT_NE(plans, std::string::npos) << err2;
  ASSERT_NE(tensors, std::string::npos) << err2;
  EXPECT_GT(resumed_pieces(err2.substr(err2.rfind("resuming: "))), 0) << err2;
  for (const std::string o : {"model", "model.plan.json", "model.profile.json"})
    EXPECT_EQ(same(run + "/" + o, ref + "/" + o), "") << o;
  EXPECT_FALSE(fs::exists(partial_of(run + "/model")));
  EXPECT_FALSE(fs::exists(plan_ckpt));
}

}  // namespace
}  // namespace optiq

// Crash safety (issue 15 item 3; docs/reliability.md "Crash safety"): optiq
// quantize, profile and auto killed with SIGKILL at random moments never
// leave a partial file at an output path (each is absent, or byte for byte
// what an uninterrupted run writes); an interrupted profile resumes from its
// checkpoint to the same bytes; a full disk is a one-line error naming the
// file, and leaves nothing corrupt: simulated with a file size limit (write()
// fails with EFBIG as it fails with ENOSPC), and real (ENOSPC) on a small
// tmpfs in a user + mount namespace where those are allowed. Temporaries of
// killed runs are removed by the next run. The kill delays are random;
// OPTIQ_CRASH_SEED=N replays a failure's.
#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "profile/sensitivity.h"
#include "reliability_util.h"
#include "test_util.h"

namespace optiq {
namespace {

namespace fs = std::filesystem;
using namespace test;

double seconds_to_run(const Args& args, const ChildOptions& o = {}) {
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(run_child(args, o), 0);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Starts `args`, sends SIGKILL after `delay` seconds; true when it was still running.
bool kill_after(const Args& args, double delay) {
  const pid_t pid = spawn_optiq(args);
  std::this_thread::sleep_for(std::chrono::duration<double>(delay));
  kill(pid, SIGKILL);
  return wait_child(pid) == 128 + SIGKILL;
}

// Entries of `dir` other than `allowed`, the temporaries of those names and their partial work.
std::vector<std::string> unexpected_entries(const std::string& dir, const std::set<std::string>& allowed) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    bool ok = allowed.count(n) > 0;
    // and the partial work of an interrupted export (docs/reliability.md "Crash safety", "Exports resume")
    for (const auto& a : allowed) ok = ok || n.rfind("." + a + ".tmp-", 0) == 0 || n == "." + a + ".partial";
    if (!ok) v.push_back(n);
  }
  return v;
}

const ModelConfig& stories_config() {
  static const Model m = load_model(stories_gguf(), {.load_weights = false});
  return m.config;
}

// A checkpoint, when there is one, is a whole profile of this model.
void expect_valid_checkpoint(const std::string& path) {
  if (!fs::exists(path)) return;
  EXPECT_NO_THROW(SensitivityTable::read(path, stories_config())) << path;
}

TEST(CrashSafety, QuantizeKilledLeavesOldOrNewOutputOnly) {
  const uint64_t seed = crash_seed();
  SCOPED_TRACE("OPTIQ_CRASH_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const std::string format : {"gguf", "mlx"}) {
    SCOPED_TRACE(format);
    const std::string dir = temp_dir();
    const std::string name = format == "gguf" ? "out.gguf" : "out", out = dir + "/" + name;
    const std::string ref = dir + "/ref" + (format == "gguf" ? ".gguf" : "");
    auto args = [&](const std::string& o) {
      return with({"quantize", stories_gguf(), "--format", format, "--calib", calib_excerpt(), "-o", o, "--force"}, kCalib);
    };
    const double t = seconds_to_run(args(ref));
    int killed = 0;
    for (int i = 0; i < 16; ++i) {
      if (i % 4 == 0) fs::remove_all(out);  // from nothing; otherwise replacing a complete output
      const double delay = std::uniform_real_distribution<double>(0, 1.5 * t)(rng);
      killed += kill_after(args(out), delay);
      EXPECT_EQ(absent_or_same(out, ref), "") << "iteration " << i << ", killed after " << delay << " s";
      EXPECT_EQ(unexpected_entries(dir, {name, fs::path(ref).filename().string()}), std::vector<std::string>{});
    }
    EXPECT_GT(killed, 0) << "no run was killed before it ended (runs take " << t << " s)";
    ASSERT_EQ(run_child(args(out)), 0);
    EXPECT_EQ(same(out, ref), "");
    EXPECT_EQ(temporaries_in(dir), std::vector<std::string>{}) << "the last run removes what killed runs left";
  }
}

TEST(CrashSafety, ProfileKilledResumesToTheSameBytes) {
  const uint64_t seed = crash_seed();
  SCOPED_TRACE("OPTIQ_CRASH_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::string dir = temp_dir(), cache = dir + "/p.json", ref = dir + "/ref.json";
  const std::string partial = profile_checkpoint_path(cache);
  auto args = [&](const std::string& c) {
    return with({"profile", stories_gguf(), "--calib", calib_excerpt(), "--method", "exact", "--candidates", "2,4,8x64",
                 "--cache", c},
                kCalib);
  };
  const std::string logs = temp_dir(), log = logs + "/resumed.out", ref_log = logs + "/ref.out";
  const double t = seconds_to_run(with(args(ref), {"--json"}), {.out_log = ref_log});
  const int measurements = nlohmann::json::parse(read_file(ref_log))["exact_measured"].get<int>();
  int checkpoints = 0, i = 0;
  for (; i < 60; ++i) {
    const double delay = std::uniform_real_distribution<double>(0, t)(rng);
    kill_after(args(cache), delay);
    SCOPED_TRACE("iteration " + std::to_string(i) + ", killed after " + std::to_string(delay) + " s");
    EXPECT_EQ(absent_or_same(cache, ref), "");
    EXPECT_EQ(absent_or_same(cache + ".windows", ref + ".windows"), "");
    expect_valid_checkpoint(partial);
    checkpoints += fs::exists(partial);
    EXPECT_EQ(unexpected_entries(dir, {"p.json", "p.json.windows", "p.json.partial", "ref.json", "ref.json.windows"}),
              std::vector<std::string>{});
    if (fs::exists(cache)) {  // it finished: start over, to be interrupted again
      EXPECT_FALSE(fs::exists(partial)) << "a finished profile removes its checkpoint";
      fs::remove(cache);
      fs::remove(cache + ".windows");
    }
    if (i >= 7 && fs::exists(partial)) break;
  }
  ASSERT_TRUE(fs::exists(partial)) << "no kill landed while the profile was measuring (" << i << " runs of " << t << " s)";
  // The resumed run measures only what the checkpoint lacks, and ends with the uninterrupted run's bytes.
  ASSERT_EQ(run_child(with(args(cache), {"--json"}), {.out_log = log}), 0);
  EXPECT_LT(nlohmann::json::parse(read_file(log))["exact_measured"].get<int>(), measurements) << "nothing was resumed";
  EXPECT_EQ(same(cache, ref), "");
  EXPECT_EQ(same(cache + ".windows", ref + ".windows"), "");
  EXPECT_FALSE(fs::exists(partial));
  EXPECT_EQ(temporaries_in(dir), std::vector<std::string>{});
  EXPECT_GT(checkpoints, 0);
}

TEST(CrashSafety, AutoKilledLeavesCompleteOutputsAndResumes) {
  const uint64_t seed = crash_seed();
  SCOPED_TRACE("OPTIQ_CRASH_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::string ref = temp_dir(), run = temp_dir();
  auto args = [&](const std::string& d) {
    return with({"auto", stories_gguf(), "--calib", calib_excerpt(), "--bpw", "6", "-o", d + "/model", "--force"}, kCalib);
  };
  const std::vector<std::string> outputs = {"model", "model.plan.json", "model.profile.json",
                                            "model.profile.json.windows"};
  const double t = seconds_to_run(args(ref));
  for (const auto& o : outputs) ASSERT_TRUE(fs::exists(ref + "/" + o)) << o;
  for (int i = 0; i < 12; ++i) {
    const double delay = std::uniform_real_distribution<double>(0, 1.2 * t)(rng);
    kill_after(args(run), delay);
    SCOPED_TRACE("iteration " + std::to_string(i) + ", killed after " + std::to_string(delay) + " s");
    for (const auto& o : outputs) EXPECT_EQ(absent_or_same(run + "/" + o, ref + "/" + o), "");
    expect_valid_checkpoint(run + "/model.profile.json.partial");
    EXPECT_EQ(unexpected_entries(run, {"model", "model.plan.json", "model.profile.json", "model.profile.json.windows",
                                       "model.profile.json.partial", "model.plan.json.partial"}),
              std::vector<std::string>{});
  }
  ASSERT_EQ(run_child(args(run)), 0);
  for (const auto& o : outputs) EXPECT_EQ(same(run + "/" + o, ref + "/" + o), "");
  EXPECT_FALSE(fs::exists(run + "/model.profile.json.partial"));
  EXPECT_FALSE(fs::exists(run + "/model.plan.json.partial"));
  EXPECT_FALSE(fs::exists(run + "/.model.partial"));
  EXPECT_EQ(temporaries_in(run), std::vector<std::string>{});
}

// --- a full disk ---------------------------------------------------------------------------------

// The child's stderr: exactly one line, the error naming `path`, a write failure, the reason.
void expect_write_error(const std::string& err, const std::string& path) {
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_EQ(err.rfind("optiq: error: " + path + ": write failed: ", 0), 0u) << err;
  EXPECT_NE(err.find("File too large"), std::string::npos) << err;
}

TEST(CrashSafety, FullDiskIsOneLineAndLeavesNothingCorrupt) {
  const std::string dir = temp_dir(), err = dir + "/err.log";
  const ChildOptions limited{.err_log = err, .file_size_limit = 64 << 10};  // a 64 kB "disk"
  for (const std::string format : {"gguf", "mlx"}) {
    SCOPED_TRACE(format);
    const std::string out = dir + "/q" + (format == "gguf" ? ".gguf" : ""), ref = out + ".ref";
    const Args args = {"quantize", stories_gguf(), "--format", format, "-o", out, "--force"};
    EXPECT_EQ(run_child(args, limited), 1);
    expect_write_error(read_file(err), format == "gguf" ? out : out + "/model.safetensors");
    EXPECT_FALSE(fs::exists(out));
    EXPECT_EQ(temporaries_in(dir), std::vector<std::string>{});
    // Replacing a complete output: it stays as it was.
    ASSERT_EQ(run_child(args), 0);
    fs::copy(out, ref, fs::copy_options::recursive);
    EXPECT_EQ(run_child(args, limited), 1);
    EXPECT_EQ(same(out, ref), "");
    EXPECT_EQ(temporaries_in(dir), std::vector<std::string>{});
  }

  // profile: the checkpoint outgrows the limit after some modules; the run
  // afterwards resumes from the last checkpoint that fit.
  const std::string cache = dir + "/p.json", ref = dir + "/p.ref.json";
  auto profile = [&](const std::string& c) {
    return with({"profile", stories_gguf(), "--calib", calib_excerpt(), "--cache", c}, kCalib);
  };
  ASSERT_EQ(run_child(profile(ref)), 0);
  EXPECT_EQ(run_child(profile(cache), {.err_log = err, .file_size_limit = 16 << 10}), 1);
  expect_write_error(read_file(err), profile_checkpoint_path(cache));
  EXPECT_FALSE(fs::exists(cache));
  ASSERT_TRUE(fs::exists(profile_checkpoint_path(cache)));
  expect_valid_checkpoint(profile_checkpoint_path(cache));
  ASSERT_EQ(run_child(profile(cache)), 0);
  EXPECT_EQ(same(cache, ref), "");
  EXPECT_FALSE(fs::exists(profile_checkpoint_path(cache)));

  // auto: the profile and plan fit, the export does not: they stay complete, no model appears.
  const std::string a = temp_dir(), b = temp_dir();
  auto autorun = [&](const std::string& d) {
    return with({"auto", stories_gguf(), "--calib", calib_excerpt(), "--bpw", "6", "-o", d + "/model"}, kCalib);
  };
  ASSERT_EQ(run_child(autorun(a)), 0);
  EXPECT_EQ(run_child(autorun(b), {.err_log = err, .file_size_limit = 100 << 10}), 1);
  expect_write_error(read_file(err), b + "/model/model.safetensors");
  EXPECT_FALSE(fs::exists(b + "/model"));
  for (const char* o : {"/model.plan.json", "/model.profile.json", "/model.profile.json.windows"})
    EXPECT_EQ(same(b + o, a + o), "");
  EXPECT_EQ(temporaries_in(b), std::vector<std::string>{});
}

// A real full disk: `unshare -rm` (a user + mount namespace, no root needed)
// mounts a tmpfs too small for the output over an empty directory, and optiq
// writes there; write() fails with ENOSPC. The binary and the model stay
// outside. Skipped where user namespaces are not allowed (many containers).

// Bytes a tmpfs needs to hold `path` (a file or a directory's files), page by page.
int64_t tmpfs_bytes(const std::string& path) {
  auto pages = [](uintmax_t n) { return static_cast<int64_t>((n + 4095) / 4096 * 4096); };
  if (!fs::is_directory(path)) return pages(fs::file_size(path));
  int64_t n = 0;
  for (const auto& f : files_under(path)) n += pages(fs::file_size(path + "/" + f));
  return n;
}

// After a run on the tmpfs over `mnt`: the mount went with the namespace and
// nothing was written to the directory underneath.
void expect_tmpfs_gone(const std::string& mnt) {
  EXPECT_FALSE(is_mount_point(mnt)) << mnt;
  EXPECT_TRUE(fs::is_empty(mnt)) << mnt << " holds files: they were written outside the tmpfs";
}

void expect_enospc_error(const std::string& err, const std::string& path) {
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_EQ(err.rfind("optiq: error: " + path + ": write failed: ", 0), 0u) << err;
  EXPECT_NE(err.find("the disk is full (No space left on device)"), std::string::npos) << err;
}

TEST(CrashSafety, RealFullDiskTmpfs) {
  if (const std::string why = small_tmpfs_unavailable(); !why.empty()) GTEST_SKIP() << why;
  for (const std::string format : {"gguf", "mlx"}) {
    SCOPED_TRACE(format);
    const std::string name = format == "gguf" ? "q.gguf" : "q";
    const std::string refs = temp_dir(), ref = refs + "/" + name;
    auto args = [&](const std::string& dir) {
      return Args{"quantize", stories_gguf(), "--format", format, "-o", dir + "/" + name, "--force"};
    };
    ASSERT_EQ(run_child(args(refs)), 0);
    const std::string failing_file = format == "gguf" ? name : name + "/model.safetensors";
    ASSERT_GT(tmpfs_bytes(ref), 128 << 10) << "the output would fit on the 64 kB tmpfs";

    // From nothing: a 64 kB tmpfs.
    {
      const std::string mnt = temp_dir(), snap = temp_dir();
      const TmpfsRun r = run_on_small_tmpfs(args(mnt), mnt, 64 << 10, {}, snap);
      ASSERT_NE(r.code, -1) << r.err;
      EXPECT_EQ(r.script_err, "");
      EXPECT_EQ(r.code, 1) << r.err;
      expect_enospc_error(r.err, mnt + "/" + failing_file);
      EXPECT_EQ(r.left, std::vector<std::string>{}) << "the tmpfs should be empty after the failure";
      expect_tmpfs_gone(mnt);
    }
    // Over a complete output: it fits, with 64 kB to spare, but not a second one beside it.
    {
      const std::string mnt = temp_dir(), snap = temp_dir();
      const TmpfsRun r = run_on_small_tmpfs(args(mnt), mnt, tmpfs_bytes(ref) + (64 << 10), {ref}, snap);
      ASSERT_NE(r.code, -1) << r.err;
      EXPECT_EQ(r.script_err, "");
      EXPECT_EQ(r.code, 1) << r.err;
      expect_enospc_error(r.err, mnt + "/" + failing_file);
      EXPECT_EQ(r.left, std::vector<std::string>{name}) << "only the old output should be left";
      EXPECT_EQ(same(snap + "/" + name, ref), "") << "the old output should be unchanged";
      expect_tmpfs_gone(mnt);
    }
  }

  // profile: the checkpoint, rewritten after every module, outgrows the
  // tmpfs; the last one that fit stays, whole, and a run elsewhere resumes
  // from it to the reference bytes.
  const std::string refs = temp_dir(), ref = refs + "/p.json";
  auto profile = [&](const std::string& dir) {
    return with({"profile", stories_gguf(), "--calib", calib_excerpt(), "--cache", dir + "/p.json"}, kCalib);
  };
  const std::string logs = temp_dir();
  ASSERT_EQ(run_child(with(profile(refs), {"--json"}), {.out_log = logs + "/ref.json"}), 0);
  const int measurements = nlohmann::json::parse(read_file(logs + "/ref.json"))["exact_measured"].get<int>();
  const std::string mnt = temp_dir(), snap = temp_dir();
  const TmpfsRun r = run_on_small_tmpfs(profile(mnt), mnt, 32 << 10, {}, snap);
  ASSERT_NE(r.code, -1) << r.err;
  EXPECT_EQ(r.script_err, "");
  EXPECT_EQ(r.code, 1) << r.err;
  expect_enospc_error(r.err, profile_checkpoint_path(mnt + "/p.json"));
  EXPECT_EQ(r.left, std::vector<std::string>{"p.json.partial"}) << "the window cache is written with the profile";
  expect_tmpfs_gone(mnt);
  const std::string checkpoint = profile_checkpoint_path(snap + "/p.json");
  ASSERT_TRUE(fs::exists(checkpoint));
  expect_valid_checkpoint(checkpoint);
  ASSERT_EQ(run_child(with(profile(snap), {"--json"}), {.out_log = logs + "/resumed.json"}), 0);
  EXPECT_LT(nlohmann::json::parse(read_file(logs + "/resumed.json"))["exact_measured"].get<int>(), measurements)
      << "nothing was resumed";
  EXPECT_EQ(same(snap + "/p.json", ref), "");
  EXPECT_FALSE(fs::exists(checkpoint));
}

}  // namespace
}  // namespace optiq

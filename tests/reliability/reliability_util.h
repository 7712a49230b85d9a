// Running the optiq binary as a child the test controls: killed with SIGKILL
// after a delay, or with a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so
// that write() fails with EFBIG as it fails with ENOSPC on a full disk), and
// comparing what it left on disk; or inside a user + mount namespace
// (`unshare -rm`, no root needed) whose only change is a small tmpfs over the
// output directory, so that write() fails with a real ENOSPC.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace optiq::test {

// An optiq command line, one argument a string.
using Args = std::vector<std::string>;
// The calibration of the reliability tests' profiles: 4 samples of 64 tokens.
inline const Args kCalib = {"--calib-samples", "4", "--calib-seq", "64"};
// a, then more.
inline Args with(Args a, const Args& more) {
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

struct ChildOptions {
  std::string out_log = "/dev/null", err_log = "/dev/null";  // the child's stdout and stderr
  int64_t file_size_limit = -1;                               // bytes; -1: none
};

// Starts `optiq -q ARGS` and returns its pid.
pid_t spawn_optiq(const std::vector<std::string>& args, const ChildOptions& o = {});
// Waits for it: the exit code, or 128 + the signal that ended it.
int wait_child(pid_t pid);
// Runs it to the end.
int run_child(const std::vector<std::string>& args, const ChildOptions& o = {});

// Every regular file under `root`, relative to it, sorted.
std::vector<std::string> files_under(const std::string& root);
// Entries directly in `dir` whose name holds ".tmp-" (optiq's temporaries).
std::vector<std::string> temporaries_in(const std::string& dir);

// "" when `path` does not exist or holds exactly what `ref` holds (a file, or
// a directory with the same files, each the same bytes); else what differs.
std::string absent_or_same(const std::string& path, const std::string& ref);
// "" when both exist and are the same.
std::string same(const std::string& path, const std::string& ref);

std::string stories_gguf();

// The seed of the random kill points: OPTIQ_CRASH_SEED when set (to replay a
// failure the test printed), else a fresh one.
uint64_t crash_seed();

// --- a real full disk: a small tmpfs in a user + mount namespace ---

// "" when `unshare -rm` can start a user + mount namespace here and mount a
// tmpfs in it; else why not (CI containers often forbid user namespaces).
std::string small_tmpfs_unavailable();

struct TmpfsRun {
  int code = -1;                  // optiq's exit code (128 + signal); -1: the namespace or tmpfs could not be set up
  std::string err;                // optiq's stderr (when code is -1: why the setup failed)
  std::vector<std::string> left;  // `ls -A dir` after optiq ended, before the tmpfs went away
  std::string script_err;         // what the listing and the copy to `snapshot` wrote to stderr ("" when all went well)
};
// Runs `optiq -q ARGS` in a new user + mount namespace in which `dir` (an
// empty directory outside) is a tmpfs of `size` bytes holding a copy of each
// of `preload` (paths outside it). The optiq binary and its inputs stay
// outside the tmpfs. After optiq ends, what the tmpfs holds is copied into
// `snapshot` (an empty directory outside); the tmpfs goes with the namespace,
// leaving `dir` as it was.
TmpfsRun run_on_small_tmpfs(const std::vector<std::string>& args, const std::string& dir, int64_t size,
                            const std::vector<std::string>& preload, const std::string& snapshot);
// Whether a mount on `dir` is visible in this process (/proc/self/mountinfo).
bool is_mount_point(const std::string& dir);

}  // namespace optiq::test

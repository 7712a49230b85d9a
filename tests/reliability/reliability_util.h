// Running the optiq binary as a child the test controls: killed with SIGKILL
// after a delay, or with a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so
// that write() fails with EFBIG as it fails with ENOSPC on a full disk), and
// comparing what it left on disk.
#pragma once
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace optiq::test {

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

}  // namespace optiq::test

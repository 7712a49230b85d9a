#include "reliability_util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_util.h"

namespace optiq::test {

namespace fs = std::filesystem;

pid_t spawn_optiq(const std::vector<std::string>& args, const ChildOptions& o) {
  const std::string bin = optiq_binary();
  std::vector<std::string> all = {bin, "-q"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid != 0) return pid;
  // The child: only async-signal-safe calls until exec.
  const int out = ::open(o.out_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const int err = ::open(o.err_log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (out < 0 || err < 0) _exit(126);
  dup2(out, 1);
  dup2(err, 2);
  if (o.file_size_limit >= 0) {
    signal(SIGXFSZ, SIG_IGN);  // write() then fails with EFBIG instead of the signal killing the process
    const rlimit lim{static_cast<rlim_t>(o.file_size_limit), static_cast<rlim_t>(o.file_size_limit)};
    setrlimit(RLIMIT_FSIZE, &lim);
  }
  execv(bin.c_str(), argv.data());
  _exit(127);
}

int wait_child(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int run_child(const std::vector<std::string>& args, const ChildOptions& o) { return wait_child(spawn_optiq(args, o)); }

std::vector<std::string> files_under(const std::string& root) {
  std::vector<std::string> v;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec))
    if (it->is_regular_file()) v.push_back(fs::relative(it->path(), root).string());
  std::sort(v.begin(), v.end());
  return v;
}

std::vector<std::string> temporaries_in(const std::string& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

std::string same(const std::string& path, const std::string& ref) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return path + " does not exist";
  if (fs::is_directory(ref)) {
    if (!fs::is_directory(path)) return path + " is not a directory";
    const auto a = files_under(path), b = files_under(ref);
    if (a != b) {
      std::string s = path + " holds other files than " + ref + ":";
      for (const auto& f : a) s += " " + f;
      return s;
    }
    for (const auto& f : a)
      if (read_file(path + "/" + f) != read_file(ref + "/" + f)) return path + "/" + f + " differs from " + ref + "/" + f;
    return "";
  }
  if (read_file(path) != read_file(ref))
    return path + " (" + std::to_string(fs::file_size(path)) + " bytes) differs from " + ref + " (" +
           std::to_string(fs::file_size(ref)) + " bytes)";
  return "";
}

std::string absent_or_same(const std::string& path, const std::string& ref) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return "";
  return same(path, ref);
}

std::string stories_gguf() { return shared_dir() + "/models/stories260K/stories260K.gguf"; }

}  // namespace optiq::test

#include "reliability_util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <random>
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

namespace {

// `s` as one sh word.
std::string sh_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `argv` (looked up in PATH) with stdin from /dev/null and stdout and
// stderr to `log`; its exit code, 128 + signal, or 127 when it cannot be run.
int run_command(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> all = args;
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    const int in = ::open("/dev/null", O_RDONLY);
    const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0) _exit(126);
    dup2(in, 0);
    dup2(out, 1);
    dup2(out, 2);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  return wait_child(pid);
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

constexpr int kSetupFailed = 97;  // the script's exit code when the tmpfs or the preload failed

}  // namespace

std::string small_tmpfs_unavailable() {
  static const std::string reason = [] {
    const std::string logs = temp_dir(), mnt = temp_dir(), log = logs + "/probe.log";
    int rc = run_command({"unshare", "-rm", "true"}, log);
    if (rc == 127) return std::string("no `unshare` in PATH (util-linux)");
    if (rc != 0)
      return "`unshare -rm true` failed (exit " + std::to_string(rc) +
             "; user namespaces are not allowed here): " + trimmed(read_file(log));
    rc = run_command({"unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs " + sh_quote(mnt)}, log);
    if (rc != 0)
      return "`unshare -rm` works but mounting a tmpfs in it failed (exit " + std::to_string(rc) +
             "): " + trimmed(read_file(log));
    return std::string();
  }();
  return reason;
}

TmpfsRun run_on_small_tmpfs(const std::vector<std::string>& args, const std::string& dir, int64_t size,
                            const std::vector<std::string>& preload, const std::string& snapshot) {
  const std::string logs = temp_dir(), err = logs + "/optiq.err", ls = logs + "/ls", sh_log = logs + "/sh.log";
  const std::string fail = " || exit " + std::to_string(kSetupFailed) + "\n";
  std::string script = "mount -t tmpfs -o size=" + std::to_string(size) + " tmpfs " + sh_quote(dir) + fail;
  for (const auto& p : preload) script += "cp -R " + sh_quote(p) + " " + sh_quote(dir) + "/" + fail;
  script += sh_quote(optiq_binary()) + " -q";
  for (const auto& a : args) {
    script += ' ';  // (not " " + string: GCC 12 warns falsely about that)
    script += sh_quote(a);
  }
  script += " </dev/null >/dev/null 2>" + sh_quote(err) + "\nrc=$?\n";
  script += "ls -A " + sh_quote(dir) + " >" + sh_quote(ls) + "\n";
  script += "cp -R " + sh_quote(dir) + "/. " + sh_quote(snapshot) + "/\n";
  script += "exit $rc\n";
  TmpfsRun r;
  r.code = run_command({"unshare", "-rm", "sh", "-c", script}, sh_log);
  if (r.code == kSetupFailed) {
    r.code = -1;
    r.err = "the tmpfs could not be set up: " + trimmed(read_file(sh_log));
    return r;
  }
  r.err = read_file(err);
  r.script_err = read_file(sh_log);
  std::istringstream in(read_file(ls));
  for (std::string line; std::getline(in, line);) r.left.push_back(line);
  std::sort(r.left.begin(), r.left.end());
  return r;
}

bool is_mount_point(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  const std::string canon = fs::weakly_canonical(dir).string();
  for (std::string line; std::getline(in, line);) {
    std::istringstream f(line);
    std::string id, parent, devno, root, point;
    f >> id >> parent >> devno >> root >> point;
    if (point == canon) return true;
  }
  return false;
}

uint64_t crash_seed() {
  if (const char* s = std::getenv("OPTIQ_CRASH_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

}  // namespace optiq::test

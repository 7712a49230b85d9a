#include <algorithm>
#include "core/partial_output.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/atomic_file.h"
#include "core/diagnostics.h"
#include "core/error.h"

namespace optiq {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kManifest = "optiq-partial.json";

// Reads the first `nbytes` of `path` into `hash`; false when the file is
// shorter or does not begin with `header`.
bool hash_prefix(const std::string& path, uint64_t nbytes, std::string_view header, Sha256& hash) {
  if (header.size() > nbytes) return false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  std::vector<char> buf(size_t{4} << 20);
  uint64_t done = 0;
  bool ok = true;
  while (ok && done < nbytes) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), nbytes - done));
    const ssize_t r = ::read(fd, buf.data(), want);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      ok = false;
      break;
    }
    if (done < header.size()) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(header.size() - done, static_cast<uint64_t>(r)));
      ok = std::memcmp(buf.data(), header.data() + done, n) == 0;
    }
    hash.update(buf.data(), static_cast<size_t>(r));
    done += static_cast<uint64_t>(r);
  }
  ::close(fd);
  return ok && done == nbytes;
}

uint64_t file_size_or_zero(const std::string& path) {
  std::error_code ec;
  const auto n = fs::file_size(path, ec);
  return ec ? 0 : static_cast<uint64_t>(n);
}

// The first top-level field of the key that differs, for the note.
std::string what_differs(const json& old_key, const json& key) {
  if (!old_key.is_object()) return "an unreadable record";
  for (const auto& [k, v] : key.items())
    if (!old_key.contains(k) || old_key[k] != v) return "another " + k;
  return "other settings";
}

}  // namespace

std::string PartialOutput::dir_for(const std::string& target) {
  std::string t = target;
  while (t.size() > 1 && t.back() == '/') t.pop_back();
  const fs::path p(t);
  std::string name = ".";
  name += p.filename().string();
  name += ".partial";
  return ((p.has_parent_path() ? p.parent_path() : fs::path(".")) / name).string();
}

std::string PartialOutput::path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

PartialOutput::PartialOutput(std::string target, json key, bool resume)
    : target_(std::move(target)), dir_(dir_for(target_)), key_(std::move(key)), files_(json::object()) {
  std::error_code ec;
  if (fs::exists(dir_, ec) && !fs::is_directory(dir_, ec)) fs::remove(dir_, ec);
  fs::create_directory(dir_, ec);
  check(fs::is_directory(dir_), "{}: cannot create the directory {} for its partial work: {}", target_, dir_,
        ec ? ec.message() : "not a directory");
  lock_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  check(lock_fd_ >= 0, "{}: cannot open {}: {}", target_, dir_, std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    ::close(lock_fd_);
    lock_fd_ = -1;
    fail("{}: another optiq process is writing it ({} is locked: {})", target_, dir_,
         e == EWOULDBLOCK ? "wait for it to end" : std::strerror(e));
  }
  const std::string manifest = path(kManifest);
  bool had_work = false;
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) had_work = true;
  if (had_work) {
    json old;
    if (fs::exists(manifest, ec)) {
      std::ifstream in(manifest);
      old = json::parse(in, nullptr, /*allow_exceptions=*/false);
    }
    const bool ours = old.is_object() && old.value("optiq_partial", 0) == 1 && old.contains("files") &&
                      old["files"].is_object() && old.contains("key");
    if (!resume) {
      note("{}: discarding the partial work of an earlier run in {} (--force)", target_, dir_);
    } else if (ours && old["key"] == key_) {
      files_ = old["files"];
    } else if (ours && !old["files"].empty()) {
      note("{}: the partial work in {} was made with {}: starting over", target_, dir_, what_differs(old["key"], key_));
    }
  }
  wipe(/*keep_listed=*/true);
  write_manifest();
}

PartialOutput::~PartialOutput() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void PartialOutput::wipe(bool keep_listed) {
  if (!keep_listed) files_ = json::object();
  std::error_code ec;
  std::vector<fs::path> gone;
  for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    if (n == kManifest || files_.contains(n)) continue;
    gone.push_back(it->path());
  }
  for (const auto& p : gone) fs::remove_all(p, ec);
}

void PartialOutput::write_manifest() {
  const json j = {{"optiq_partial", 1}, {"key", key_}, {"files", files_}};
  write_file_atomic(path(kManifest), j.dump() + "\n");
}

int64_t PartialOutput::prefix(const std::string& name, std::string_view header, const std::vector<uint64_t>& ends,
                              Sha256& hash) {
  hash = Sha256();
  if (!files_.contains(name)) return 0;
  const json rec = files_[name];
  const int64_t k = rec.value("pieces", int64_t{0});
  const uint64_t bytes = rec.value("bytes", uint64_t{0});
  const std::string p = path(name);
  if (k >= 1 && k <= static_cast<int64_t>(ends.size()) && ends[static_cast<size_t>(k - 1)] == bytes &&
      file_size_or_zero(p) >= bytes && hash_prefix(p, bytes, header, hash) &&
      hash.hex_digest_copy() == rec.value("sha256", std::string()))
    return k;
  note("{}: {} does not match its record (size or checksum): written again from the start", target_, p);
  hash = Sha256();
  files_.erase(name);
  write_manifest();
  return 0;
}

void PartialOutput::record_prefix(const std::string& name, uint64_t bytes, int64_t pieces, const std::string& sha256) {
  files_[name] = {{"bytes", bytes}, {"pieces", pieces}, {"sha256", sha256}};
  if (!deferred_) write_manifest();
}

void PartialOutput::set_key(json key) {
  key_ = std::move(key);
  deferred_ = false;
  write_manifest();
}

void PartialOutput::discard() {
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

void PartialOutput::finish() {
  std::error_code ec;
  fs::remove(path(kManifest), ec);
}

void PartialOutput::commit_file(const std::string& name) {
  finish();
  if (::rename(path(name).c_str(), target_.c_str()) != 0)
    fail("{}: cannot move {} into place: {}", target_, path(name), std::strerror(errno));
  discard();
}

// --- ResumableFile ---

ResumableFile::ResumableFile(PartialOutput& partial, std::string name, std::string_view header,
                             std::vector<uint64_t> ends, std::string display)
    : partial_(partial), name_(std::move(name)), display_(std::move(display)), ends_(std::move(ends)) {
  resumed_ = pieces_ = partial_.prefix(name_, header, ends_, hash_);
  pos_ = checkpointed_ = pieces_ > 0 ? ends_[static_cast<size_t>(pieces_ - 1)] : 0;
  const std::string p = partial_.path(name_);
  fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create {}: {}", display_, p, std::strerror(errno));
  if (::ftruncate(fd_, static_cast<off_t>(pos_)) != 0 || ::lseek(fd_, static_cast<off_t>(pos_), SEEK_SET) < 0)
    write_failed(errno);
  out_ = std::make_unique<FileAppender>(fd_, p, pos_);
  out_->hash_into(&hash_);  // the running SHA-256 of what is written, computed by the appender's writes
}

ResumableFile::~ResumableFile() {
  out_.reset();
  if (fd_ >= 0) ::close(fd_);
}

void ResumableFile::write_failed(int err) {
  out_.reset();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  fail("{}: write failed: {}", display_, write_failure_reason(err));
}

void ResumableFile::flush() {
  if (const int err = out_->flush()) write_failed(err);
}

void ResumableFile::write(const void* p, size_t n) {
  check(fd_ >= 0, "{}: write failed: the file is closed", display_);
  pos_ += n;
  if (const int err = out_->write(p, n)) write_failed(err);
}

void ResumableFile::pad_to(uint64_t align) {
  static const char zeros[64] = {};
  while (pos_ % align) write(zeros, std::min<uint64_t>(align - pos_ % align, sizeof(zeros)));
}

void ResumableFile::end_piece() {
  ++pieces_;
  check(pieces_ <= static_cast<int64_t>(ends_.size()) && pos_ == ends_[static_cast<size_t>(pieces_ - 1)],
        "{}: piece {} ends at byte {}, expected {} (internal error)", display_, pieces_, pos_,
        pieces_ <= static_cast<int64_t>(ends_.size()) ? ends_[static_cast<size_t>(pieces_ - 1)] : 0);
  const uint64_t every = std::clamp<uint64_t>(ends_.back() / 64, kCheckpointBytes, kCheckpointMaxBytes);
  if (pos_ - checkpointed_ < every && pieces_ < static_cast<int64_t>(ends_.size())) return;
  // The data reaches the disk before the manifest says it is there.
  flush();
  if (::fdatasync(fd_) != 0) write_failed(errno);
  partial_.record_prefix(name_, pos_, pieces_, hash_.hex_digest_copy());
  checkpointed_ = pos_;
}

void ResumableFile::close() {
  check(pieces_ == static_cast<int64_t>(ends_.size()), "{}: closed after {} of {} pieces (internal error)", display_,
        pieces_, ends_.size());
  flush();
  out_.reset();
  if (::fsync(fd_) != 0) write_failed(errno);
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) write_failed(errno);
}

}  // namespace optiq

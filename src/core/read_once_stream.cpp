#include "core/read_once_stream.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "core/error.h"

namespace optiq {

namespace {

constexpr uint64_t kAlign = 4096;             // O_DIRECT's offset, length and address unit
constexpr uint64_t kPiece = uint64_t{8} << 20;  // one pread; the hasher follows a piece behind
constexpr uint64_t kScratch = uint64_t{8} << 20;
constexpr int kScratchSlots = 4;

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

uint64_t align_down(uint64_t x) { return x / kAlign * kAlign; }
uint64_t align_up(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

bool direct_reads_allowed() {
  const char* e = std::getenv("OPTIQ_DIRECT_IO");
  return !(e && std::string_view(e) == "0");
}

std::unique_ptr<uint8_t, void (*)(void*)> aligned_bytes(uint64_t n) {
  void* p = std::aligned_alloc(kAlign, std::max<uint64_t>(align_up(n), kAlign));
  if (!p) fail("cannot allocate {} MB for reading the source", n >> 20);
  return {static_cast<uint8_t*>(p), std::free};
}

}  // namespace

// A file's descriptors: O_DIRECT where the file system takes it, else (or
// after a read it refused) buffered.
struct ReadOnceStream::File {
  std::string path;
  int direct = -1, plain = -1;
  uint64_t size = 0;

  File(std::string p, bool try_direct) : path(std::move(p)) {
    if (try_direct) direct = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (direct < 0) open_plain();
    struct stat st {};
    if (::fstat(direct >= 0 ? direct : plain, &st) != 0) fail("{}: cannot read: {}", path, std::strerror(errno));
    size = static_cast<uint64_t>(st.st_size);
  }
  ~File() {
    if (direct >= 0) ::close(direct);
    if (plain >= 0) ::close(plain);
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  void open_plain() {
    if (plain >= 0) return;
    plain = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (plain < 0) fail("{}: cannot read: {}", path, std::strerror(errno));
    ::posix_fadvise(plain, 0, 0, POSIX_FADV_SEQUENTIAL);
  }
  // Reads up to n bytes at off (aligned, into aligned memory); fewer only at
  // the end of the file.
  uint64_t read(uint8_t* dst, uint64_t n, uint64_t off) {
    uint64_t done = 0;
    while (done < n) {
      const int fd = direct >= 0 ? direct : plain;
      const ssize_t r = ::pread(fd, dst + done, n - done, static_cast<off_t>(off + done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && errno == EINVAL && direct >= 0) {  // the file system took the open, not the read
        ::close(direct);
        direct = -1;
        open_plain();
        continue;
      }
      if (r < 0) fail("{}: cannot read: {}", path, std::strerror(errno));
      if (r == 0) break;
      done += static_cast<uint64_t>(r);
      if (direct >= 0 && done % kAlign != 0) break;  // a short O_DIRECT read: the end of the file
    }
    return done;
  }
};

struct ReadOnceStream::Chunk {
  size_t file = 0;
  bool eof = false;         // a marker: the file's digest is complete
  uint8_t* mem = nullptr;   // holds the file from read_start on
  uint64_t read_start = 0, read_bytes = 0;
  uint64_t hash_begin = 0, hash_end = 0, hashed = 0;  // file offsets
  bool hashed_all = false;
  bool given_back = false;  // a window chunk the consumer is done with (or never asks for)
  uint64_t win_len = 0;     // window bytes it holds (0: a scratch chunk)
  int scratch = -1;
};

ReadOnceStream::ReadOnceStream(std::vector<std::string> paths, std::vector<Range> ranges, uint64_t window_bytes)
    : paths_(std::move(paths)), window_(align_up(window_bytes)) {
  ranges_.resize(ranges.size());
  by_file_.resize(paths_.size());
  for (size_t i = 0; i < ranges.size(); ++i) {
    check(ranges[i].file < paths_.size(), "read stream: range {} names file {} of {}", i, ranges[i].file, paths_.size());
    ranges_[i].r = ranges[i];
    by_file_[ranges[i].file].push_back(i);
  }
  for (auto& v : by_file_)
    std::sort(v.begin(), v.end(), [&](size_t a, size_t b) { return ranges_[a].r.offset < ranges_[b].r.offset; });
  for (const auto& p : paths_) {  // fail here, in the caller, on a file that cannot be read
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("{}: cannot read: {}", p, std::strerror(errno));
    ::close(fd);
  }
  if (window_ > 0) window_mem_ = aligned_bytes(window_);
  for (int s = 0; s < kScratchSlots; ++s) scratch_.push_back(aligned_bytes(kScratch));
  scratch_free_.assign(kScratchSlots, true);
  digests_.resize(paths_.size());
  sha_.resize(paths_.size());
  direct_ = direct_reads_allowed();
  stats_.direct = direct_;  // until a file is read otherwise
  reader_ = std::thread([this] { read_all(); });
  hasher_ = std::thread([this] { hash_all(); });
}

ReadOnceStream::~ReadOnceStream() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  reader_.join();
  hasher_.join();
}

void ReadOnceStream::read_all() {
  try {
    for (size_t f = 0; f < paths_.size(); ++f) read_file(f);
  } catch (...) {
    std::lock_guard lk(mu_);
    error_ = std::current_exception();
  }
  {
    std::lock_guard lk(mu_);
    read_done_ = true;
  }
  cv_.notify_all();
}

void ReadOnceStream::read_file(size_t f) {
  File file(paths_[f], direct_);
  uint64_t pos = 0;
  for (size_t i : by_file_[f]) {
    const Range r = ranges_[i].r;
    if (r.offset < pos || r.offset + r.bytes > file.size) {  // overlapping or outside: the consumer reads it itself
      std::lock_guard lk(mu_);
      if (ranges_[i].state == State::Pending) ranges_[i].state = State::Passed;
      ++stats_.passed;
      cv_.notify_all();
      continue;
    }
    read_gap(f, file, pos, r.offset);
    if (!keep_range(f, file, i)) read_gap(f, file, r.offset, r.offset + r.bytes);
    pos = r.offset + r.bytes;
    std::lock_guard lk(mu_);
    if (stopping()) return;
  }
  read_gap(f, file, pos, file.size);
  auto end = std::make_shared<Chunk>();
  end->file = f;
  end->eof = true;
  std::lock_guard lk(mu_);
  if (file.direct < 0) stats_.direct = false;  // refused at open, or a read fell back
  to_hash_.push_back(end);
  cv_.notify_all();
}

void ReadOnceStream::read_gap(size_t f, File& file, uint64_t a, uint64_t b) {
  for (uint64_t cs = align_down(a); cs < b; cs += kScratch) {
    auto c = std::make_shared<Chunk>();
    c->file = f;
    c->read_start = cs;
    c->hash_begin = c->hashed = std::max(a, cs);
    c->hash_end = std::min(b, cs + kScratch);
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] {
        return stopping() || std::find(scratch_free_.begin(), scratch_free_.end(), true) != scratch_free_.end();
      });
      if (stopping()) return;
      c->scratch = static_cast<int>(std::find(scratch_free_.begin(), scratch_free_.end(), true) - scratch_free_.begin());
      scratch_free_[c->scratch] = false;
      c->mem = scratch_[c->scratch].get();
      to_hash_.push_back(c);
    }
    read_into(file, *c, align_up(c->hash_end) - cs);
  }
}

bool ReadOnceStream::keep_range(size_t f, File& file, size_t i) {
  RangeState& rs = ranges_[i];
  const uint64_t a0 = align_down(rs.r.offset), len = align_up(rs.r.offset + rs.r.bytes) - a0;
  std::unique_lock lk(mu_);
  auto contiguous_need = [&] {  // window bytes taken: a pad to the window's end first where the range would wrap
    const uint64_t at = head_ % window_;
    return at + len <= window_ ? len : window_ - at + len;
  };
  // An empty window starts over at its beginning (else a range as long as
  // the window could never follow a wrap).
  auto fits = [&] { return window_ > 0 && (in_window_.empty() ? len <= window_ : head_ - tail_ + contiguous_need() <= window_); };
  if (len > window_) {
    if (rs.state == State::Pending) rs.state = State::Passed;
    ++stats_.passed;
    cv_.notify_all();
    return false;
  }
  // Wait for room, unless the consumer waits for a range not yet read and
  // everything read is hashed: then room comes only from the consumer, which
  // is waiting for the reader, so this range is passed instead.
  const auto w0 = std::chrono::steady_clock::now();
  cv_.wait(lk, [&] {
    return stopping() || rs.state == State::Abandoned || fits() || (waiting_ >= 0 && to_hash_.empty());
  });
  stats_.reader_wait += seconds_since(w0);
  if (stopping()) return true;
  if (rs.state == State::Abandoned || !fits()) {
    if (rs.state == State::Pending) rs.state = State::Passed;
    ++stats_.passed;
    cv_.notify_all();
    return false;
  }
  if (in_window_.empty()) head_ = tail_ = 0;
  const uint64_t at = head_ % window_;
  if (at + len > window_) {  // wrap: the window's tail end stays unused until reclaimed
    auto pad = std::make_shared<Chunk>();
    pad->hashed_all = pad->given_back = true;
    pad->win_len = window_ - at;
    in_window_.push_back(pad);
    head_ += pad->win_len;
  }
  auto c = std::make_shared<Chunk>();
  c->file = f;
  c->mem = window_mem_.get() + head_ % window_;
  c->read_start = a0;
  c->hash_begin = c->hashed = rs.r.offset;
  c->hash_end = rs.r.offset + rs.r.bytes;
  c->win_len = len;
  head_ += len;
  in_window_.push_back(c);
  to_hash_.push_back(c);
  rs.state = State::Reading;
  rs.chunk = c;
  lk.unlock();
  read_into(file, *c, len);
  lk.lock();
  if (stopping()) return true;
  if (rs.state == State::Abandoned) {
    c->given_back = true;
  } else {
    rs.state = State::Kept;
    rs.data = c->mem + (rs.r.offset - a0);
    ++stats_.kept;
  }
  reclaim();
  cv_.notify_all();
  return true;
}

void ReadOnceStream::read_into(File& file, Chunk& c, uint64_t len) {
  for (uint64_t done = 0; done < len;) {
    const uint64_t n = std::min(kPiece, len - done);
    const auto r0 = std::chrono::steady_clock::now();
    const uint64_t got = file.read(c.mem + done, n, c.read_start + done);
    const double took = seconds_since(r0);
    done += got;
    {
      std::lock_guard lk(mu_);
      stats_.reading += took;
      c.read_bytes = done;
      if (stopping()) return;
    }
    cv_.notify_all();
    if (got < n) break;  // the end of the file
  }
  if (c.read_start + c.read_bytes < c.hash_end)
    fail("{}: cannot read: the file ended at {} bytes, before {} (changed while it was read?)", file.path,
         c.read_start + c.read_bytes, c.hash_end);
}

void ReadOnceStream::hash_all() {
  std::unique_lock lk(mu_);
  for (;;) {
    auto ready = [&] {
      if (to_hash_.empty()) return false;
      const Chunk& c = *to_hash_.front();
      return c.eof || std::min(c.hash_end, c.read_start + c.read_bytes) > c.hashed || c.hashed == c.hash_end;
    };
    cv_.wait(lk, [&] { return stopping() || ready() || (read_done_ && to_hash_.empty()); });
    if (stopping() || (read_done_ && to_hash_.empty())) break;
    std::shared_ptr<Chunk> c = to_hash_.front();
    if (c->eof) {
      digests_[c->file] = sha_[c->file].hex_digest();
      to_hash_.pop_front();
      cv_.notify_all();
      continue;
    }
    const uint64_t upto = std::min(c->hash_end, c->read_start + c->read_bytes);
    if (upto > c->hashed) {
      const uint8_t* p = c->mem + (c->hashed - c->read_start);
      const uint64_t n = upto - c->hashed;
      lk.unlock();
      const auto h0 = std::chrono::steady_clock::now();
      sha_[c->file].update(p, n);
      const double took = seconds_since(h0);
      lk.lock();
      stats_.hashing += took;
      c->hashed = upto;
    }
    if (c->hashed == c->hash_end) {
      to_hash_.pop_front();
      c->hashed_all = true;
      if (c->scratch >= 0) scratch_free_[c->scratch] = true;
      reclaim();
      cv_.notify_all();
    }
  }
  hash_done_ = !stop_ && !error_;
  cv_.notify_all();
}

void ReadOnceStream::reclaim() {
  while (!in_window_.empty() && in_window_.front()->hashed_all && in_window_.front()->given_back) {
    tail_ += in_window_.front()->win_len;
    in_window_.pop_front();
  }
}

void ReadOnceStream::give_up(size_t j) {
  RangeState& rs = ranges_[j];
  if (rs.state == State::Pending || rs.state == State::Reading) {
    rs.state = State::Abandoned;
  } else if (rs.state == State::Kept) {
    rs.state = State::Released;
    rs.data = nullptr;
    rs.chunk->given_back = true;
    rs.chunk.reset();
  }
}

const uint8_t* ReadOnceStream::acquire(size_t i) {
  check(i < ranges_.size(), "read stream: range {} of {}", i, ranges_.size());
  std::unique_lock lk(mu_);
  for (size_t j = next_ask_; j < i; ++j) give_up(j);
  next_ask_ = std::max(next_ask_, i + 1);
  reclaim();
  RangeState& rs = ranges_[i];
  waiting_ = static_cast<int64_t>(i);
  cv_.notify_all();
  const auto w0 = std::chrono::steady_clock::now();
  cv_.wait(lk, [&] {
    return stopping() || read_done_ || (rs.state != State::Pending && rs.state != State::Reading);
  });
  stats_.consumer_wait += seconds_since(w0);
  waiting_ = -1;
  return rs.state == State::Kept ? rs.data : nullptr;
}

void ReadOnceStream::release(size_t i) {
  std::lock_guard lk(mu_);
  if (i >= ranges_.size()) return;
  give_up(i);
  reclaim();
  cv_.notify_all();
}

std::vector<std::string> ReadOnceStream::digests() {
  std::unique_lock lk(mu_);
  // Nothing is asked for after this: the ranges not asked for yet are given
  // up (else the reader could wait for room they hold forever).
  for (size_t j = next_ask_; j < ranges_.size(); ++j) give_up(j);
  next_ask_ = ranges_.size();
  reclaim();
  cv_.notify_all();
  cv_.wait(lk, [&] { return hash_done_ || error_ || stop_; });
  if (error_) std::rethrow_exception(error_);
  check(hash_done_, "read stream: stopped before every file was read");
  return digests_;
}

ReadOnceStream::Stats ReadOnceStream::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

}  // namespace optiq

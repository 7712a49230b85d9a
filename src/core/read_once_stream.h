// Reads files once, start to end, hashing every byte (SHA-256) as it goes,
// and keeps the byte ranges a consumer will ask for in a window of reused
// memory. A streamed export (pipeline/export_step.h) quantizes each matrix
// from there, so the source is read from disk once for both its provenance
// (the files' SHA-256, what `sha256sum` prints) and its quantization.
//
// Why not the memory map the model was loaded with: on a VM, a page fresh
// from disk costs ~1.2 s/GB of stalled time when it is first touched, and the
// page cache's copy for the hash costs system time (BENCHMARKS.md §10, "Where
// a cold streamed quantize waits"). O_DIRECT reads into the same window over
// and over avoid both (OPTIQ_DIRECT_IO=0: buffered reads instead).
//
// Three threads: the caller (the consumer), a reader (pread into the window
// and, for the bytes nobody asked for, into a few scratch chunks) and a hasher
// trailing the reader. The window holds what was read ahead of the consumer;
// the reader waits while it is full, unless the consumer waits for a range
// the reader has not reached: then ranges that do not fit are passed (hashed,
// not kept) and acquire() answers nullptr for them, and the consumer reads
// those elsewhere (the map). So the stream never deadlocks and never holds
// more than its window, whatever order the consumer asks in; it is fastest
// when that order is the files' own.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/sha256.h"

namespace optiq {

class ReadOnceStream {
 public:
  struct Range {
    size_t file = 0;  // index into the paths
    uint64_t offset = 0, bytes = 0;
  };
  // ranges: in the order the consumer is expected to ask for them (any
  // order works). window_bytes: memory for kept ranges (a range longer than
  // it is never kept). Starts reading at once. Throws optiq::Error when a
  // file cannot be opened.
  ReadOnceStream(std::vector<std::string> paths, std::vector<Range> ranges, uint64_t window_bytes);
  ~ReadOnceStream();  // stops the threads (at their next chunk)
  ReadOnceStream(const ReadOnceStream&) = delete;
  ReadOnceStream& operator=(const ReadOnceStream&) = delete;

  // Range i's bytes, once read (blocks until then), valid until release(i);
  // nullptr when the stream passed them (read them elsewhere). Asking for
  // range i gives up every earlier range not asked for (a resumed export
  // skips what it wrote already). Each range is asked for at most once.
  const uint8_t* acquire(size_t i);
  void release(size_t i);
  // Every file's SHA-256 (hex), once all of it is read (blocks); rethrows
  // the reader's error ("<path>: cannot read: <reason>"). The consumer asks
  // for nothing after calling it (what it did not ask for is given up).
  std::vector<std::string> digests();

  struct Stats {
    int64_t kept = 0, passed = 0;  // ranges read into the window / passed
    bool direct = false;           // every file read with O_DIRECT (else some buffered)
    // Seconds the consumer waited in acquire(), the reader for room in the
    // window, the reader in pread, the hasher hashing.
    double consumer_wait = 0, reader_wait = 0, reading = 0, hashing = 0;
  };
  Stats stats() const;

 private:
  enum class State { Pending, Reading, Kept, Passed, Abandoned, Released };
  struct Chunk;  // a piece of a file read into memory, hashed in file order
  struct RangeState {
    Range r;
    State state = State::Pending;
    const uint8_t* data = nullptr;
    std::shared_ptr<Chunk> chunk;
  };

  struct File;   // a source file's descriptors
  void read_all();
  void hash_all();
  void read_file(size_t f);
  // Reads and hashes [a, b) of the file through the scratch chunks.
  void read_gap(size_t f, File& file, uint64_t a, uint64_t b);
  // Reads range i into the window; false: passed (the caller reads it as a gap).
  bool keep_range(size_t f, File& file, size_t i);
  void read_into(File& file, Chunk& c, uint64_t len);
  void give_up(size_t j);  // the consumer will not ask for range j (mu_ held)
  void reclaim();          // frees window memory that is hashed and given back (mu_ held)
  bool stopping() const { return stop_ || error_ != nullptr; }

  std::vector<std::string> paths_;
  std::vector<RangeState> ranges_;
  std::vector<std::vector<size_t>> by_file_;  // range indices of each file, by offset
  uint64_t window_ = 0;
  std::unique_ptr<uint8_t, void (*)(void*)> window_mem_{nullptr, nullptr};
  uint64_t head_ = 0, tail_ = 0;        // window positions (absolute: modulo window_)
  std::deque<std::shared_ptr<Chunk>> in_window_;  // allocation order, for reclaiming
  std::vector<std::unique_ptr<uint8_t, void (*)(void*)>> scratch_;
  std::vector<bool> scratch_free_;
  std::deque<std::shared_ptr<Chunk>> to_hash_;   // file order
  std::vector<std::string> digests_;
  std::vector<Sha256> sha_;
  size_t next_ask_ = 0;     // ranges before it were asked for or given up
  int64_t waiting_ = -1;    // the range acquire() waits for
  bool stop_ = false, read_done_ = false, hash_done_ = false;
  bool direct_ = false;
  Stats stats_;
  std::exception_ptr error_;
  mutable std::mutex mu_;
  std::condition_variable cv_;  // one for every wait: the waits are rare and coarse (a chunk)
  std::thread reader_, hasher_;
};

}  // namespace optiq

// Resumable outputs (docs/reliability.md "Crash safety", "Exports resume"): an export that
// is interrupted (Ctrl-C, SIGKILL, power loss) keeps the work it finished
// beside the output, in a hidden sibling ".<name>.partial/", and the same
// command run again continues from there. The directory holds the files
// being written (each in place: its header, then tensor after tensor) and a
// manifest, optiq-partial.json:
//
//   {"optiq_partial": 1,
//    "key": {...what the output is made from and how: source files' SHA-256,
//            plan, options, optiq version...},
//    "files": {"model-00001-of-00003.safetensors": {"bytes": N, "pieces": k, "sha256": "<of the first N bytes>"}}}
//
// A file's pieces are its header and its tensors. After a piece (once enough
// was written since the last checkpoint, and after the last one) the data is
// fdatasynced, then the manifest, replaced atomically (core/atomic_file.h),
// records the new length: it never claims bytes the disk may not hold. A
// complete MLX shard is a file whose every piece is recorded.
//
// Opening the partial work of another key (another source, plan, option or
// optiq version) discards it with a one-line note; a file whose recorded
// prefix does not match its size or SHA-256 is written again (a note). Entries
// the manifest does not list (temporaries of a killed writer) are removed. The
// directory is locked (flock) while a process writes it: a second process
// writing the same output is refused. A run that fails with an error removes
// it (the space comes back at once); a run that succeeds moves it (MLX) or its
// file (GGUF) into place.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/sha256.h"

namespace optiq {

class PartialOutput {
 public:
  // Opens ".<name>.partial" beside `target` (creating it), locked. resume
  // false: whatever it holds is discarded (--force). Throws optiq::Error when
  // it cannot be created, or another process holds it.
  PartialOutput(std::string target, nlohmann::json key, bool resume);
  ~PartialOutput();
  PartialOutput(const PartialOutput&) = delete;
  PartialOutput& operator=(const PartialOutput&) = delete;

  const std::string& dir() const { return dir_; }
  const std::string& target() const { return target_; }
  std::string path(const std::string& name) const;
  static std::string dir_for(const std::string& target);  // ".<name>.partial" beside target

  // A file `name` in dir() written in place piece by piece. `ends[i]` is the file's length
  // once piece i is written (piece 0 is the header, `header` its bytes up to
  // its end). Returns how many pieces the file holds that are recorded and
  // match (size, SHA-256, header, the recorded length is ends[k-1]); `hash`
  // then holds the SHA-256 state of those bytes (to continue; ResumableFile
  // truncates the file to them). A record that does not match is dropped (a note).
  int64_t prefix(const std::string& name, std::string_view header, const std::vector<uint64_t>& ends, Sha256& hash);
  void record_prefix(const std::string& name, uint64_t bytes, int64_t pieces, const std::string& sha256);
  // Replaces the key the manifest records (now, with the pieces recorded so
  // far): an export that started before its source's hashes were known
  // records the full key once they are. After defer_records(), until
  // set_key, record_prefix keeps its records without writing the manifest
  // (a kill then keeps nothing: no piece is ever recorded under a key that
  // no run has).
  void set_key(nlohmann::json key);
  void defer_records() { deferred_ = true; }

  // Removes the directory and everything in it (an error: the space comes back).
  void discard();
  // Removes the manifest and the lock: the caller moves the directory, or
  // file `name` of it (then the directory is removed), into place.
  void finish();
  // finish(), then renames file `name` of the directory over target and
  // removes the directory.
  void commit_file(const std::string& name);

 private:
  void write_manifest();
  void wipe(bool keep_listed);
  std::string target_, dir_;
  nlohmann::json key_, files_;
  int lock_fd_ = -1;
  bool deferred_ = false;
};

// A file of a PartialOutput written in place: buffered writes, a checkpoint
// (fdatasync, then the manifest) after a piece when enough was written since
// the last one. On opening it continues after the pieces already there.
class ResumableFile {
 public:
  // `display` names the file in errors (the output path the user asked for).
  ResumableFile(PartialOutput& partial, std::string name, std::string_view header, std::vector<uint64_t> ends,
                std::string display);
  ~ResumableFile();
  ResumableFile(const ResumableFile&) = delete;
  ResumableFile& operator=(const ResumableFile&) = delete;

  // Pieces already written when it was opened (0: start with the header).
  int64_t pieces_done() const { return resumed_; }
  uint64_t pos() const { return pos_; }
  void write(const void* p, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  void pad_to(uint64_t align);
  // Piece pieces()+1 is written (pos() must be its end).
  void end_piece();
  // Flushes, fsyncs and closes (the last piece is recorded already).
  void close();

  // Bytes written since the last checkpoint that make one: a 64th of the
  // file, within these bounds. Why not every piece: each checkpoint costs an
  // fdatasync and a manifest replaced atomically (~2 ms), which for an 8B
  // model's ~700 tensors was a tenth of a streamed export's time; a kill
  // loses at most 64 MB of writing (under a second).
  static constexpr uint64_t kCheckpointBytes = 16 << 10, kCheckpointMaxBytes = uint64_t{64} << 20;

 private:
  void flush();
  [[noreturn]] void write_failed(int err);
  PartialOutput& partial_;
  std::string name_, display_;
  std::vector<uint64_t> ends_;
  int fd_ = -1;
  std::unique_ptr<FileAppender> out_;
  uint64_t pos_ = 0, checkpointed_ = 0;
  int64_t pieces_ = 0, resumed_ = 0;
  Sha256 hash_;
};

}  // namespace optiq

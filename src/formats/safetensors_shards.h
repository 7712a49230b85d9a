// Writes tensors as one safetensors file or as Hugging Face style shards
// (model-00001-of-00003.safetensors ... plus model.safetensors.index.json),
// streaming: each tensor's bytes are made by its fill function when its turn
// comes and dropped once written, so a model larger than memory can be
// exported. Tensors are laid out in the order added (the caller orders them so
// that each lands aligned to its element size: the data area of every shard
// starts at a multiple of 8) and shards are cut, between tensors, once one
// holds max_shard_bytes. Each shard is written atomically (core/atomic_file.h).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace optiq {

class PartialOutput;

class SafetensorsShardWriter {
 public:
  using Fill = std::function<void(uint8_t* dst)>;  // writes exactly the tensor's bytes

  // The tensor's bytes where they already lie (valid until the next call of
  // any fill or view), written from there without a copy; nullptr: `fill`
  // makes them instead.
  using View = std::function<const uint8_t*()>;

  void add(std::string name, DType dtype, std::vector<int64_t> shape, Fill fill);
  void add(std::string name, DType dtype, std::vector<int64_t> shape, View view, Fill fill);
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }
  // Metadata known only once the tensors are written (model/provenance.h: the
  // source's SHA-256, hashed while the export runs): write() lays the headers
  // out with set_metadata's values, then writes f()'s over them in place once
  // every tensor is written. f's header must have the same length (e.g. the
  // same keys, digests in place of as many zeros); else write() fails.
  void set_final_metadata(std::function<std::map<std::string, std::string>()> f) { final_metadata_ = std::move(f); }
  size_t size() const { return entries_.size(); }
  uint64_t total_bytes() const { return total_; }

  // Writes into directory `dir` (which must exist): "<stem>.safetensors" when
  // everything fits in one shard, else "<stem>-0000i-of-0000n.safetensors"
  // and "<stem>.safetensors.index.json". max_shard_bytes == 0: one file.
  // `progress(bytes_done)` is called once before any tensor is written (with
  // the bytes already there: 0, or what resumed work holds) and after each.
  // With `partial` (core/partial_output.h; `dir` is its directory) each
  // shard is written in place, a piece per tensor, and the tensors an
  // interrupted run finished are kept ("resuming: N of M tensors already
  // written"): whole shards, and the checkpointed tensors of the one it was
  // writing.
  // Returns the file names written.
  std::vector<std::string> write(const std::string& dir, uint64_t max_shard_bytes, const std::string& stem = "model",
                                 const std::function<void(uint64_t)>& progress = nullptr,
                                 PartialOutput* partial = nullptr) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t nbytes;
    Fill fill;
    View view;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
  std::function<std::map<std::string, std::string>()> final_metadata_;
  std::map<std::string, size_t, std::less<>> names_;
  uint64_t total_ = 0;
};

}  // namespace optiq

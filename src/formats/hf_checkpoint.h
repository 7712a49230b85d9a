// A Hugging Face model directory: config.json plus safetensors weights, either
// one model.safetensors or shards listed in model.safetensors.index.json
// ({"weight_map": {"<tensor>": "<shard file>", ...}}).
//
// Every shard named in the index is opened and validated; every tensor the
// index maps must exist in its shard, and no tensor may appear in two shards.
// Shard names must be plain file names in the directory ("../x", "/etc/x"
// and names with a backslash are refused); a shard may be a symlink to a
// regular file anywhere, as in Hugging Face's hub cache (snapshots/<rev>/
// links to ../../blobs/<hash>), never to a device or FIFO.
// Problems are reported as optiq::Error("<file or dir>: <problem>").
// Tensors point into the shards' maps, which live as long as the checkpoint.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "formats/safetensors.h"

namespace optiq {

class HfCheckpoint {
 public:
  explicit HfCheckpoint(const std::string& dir);  // throws optiq::Error
  HfCheckpoint(HfCheckpoint&&) noexcept = default;
  HfCheckpoint& operator=(HfCheckpoint&&) noexcept = default;
  HfCheckpoint(const HfCheckpoint&) = delete;
  HfCheckpoint& operator=(const HfCheckpoint&) = delete;

  const nlohmann::json& config() const { return config_; }
  // Tensors of all shards, sorted by name.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find_tensor(std::string_view name) const;
  const std::string& dir() const { return dir_; }
  // True if `name` (e.g. "tokenizer.json") is a regular file in the directory.
  bool has_file(std::string_view name) const;
  // The safetensors files, in the order opened (one, or the shards by name).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // Which file holds tensor `name` (nullptr if none).
  const SafetensorsFile* file_of(std::string_view name) const;

 private:
  std::string dir_;
  nlohmann::json config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<TensorView> tensors_;
  std::vector<size_t> file_index_;  // parallel to tensors_
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace optiq

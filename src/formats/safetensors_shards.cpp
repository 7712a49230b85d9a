#include "formats/safetensors_shards.h"

#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "formats/safetensors.h"

namespace optiq {

namespace fs = std::filesystem;
using nlohmann::json;
using safetensors_detail::printable;

void SafetensorsShardWriter::add(std::string name, DType dtype, std::vector<int64_t> shape, Fill fill) {
  const uint64_t nbytes = safetensors_detail::checked_bytes(name, dtype, shape);
  check(names_.count(name) == 0, "safetensors writer: tensor {} added twice", printable(name));
  names_.emplace(name, entries_.size());
  entries_.push_back({std::move(name), dtype, std::move(shape), nbytes, std::move(fill)});
  total_ += nbytes;
}

std::vector<std::string> SafetensorsShardWriter::write(const std::string& dir, uint64_t max_shard_bytes,
                                                       const std::string& stem,
                                                       const std::function<void(uint64_t)>& progress) const {
  // Shards: runs of tensors, a new one started when the next tensor would
  // overflow a non-empty shard (a tensor larger than the limit gets its own).
  std::vector<std::pair<size_t, size_t>> shards;  // [first, last) entries
  uint64_t in_shard = 0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (shards.empty() || (max_shard_bytes > 0 && in_shard > 0 && in_shard + entries_[i].nbytes > max_shard_bytes)) {
      shards.push_back({i, i});
      in_shard = 0;
    }
    shards.back().second = i + 1;
    in_shard += entries_[i].nbytes;
  }
  if (shards.empty()) shards.push_back({0, 0});
  const size_t n = shards.size();
  std::vector<std::string> files;
  for (size_t s = 0; s < n; ++s)
    files.push_back(n == 1 ? stem + ".safetensors" : fmt::format("{}-{:05d}-of-{:05d}.safetensors", stem, s + 1, n));

  uint64_t done = 0;
  std::vector<uint8_t> scratch;
  json weight_map = json::object();
  for (size_t s = 0; s < n; ++s) {
    const std::string path = (fs::path(dir) / files[s]).string();
    json header = json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    uint64_t offset = 0;
    for (size_t i = shards[s].first; i < shards[s].second; ++i) {
      const Entry& e = entries_[i];
      header[e.name] = {{"dtype", safetensors_dtype_name(e.dtype)},
                        {"shape", e.shape},
                        {"data_offsets", {offset, offset + e.nbytes}}};
      offset += e.nbytes;
      weight_map[e.name] = files[s];
    }
    AtomicFile out(path);
    out.write(safetensors_detail::encode_header(header, path));
    for (size_t i = shards[s].first; i < shards[s].second; ++i) {
      const Entry& e = entries_[i];
      scratch.resize(e.nbytes);
      e.fill(scratch.data());
      out.write(scratch.data(), scratch.size());
      done += e.nbytes;
      if (progress) progress(done);
      // A big tensor's buffer is not kept for the small ones after it.
      if (scratch.capacity() > (size_t{64} << 20)) std::vector<uint8_t>().swap(scratch);
    }
    out.commit();
  }
  if (n > 1) {
    json index = {{"metadata", {{"total_size", total_}}}, {"weight_map", weight_map}};
    write_file_atomic((fs::path(dir) / (stem + ".safetensors.index.json")).string(), index.dump(2) + "\n");
  }
  return files;
}


}  // namespace optiq

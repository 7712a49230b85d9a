#include "formats/safetensors_shards.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "core/partial_output.h"
#include "formats/safetensors.h"

namespace optiq {

namespace fs = std::filesystem;
using nlohmann::json;
using safetensors_detail::printable;

void SafetensorsShardWriter::add(std::string name, DType dtype, std::vector<int64_t> shape, Fill fill) {
  add(std::move(name), dtype, std::move(shape), nullptr, std::move(fill));
}

void SafetensorsShardWriter::add(std::string name, DType dtype, std::vector<int64_t> shape, View view, Fill fill) {
  const uint64_t nbytes = safetensors_detail::checked_bytes(name, dtype, shape);
  check(names_.count(name) == 0, "safetensors writer: tensor {} added twice", printable(name));
  names_.emplace(name, entries_.size());
  entries_.push_back({std::move(name), dtype, std::move(shape), nbytes, std::move(fill), std::move(view)});
  total_ += nbytes;
}

std::vector<std::string> SafetensorsShardWriter::write(const std::string& dir, uint64_t max_shard_bytes,
                                                       const std::string& stem,
                                                       const std::function<void(uint64_t)>& progress,
                                                       PartialOutput* partial) const {
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

  json weight_map = json::object();
  std::vector<std::string> headers(n);
  auto make_header = [&](size_t s, const std::map<std::string, std::string>& metadata) {
    json header = json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    uint64_t offset = 0;
    for (size_t i = shards[s].first; i < shards[s].second; ++i) {
      const Entry& e = entries_[i];
      header[e.name] = {{"dtype", safetensors_dtype_name(e.dtype)},
                        {"shape", e.shape},
                        {"data_offsets", {offset, offset + e.nbytes}}};
      offset += e.nbytes;
      weight_map[e.name] = files[s];
    }
    return safetensors_detail::encode_header(header, (fs::path(dir) / files[s]).string());
  };
  for (size_t s = 0; s < n; ++s) headers[s] = make_header(s, metadata_);

  uint64_t done = 0;
  std::vector<uint8_t> scratch;
  // Tensors [first, last) of a shard into f (AtomicFile, or ResumableFile: a piece per tensor).
  auto tensors = [&](auto& f, size_t first, size_t last) {
    for (size_t i = first; i < last; ++i) {
      const Entry& e = entries_[i];
      if (const uint8_t* p = e.view ? e.view() : nullptr) {
        f.write(p, e.nbytes);  // from where the bytes lie
      } else {
        scratch.resize(e.nbytes);
        e.fill(scratch.data());
        f.write(scratch.data(), scratch.size());
      }
      if constexpr (requires { f.end_piece(); }) f.end_piece();
      done += e.nbytes;
      if (progress) progress(done);
      // A big tensor's buffer is not kept for the small ones after it.
      if (scratch.capacity() > (size_t{64} << 20)) std::vector<uint8_t>().swap(scratch);
    }
  };
  if (partial) {
    // Each shard written in place, a piece per tensor (core/partial_output.h):
    // an interrupted run's tensors are kept, checked against their SHA-256.
    std::vector<std::unique_ptr<ResumableFile>> out;
    size_t reused = 0;
    for (size_t s = 0; s < n; ++s) {
      std::vector<uint64_t> ends{headers[s].size()};
      for (size_t i = shards[s].first; i < shards[s].second; ++i) ends.push_back(ends.back() + entries_[i].nbytes);
      out.push_back(std::make_unique<ResumableFile>(*partial, files[s], headers[s], ends,
                                                    (fs::path(dir) / files[s]).string()));
      const size_t kept = static_cast<size_t>(std::max<int64_t>(out.back()->pieces_done() - 1, 0));
      reused += kept;
      for (size_t i = shards[s].first; i < shards[s].first + kept; ++i) done += entries_[i].nbytes;
    }
    if (reused > 0) note("resuming: {} of {} tensors already written ({})", reused, entries_.size(), partial->dir());
    if (progress) progress(done);  // what is there already
    for (size_t s = 0; s < n; ++s) {
      ResumableFile& f = *out[s];
      if (f.pieces_done() == 0) {
        f.write(headers[s]);
        f.end_piece();
      }
      tensors(f, shards[s].first + static_cast<size_t>(f.pieces_done() > 0 ? f.pieces_done() - 1 : 0),
              shards[s].second);
      f.close();
      out[s].reset();
    }
  } else {
    if (progress) progress(done);  // 0: nothing there yet
    for (size_t s = 0; s < n; ++s) {
      AtomicFile f((fs::path(dir) / files[s]).string());
      f.write(headers[s]);
      tensors(f, shards[s].first, shards[s].second);
      f.commit();
    }
  }
  if (final_metadata_) {
    // The final headers over the laid-out ones, in place (same length).
    const std::map<std::string, std::string> metadata = final_metadata_();
    for (size_t s = 0; s < n; ++s) {
      const std::string h = make_header(s, metadata);
      const std::string path = (fs::path(dir) / files[s]).string();
      check(h.size() == headers[s].size(), "{}: the final header is {} bytes, the written one {} (internal error)",
            path, h.size(), headers[s].size());
      if (h == headers[s]) continue;
      const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) fail("{}: cannot open to write its header: {}", path, std::strerror(errno));
      const ssize_t w = ::pwrite(fd, h.data(), h.size(), 0);
      const int err = w < 0 ? errno : (static_cast<size_t>(w) != h.size() ? EIO : 0);
      const int sync = err == 0 && ::fdatasync(fd) != 0 ? errno : 0;
      ::close(fd);
      if (err || sync) fail("{}: write failed: {}", path, write_failure_reason(err ? err : sync));
    }
  }
  if (n > 1) {
    json index = {{"metadata", {{"total_size", total_}}}, {"weight_map", weight_map}};
    write_file_atomic((fs::path(dir) / (stem + ".safetensors.index.json")).string(), index.dump(2) + "\n");
  }
  return files;
}


}  // namespace optiq

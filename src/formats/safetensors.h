// safetensors (Hugging Face's tensor file format): a validated, read-only view
// of a memory-mapped file, and a writer.
//
// Layout: 8-byte little-endian header length N, then N bytes of UTF-8 JSON
//   { "__metadata__": {"key": "value", ...},            (optional, strings only)
//     "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ... }
// then the data area; offsets are relative to its start (byte 8 + N).
//
// SafetensorsFile checks everything against the file size before it touches
// tensor memory: header length, JSON syntax, duplicate names, dtype strings,
// shapes (non-negative, no overflow), data_offsets (in range, equal to
// dtype size x element count, no two non-empty tensors overlapping). Every
// problem is reported as optiq::Error("<path>: <problem>").
//
// Tensors point into the map. A tensor whose data is not aligned to its
// element size (possible in files from other writers) is copied once into an
// aligned buffer owned by the file, so that consumers may read it as float* etc.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/mapped_file.h"
#include <nlohmann/json_fwd.hpp>

#include "core/tensor.h"

namespace optiq {

// "F32" -> DType::F32 etc. for the dtypes optiq supports (F32, F16, BF16, U32,
// I32, I64, U8); nullopt for anything else.
std::optional<DType> dtype_from_safetensors(std::string_view name);
// DType -> safetensors dtype string; throws optiq::Error for DTypes that
// safetensors cannot hold (the ggml block types).
std::string_view safetensors_dtype_name(DType t);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // mmaps, parses, validates; throws optiq::Error
  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // All tensors, sorted by name.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find_tensor(std::string_view name) const;
  // The "__metadata__" entries (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }
  size_t header_size() const { return header_size_; }  // N, the JSON length (padding included)
  size_t file_size() const { return map_.size(); }
  // Where [p, p + n) lies in the file when it is inside this file's map (a
  // tensor's bytes as tensors() hands them out; nullopt for anything else,
  // e.g. a misaligned tensor's copy): lets a reader fetch them itself.
  std::optional<uint64_t> file_offset_of(const void* p, size_t n) const {
    const auto* b = static_cast<const uint8_t*>(p);
    if (!map_.data() || b < map_.data() || b + n > map_.data() + map_.size()) return std::nullopt;
    return static_cast<uint64_t>(b - map_.data());
  }

 private:
  std::string path_;
  MappedFile map_;
  size_t header_size_ = 0;
  std::vector<TensorView> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<uint64_t[]>> realigned_;  // copies of misaligned tensors
};

// Collects tensors and writes one safetensors file. Tensors are laid out by
// element size (largest first, then by name) so that, with the header padded
// to a multiple of 8 bytes, every tensor is aligned to its element size.
// The file is written to a temporary file in the same directory and renamed
// into place, so readers never see a half-written file.
class SafetensorsWriter {
 public:
  // Borrowed: the caller keeps `bytes` alive and unchanged until write().
  // bytes.size() must equal dtype size x the element count of `shape`.
  void add(std::string name, DType dtype, std::vector<int64_t> shape, std::span<const uint8_t> bytes);
  void add_owned(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes);
  // Borrows a TensorView's bytes, like add().
  void add_view(const TensorView& t) {
    add(t.name, t.dtype, t.shape, {static_cast<const uint8_t*>(t.data), t.nbytes});
  }
  void set_metadata(std::string key, std::string value);
  size_t size() const { return entries_.size(); }
  // Throws optiq::Error("<path>: ...") if the file cannot be written.
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::span<const uint8_t> borrowed;
    std::vector<uint8_t> owned;
    bool is_owned = false;
    std::span<const uint8_t> bytes() const { return is_owned ? std::span<const uint8_t>(owned) : borrowed; }
  };
  void check_entry(const std::string& name, DType dtype, const std::vector<int64_t>& shape, size_t nbytes) const;
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> names_;
  std::map<std::string, std::string> metadata_;
};

// Small helpers shared by safetensors.cpp, hf_checkpoint.cpp and llama2c.cpp.
namespace safetensors_detail {
// Untrusted text (tensor names, JSON error excerpts) made safe for a one-line
// message: control bytes escaped as \xNN, cut at `max` chars.
std::string printable(std::string_view s, size_t max = 200);
// The bytes of a tensor to be written, after checking its name (not empty,
// not __metadata__), dtype (one safetensors has) and shape (no negative
// dimension, no overflow); throws "safetensors writer: ...".
uint64_t checked_bytes(const std::string& name, DType dtype, const std::vector<int64_t>& shape);
// The 8-byte little-endian length and the header JSON, padded to a multiple
// of 8 (what precedes the data); throws "<path>: cannot write ..." for JSON
// that cannot be dumped (invalid UTF-8 in a name).
std::string encode_header(const nlohmann::json& header, const std::string& path);
}  // namespace safetensors_detail

}  // namespace optiq

// Writes GGUF v3 files: metadata in insertion order, tensors aligned to
// general.alignment (default 32), written atomically (temp file + rename).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "formats/gguf.h"

namespace optiq {

class PartialOutput;

class GgufWriter {
 public:
  using Type = GgufValue::Type;

  // Metadata. Adding a key again replaces its value in place.
  void add(std::string key, GgufValue v);
  void add_string(std::string key, std::string v);
  void add_int(std::string key, int64_t v, Type t = Type::I64);  // any integer type
  void add_u32(std::string key, uint32_t v) { add_int(std::move(key), v, Type::U32); }
  void add_i32(std::string key, int32_t v) { add_int(std::move(key), v, Type::I32); }
  void add_float(std::string key, double v, Type t = Type::F32);  // F32 or F64
  void add_bool(std::string key, bool v);
  void add_string_array(std::string key, std::vector<std::string> v);
  void add_float_array(std::string key, const std::vector<float>& v);  // F32 elements
  void add_int_array(std::string key, std::vector<int64_t> v, Type elem = Type::I32);
  // Copies every metadata entry of `src` (in file order) for which keep(key) is true.
  void copy_metadata(const GgufFile& src, const std::function<bool(std::string_view)>& keep = nullptr);
  bool has(std::string_view key) const;

  // Tensors: shape is outermost-first (as TensorView); the file stores the
  // reversed ggml ne[]. nbytes must equal dtype_bytes(dtype, numel) and the
  // innermost dimension must be a whole number of blocks.
  void add_tensor(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes);  // owned
  // Borrowed: `data` must stay valid until write() returns.
  void add_tensor_view(std::string name, DType dtype, std::vector<int64_t> shape, const void* data, size_t nbytes);
  // Produced at write time: fill(dst) writes exactly nbytes to dst (lets
  // quantizers stream a big model without holding it all in memory).
  void add_tensor_lazy(std::string name, DType dtype, std::vector<int64_t> shape, size_t nbytes,
                       std::function<void(uint8_t* dst)> fill);
  size_t tensor_count() const { return tensors_.size(); }

  // Writes the file atomically; throws optiq::Error("<path>: ...") on failure.
  // `progress(bytes, total)` is called once before any tensor's data (with
  // the bytes already there: 0, or what a resumed file holds) and after each.
  // With `partial` (core/partial_output.h) the file is written in place in
  // its directory, a piece per tensor, continuing after the tensors an
  // interrupted run finished ("resuming: N of M tensors already written"),
  // and moved over `path` when complete.
  void write(const std::string& path, const std::function<void(uint64_t done, uint64_t total)>& progress = nullptr,
             PartialOutput* partial = nullptr) const;

 private:
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    size_t nbytes;
    std::vector<uint8_t> owned;
    const void* borrowed = nullptr;
    std::function<void(uint8_t*)> fill;
  };
  void check_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape, size_t nbytes) const;
  uint64_t alignment() const;

  std::vector<std::pair<std::string, GgufValue>> meta_;
  std::vector<Tensor> tensors_;
};

}  // namespace optiq

#include "formats/gguf_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/atomic_file.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "core/partial_output.h"

namespace optiq {

using VT = GgufValue::Type;

void GgufWriter::add(std::string key, GgufValue v) {
  for (auto& [k, old] : meta_) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  meta_.emplace_back(std::move(key), std::move(v));
}

void GgufWriter::add_string(std::string key, std::string v) { add(std::move(key), GgufValue::make_string(std::move(v))); }
void GgufWriter::add_int(std::string key, int64_t v, Type t) { add(std::move(key), GgufValue::make_int(t, v)); }
void GgufWriter::add_float(std::string key, double v, Type t) { add(std::move(key), GgufValue::make_float(t, v)); }
void GgufWriter::add_bool(std::string key, bool v) { add(std::move(key), GgufValue::make_bool(v)); }
void GgufWriter::add_string_array(std::string key, std::vector<std::string> v) {
  add(std::move(key), GgufValue::make_string_array(std::move(v)));
}
void GgufWriter::add_float_array(std::string key, const std::vector<float>& v) {
  add(std::move(key), GgufValue::make_float_array(VT::F32, std::vector<double>(v.begin(), v.end())));
}
void GgufWriter::add_int_array(std::string key, std::vector<int64_t> v, Type elem) {
  add(std::move(key), GgufValue::make_int_array(elem, std::move(v)));
}

void GgufWriter::copy_metadata(const GgufFile& src, const std::function<bool(std::string_view)>& keep) {
  for (const auto& [k, v] : src.metadata())
    if (!keep || keep(k)) add(k, v);
}

bool GgufWriter::has(std::string_view key) const {
  for (const auto& kv : meta_)
    if (kv.first == key) return true;
  return false;
}

uint64_t GgufWriter::alignment() const {
  for (const auto& [k, v] : meta_) {
    if (k != "general.alignment") continue;
    check(v.is_int() && v.i > 0 && v.i <= (1 << 30) && (v.i & (v.i - 1)) == 0,
          "GGUF writer: general.alignment must be a positive power of two integer");
    return static_cast<uint64_t>(v.i);
  }
  return 32;
}

void GgufWriter::check_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                              size_t nbytes) const {
  check(!shape.empty() && shape.size() <= 4, "GGUF writer: tensor {} has {} dimensions (expected 1 to 4)", name,
        shape.size());
  int64_t n = 1;
  for (int64_t d : shape) {
    check(d > 0, "GGUF writer: tensor {} has shape {}", name, shape_str(shape));
    n *= d;
  }
  ggml_type_from_dtype(dtype);  // throws for types GGUF cannot hold
  BlockLayout bl = block_layout(dtype);
  check(shape.back() % bl.block_elems == 0, "GGUF writer: tensor {} row length {} is not a multiple of the {} block size {}",
        name, shape.back(), dtype_name(dtype), bl.block_elems);
  check(nbytes == dtype_bytes(dtype, n), "GGUF writer: tensor {} ({} {}) has {} bytes, expected {}", name,
        dtype_name(dtype), shape_str(shape), nbytes, dtype_bytes(dtype, n));
  for (const auto& t : tensors_) check(t.name != name, "GGUF writer: duplicate tensor name {}", name);
}

void GgufWriter::add_tensor(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes) {
  check_tensor(name, dtype, shape, bytes.size());
  Tensor t{std::move(name), dtype, std::move(shape), bytes.size(), std::move(bytes), nullptr, nullptr};
  tensors_.push_back(std::move(t));
}

void GgufWriter::add_tensor_view(std::string name, DType dtype, std::vector<int64_t> shape, const void* data,
                                 size_t nbytes) {
  check_tensor(name, dtype, shape, nbytes);
  Tensor t{std::move(name), dtype, std::move(shape), nbytes, {}, data, nullptr};
  tensors_.push_back(std::move(t));
}

void GgufWriter::add_tensor_lazy(std::string name, DType dtype, std::vector<int64_t> shape, size_t nbytes,
                                 std::function<void(uint8_t*)> fill) {
  check_tensor(name, dtype, shape, nbytes);
  Tensor t{std::move(name), dtype, std::move(shape), nbytes, {}, nullptr, std::move(fill)};
  tensors_.push_back(std::move(t));
}

namespace {

// The header's bytes, gathered in memory (metadata and tensor table: a few
// MB at most), then written to the file before the tensors' data.
class Out {
 public:
  void bytes(const void* p, size_t n) { s_.append(static_cast<const char*>(p), n); }
  template <typename T>
  void pod(T v) { bytes(&v, sizeof(T)); }
  void str(const std::string& s) {
    pod<uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  void pad_to(uint64_t align) { s_.resize((s_.size() + align - 1) / align * align, '\0'); }
  uint64_t pos() const { return s_.size(); }
  const std::string& str() const { return s_; }

 private:
  std::string s_;
};

void write_scalar_int(Out& o, VT t, int64_t v) {
  switch (t) {
    case VT::U8: case VT::I8: case VT::BOOL: o.pod<uint8_t>(static_cast<uint8_t>(v)); break;
    case VT::U16: case VT::I16: o.pod<uint16_t>(static_cast<uint16_t>(v)); break;
    case VT::U32: case VT::I32: o.pod<uint32_t>(static_cast<uint32_t>(v)); break;
    case VT::U64: case VT::I64: o.pod<uint64_t>(static_cast<uint64_t>(v)); break;
    default: break;
  }
}

void write_value(Out& o, const GgufValue& v, bool with_type) {
  if (with_type) o.pod<uint32_t>(static_cast<uint32_t>(v.type));
  switch (v.type) {
    case VT::STRING: o.str(v.str); break;
    case VT::F32: o.pod<float>(static_cast<float>(v.f)); break;
    case VT::F64: o.pod<double>(v.f); break;
    case VT::ARRAY: {
      o.pod<uint32_t>(static_cast<uint32_t>(v.elem_type));
      o.pod<uint64_t>(v.size());
      VT e = v.elem_type;
      if (e == VT::STRING) {
        for (const auto& s : v.strings) o.str(s);
      } else if (e == VT::ARRAY) {
        for (const auto& a : v.arrays) write_value(o, a, false);
      } else if (e == VT::F32) {
        for (double x : v.floats) o.pod<float>(static_cast<float>(x));
      } else if (e == VT::F64) {
        for (double x : v.floats) o.pod<double>(x);
      } else {
        for (int64_t x : v.ints) write_scalar_int(o, e, x);
      }
      break;
    }
    default: write_scalar_int(o, v.type, v.i); break;
  }
}

}  // namespace

void GgufWriter::write(const std::string& path, const std::function<void(uint64_t, uint64_t)>& progress,
                       PartialOutput* partial) const {
  const uint64_t align = alignment();
  for (const auto& [k, v] : meta_) {
    if (v.type == VT::ARRAY && v.elem_type == VT::ARRAY)
      for (const auto& a : v.arrays)
        check(a.type == VT::ARRAY, "{}: metadata {}: nested array elements must be arrays", path, k);
  }
  Out o;
  o.bytes("GGUF", 4);
  o.pod<uint32_t>(3);
  o.pod<uint64_t>(tensors_.size());
  o.pod<uint64_t>(meta_.size());
  for (const auto& [k, v] : meta_) {
    o.str(k);
    write_value(o, v, true);
  }
  uint64_t off = 0;
  for (const auto& t : tensors_) {
    o.str(t.name);
    o.pod<uint32_t>(static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) o.pod<uint64_t>(static_cast<uint64_t>(*it));
    o.pod<uint32_t>(ggml_type_from_dtype(t.dtype));
    o.pod<uint64_t>(off);
    off += (t.nbytes + align - 1) / align * align;
  }
  o.pad_to(align);
  const std::string& header = o.str();
  // Where each piece of the file ends: the header, then each tensor padded.
  std::vector<uint64_t> ends{header.size()};
  for (const auto& t : tensors_) ends.push_back(ends.back() + (t.nbytes + align - 1) / align * align);
  uint64_t data_done = 0, data_total = 0;
  for (const auto& t : tensors_) data_total += t.nbytes;

  // Tensors from `first` on; the file's writer F: AtomicFile, or a ResumableFile (a piece per tensor).
  auto tensors = [&](auto& f, size_t first) {
    for (size_t i = 0; i < first; ++i) data_done += tensors_[i].nbytes;
    if (progress) progress(data_done, data_total);  // what is there already (0 from scratch)
    std::vector<uint8_t> scratch;
    for (size_t i = first; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      if (t.fill) {
        scratch.resize(t.nbytes);
        t.fill(scratch.data());
        f.write(scratch.data(), t.nbytes);
        // A big tensor's buffer is not kept for the small ones after it.
        if (scratch.capacity() > (size_t{64} << 20)) std::vector<uint8_t>().swap(scratch);
      } else if (t.borrowed) {
        f.write(t.borrowed, t.nbytes);
      } else {
        f.write(t.owned.data(), t.nbytes);
      }
      f.pad_to(align);
      if constexpr (requires { f.end_piece(); }) f.end_piece();
      data_done += t.nbytes;
      if (progress) progress(data_done, data_total);
    }
  };
  if (!partial) {
    AtomicFile f(path);
    f.write(header);
    tensors(f, 0);
    f.commit();
    return;
  }
  const std::string name = std::filesystem::path(path).filename().string();
  ResumableFile f(*partial, name, header, ends, path);
  size_t first = 0;
  if (f.pieces_done() == 0) {
    f.write(header);
    f.end_piece();
  } else {
    first = static_cast<size_t>(f.pieces_done() - 1);
    if (first > 0) note("resuming: {} of {} tensors already written ({})", first, tensors_.size(), partial->dir());
  }
  tensors(f, first);
  f.close();
  partial->commit_file(name);
}

}  // namespace optiq

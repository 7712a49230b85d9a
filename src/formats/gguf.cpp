#include "formats/gguf.h"

#include <fmt/format.h>

#include <cstring>
#include <limits>

#include "core/error.h"

namespace optiq {

using VT = GgufValue::Type;

// ------------------------------------------------------------------ parsing

namespace {

constexpr int kMaxArrayDepth = 8;

// Bounds-checked little-endian reader over the mapped bytes. Every read first
// checks that the bytes exist; `what` names the item in error messages.
class Reader {
 public:
  Reader(const std::string& path, const uint8_t* data, size_t size) : path_(path), p_(data), size_(size) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  void need(size_t n, std::string_view what) const {
    if (n > remaining())
      fail("{}: truncated file: {} needs {} bytes at offset {}, but the file has {} bytes", path_, what, n, pos_, size_);
  }
  template <typename T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(std::string_view what) {
    uint64_t n = read<uint64_t>(what);
    if (n > remaining())
      fail("{}: {} has length {} at offset {}, beyond the end of the file ({} bytes)", path_, what, n, pos_ - 8,
           size_);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(n));
    pos_ += n;
    return s;
  }
  // Checks that `count` items of at least `min_bytes` each can still fit.
  void check_count(uint64_t count, size_t min_bytes, std::string_view what) const {
    if (count > remaining() / min_bytes)
      fail("{}: {} is {}, which cannot fit in the remaining {} bytes of the file", path_, what, count, remaining());
  }

 private:
  const std::string& path_;
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
};

size_t scalar_size(VT t) {
  switch (t) {
    case VT::U8: case VT::I8: case VT::BOOL: return 1;
    case VT::U16: case VT::I16: return 2;
    case VT::U32: case VT::I32: case VT::F32: return 4;
    case VT::U64: case VT::I64: case VT::F64: return 8;
    case VT::STRING: return 8;   // minimum: the length
    case VT::ARRAY: return 12;   // minimum: type + length
  }
  return 1;
}

VT read_type(Reader& r, const std::string& path, std::string_view what) {
  uint32_t t = r.read<uint32_t>(what);
  if (t > 12) fail("{}: {} has unknown value type {} (valid: 0..12)", path, what, t);
  return static_cast<VT>(t);
}

int64_t read_int(Reader& r, VT t, std::string_view what) {
  switch (t) {
    case VT::U8: return r.read<uint8_t>(what);
    case VT::I8: return r.read<int8_t>(what);
    case VT::BOOL: return r.read<uint8_t>(what) != 0;
    case VT::U16: return r.read<uint16_t>(what);
    case VT::I16: return r.read<int16_t>(what);
    case VT::U32: return r.read<uint32_t>(what);
    case VT::I32: return r.read<int32_t>(what);
    case VT::U64: return static_cast<int64_t>(r.read<uint64_t>(what));
    case VT::I64: return r.read<int64_t>(what);
    default: return 0;
  }
}

GgufValue read_value(Reader& r, VT t, const std::string& path, const std::string& what, int depth) {
  GgufValue v;
  v.type = t;
  if (t == VT::STRING) {
    v.str = r.read_string(what);
  } else if (t == VT::F32) {
    v.f = r.read<float>(what);
  } else if (t == VT::F64) {
    v.f = r.read<double>(what);
  } else if (t == VT::ARRAY) {
    if (depth >= kMaxArrayDepth) fail("{}: {} nests arrays deeper than {} levels", path, what, kMaxArrayDepth);
    v.elem_type = read_type(r, path, what + " element type");
    uint64_t n = r.read<uint64_t>(what + " length");
    r.check_count(n, scalar_size(v.elem_type), what + " length");
    size_t count = static_cast<size_t>(n);
    VT e = v.elem_type;
    if (e == VT::STRING) {
      v.strings.reserve(count);
      for (size_t k = 0; k < count; ++k) v.strings.push_back(r.read_string(what));
    } else if (e == VT::ARRAY) {
      v.arrays.reserve(count);
      for (size_t k = 0; k < count; ++k) v.arrays.push_back(read_value(r, VT::ARRAY, path, what, depth + 1));
    } else if (e == VT::F32) {
      v.floats.resize(count);
      for (size_t k = 0; k < count; ++k) v.floats[k] = r.read<float>(what);
    } else if (e == VT::F64) {
      v.floats.resize(count);
      for (size_t k = 0; k < count; ++k) v.floats[k] = r.read<double>(what);
    } else {
      v.ints.resize(count);
      for (size_t k = 0; k < count; ++k) v.ints[k] = read_int(r, e, what);
    }
  } else {
    v.i = read_int(r, t, what);
  }
  return v;
}

}  // namespace

GgufFile::GgufFile(const std::string& path) : path_(path), file_(path) {
  const uint8_t* data = file_.data();
  const size_t size = file_.size();
  Reader r(path_, data, size);
  if (size < 4 || std::memcmp(data, "GGUF", 4) != 0) fail("{}: not a GGUF file (wrong magic)", path_);
  r.read<uint32_t>("magic");
  version_ = r.read<uint32_t>("version");
  if (version_ == 1) fail("{}: GGUF version 1 is not supported (only 2 and 3): re-convert the model", path_);
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xffff) == 0 && version_ != 0)
      fail("{}: GGUF version {:#x} looks big-endian, which optiq does not support", path_, version_);
    fail("{}: unsupported GGUF version {} (expected 2 or 3)", path_, version_);
  }
  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("metadata count");
  // Minimum sizes: a tensor info is name(8) + n_dims(4) + ne(8) + type(4) +
  // offset(8); a key/value is key(8) + type(4) + value(1).
  r.check_count(n_kv, 13, "metadata count");
  r.check_count(n_tensors, 32, "tensor count");

  meta_.reserve(static_cast<size_t>(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = r.read_string(fmt::format("metadata key #{}", k));
    std::string what = fmt::format("metadata {}", key);
    VT t = read_type(r, path_, what);
    GgufValue v = read_value(r, t, path_, what, 0);
    if (!meta_index_.emplace(key, meta_.size()).second) fail("{}: duplicate metadata key {}", path_, key);
    meta_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find_meta("general.alignment")) {
    if (!a->is_int() || a->i <= 0 || a->as_u64() > (1u << 30) || (a->as_u64() & (a->as_u64() - 1)) != 0)
      fail("{}: metadata general.alignment must be a positive power of two integer, got {}", path_,
           metadata_to_string(*a));
    alignment_ = a->as_u64();
  }

  struct Info {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t offset;
    size_t nbytes;
  };
  std::vector<Info> infos;
  infos.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    Info ti;
    ti.name = r.read_string(fmt::format("tensor #{} name", k));
    const std::string what = fmt::format("tensor {}", ti.name);
    if (tensor_index_.count(ti.name)) fail("{}: duplicate tensor name {}", path_, ti.name);
    tensor_index_.emplace(ti.name, infos.size());
    uint32_t n_dims = r.read<uint32_t>(what + " n_dims");
    if (n_dims < 1 || n_dims > 4) fail("{}: {} has {} dimensions (expected 1 to 4)", path_, what, n_dims);
    std::vector<int64_t> ne(n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t x = r.read<uint64_t>(what + " dims");
      if (x == 0 || x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail("{}: {} has invalid dimension {} = {}", path_, what, d, x);
      ne[d] = static_cast<int64_t>(x);
      if (numel > std::numeric_limits<int64_t>::max() / ne[d])
        fail("{}: {} has too many elements (dimensions overflow)", path_, what);
      numel *= ne[d];
    }
    uint32_t type = r.read<uint32_t>(what + " type");
    std::optional<DType> dt = dtype_from_ggml_type(type);
    if (!dt) {
      std::string_view tn = ggml_type_name(type);
      fail("{}: tensor {} has ggml type {} ({}), which optiq does not support", path_, ti.name, type,
           tn.empty() ? "unknown" : tn);
    }
    ti.dtype = *dt;
    BlockLayout bl = block_layout(ti.dtype);
    if (ne[0] % bl.block_elems != 0)
      fail("{}: tensor {} has row length {}, not a multiple of the {} block size {}", path_, ti.name, ne[0],
           dtype_name(ti.dtype), bl.block_elems);
    // A tensor cannot need more bytes than the whole file (also rules out overflow).
    uint64_t blocks = static_cast<uint64_t>(numel / bl.block_elems);
    if (blocks > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(bl.block_bytes) ||
        blocks * bl.block_bytes > size)
      fail("{}: tensor {} ({} {}) needs more bytes than the file has ({})", path_, ti.name, dtype_name(ti.dtype),
           numel, size);
    ti.nbytes = static_cast<size_t>(blocks * bl.block_bytes);
    ti.offset = r.read<uint64_t>(what + " offset");
    if (ti.offset % alignment_ != 0)
      fail("{}: tensor {} has offset {}, not a multiple of the alignment {}", path_, ti.name, ti.offset, alignment_);
    ti.shape.assign(ne.rbegin(), ne.rend());
    infos.push_back(std::move(ti));
  }

  // The data section starts at the next multiple of the alignment.
  uint64_t pos = r.pos();
  data_offset_ = (pos + alignment_ - 1) / alignment_ * alignment_;
  if (!infos.empty() && data_offset_ > size)
    fail("{}: truncated file: tensor data would start at offset {}, but the file has {} bytes", path_, data_offset_,
         size);
  const uint64_t data_size = data_offset_ <= size ? size - data_offset_ : 0;
  tensors_.reserve(infos.size());
  offsets_.reserve(infos.size());
  for (auto& ti : infos) {
    if (ti.offset > data_size || ti.nbytes > data_size - ti.offset)
      fail("{}: tensor {} data (offset {}, {} bytes) lies beyond the end of the file (data section has {} bytes)",
           path_, ti.name, ti.offset, ti.nbytes, data_size);
    TensorView tv;
    tv.name = std::move(ti.name);
    tv.dtype = ti.dtype;
    tv.shape = std::move(ti.shape);
    tv.data = data + data_offset_ + ti.offset;
    tv.nbytes = ti.nbytes;
    tensors_.push_back(std::move(tv));
    offsets_.push_back(ti.offset);
  }
}

// ----------------------------------------------------------------- metadata

const GgufValue* GgufFile::find_meta(std::string_view key) const {
  auto it = meta_index_.find(std::string(key));
  return it == meta_index_.end() ? nullptr : &meta_[it->second].second;
}

namespace {
[[noreturn]] void wrong_type(const std::string& path, std::string_view key, const GgufValue& v,
                             std::string_view expected) {
  std::string have(gguf_type_name(v.type));
  if (v.type == VT::ARRAY) have = fmt::format("array of {}", gguf_type_name(v.elem_type));
  fail("{}: metadata {} has type {}, expected {}", path, key, have, expected);
}
}  // namespace

#define OPTIQ_GGUF_GET(key)                                                        \
  const GgufValue* v = find_meta(key);                                             \
  if (!v) fail("{}: metadata {} missing", path_, key);

std::string GgufFile::get_string(std::string_view key) const {
  OPTIQ_GGUF_GET(key);
  if (v->type != VT::STRING) wrong_type(path_, key, *v, "string");
  return v->str;
}

int64_t GgufFile::get_int(std::string_view key) const {
  OPTIQ_GGUF_GET(key);
  if (!v->is_int()) wrong_type(path_, key, *v, "an integer");
  if (v->type == VT::U64 && v->i < 0) fail("{}: metadata {} value {} is too large", path_, key, v->as_u64());
  return v->i;
}

int64_t GgufFile::get_int_or(std::string_view key, int64_t def) const { return has(key) ? get_int(key) : def; }

double GgufFile::get_float(std::string_view key) const {
  OPTIQ_GGUF_GET(key);
  if (v->is_float()) return v->f;
  if (v->is_int()) return v->type == VT::U64 ? static_cast<double>(v->as_u64()) : static_cast<double>(v->i);
  wrong_type(path_, key, *v, "a number");
}

double GgufFile::get_float_or(std::string_view key, double def) const { return has(key) ? get_float(key) : def; }

bool GgufFile::get_bool_or(std::string_view key, bool def) const {
  const GgufValue* v = find_meta(key);
  if (!v) return def;
  if (v->type != VT::BOOL) wrong_type(path_, key, *v, "bool");
  return v->i != 0;
}

const std::vector<std::string>& GgufFile::string_array_ref(std::string_view key) const {
  OPTIQ_GGUF_GET(key);
  if (v->type != VT::ARRAY || v->elem_type != VT::STRING) wrong_type(path_, key, *v, "array of string");
  return v->strings;
}

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const { return string_array_ref(key); }

std::vector<float> GgufFile::get_float_array(std::string_view key) const {
  OPTIQ_GGUF_GET(key);
  if (v->type != VT::ARRAY) wrong_type(path_, key, *v, "array of numbers");
  std::vector<float> out;
  if (GgufValue::is_float_type(v->elem_type)) {
    out.reserve(v->floats.size());
    for (double x : v->floats) out.push_back(static_cast<float>(x));
  } else if (GgufValue::is_integer_type(v->elem_type)) {
    out.reserve(v->ints.size());
    for (int64_t x : v->ints)
      out.push_back(v->elem_type == VT::U64 ? static_cast<float>(static_cast<uint64_t>(x)) : static_cast<float>(x));
  } else {
    wrong_type(path_, key, *v, "array of numbers");
  }
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  OPTIQ_GGUF_GET(key);
  if (v->type != VT::ARRAY || !(GgufValue::is_integer_type(v->elem_type) || v->elem_type == VT::BOOL))
    wrong_type(path_, key, *v, "array of integers");
  return v->ints;
}

#undef OPTIQ_GGUF_GET

const TensorView* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
std::string quote(std::string_view s, size_t max_chars) {
  std::string out = "\"";
  size_t n = 0;
  for (char c : s) {
    if (n++ >= max_chars) {
      out += fmt::format("...\" ({} bytes)", s.size());
      return out;
    }
    switch (c) {
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20)
          out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
        else
          out += c;
    }
  }
  return out + "\"";
}

std::string format_float(VT t, double f) {
  return t == VT::F32 ? fmt::format("{}", static_cast<float>(f)) : fmt::format("{}", f);
}

std::string format_int(VT t, int64_t i) {
  if (t == VT::BOOL) return i ? "true" : "false";
  if (t == VT::U64) return fmt::format("{}", static_cast<uint64_t>(i));
  return fmt::format("{}", i);
}

std::string to_string(const GgufValue& v, size_t max_elems) {
  if (v.type == VT::STRING) return quote(v.str, 120);
  if (v.is_float()) return format_float(v.type, v.f);
  if (v.type != VT::ARRAY) return format_int(v.type, v.i);
  const size_t n = v.size();
  std::string out = "[";
  const size_t shown = std::min(n, max_elems);
  for (size_t k = 0; k < shown; ++k) {
    if (k) out += ", ";
    if (v.elem_type == VT::STRING)
      out += quote(v.strings[k], 40);
    else if (v.elem_type == VT::ARRAY)
      out += to_string(v.arrays[k], max_elems);
    else if (GgufValue::is_float_type(v.elem_type))
      out += format_float(v.elem_type, v.floats[k]);
    else
      out += format_int(v.elem_type, v.ints[k]);
  }
  if (shown < n) out += fmt::format(", ... ({} {} total)", n, gguf_type_name(v.elem_type));
  return out + "]";
}
}  // namespace

std::string GgufFile::metadata_to_string(const GgufValue& v, size_t max_elems) const { return to_string(v, max_elems); }

void GgufFile::release_large_arrays(size_t min_elems) {
  for (auto& [key, v] : meta_) {
    if (!v.is_array() || v.size() < min_elems) continue;
    std::vector<int64_t>().swap(v.ints);
    std::vector<double>().swap(v.floats);
    std::vector<std::string>().swap(v.strings);
    std::vector<GgufValue>().swap(v.arrays);
  }
}

}  // namespace optiq

#include "formats/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"

namespace optiq {

using json = nlohmann::json;

using safetensors_detail::printable;

namespace {

// The reference implementation refuses headers above 100 MB; so do we (a
// larger one is damage, and parsing it would cost gigabytes of memory).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeName {
  const char* name;
  DType dtype;
};
constexpr DTypeName kSupported[] = {
    {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"U32", DType::U32},
    {"I32", DType::I32}, {"I64", DType::I64}, {"U8", DType::U8},
};
// Valid safetensors dtypes that optiq has no use for (reported as unsupported,
// not as unknown).
constexpr const char* kKnownUnsupported[] = {"F64", "I8", "I16", "U16", "U64", "BOOL", "F8_E4M3", "F8_E5M2",
                                             "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"};

size_t elem_size(DType t) { return static_cast<size_t>(block_layout(t).block_bytes); }

// A JSON value that is a non-negative integer, as uint64.
bool as_u64(const json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    if (x < 0) return false;
    out = static_cast<uint64_t>(x);
    return true;
  }
  return false;
}

// A JSON value for an error message, without dumping nested structures (which
// could be huge or deep).
std::string describe(const json& v) {
  if (v.is_structured()) return std::string("a JSON ") + v.type_name();
  return printable(v.dump());
}

}  // namespace

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (const auto& d : kSupported)
    if (name == d.name) return d.dtype;
  return std::nullopt;
}

std::string_view safetensors_dtype_name(DType t) {
  for (const auto& d : kSupported)
    if (d.dtype == t) return d.name;
  fail("safetensors cannot hold {} tensors (only F32, F16, BF16, U32, I32, I64, U8)", dtype_name(t));
}

// ---------------------------------------------------------------- reading

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path), map_(path) {
  const size_t size = map_.size();
  check(size >= 8, "{}: file is {} bytes, too small for a safetensors file (needs at least an 8-byte header length)",
        path, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | map_.data()[i];
  check(n <= size - 8, "{}: header length {} runs past the end of the file ({} bytes); the file is truncated or not "
        "safetensors", path, n, size);
  check(n <= kMaxHeaderBytes, "{}: header length {} is larger than the {} bytes safetensors allows", path, n,
        kMaxHeaderBytes);
  check(n >= 2, "{}: header length {} is too small for a JSON object", path, n);
  header_size_ = static_cast<size_t>(n);
  const char* hdr = reinterpret_cast<const char*>(map_.data() + 8);
  check(hdr[0] == '{', "{}: header does not start with '{{' (not a safetensors file)", path);

  // Parse, noting duplicate top-level keys (nlohmann keeps the last silently).
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1 && duplicate.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second) duplicate = k;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(hdr, hdr + n, cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", path, printable(e.what()));
  }
  check(header.is_object(), "{}: header is JSON but not an object", path);
  check(duplicate.empty(), "{}: tensor {} appears twice in the header", path, printable(duplicate));

  const uint64_t data_start = 8 + n;
  const uint64_t data_size = size - data_start;
  struct Span {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Span> spans;
  tensors_.reserve(header.size());

  for (const auto& [name, entry] : header.items()) {
    const std::string pname = printable(name);
    if (name == "__metadata__") {
      check(entry.is_object(), "{}: __metadata__ is not a JSON object", path);
      for (const auto& [k, v] : entry.items()) {
        check(v.is_string(), "{}: __metadata__ entry {} is not a string", path, printable(k));
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    check(entry.is_object(), "{}: header entry for tensor {} is not a JSON object", path, pname);
    auto dt = entry.find("dtype");
    check(dt != entry.end() && dt->is_string(), "{}: tensor {} has no dtype string", path, pname);
    const std::string& dts = dt->get_ref<const std::string&>();
    std::optional<DType> dtype = dtype_from_safetensors(dts);
    if (!dtype) {
      bool known = std::find_if(std::begin(kKnownUnsupported), std::end(kKnownUnsupported),
                                [&](const char* s) { return dts == s; }) != std::end(kKnownUnsupported);
      if (known) fail("{}: tensor {} has dtype {}, which optiq does not support", path, pname, dts);
      fail("{}: tensor {} has unknown dtype \"{}\"", path, pname, printable(dts));
    }

    auto sh = entry.find("shape");
    check(sh != entry.end() && sh->is_array(), "{}: tensor {} has no shape array", path, pname);
    std::vector<int64_t> shape;
    shape.reserve(sh->size());
    int64_t numel = 1;
    for (const auto& d : *sh) {
      uint64_t u = 0;
      if (!as_u64(d, u))
        fail("{}: tensor {} has a shape entry that is not a non-negative integer: {}", path, pname, describe(d));
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(numel, static_cast<int64_t>(u), &numel))
        fail("{}: tensor {} has an absurd shape (dimension {} = {} overflows)", path, pname, shape.size(), u);
      shape.push_back(static_cast<int64_t>(u));
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(numel), elem_size(*dtype), &nbytes))
      fail("{}: tensor {} has an absurd shape {} (too many bytes)", path, pname, shape_str(shape));

    auto off = entry.find("data_offsets");
    uint64_t begin = 0, end = 0;
    check(off != entry.end() && off->is_array() && off->size() == 2 && as_u64((*off)[0], begin) &&
              as_u64((*off)[1], end),
          "{}: tensor {} has no valid data_offsets (expected [begin, end])", path, pname);
    check(begin <= end, "{}: tensor {} has data_offsets [{}, {}] that end before they begin", path, pname, begin,
          end);
    check(end <= data_size, "{}: tensor {} has data_offsets [{}, {}] past the end of the data ({} bytes); the file "
          "is truncated", path, pname, begin, end, data_size);
    if (end - begin != nbytes)
      fail("{}: tensor {} is {} {} ({} bytes) but its data_offsets [{}, {}] span {} bytes", path, pname, dts,
           shape_str(shape), nbytes, begin, end, end - begin);

    TensorView t;
    t.name = name;
    t.dtype = *dtype;
    t.shape = std::move(shape);
    t.nbytes = static_cast<size_t>(nbytes);
    t.data = map_.data() + data_start + begin;
    if (nbytes > 0) spans.push_back({begin, end, tensors_.size()});
    tensors_.push_back(std::move(t));
  }

  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].begin < spans[i - 1].end)
      fail("{}: tensors {} and {} overlap (data_offsets [{}, {}] and [{}, {}])", path,
           printable(tensors_[spans[i - 1].index].name), printable(tensors_[spans[i].index].name), spans[i - 1].begin,
           spans[i - 1].end, spans[i].begin, spans[i].end);

  // Misaligned data (other writers may not align): copy once, so consumers can
  // read elements through typed pointers.
  for (auto& t : tensors_) {
    const size_t align = elem_size(t.dtype);
    if (t.nbytes == 0 || reinterpret_cast<uintptr_t>(t.data) % align == 0) continue;
    auto buf = std::make_unique<uint64_t[]>((t.nbytes + 7) / 8);
    std::memcpy(buf.get(), t.data, t.nbytes);
    t.data = buf.get();
    realigned_.push_back(std::move(buf));
  }

  std::sort(tensors_.begin(), tensors_.end(), [](const TensorView& a, const TensorView& b) { return a.name < b.name; });
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

const TensorView* SafetensorsFile::find_tensor(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---------------------------------------------------------------- writing

std::string safetensors_detail::encode_header(const nlohmann::json& header, const std::string& path) {
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    fail("{}: cannot write safetensors header: {}", path, printable(e.what()));
  }
  // Padded with spaces so that the data area starts at a multiple of 8.
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  return out + text;
}

uint64_t safetensors_detail::checked_bytes(const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  check(!name.empty(), "safetensors writer: tensor name is empty");
  check(name != "__metadata__", "safetensors writer: a tensor cannot be named __metadata__");
  safetensors_dtype_name(dtype);  // throws for ggml block types
  int64_t numel = 1;
  for (int64_t d : shape)
    check(d >= 0 && !__builtin_mul_overflow(numel, d, &numel), "safetensors writer: tensor {} has invalid shape {}",
          printable(name), shape_str(shape));
  uint64_t bytes = 0;
  check(!__builtin_mul_overflow(static_cast<uint64_t>(numel), elem_size(dtype), &bytes),
        "safetensors writer: tensor {} of shape {} has more bytes than 64 bits count", printable(name), shape_str(shape));
  return bytes;
}

void SafetensorsWriter::check_entry(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                                    size_t nbytes) const {
  const uint64_t want = safetensors_detail::checked_bytes(name, dtype, shape);
  check(names_.count(name) == 0, "safetensors writer: tensor {} added twice", printable(name));
  check(want == nbytes, "safetensors writer: tensor {} is {} {} but has {} bytes of data", printable(name),
        dtype_name(dtype), shape_str(shape), nbytes);
}

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<int64_t> shape,
                            std::span<const uint8_t> bytes) {
  check_entry(name, dtype, shape, bytes.size());
  names_.emplace(name, entries_.size());
  Entry e{std::move(name), dtype, std::move(shape), bytes, {}, false};
  entries_.push_back(std::move(e));
}

void SafetensorsWriter::add_owned(std::string name, DType dtype, std::vector<int64_t> shape,
                                  std::vector<uint8_t> bytes) {
  check_entry(name, dtype, shape, bytes.size());
  names_.emplace(name, entries_.size());
  Entry e{std::move(name), dtype, std::move(shape), {}, std::move(bytes), true};
  entries_.push_back(std::move(e));
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

void SafetensorsWriter::write(const std::string& path) const {
  // Largest elements first, then by name: every tensor lands aligned to its
  // element size because the data area starts at a multiple of 8.
  std::vector<size_t> order(entries_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    size_t ea = elem_size(entries_[a].dtype), eb = elem_size(entries_[b].dtype);
    if (ea != eb) return ea > eb;
    return entries_[a].name < entries_[b].name;
  });

  json header = json::object();
  if (!metadata_.empty()) {
    json m = json::object();
    for (const auto& [k, v] : metadata_) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  uint64_t offset = 0;
  for (size_t i : order) {
    const Entry& e = entries_[i];
    const uint64_t n = e.bytes().size();
    header[e.name] = {{"dtype", safetensors_dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  AtomicFile out(path);
  out.write(safetensors_detail::encode_header(header, path));
  for (size_t i : order) out.write(entries_[i].bytes().data(), entries_[i].bytes().size());
  out.commit();
}

// ---------------------------------------------------------------- helpers

namespace safetensors_detail {

std::string printable(std::string_view s, size_t max) {
  std::string out;
  out.reserve(std::min(s.size(), max) + 8);
  for (size_t i = 0; i < s.size(); ++i) {
    if (out.size() >= max) {
      out += "...";
      break;
    }
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f)
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
  }
  return out;
}


}  // namespace safetensors_detail

}  // namespace optiq

// GGUF (llama.cpp's model format, versions 2 and 3): a read-only, validated
// view of a memory-mapped file. Metadata is parsed into GgufValue; tensors are
// TensorViews into the map with optiq's outermost-first shapes (the reverse of
// ggml's ne[]: a ggml ne=[in, out] weight has shape {out, in}).
//
// Every problem in the file is reported as optiq::Error("<path>: <problem>");
// the parser checks every count, length and offset against the file size
// before it reads, so damaged or hostile files never crash it.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/mapped_file.h"
#include "core/tensor.h"

namespace optiq {

// One metadata value. Scalars use `i` (every integer type and BOOL; U64 values
// above INT64_MAX keep their bit pattern, see as_u64()), `f` (F32/F64) or
// `str`. Arrays are stored flat by element kind, so a 262k-entry vocabulary is
// one vector<string>, not 262k GgufValues:
//   elem_type integer/BOOL -> ints, F32/F64 -> floats, STRING -> strings,
//   ARRAY -> arrays (nested arrays, rare).
struct GgufValue {
  enum class Type : uint32_t { U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 };  // gguf ids 0..12

  Type type = Type::U8;
  int64_t i = 0;
  double f = 0.0;
  std::string str;
  Type elem_type = Type::U8;  // ARRAY only
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  std::vector<GgufValue> arrays;

  static bool is_integer_type(Type t);  // U8..I64 (not BOOL)
  static bool is_float_type(Type t);    // F32, F64
  bool is_int() const { return is_integer_type(type); }
  bool is_float() const { return is_float_type(type); }
  bool is_array() const { return type == Type::ARRAY; }
  uint64_t as_u64() const { return static_cast<uint64_t>(i); }
  size_t size() const;               // array length (0 for scalars)
  GgufValue element(size_t k) const;  // array element k as a scalar/array value (copy)

  // Constructors for writers and tests.
  static GgufValue make_int(Type t, int64_t v);  // t: an integer type or BOOL
  static GgufValue make_float(Type t, double v);  // t: F32 or F64
  static GgufValue make_bool(bool v);
  static GgufValue make_string(std::string v);
  static GgufValue make_int_array(Type elem, std::vector<int64_t> v);
  static GgufValue make_float_array(Type elem, std::vector<double> v);
  static GgufValue make_string_array(std::vector<std::string> v);
  static GgufValue make_array_array(std::vector<GgufValue> v);  // each element must be an ARRAY (any element type)
};

std::string_view gguf_type_name(GgufValue::Type t);  // "u32", "string", "array", ...

// ggml tensor type ids <-> DType. nullopt for ids optiq does not support.
std::optional<DType> dtype_from_ggml_type(uint32_t ggml_type);
uint32_t ggml_type_from_dtype(DType t);  // throws for U32/I32/I64/U8 (not supported in GGUF by optiq)
std::string_view ggml_type_name(uint32_t ggml_type);  // "Q4_K", "IQ2_XS", ... or "" if unknown

class GgufFile {
 public:
  explicit GgufFile(const std::string& path);  // mmaps, parses, validates; throws optiq::Error
  GgufFile(GgufFile&&) noexcept = default;
  GgufFile& operator=(GgufFile&&) noexcept = default;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  const std::string& path() const { return path_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of the tensor data section
  const MappedFile& file() const { return file_; }

  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return meta_; }  // file order
  // Frees the elements of metadata arrays of at least `min_elems` entries (the
  // vocabulary, scores, merges: ~13 MB for a 262k vocabulary) once they have
  // been read; those arrays read as empty afterwards.
  void release_large_arrays(size_t min_elems = 4096);
  const GgufValue* find_meta(std::string_view key) const;
  bool has(std::string_view key) const { return find_meta(key) != nullptr; }

  // Typed getters throw "<path>: metadata <key> missing" or
  // "<path>: metadata <key> has type X, expected Y".
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;  // any integer type
  int64_t get_int_or(std::string_view key, int64_t def) const;
  double get_float(std::string_view key) const;  // float or integer types
  double get_float_or(std::string_view key, double def) const;
  bool get_bool_or(std::string_view key, bool def) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  const std::vector<std::string>& string_array_ref(std::string_view key) const;  // no copy
  std::vector<float> get_float_array(std::string_view key) const;  // float or integer elements
  std::vector<int64_t> get_int_array(std::string_view key) const;  // integer or BOOL elements

  const std::vector<TensorView>& tensors() const { return tensors_; }  // file order
  const TensorView* find_tensor(std::string_view name) const;
  uint64_t tensor_offset(size_t index) const { return offsets_.at(index); }  // relative to data_offset()

  // Human-readable value: strings quoted, arrays as "[a, b, ... (N total)]"
  // showing at most max_elems elements.
  std::string metadata_to_string(const GgufValue& v, size_t max_elems = 8) const;

 private:
  std::string path_;
  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> meta_;
  std::unordered_map<std::string, size_t> meta_index_;
  std::vector<TensorView> tensors_;
  std::vector<uint64_t> offsets_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace optiq

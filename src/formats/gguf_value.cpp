// GGUF metadata values (GgufValue) and the ggml tensor type ids: the
// vocabulary of the container, apart from reading a file (gguf.cpp).
#include "formats/gguf.h"

#include <iterator>

#include "core/error.h"

namespace optiq {

using VT = GgufValue::Type;

// ---------------------------------------------------------------- GgufValue

bool GgufValue::is_integer_type(Type t) {
  switch (t) {
    case VT::U8: case VT::I8: case VT::U16: case VT::I16: case VT::U32: case VT::I32: case VT::U64: case VT::I64:
      return true;
    default:
      return false;
  }
}

bool GgufValue::is_float_type(Type t) { return t == VT::F32 || t == VT::F64; }

size_t GgufValue::size() const {
  if (type != VT::ARRAY) return 0;
  if (elem_type == VT::STRING) return strings.size();
  if (elem_type == VT::ARRAY) return arrays.size();
  if (is_float_type(elem_type)) return floats.size();
  return ints.size();
}

GgufValue GgufValue::element(size_t k) const {
  check(type == VT::ARRAY && k < size(), "GGUF value element {} out of range", k);
  if (elem_type == VT::STRING) return make_string(strings[k]);
  if (elem_type == VT::ARRAY) return arrays[k];
  if (is_float_type(elem_type)) return make_float(elem_type, floats[k]);
  return make_int(elem_type, ints[k]);
}

GgufValue GgufValue::make_int(Type t, int64_t v) {
  check(is_integer_type(t) || t == VT::BOOL, "GGUF: make_int with non-integer type {}", gguf_type_name(t));
  GgufValue r;
  r.type = t;
  r.i = t == VT::BOOL ? (v != 0) : v;
  return r;
}
GgufValue GgufValue::make_float(Type t, double v) {
  check(is_float_type(t), "GGUF: make_float with non-float type {}", gguf_type_name(t));
  GgufValue r;
  r.type = t;
  r.f = t == VT::F32 ? static_cast<double>(static_cast<float>(v)) : v;
  return r;
}
GgufValue GgufValue::make_bool(bool v) { return make_int(VT::BOOL, v ? 1 : 0); }
GgufValue GgufValue::make_string(std::string v) {
  GgufValue r;
  r.type = VT::STRING;
  r.str = std::move(v);
  return r;
}
GgufValue GgufValue::make_int_array(Type elem, std::vector<int64_t> v) {
  check(is_integer_type(elem) || elem == VT::BOOL, "GGUF: make_int_array with element type {}", gguf_type_name(elem));
  GgufValue r;
  r.type = VT::ARRAY;
  r.elem_type = elem;
  r.ints = std::move(v);
  return r;
}
GgufValue GgufValue::make_float_array(Type elem, std::vector<double> v) {
  check(is_float_type(elem), "GGUF: make_float_array with element type {}", gguf_type_name(elem));
  GgufValue r;
  r.type = VT::ARRAY;
  r.elem_type = elem;
  r.floats = std::move(v);
  return r;
}
GgufValue GgufValue::make_string_array(std::vector<std::string> v) {
  GgufValue r;
  r.type = VT::ARRAY;
  r.elem_type = VT::STRING;
  r.strings = std::move(v);
  return r;
}
GgufValue GgufValue::make_array_array(std::vector<GgufValue> v) {
  GgufValue r;
  r.type = VT::ARRAY;
  r.elem_type = VT::ARRAY;
  r.arrays = std::move(v);
  return r;
}

std::string_view gguf_type_name(GgufValue::Type t) {
  switch (t) {
    case VT::U8: return "u8";
    case VT::I8: return "i8";
    case VT::U16: return "u16";
    case VT::I16: return "i16";
    case VT::U32: return "u32";
    case VT::I32: return "i32";
    case VT::F32: return "f32";
    case VT::BOOL: return "bool";
    case VT::STRING: return "string";
    case VT::ARRAY: return "array";
    case VT::U64: return "u64";
    case VT::I64: return "i64";
    case VT::F64: return "f64";
  }
  return "?";
}

// ------------------------------------------------------------ ggml type ids

std::optional<DType> dtype_from_ggml_type(uint32_t id) {
  switch (id) {
    case 0: return DType::F32;
    case 1: return DType::F16;
    case 2: return DType::Q4_0;
    case 3: return DType::Q4_1;
    case 6: return DType::Q5_0;
    case 7: return DType::Q5_1;
    case 8: return DType::Q8_0;
    case 10: return DType::Q2_K;
    case 11: return DType::Q3_K;
    case 12: return DType::Q4_K;
    case 13: return DType::Q5_K;
    case 14: return DType::Q6_K;
    case 20: return DType::IQ4_NL;
    case 23: return DType::IQ4_XS;
    case 30: return DType::BF16;
    default: return std::nullopt;
  }
}

uint32_t ggml_type_from_dtype(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q4_1: return 3;
    case DType::Q5_0: return 6;
    case DType::Q5_1: return 7;
    case DType::Q8_0: return 8;
    case DType::Q2_K: return 10;
    case DType::Q3_K: return 11;
    case DType::Q4_K: return 12;
    case DType::Q5_K: return 13;
    case DType::Q6_K: return 14;
    case DType::IQ4_NL: return 20;
    case DType::IQ4_XS: return 23;
    case DType::BF16: return 30;
    case DType::U8:
    case DType::I32:
    case DType::I64:
    case DType::U32: break;  // ggml's integer tensors are not supported by the reader either
  }
  fail("dtype {} cannot be stored in a GGUF file", dtype_name(t));
}

std::string_view ggml_type_name(uint32_t id) {
  static constexpr std::string_view names[] = {
      "F32",  "F16",     "Q4_0",    "Q4_1",   "Q4_2",   "Q4_3",  "Q5_0",  "Q5_1",  "Q8_0",    "Q8_1",
      "Q2_K", "Q3_K",    "Q4_K",    "Q5_K",   "Q6_K",   "Q8_K",  "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
      "IQ4_NL", "IQ3_S", "IQ2_S",   "IQ4_XS", "I8",     "I16",   "I32",   "I64",   "F64",     "IQ1_M",
      "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8",
      "MXFP4"};
  if (id < std::size(names)) return names[id];
  return "";
}

}  // namespace optiq

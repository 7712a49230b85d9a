// Helper for tests/reference/test_safetensors_ref.py.
//
//   safetensors_roundtrip IN.safetensors OUT.safetensors
//
// Reads IN with optiq::SafetensorsFile, prints one line per tensor
//   <name>\t<dtype>\t<dim,dim,...>\t<fnv1a64 of the bytes, hex>
// then "meta\t<key>\t<value>" per metadata entry, and rewrites every tensor and
// the metadata to OUT with optiq::SafetensorsWriter. On an optiq::Error it
// prints the message to stderr and exits 2.
#include <cstdint>
#include <cstdio>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "formats/safetensors.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s IN.safetensors OUT.safetensors\n", argv[0]);
    return 64;
  }
  try {
    optiq::SafetensorsFile in(argv[1]);
    optiq::SafetensorsWriter w;
    for (const auto& t : in.tensors()) {
      uint64_t h = 0xcbf29ce484222325ull;
      const auto* p = static_cast<const uint8_t*>(t.data);
      for (size_t i = 0; i < t.nbytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
      fmt::print("{}\t{}\t{}\t{:016x}\n", t.name, optiq::safetensors_dtype_name(t.dtype), fmt::join(t.shape, ","), h);
      w.add_view(t);
    }
    for (const auto& [k, v] : in.metadata()) {
      fmt::print("meta\t{}\t{}\n", k, v);
      w.set_metadata(k, v);
    }
    w.write(argv[2]);
  } catch (const optiq::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  return 0;
}
